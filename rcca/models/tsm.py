"""Temporal Shift Module ResNets (Lin et al., ICCV 2019) on torchvision's ResNet.

The blocks subclass torchvision's, so parameter names are exactly those of
`torchvision.models.resnet{18,34,50}` and an ImageNet state dict loads directly.
TSM's default "blockres" placement puts the shift in the residual branch, before conv1 of
every block, and leaves the identity path unshifted; its "block" placement (some released
checkpoints) shifts the block's input, so both paths see shifted features.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from rcca.models.insertion import block_contexts
from rcca.models.positions import FIRST_STAGE, TSM_STAGE_BLOCKS, stage_name

SHIFT_PLACES = ("blockres", "block")
# Depth -> (block type, blocks of conv2..conv5), as torchvision builds them (bottlenecks from ResNet-50 on).
LAYERS = {depth: (BasicBlock if depth < 50 else Bottleneck, list(blocks)) for depth, blocks in TSM_STAGE_BLOCKS.items()}


def temporal_shift(x: Tensor, num_segments: int, shift_div: int = 8) -> Tensor:
    """Shift 1/shift_div of the channels one step back in time and 1/shift_div one step forward.

    Frame t of the first group takes channel values from frame t+1, the second group from
    frame t-1; the ends are zero-padded. Input and output: (N*T) x C x H x W.
    """
    nt, c, h, w = x.shape
    x = x.view(nt // num_segments, num_segments, c, h, w)
    fold = c // shift_div
    out = torch.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]
    out[:, 1:, fold : 2 * fold] = x[:, :-1, fold : 2 * fold]
    out[:, :, 2 * fold :] = x[:, :, 2 * fold :]
    return out.view(nt, c, h, w)


def apply_on_clips(module: nn.Module, frames: Tensor, num_segments: int) -> Tensor:
    """Run a 3D module on frame features: (N*T) x C x H x W -> N x C x T x H x W -> back."""
    nt, c, h, w = frames.shape
    clips = frames.view(nt // num_segments, num_segments, c, h, w).transpose(1, 2)
    out = module(clips)
    return out.transpose(1, 2).reshape(nt, c, h, w)


class _ShiftMixin:
    """Block behaviour shared by both block types: temporal shift and an optional context module."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.num_segments = 8  # set by TSMResNet
        self.shift_div = 8
        self.shift_place = "blockres"
        self.context: nn.Module | None = None  # set by insertion; sees N x C x T x H x W

    def _paths(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(identity path, residual-branch input) of block input x, shifted as `shift_place` says."""
        if self.shift_place == "block":
            x = temporal_shift(x, self.num_segments, self.shift_div)
            branch = x
        else:
            branch = temporal_shift(x, self.num_segments, self.shift_div)
        identity = x if self.downsample is None else self.downsample(x)
        return identity, branch

    def _finish(self, out: Tensor) -> Tensor:
        if self.context is not None:
            out = apply_on_clips(self.context, out, self.num_segments)
        return out


class ShiftBasicBlock(_ShiftMixin, BasicBlock):
    """torchvision BasicBlock with a temporal shift (see `shift_place`). (N*T) x C x H x W in and out."""

    def forward(self, x: Tensor) -> Tensor:
        identity, branch = self._paths(x)
        out = self.relu(self.bn1(self.conv1(branch)))
        out = self.bn2(self.conv2(out))
        return self._finish(self.relu(out + identity))


class ShiftBottleneck(_ShiftMixin, Bottleneck):
    """torchvision Bottleneck with a temporal shift (see `shift_place`). (N*T) x C x H x W in and out."""

    def forward(self, x: Tensor) -> Tensor:
        identity, branch = self._paths(x)
        out = self.relu(self.bn1(self.conv1(branch)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self._finish(self.relu(out + identity))


class TSMResNet(ResNet):
    """TSM ResNet-18/34/50: 2D ResNet over the N*T frames, temporal shifts, average consensus.

    Satisfies `VideoBackbone`: blocks conv2_1 ... conv5_3 (torchvision's layer1.0 ... layer4.2)
    take context modules, applied to their output seen as N x C x T x H x W.

    Args:
        depth: 18, 34 or 50.
        num_classes: classifier outputs.
        num_segments: T, frames per clip.
        shift_div: 1/shift_div of channels shifted each way (TSM: 8).
        dropout: dropout before the classifier (TSM: 0.5 on Kinetics, 0.8 on UCF/HMDB).
        width: channels of the stem (64 in the standard network); smaller values give a
            narrower network for quick CPU runs.
        shift_place: "blockres" (shift inside the residual branch, TSM's default) or "block"
            (shift the block input, identity path included).

    Input N x 3 x T x H x W, output N x num_classes logits.
    """

    def __init__(
        self,
        *,
        depth: int = 50,
        num_classes: int = 400,
        num_segments: int = 8,
        shift_div: int = 8,
        dropout: float = 0.5,
        width: int = 64,
        shift_place: str = "blockres",
    ) -> None:
        if depth not in LAYERS:
            raise ValueError(f"backbone.depth={depth}: TSM supports {sorted(LAYERS)}")
        if shift_place not in SHIFT_PLACES:
            raise ValueError(f"backbone.shift_place={shift_place!r}: choose one of {', '.join(SHIFT_PLACES)}")
        block, layers = LAYERS[depth]
        shift_block = ShiftBasicBlock if block is BasicBlock else ShiftBottleneck
        super().__init__(shift_block, layers, num_classes=num_classes)
        if width != 64:
            self._narrow(shift_block, layers, num_classes, width)
        self.num_segments = num_segments
        self.dropout = nn.Dropout(dropout)
        for module in self.modules():
            if isinstance(module, _ShiftMixin):
                module.num_segments = num_segments
                module.shift_div = shift_div
                module.shift_place = shift_place

    def _narrow(self, block: type, layers: list[int], num_classes: int, width: int) -> None:
        """Rebuild the stages with `width` stem channels (doubling per stage as usual)."""
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

    @property
    def num_classes(self) -> int:
        """Number of classes: the classifier's outputs."""
        return self.fc.out_features

    def get_classifier(self) -> nn.Linear:
        """The final linear classifier (`fc`).

        Returns:
            The `nn.Linear` layer that maps pooled features to `num_classes` logits.
        """
        return self.fc

    def residual_blocks(self) -> dict[str, list[nn.Module]]:
        """The residual blocks, stage by stage.

        Returns:
            Stage name (conv2..conv5, the paper's naming; torchvision's layer1..layer4) -> its
            blocks in order.
        """
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)
        return {stage_name(stage): list(blocks) for stage, blocks in enumerate(stages, start=FIRST_STAGE)}

    def block_channels(self, block: nn.Module) -> int:
        """Output channels of a residual block.

        Args:
            block: a block of this network (a basic block or a bottleneck).

        Returns:
            C of the block's output: its last batch norm's width.
        """
        last_bn = block.bn3 if isinstance(block, Bottleneck) else block.bn2
        return last_bn.num_features

    def context_modules(self) -> dict[str, nn.Module]:
        """The inserted context modules.

        Returns:
            Position name (`convN_i`) -> the module applied after that block, in network order.
        """
        return block_contexts(self.residual_blocks())

    def forward(self, x: Tensor) -> Tensor:
        n, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(n * t, c, h, w)
        features = self.maxpool(self.relu(self.bn1(self.conv1(frames))))
        features = self.layer4(self.layer3(self.layer2(self.layer1(features))))
        pooled = torch.flatten(self.avgpool(features), 1)
        logits = self.fc(self.dropout(pooled))
        return logits.view(n, t, -1).mean(dim=1)  # average consensus over segments


def load_imagenet_weights(model: TSMResNet, state: Mapping[str, Tensor]) -> list[str]:
    """Load a torchvision ImageNet ResNet state dict (e.g. the contents of resnet50-*.pth) into the model.

    Args:
        model: a TSM ResNet of the state dict's depth (context modules may already be inserted).
        state: the ImageNet state dict; its classifier (`fc`) is left out.

    Returns:
        The names of the model's tensors that `state` did not provide (the classifier and any
        inserted context modules).

    Raises:
        ValueError: `state` holds tensors the model does not have (another architecture or depth).
    """
    result = model.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"unexpected tensors {result.unexpected_keys[:5]}: not an ImageNet ResNet of this depth")
    return list(result.missing_keys)
