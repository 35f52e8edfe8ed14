"""Networks: CCA-3D / RCCA-3D and non-local modules, TSM ResNet and MF-Net backbones, insertion, conversion.

The public names below are imported on first use, so that `rcca.models.positions` (used by the
config) can be imported without torch.

    from rcca.models import RCCA3D, insert_context_modules

    insert_context_modules(my_net, ["layer2"], RCCA3D, example_input=clip)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names for type checkers and IDEs, re-exported explicitly
    from rcca.models.attention import RCCA3D as RCCA3D
    from rcca.models.attention import CrissCrossAttention3D as CrissCrossAttention3D
    from rcca.models.build import build_model as build_model
    from rcca.models.insertion import WithContext as WithContext
    from rcca.models.insertion import context_modules as context_modules
    from rcca.models.insertion import insert_context_modules as insert_context_modules
    from rcca.models.interface import VideoBackbone as VideoBackbone
    from rcca.models.mfnet import MFNet3D as MFNet3D
    from rcca.models.nonlocal_block import NonLocal3D as NonLocal3D
    from rcca.models.tsm import TSMResNet as TSMResNet

_SOURCES = {
    "CrissCrossAttention3D": "attention",
    "RCCA3D": "attention",
    "NonLocal3D": "nonlocal_block",
    "TSMResNet": "tsm",
    "MFNet3D": "mfnet",
    "VideoBackbone": "interface",
    "WithContext": "insertion",
    "context_modules": "insertion",
    "insert_context_modules": "insertion",
    "build_model": "build",
}
__all__ = list(_SOURCES)


def __getattr__(name: str) -> Any:
    """Import a public name from its submodule on first access (PEP 562)."""
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_SOURCES[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
