"""Loading released checkpoints (official TSM, official MF-Net, this framework's own) into the models.

Official TSM (mit-han-lab/temporal-shift-module): main.py saves
`{'epoch', 'arch', 'state_dict', 'optimizer', 'best_prec1'}` from a DataParallel-wrapped `TSN`, so
the keys read `module.base_model.<torchvision resnet name>`, with these wrappers inside:
  * `layerX.i.conv1.net.*`   temporal shift ("blockres") around conv1          -> `layerX.i.conv1.*`
  * `layerX.i.net.*`         temporal shift ("block") around the whole block    -> `layerX.i.*`
  * `module.new_fc.*`        classifier when dropout > 0                        -> `fc.*`
    (`base_model.fc.*` when dropout = 0)                                        -> `fc.*`
  * `layerX.i.block.*`       non-local wrapper's residual block (`_nl` models)  -> `layerX.i.*`
  * `layerX.i.nl.*`          its non-local block (embedded Gaussian)          -> `layerX.i.context.*`
    with theta -> theta, phi(.0) -> phi, g(.0) -> g, W.0 -> out, W.1 -> bn, i.e. our
    `NonLocal3D(C, subsample=True)` inserted at that block (the released `_nl` model wraps
    layer2.0/2, layer3.0/2/4 = conv3_1, conv3_3, conv4_1, conv4_3, conv4_5)
  `consensus` holds no tensors. A plain 2-D TSN checkpoint has the same names without any `.net.`.
  Rejected: temporal-pooling models (`layerX.net.*`) and
  non-ResNet backbones (MobileNetV2, BN-Inception), which `TSMResNet` cannot represent.

Official MF-Net (cypw/PyTorch-MFNet): train/model.py saves `{'epoch', 'state_dict'[, 'optimizer']}`
from a DataParallel-wrapped `MFNET_3D`, keys `module.conv1.conv.weight` ...; the names below
`module.` are those of `MFNet3D`. The ImageNet-1k MF-Net 2D file (MFNet2D_ImageNet1k-0000.pth)
is a bare state dict with the same names and 4-D conv kernels; `load_pretrained` inflates those
as the release does (copy the kernel along time, divided by the temporal kernel size).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rcca.models.nonlocal_block import NonLocal3D

KINDS = ("tsm", "tsn", "mfnet", "rcca")

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


@dataclass(frozen=True)
class Computation:
    """Settings that change what a network computes without changing any tensor's name or shape.

    Loading weights into a network that differs in one of these gives wrong outputs with every
    tensor "loaded", so `load_pretrained` compares them. None means not known or not applicable.

    shift_place: TSM shift placement, "blockres" or "block"; "none" for a 2-D TSN without shifts.
    shift_div: TSM's 1/shift_div of channels shifted each way.
    nonlocal_subsample: whether the non-local blocks max-pool their keys and values.
    """

    shift_place: str | None = None
    shift_div: int | None = None
    nonlocal_subsample: bool | None = None

    def overrides_to_match(self, model: Computation) -> list[str]:
        """The config overrides that make a model computing as `model` compute as `self`."""
        keys = {
            "shift_place": "backbone.shift_place",
            "shift_div": "backbone.shift_div",
            "nonlocal_subsample": "module.subsample",
        }
        overrides = []
        for name, key in keys.items():
            wanted, built = getattr(self, name), getattr(model, name)
            if wanted is not None and built is not None and wanted != built:
                overrides.append(f"{key}={str(wanted).lower()}")
        return overrides


def model_computation(model: nn.Module) -> Computation:
    """What `model` computes (its TSM blocks' shifts and its non-local blocks' sub-sampling)."""
    blocks = [m for m in model.modules() if hasattr(m, "shift_place")]
    nonlocal_blocks = [m for m in model.modules() if isinstance(m, NonLocal3D)]
    return Computation(
        shift_place=blocks[0].shift_place if blocks else None,
        shift_div=blocks[0].shift_div if blocks else None,
        nonlocal_subsample=nonlocal_blocks[0].subsample if nonlocal_blocks else None,
    )


def tsm_checkpoint_computation(state: Mapping) -> Computation:
    """What an official TSM/TSN checkpoint was trained with, read from its tensor names.

    `layer1.0.conv1.net.weight` (shift wrapping conv1) is the blockres placement,
    `layer1.0.net.conv1.weight` (shift wrapping the block) the block placement, and a ResNet
    without either is a plain 2-D TSN. A sub-sampled non-local block stores `nl.phi.0.*`
    (conv then max-pool in a Sequential), a plain one `nl.phi.*`.
    """
    names = [_strip(_strip(key, "module."), "base_model.") for key in _state_dict_of(state)]
    if any(re.match(r"layer\d+\.\d+\.net\.", name) for name in names):
        place = "block"
    elif any(re.match(r"layer\d+\.\d+\.(block\.)?conv1\.net\.", name) for name in names):
        place = "blockres"
    else:
        place = "none"
    subsample = None
    if any(".nl." in name for name in names):
        subsample = any(".nl.phi.0." in name for name in names)
    return Computation(shift_place=place, nonlocal_subsample=subsample)


def rcca_checkpoint_computation(checkpoint: Mapping) -> Computation:
    """What an rcca checkpoint was trained with, read from its stored run config."""
    config = checkpoint.get("config")
    if not isinstance(config, Mapping):
        return Computation()
    backbone, module = config.get("backbone", {}), config.get("module", {})
    tsm = backbone.get("name") == "tsm"
    return Computation(
        shift_place=backbone.get("shift_place", "blockres") if tsm else None,
        shift_div=backbone.get("shift_div") if tsm else None,
        nonlocal_subsample=module.get("subsample") if module.get("name") == "nl" else None,
    )


def check_computation(source: Computation, model: nn.Module, where: str, kind: str) -> None:
    """Raise ValueError (one line, naming the overrides) when `model` would compute differently."""
    built = model_computation(model)
    if source.shift_place == "none" and built.shift_place is not None and kind != "tsn":
        raise ValueError(
            f"{where} is a 2-D TSN checkpoint (no temporal-shift tensors) but the model shifts channels in time, "
            "so its weights would compute something else: set init_from_format=tsn to load them into TSM on purpose"
        )
    if kind == "tsn":
        if source.shift_place != "none":
            raise ValueError(
                f"{where} has temporal-shift tensors ({source.shift_place} placement), so it is a TSM checkpoint: "
                "set init_from_format=tsm"
            )
        source = Computation(nonlocal_subsample=source.nonlocal_subsample)
    overrides = source.overrides_to_match(built)
    if overrides:
        raise ValueError(
            f"{where} was trained with {', '.join(overrides)}, which the configured model differs in "
            f"(its tensors would load but compute something else): add {' '.join(overrides)}"
        )


def load_pretrained(model: nn.Module, checkpoint: Mapping, kind: str, where: str = "init_from") -> LoadReport:
    """Load a checkpoint of `kind` ("tsm", "tsn", "mfnet" or "rcca") into `model`, leniently.

    Args:
        model: the network to fill, context modules already inserted.
        checkpoint: the file's top-level dict (read with `rcca.engine.checkpoints.read_checkpoint`).
        kind: the file's format: official TSM (temporal shift), official TSN (the same ResNet
            names without shifts, loaded into a shifting model on purpose), official MF-Net, or rcca.
        where: how errors name the file (e.g. "init_from=/path/file.pth").

    Tensors whose name and shape match are copied; the rest are listed in the report (a
    classifier for another class count is skipped, not an error). With kind "mfnet", 4-D
    (2-D image) conv kernels are inflated onto the model's 3-D kernels.

    Raises ValueError for an unknown kind, an unconvertible checkpoint, one trained with
    settings that change the computation (see `Computation`; the message names the overrides
    to set), or one of which no tensor fits the model (wrong kind or model).
    """
    if kind not in KINDS:
        raise ValueError(f"init_from_format={kind!r}: choose one of {', '.join(KINDS)}")
    if kind in ("tsm", "tsn"):
        source = convert_tsm_checkpoint(checkpoint)
        check_computation(tsm_checkpoint_computation(checkpoint), model, where, kind)
    elif kind == "mfnet":
        source = convert_mfnet_checkpoint(checkpoint)
    else:
        source = _convert_rcca_checkpoint(checkpoint)
        check_computation(rcca_checkpoint_computation(checkpoint), model, where, kind)

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
            f"{where}: none of its {len(source)} tensors fits {type(model).__name__} "
            f"(init_from_format={kind}; is it the right kind of checkpoint?)"
        )
    model.load_state_dict(to_load, strict=False)
    report.new = [n for n in target if n not in to_load and not n.endswith("num_batches_tracked")]
    return report
