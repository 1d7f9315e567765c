"""The file-size limit shared by every kind of media, with its user-facing message."""

from __future__ import annotations

from core.config import MediaLimits
from core.errors import MediaTooLargeError


def human_bytes(size: int) -> str:
    if size >= 1_000_000:
        return f"{size / 1_000_000:.1f} MB"
    if size >= 1_000:
        return f"{size / 1_000:.0f} kB"
    return f"{size} bytes"


def check_file_size(
    size: int, limits: MediaLimits, *, what: str = "file", advice: str = "send a smaller file"
) -> None:
    """Raise `MediaTooLargeError` when `size` bytes exceed `limits.max_file_bytes`."""
    if size > limits.max_file_bytes:
        raise MediaTooLargeError(
            f"{what} is {human_bytes(size)}; the limit is {human_bytes(limits.max_file_bytes)} — {advice}"
        )
