"""The upstream ImageBind code (`imagebind-unofficial`), importable as a test oracle.

The package does not import as shipped on modern torchvision; the two patches below (an alias
for `torchvision.transforms.functional_tensor` and a `pkg_resources` stand-in) make it import,
and are kept in test code only. Our own encoder never imports this.
"""

from __future__ import annotations

import importlib
import sys
import types


def _patch_imports() -> None:
    import torchvision.transforms._functional_tensor as functional_tensor

    sys.modules.setdefault("torchvision.transforms.functional_tensor", functional_tensor)
    try:
        import pkg_resources  # noqa: F401  (setuptools < 81 still ships it)
    except ImportError:
        shim = types.ModuleType("pkg_resources")

        def resource_filename(package: str, resource: str) -> str:
            from importlib.resources import files

            return str(files(package) / resource)

        shim.resource_filename = resource_filename
        sys.modules["pkg_resources"] = shim


def reference_model_module():
    """`imagebind.models.imagebind_model` of the reference package."""
    _patch_imports()
    return importlib.import_module("imagebind.models.imagebind_model")


def reference_data_module():
    """`imagebind.data` of the reference package (tokenizer, image and audio transforms)."""
    _patch_imports()
    return importlib.import_module("imagebind.data")
