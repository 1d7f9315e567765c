"""Helpers of the ingest tests: folders of generated images, and a dataset read back by id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import deeplake
import numpy as np

from tests.media_factory import make_jpeg, make_picture


def image_folder(root: Path, count: int, *, broken: bool = False, png_every: int = 0) -> list[str]:
    """`count` distinct pictures under `root` (every `png_every`-th a PNG, a few in a subfolder);
    with `broken`, also a truncated JPEG and a text file named like a PNG. The good ids."""
    (root / "sub").mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(count):
        png = bool(png_every) and i % png_every == png_every - 1
        name = f"{'sub/' if i % 5 == 0 else ''}img{i:03d}.{'png' if png else 'jpg'}"
        (root / name).write_bytes(make_picture(i, "PNG" if png else "JPEG"))
        ids.append(name)
    if broken:
        (root / "broken.jpg").write_bytes(make_jpeg(seed=99)[:120])
        (root / "fake.png").write_text("this is not an image")
    return sorted(ids)


@dataclass(frozen=True, eq=False)
class StoredRow:
    embedding: np.ndarray
    text: str
    source: str
    s3_key: str
    image: bytes
    width: int
    height: int


def rows_by_id(path: str, creds: dict[str, str] | None = None) -> dict[str, StoredRow]:
    """Every row of a dataset, by id; fails when an id appears twice."""
    ds = deeplake.open_read_only(path, creds=creds)
    ids = [str(i) for i in ds["id"][:]]
    assert len(ids) == len(set(ids)), "an id appears twice in the dataset"
    embeddings = np.asarray(ds["embedding"][:], dtype=np.float32)
    columns = {c: ds[c][:] for c in ("text", "source", "s3_key", "width", "height")}
    return {
        id_: StoredRow(
            embedding=embeddings[row],
            text=str(columns["text"][row] or ""),
            source=str(columns["source"][row] or ""),
            s3_key=str(columns["s3_key"][row] or ""),
            image=bytes(ds["image"].get_bytes(row)),
            width=int(columns["width"][row]),
            height=int(columns["height"][row]),
        )
        for row, id_ in enumerate(ids)
    }
