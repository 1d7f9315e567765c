"""Where images to index come from: each source lists `ItemRef`s cheaply, then reads their bytes.

- `folder:DIR` walks DIR recursively for common image types (`ingest.sources.folder`).
- `hf:NAME[:SPLIT]` reads a Hugging Face dataset (`ingest.sources.huggingface`).
- `s3://bucket/prefix` lists the images under a prefix (`ingest.sources.s3`); the id is the key.

`ingest.sources.base` has what they share (`ItemRef`, the `Source` protocol, listing and reading
explained); `ingest.sources.factory.parse_source` turns a spec into a source. This module holds
only the default spec, so the CLI can name it without loading any source.
"""

DEFAULT_SOURCE = "hf:xfh/lexica_6k"  # the 6k AI-generated Lexica images, with their prompts
