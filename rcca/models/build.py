"""From backbone and module configs to a network with its context modules in place."""

from __future__ import annotations

import logging
from functools import partial

import torch
from torch import nn

from rcca.config import BackboneConfig, ModuleConfig
from rcca.models.attention import RCCA3D
from rcca.models.insertion import insert_context_modules
from rcca.models.mfnet import MFNet3D
from rcca.models.nonlocal_block import NonLocal3D
from rcca.models.tsm import TSMResNet

log = logging.getLogger(__name__)

BACKBONES = ("tsm", "mfnet")
MODULES = ("none", "nl", "rcca")


def build_backbone(cfg: BackboneConfig, num_classes: int) -> nn.Module:
    """The bare backbone: TSM ResNet or MF-Net, a `VideoBackbone`. Input N x 3 x T x H x W, output N x num_classes."""
    if cfg.name == "tsm":
        return TSMResNet(
            depth=cfg.depth,
            num_classes=num_classes,
            num_segments=cfg.num_frames,
            shift_div=cfg.shift_div,
            dropout=cfg.dropout,
            width=cfg.width,
            shift_place=cfg.shift_place,
        )
    if cfg.name == "mfnet":
        return MFNet3D(num_classes=num_classes, num_frames=cfg.num_frames, dropout=cfg.dropout)
    raise ValueError(f"backbone.name={cfg.name!r}: choose one of {', '.join(BACKBONES)}")


def context_factory(cfg: ModuleConfig) -> partial[nn.Module] | None:
    """A constructor taking the channel count C, for the configured module (None for `none`)."""
    if cfg.name == "rcca":
        return partial(
            RCCA3D,
            structure=cfg.structure,
            recurrence=cfg.recurrence,
            inner_fraction=cfg.inner_fraction,
            gamma_init=cfg.gamma_init,
            value_fraction=cfg.value_fraction,
            memory_efficient=cfg.memory_efficient,
        )
    if cfg.name == "nl":
        return partial(NonLocal3D, subsample=cfg.subsample)
    if cfg.name == "none":
        return None
    raise ValueError(f"module.name={cfg.name!r}: choose one of {', '.join(MODULES)}")


def build_model(backbone: BackboneConfig, module: ModuleConfig, num_classes: int) -> nn.Module:
    """Backbone plus context modules at `module.positions`, with random weights.

    `backbone.pretrained` names a file that the caller reads and loads (`rcca.models.tsm.load_imagenet_weights`).

    Args:
        backbone: which backbone and its settings.
        module: which context module (none, nl, rcca), its settings and its `convN_i` positions.
        num_classes: classifier outputs.

    Returns:
        A `VideoBackbone` (`TSMResNet` or `MFNet3D`): N x 3 x T x H x W -> N x num_classes logits.

    Raises:
        ValueError: unknown backbone or module name, no or invalid positions.
    """
    model = build_backbone(backbone, num_classes)
    factory = context_factory(module)
    if factory is not None and module.positions:
        insert_context_modules(model, list(module.positions), factory)
    elif factory is not None:
        raise ValueError(f"module.positions is empty for module.name={module.name}; list blocks such as [conv3_3]")
    return model


def to_channels_last(model: nn.Module) -> None:
    """Channels-last weights, in place: 2D convs (TSM frames) as NHWC, 3D convs (MF-Net, context modules) as NDHWC.

    Activations follow the weights' layout, so inputs need no conversion; the outputs are unchanged.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.to(memory_format=torch.channels_last)
        elif isinstance(module, nn.Conv3d):
            module.to(memory_format=torch.channels_last_3d)
