"""SGD parameter groups and the epoch-based LR schedule, counted in optimizer updates."""

from __future__ import annotations

from torch import nn
from torch.optim import SGD
from torch.optim.lr_scheduler import LambdaLR

from rcca.config import OptimizerConfig, ScheduleConfig


def parameter_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict]:
    """Split parameters into (classifier or not) x (decayed or not) groups; empty groups dropped.

    The classifier's parameters are those of `model.get_classifier()` (they get `classifier_lr_mult`).
    Norm-layer weights, biases and scalars such as RCCA-3D's gamma (all parameters with
    fewer than 2 dimensions) get no weight decay unless `decay_norm_and_bias`. Every
    trainable parameter lands in exactly one group.

    Args:
        model: the bare model (not wrapped in DDP or torch.compile).
        cfg: the optimizer settings.

    Returns:
        SGD parameter groups, each with its `params`, `lr` and `weight_decay`.
    """
    classifier = {id(parameter) for parameter in model.get_classifier().parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        is_classifier = id(parameter) in classifier
        decayed = cfg.decay_norm_and_bias or parameter.ndim >= 2
        groups.setdefault((is_classifier, decayed), []).append(parameter)
    return [
        {
            "params": params,
            "lr": cfg.lr * (cfg.classifier_lr_mult if is_classifier else 1.0),
            "weight_decay": cfg.weight_decay if decayed else 0.0,
        }
        for (is_classifier, decayed), params in groups.items()
    ]


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> SGD:
    """SGD over `parameter_groups`, with the configured momentum and Nesterov setting.

    Args:
        model: the bare model, with `get_classifier()`.
        cfg: the optimizer settings.

    Returns:
        The optimizer.
    """
    return SGD(parameter_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def lr_factor(update: int, updates_per_epoch: int, cfg: ScheduleConfig) -> float:
    """LR multiplier after `update` optimizer updates: linear warm-up, then x factor per passed milestone.

    Args:
        update: optimizer updates done.
        updates_per_epoch: optimizer updates in one epoch.
        cfg: the schedule (milestones and warm-up in epochs).

    Returns:
        The factor by which the configured LR is multiplied.
    """
    epoch = update / updates_per_epoch
    factor = cfg.factor ** sum(epoch >= milestone for milestone in cfg.milestones)
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        factor *= (update + 1) / (cfg.warmup_epochs * updates_per_epoch)
    return factor


def build_scheduler(optimizer: SGD, cfg: ScheduleConfig, updates_per_epoch: int) -> LambdaLR:
    """The LR schedule of `lr_factor`; step it once per optimizer update (not per accumulated micro-batch).

    Args:
        optimizer: the optimizer whose groups' LRs it sets.
        cfg: the schedule.
        updates_per_epoch: optimizer updates in one epoch.

    Returns:
        The scheduler.
    """
    return LambdaLR(optimizer, lambda update: lr_factor(update, updates_per_epoch, cfg))
