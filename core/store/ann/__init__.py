"""An approximate nearest-neighbour index beside a DeepLake dataset (the system of record).

- `ivf.py`: the faiss structure (an inverted file of 8-bit scalar-quantised vectors) and its
  search with a row filter applied during the scan;
- `files.py`: where the index lives (a folder next to a local dataset, objects next to an S3
  one) and its generations of files;
- `index.py`: `AnnIndex`, built from the dataset's embeddings, grown by commits, searched for
  candidates that the store re-ranks exactly from the float32 vectors kept memory-mapped.

Why an inverted file and not HNSW: measured on this machine (benchmarks/README.md, store), HNSW
(usearch and faiss, 8-bit vectors) took 8-11 minutes to build 100k rows of 1024-d and reached
recall@10 0.23-0.27 on Gaussian vectors at ef 512, while the inverted file builds in seconds,
supports removal and a filter during the scan, and its recall is checked when it is built.
"""
