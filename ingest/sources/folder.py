"""`folder:DIR` as an ingest source: DIR walked recursively for common image types.

An item's id is its path relative to DIR (POSIX form), so re-running an ingest recognises what
is already in.

Only what is inside DIR is indexed (and later served): a symbolic link that resolves outside
DIR is skipped with a warning, unless `follow_links` (`search-all ingest --follow-links`). A
file is measured before it is read: one over `max_bytes` (`[limits] max_file_bytes`) is refused
without reading a byte, and reading stops there in any case (a file growing meanwhile).
"""

from __future__ import annotations

import logging
import os
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import BadInputError
from core.media.kinds import is_image_name
from core.media.sizes import human_bytes
from core.store.base import FOLDER_SOURCE_PREFIX
from ingest.sources.base import ItemRef, count_suffix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderSource:
    root: Path
    follow_links: bool = False
    max_bytes: int | None = None
    # files passed over by their type in the last listing, by suffix ("(no suffix)" for none)
    not_images: Counter[str] = field(default_factory=Counter, compare=False, repr=False)

    @property
    def name(self) -> str:
        return f"{FOLDER_SOURCE_PREFIX}{self.root.resolve()}"

    def refs(self) -> Iterator[ItemRef]:
        root = self.root.resolve()
        self.not_images.clear()
        paths = []
        for p in self.root.rglob("*"):
            if is_image_name(p.name):
                if p.is_file():
                    paths.append(p)
            elif not p.name.startswith(".") and p.is_file():  # hidden files go unmentioned
                count_suffix(self.not_images, p.name)
        paths.sort()
        for path in paths:
            relative = path.relative_to(self.root).as_posix()
            if not self.follow_links and not path.resolve().is_relative_to(root):
                log.warning(
                    "skipping %s: a link to %s, outside %s (use --follow-links to index it)",
                    relative, path.resolve(), root,
                )
                continue
            yield ItemRef(id=relative, locator=relative)

    def read(self, ref: ItemRef) -> bytes:
        path = self.root / str(ref.locator)
        if not self.follow_links and not path.resolve().is_relative_to(self.root.resolve()):
            raise BadInputError(f"{ref.locator} resolves outside {self.root} (use --follow-links)")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise BadInputError(f"{ref.locator} is not a regular file")
            limit = self.max_bytes
            if limit is not None and info.st_size > limit:
                raise BadInputError(
                    f"{ref.locator} is {human_bytes(info.st_size)}; the limit is {human_bytes(limit)}"
                    " ([limits] max_file_bytes): not read"
                )
            data = file.read() if limit is None else file.read(limit + 1)
            if limit is not None and len(data) > limit:
                raise BadInputError(f"{ref.locator} grew beyond {human_bytes(limit)} while read")
            return data
