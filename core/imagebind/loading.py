"""Loading the ImageBind checkpoint into the model (open_clip's `factory.py` half); finding and
downloading the file is `core.imagebind.pretrained`'s job.

1. `load_state_dict_file(path, keep_prefixes=..., dtype=...)` memory-maps the file, unwraps
   common wrappers, keeps only the towers we run (`select_keys`, `modality_prefixes`) and casts
   them to the dtype the model runs in (`cast_state_dict`), one tensor at a time.
2. `load_into(model, state_dict)` loads strictly with `assign=True` into a model built on the
   `meta` device, and names the keys that do not fit when it fails.

`drop_pages` and `is_file_backed` let the model hand back the pages of tensors that stay
memory-mapped (see `core.imagebind.model.place_model`).
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import sys
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path

import torch

from core.errors import CheckpointError, ModelError

__all__ = [
    "IMAGEBIND_PARTS",
    "cast_state_dict",
    "drop_pages",
    "is_file_backed",
    "load_into",
    "load_state_dict_file",
    "modality_prefixes",
    "select_keys",
]

_WRAPPER_KEYS = ("state_dict", "model")

# The four parts of an ImageBind model; each holds one sub-module per modality.
IMAGEBIND_PARTS = (
    "modality_preprocessors",
    "modality_trunks",
    "modality_heads",
    "modality_postprocessors",
)


def modality_prefixes(modalities: Iterable[str]) -> tuple[str, ...]:
    """State-dict prefixes of the given modalities' towers, e.g. `modality_trunks.text.`, part
    by part (every modality's preprocessor first, then the trunks, ...)."""
    modalities = tuple(modalities)
    return tuple(f"{part}.{modality}." for part in IMAGEBIND_PARTS for modality in modalities)


def select_keys(
    state_dict: Mapping[str, torch.Tensor], prefixes: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Keep the entries whose key starts with one of `prefixes`, in their original order."""
    wanted = tuple(prefixes)
    return {key: value for key, value in state_dict.items() if key.startswith(wanted)}


def load_state_dict_file(
    path: Path,
    *,
    keep_prefixes: Sequence[str] | None = None,
    dtype: torch.dtype | None = None,
    keep_dtype: Collection[str] = (),
) -> dict[str, torch.Tensor]:
    """Load a checkpoint's state dict from `path` without reading it all into memory.

    The file is memory-mapped (`mmap=True`; older non-zip files are read normally) and
    unpickled with `weights_only=True`, so it cannot run code. A `{"state_dict": ...}` or
    `{"model": ...}` wrapper is removed. With `keep_prefixes`, only the keys starting with one
    of them are kept (see `modality_prefixes`); the others (depth, thermal, IMU towers) are
    never read from disk. With `dtype`, floating-point tensors of another dtype are cast to it
    by `cast_state_dict`, which hands each source's file pages back as it goes: loading
    imagebind_huge as bf16 then peaks at the bf16 copy, not the fp32 file on top of it. The
    keys in `keep_dtype` are not cast (they stay memory-mapped).
    """
    if not path.is_file():
        raise CheckpointError(f"the checkpoint file {path} does not exist.")
    mapped = True
    try:
        try:
            loaded = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            mapped = False
            loaded = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch.load raises many types for a bad file
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc}). "
            "It may be truncated or corrupted: delete it and download it again."
        ) from exc

    state_dict = _unwrap(loaded, path)
    if keep_prefixes is not None:
        state_dict = select_keys(state_dict, keep_prefixes)
        if not state_dict:
            raise CheckpointError(
                f"{path} has none of the expected keys (starting with "
                f"{', '.join(keep_prefixes[:3])}...): it is not an ImageBind checkpoint."
            )
    if dtype is not None:
        state_dict = cast_state_dict(state_dict, dtype, release_pages=mapped, keep=keep_dtype)
    return state_dict


def cast_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    dtype: torch.dtype,
    *,
    release_pages: bool = False,
    keep: Collection[str] = (),
) -> dict[str, torch.Tensor]:
    """Floating-point tensors cast to `dtype`, one at a time (others, and the keys in `keep`,
    kept as they are).

    `release_pages`: only for tensors memory-mapped from a file (private, never written), as
    `torch.load(mmap=True)` gives them: once a tensor is copied, the pages it was read into are
    dropped from this process (`madvise(MADV_DONTNEED)`; Linux, else nothing happens), so they
    stop counting as resident memory. Reading the source again would re-read the file.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if tensor.is_floating_point() and tensor.dtype != dtype and key not in keep:
            cast = tensor.to(dtype)
            if release_pages:
                drop_pages(tensor)
            tensor = cast
        out[key] = tensor
    return out


@functools.cache
def _madvise_dontneed() -> Callable[[int, int], int] | None:
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None or not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return lambda address, length: madvise(address, length, advice)


def drop_pages(tensor: torch.Tensor) -> None:
    """Drop the whole pages of `tensor`'s storage from this process (see `cast_state_dict`).

    Only for memory mapped from a file and never written (`is_file_backed`): anonymous memory
    would be zeroed.
    """
    storage = tensor.untyped_storage()
    start, size = storage.data_ptr(), storage.nbytes()
    madvise = _madvise_dontneed()
    if madvise is None or tensor.device.type != "cpu" or not start:
        return
    page = mmap.PAGESIZE
    first = -(-start // page) * page  # pages wholly inside the storage: never a neighbour's
    last = (start + size) // page * page
    if last > first:
        madvise(first, last - first)


def is_file_backed(tensor: torch.Tensor) -> bool:
    """Whether `tensor`'s data lies in a private mapping of a file (Linux's /proc/self/maps).

    True for the tensors of `torch.load(mmap=True)`; False elsewhere, or where it cannot tell.
    """
    if tensor.device.type != "cpu" or not sys.platform.startswith("linux"):
        return False
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split(maxsplit=5)
        low, high = (int(part, 16) for part in fields[0].split("-"))
        if low <= start and end <= high:
            path = fields[5] if len(fields) == 6 else ""
            return fields[1].endswith("p") and path.startswith("/") and not path.endswith("(deleted)")
    return False


def _unwrap(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(loaded, Mapping):
        inner = next((loaded[k] for k in _WRAPPER_KEYS if isinstance(loaded.get(k), Mapping)), None)
        if inner is None:
            break
        loaded = inner
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return dict(loaded)


def load_into(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """Load `state_dict` into `model` strictly, adopting its tensors (`assign=True`).

    Build the model on the meta device (`with torch.device("meta"): model = Model(...)`): no
    memory is allocated and no random init runs; the checkpoint's tensors become the
    parameters. After this they are still the memory-mapped tensors of the file (read lazily,
    shared with the page cache); `model.to(dtype)` or `.to(device)` materialises them, and is
    the caller's business. Raises a `CheckpointError` naming missing and unexpected keys and
    shape mismatches, and a `ModelError` if some tensor of the model is still on the meta
    device afterwards (a non-persistent buffer must not be created on the meta device).
    """
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)}, model {shape}"
        for key, shape in expected.items()
        if key in state_dict and tuple(state_dict[key].shape) != shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            "the checkpoint does not fit the model: "
            + "; ".join(
                _listing(label, items)
                for label, items in (
                    ("missing keys", missing),
                    ("unexpected keys", unexpected),
                    ("shape mismatches", mismatched),
                )
                if items
            )
            + ". Check that [model] name matches the checkpoint."
        )
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the checkpoint does not fit the model: {exc}") from exc

    on_meta = [
        name
        for name, tensor in (*model.named_parameters(), *model.named_buffers())
        if tensor.is_meta
    ]
    if on_meta:
        raise ModelError(
            "after loading, these tensors are still on the meta device (not in the "
            f"checkpoint, so never filled): {_listing('tensors', on_meta)}"
        )
    return model


def _listing(label: str, items: Sequence[str], shown: int = 5) -> str:
    more = f", and {len(items) - shown} more" if len(items) > shown else ""
    return f"{len(items)} {label} ({', '.join(items[:shown])}{more})"
