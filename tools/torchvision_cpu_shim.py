"""Let PyPI's CUDA torchvision import beside the CPU-only torch build.

PyPI's torchvision wheel links its C ops against a CUDA torch; beside torch's
CPU build its `_C` library fails to load, and torchvision's fake-op
registrations then fail with "operator torchvision::nms does not exist",
which also breaks open_clip and transformers imports. Installed by
`make .venv` (CPU stack only) as a `.pth` hook: when `torchvision` is first
imported, and only if its C ops are missing, the two schemas are defined so
the Python parts (transforms, io) import. Detection ops (nms) stay unusable,
which no sailcurate stage needs. GPU nodes install a matching CUDA torch and
never load this.
"""
from __future__ import annotations

import importlib.abc
import sys

_SCHEMAS = {
    "torchvision::nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "torchvision::qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def _define_missing_schemas() -> None:
    import torch

    for name in _SCHEMAS:
        namespace, op = name.split("::")
        if hasattr(getattr(torch.ops, namespace), op):
            try:
                getattr(getattr(torch.ops, namespace), op).default
                continue
            except (AttributeError, RuntimeError):
                pass
        try:
            torch.library.define(name, _SCHEMAS[name])
        except RuntimeError:
            pass  # already defined by a working torchvision._C


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # noqa: D401 - import hook protocol
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            _define_missing_schemas()
        return None


def install() -> None:
    if not any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionHook())


def _install_into_site_packages() -> None:
    """`python tools/torchvision_cpu_shim.py`: copy this module into the running venv and add the .pth."""
    import shutil
    import sysconfig
    from pathlib import Path

    site = Path(sysconfig.get_paths()["purelib"])
    shutil.copyfile(__file__, site / "sailcurate_torchvision_shim.py")
    (site / "sailcurate-torchvision-shim.pth").write_text(
        "import sailcurate_torchvision_shim; sailcurate_torchvision_shim.install()\n"
    )
    print(f"torchvision CPU shim installed in {site}")


if __name__ == "__main__":
    _install_into_site_packages()
