"""Parameters and FLOPs of a job's model, counted as the paper's tables count them.

The model is built from the job's `backbone` and `module` settings with a 400-class classifier (the paper's
counts are Kinetics models: TSM ResNet-50 has 24.30M parameters) and counted by
`rcca.models.complexity.complexity_report` at 1 x 3 x backbone.num_frames x 224 x 224, whatever crop size the
job trained with (`count_cost` takes another class count and size where a table wants the trained model's).
FLOPs follow the paper's convention, backbone MACs + 2 x module MACs; GMACs are all MACs.
`CostCounter` counts each distinct (backbone, module) setting once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rcca.config import BackboneConfig, ModuleConfig
from rcca.errors import UserError
from rcca.models.build import build_model
from rcca.models.complexity import complexity_report
from rcca.results.settings import canonical, is_ignored

PAPER_CLASSES = 400
PAPER_SIZE = 224
CONVENTION = (
    f"params and FLOPs of the model with a {PAPER_CLASSES}-class classifier at 1 x 3 x frames x {PAPER_SIZE} x "
    f"{PAPER_SIZE}, whatever the crop size trained with; FLOPs in the paper's convention, backbone MACs + 2 x module "
    "MACs; GMACs: all multiply-accumulates (fvcore)"
)


@dataclass(frozen=True)
class Cost:
    """The size and compute of a model.

    Attributes:
        params: parameters, in millions.
        flops: the paper's FLOPs (backbone MACs + 2 x module MACs), in billions.
        gmacs: multiply-accumulates, in billions.
    """

    params: float
    flops: float
    gmacs: float


class CostCounter:
    """Counts `Cost`s of job configs, once per distinct (backbone, module) setting."""

    def __init__(self) -> None:
        """Start with nothing counted."""
        self._counted: dict[tuple, Cost] = {}

    def __call__(self, config: Mapping[str, Any]) -> Cost:
        """The cost of the model a job's flat config builds.

        Args:
            config: a job's flat config (its `backbone.*` and `module.*` keys are read).

        Returns:
            Its cost (counted on the first call with this setting).

        Raises:
            UserError: the settings do not build a model (a config of an older rcca, say).
        """
        key = tuple(
            sorted(
                (name, canonical(value))
                for name, value in config.items()
                if name.startswith(("backbone.", "module.")) and not is_ignored(name)
            )
        )
        if key not in self._counted:
            self._counted[key] = count_cost(config)
        return self._counted[key]


def count_cost(config: Mapping[str, Any], num_classes: int = PAPER_CLASSES, size: int = PAPER_SIZE) -> Cost:
    """Build the model of a job's flat config (random weights) and count it (see the module docstring).

    Args:
        config: a job's flat config.
        num_classes: classifier outputs (the paper's counts: Kinetics' 400).
        size: input height and width (the paper's counts: 224).

    Returns:
        Its cost.

    Raises:
        UserError: the settings do not build a model.
    """
    try:
        backbone = _section(BackboneConfig, config, "backbone")
        module = _section(ModuleConfig, config, "module")
        model = build_model(backbone, module, num_classes=num_classes)
    except (OmegaConfBaseException, ValueError, KeyError) as error:
        raise UserError(f"cannot build the model to count it: {error}") from None
    # Counting traces one real forward pass. One thread: CPU matmul handles CCA-3D's permuted line products one
    # tiny matrix at a time, which stalls with several threads on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = complexity_report(model, (1, 3, backbone.num_frames, size, size))
    finally:
        torch.set_num_threads(threads)
    return Cost(report.params / 1e6, report.paper_flops / 1e9, report.macs / 1e9)


def _section(schema: type, config: Mapping[str, Any], name: str) -> Any:
    """The `name` section of a flat config as its schema, the keys it lacks defaulted and unknown ones dropped."""
    known = {entry.name for entry in dataclasses.fields(schema)}
    prefix = f"{name}."
    values = {key[len(prefix) :]: value for key, value in config.items() if key.startswith(prefix)}
    return OmegaConf.merge(OmegaConf.structured(schema), {key: value for key, value in values.items() if key in known})
