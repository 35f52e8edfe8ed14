"""Loading released checkpoints (official TSM, official MF-Net, this framework's own) into the models.

Official TSM (mit-han-lab/temporal-shift-module): main.py saves
`{'epoch', 'arch', 'state_dict', 'optimizer', 'best_prec1'}` from a DataParallel-wrapped `TSN`, so
the keys read `module.base_model.<torchvision resnet name>`, with these wrappers inside:
  * `layerX.i.conv1.net.*`   temporal shift ("blockres") around conv1          -> `layerX.i.conv1.*`
  * `module.new_fc.*`        classifier when dropout > 0                        -> `fc.*`
    (`base_model.fc.*` when dropout = 0)                                        -> `fc.*`
  * `layerX.i.block.*`       non-local wrapper's residual block (`_nl` models)  -> `layerX.i.*`
  * `layerX.i.nl.*`          its non-local block (embedded Gaussian)          -> `layerX.i.context.*`
    with theta -> theta, phi(.0) -> phi, g(.0) -> g, W.0 -> out, W.1 -> bn, i.e. our
    `NonLocal3D(C, subsample=True)` inserted at that block (the released `_nl` model wraps
    layer2.0/2, layer3.0/2/4 = conv3_1, conv3_3, conv4_1, conv4_3, conv4_5)
  `consensus` holds no tensors. Rejected: temporal-pooling models (`layerX.net.*`) and
  non-ResNet backbones (MobileNetV2, BN-Inception), which `TSMResNet` cannot represent.

Official MF-Net (cypw/PyTorch-MFNet): train/model.py saves `{'epoch', 'state_dict'[, 'optimizer']}`
from a DataParallel-wrapped `MFNET_3D`, keys `module.conv1.conv.weight` ...; the names below
`module.` are those of `MFNet3D`. The ImageNet-1k MF-Net 2D file (MFNet2D_ImageNet1k-0000.pth)
is a bare state dict with the same names and 4-D conv kernels; `load_pretrained` inflates those
as the release does (copy the kernel along time, divided by the temporal kernel size).
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

KINDS = ("tsm", "mfnet", "rcca")

# Official non-local part (ops/non_local.py) -> `NonLocal3D` attribute. phi and g are
# Sequential(conv, max-pool) when sub-sampled (the released models), plain convs otherwise.
_TSM_NONLOCAL = {"theta": "theta", "phi.0": "phi", "phi": "phi", "g.0": "g", "g": "g", "W.0": "out", "W.1": "bn"}
_TSM_NL_KEY = re.compile(r"(layer\d+\.\d+)\.nl\.(theta|phi\.0|phi|g\.0|g|W\.0|W\.1)\.([a-z_]+)")


@dataclass
class LoadReport:
    """What `load_pretrained` did.

    loaded: model tensors filled from the file.
    skipped: file tensors not used (shape differs from the model's, or name unknown to it).
    new: model tensors the file did not provide (left at their initial values); BatchNorm's
        `num_batches_tracked` counters are not listed.
    reasons: skipped name -> why.
    """

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors, skipped {len(self.skipped)}, new {len(self.new)}"]
        lines += [f"  skipped {name}: {self.reasons.get(name, '')}" for name in self.skipped]
        if self.new:
            lines.append(f"  new: {', '.join(self.new)}")
        return "\n".join(lines)


def _state_dict_of(state: Mapping) -> dict[str, Tensor]:
    """The tensor dict of a checkpoint: its 'state_dict' entry, or the mapping itself."""
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix) :] if key.startswith(prefix) else key


def convert_tsm_checkpoint(state: Mapping) -> dict[str, Tensor]:
    """Official TSM checkpoint (full dict with 'state_dict', or a bare state dict) -> `TSMResNet` names.

    Raises ValueError for temporal-pooling or non-ResNet checkpoints.
    """
    converted: dict[str, Tensor] = {}
    for key, value in _state_dict_of(state).items():
        name = _strip(key, "module.")
        if name.startswith("new_fc."):
            converted["fc." + name[len("new_fc.") :]] = value
            continue
        name = _strip(name, "base_model.")
        if re.match(r"layer\d+\.net\.", name):
            raise ValueError(
                f"TSM checkpoint tensor {key!r}: temporal-pooling models (tpool) are not supported by TSMResNet"
            )
        if not re.match(r"(conv1|bn1|layer\d+|fc)\.", name):
            raise ValueError(
                f"TSM checkpoint tensor {key!r}: not a ResNet tensor; only ResNet TSM/TSN checkpoints are supported"
            )
        name = name.replace(".net.", ".")
        name = re.sub(r"^(layer\d+\.\d+)\.block\.", r"\1.", name)
        match = _TSM_NL_KEY.fullmatch(name)
        if match:
            block, part, rest = match.groups()
            name = f"{block}.context.{_TSM_NONLOCAL[part]}.{rest}"
        converted[name] = value
    return converted


def convert_mfnet_checkpoint(state: Mapping) -> dict[str, Tensor]:
    """Official MF-Net checkpoint ({'epoch', 'state_dict', ...} or a bare state dict) -> `MFNet3D` names."""
    return {_strip(key, "module."): value for key, value in _state_dict_of(state).items()}


def _convert_rcca_checkpoint(state: Mapping) -> dict[str, Tensor]:
    if "model" not in state or not isinstance(state["model"], Mapping):
        raise ValueError("rcca checkpoint: expected a dict with the model's state dict under key 'model'")
    return {_strip(k, "module."): v for k, v in state["model"].items() if isinstance(v, Tensor)}


def _inflate(src: Tensor, shape: torch.Size) -> Tensor:
    """2-D kernel O x I x kh x kw -> 3-D O x I x kt x kh x kw, repeated along time and divided by kt."""
    kt = shape[2]
    return (src / kt).unsqueeze(2).expand(shape).clone()


def _read(path: Path, own: bool) -> object:
    """torch.load onto the CPU; weights-only (safe) for released checkpoints when the file allows it.

    This framework's own checkpoints (`own`) also pickle RNG states and are read in full.
    Released checkpoints that pickle more than tensors (numpy scalars, argparse values) are
    read in full after a warning; that runs their pickled code, so load only files you trust.
    """
    if own:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(f"init_from={path}: not a weights-only file ({first_line}); loading it in full", stacklevel=3)
        return torch.load(path, map_location="cpu", weights_only=False)


def load_pretrained(model: nn.Module, path: str | Path, kind: str) -> LoadReport:
    """Load checkpoint `path` of `kind` ("tsm", "mfnet" or "rcca") into `model`, leniently.

    Tensors whose name and shape match are copied; the rest are listed in the report (a
    classifier for another class count is skipped, not an error). With kind "mfnet", 4-D
    (2-D image) conv kernels are inflated onto the model's 3-D kernels.

    Raises FileNotFoundError for a missing file, ValueError for an unknown kind, an
    unconvertible checkpoint, or one of which no tensor fits the model (wrong kind or model).
    """
    if kind not in KINDS:
        raise ValueError(f"init_from kind {kind!r}: choose one of {', '.join(KINDS)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init_from={path}: checkpoint file not found")
    checkpoint = _read(path, own=kind == "rcca")
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"init_from={path}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    if kind == "tsm":
        source = convert_tsm_checkpoint(checkpoint)
    elif kind == "mfnet":
        source = convert_mfnet_checkpoint(checkpoint)
    else:
        source = _convert_rcca_checkpoint(checkpoint)

    target = model.state_dict()
    report = LoadReport()
    to_load: dict[str, Tensor] = {}
    for name, value in source.items():
        if name not in target:
            report.skipped.append(name)
            report.reasons[name] = "not in the model"
            continue
        wanted = target[name].shape
        if value.shape != wanted:
            if kind == "mfnet" and value.dim() == 4 and len(wanted) == 5 and value.shape == wanted[:2] + wanted[3:]:
                value = _inflate(value, wanted)
            else:
                report.skipped.append(name)
                report.reasons[name] = f"shape {tuple(value.shape)} in file, {tuple(wanted)} in model"
                continue
        to_load[name] = value
        report.loaded.append(name)

    if not to_load:
        raise ValueError(
            f"init_from={path}: none of its {len(source)} tensors fits {type(model).__name__} "
            f"(kind={kind!r}; is it the right kind of checkpoint?)"
        )
    model.load_state_dict(to_load, strict=False)
    report.new = [n for n in target if n not in to_load and not n.endswith("num_batches_tracked")]
    return report
