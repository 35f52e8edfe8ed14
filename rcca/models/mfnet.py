"""Multi-Fiber Network 3D (Chen et al., "Multi-Fiber Networks for Video Recognition", ECCV 2018).

Layout and parameter names follow the authors' release (cypw/PyTorch-MFNet,
network/mfnet_3d.py), so its checkpoints load after stripping DataParallel's `module.`:

    conv1      3x5x5 conv, 16 channels, spatial stride 2    (conv1.conv / conv1.bn)
    maxpool    1x3x3, spatial stride 2
    conv2..5   3 / 4 / 6 / 3 multi-fibre units, 96 / 192 / 384 / 768 channels (convN.B01 ...)
               first unit of conv2: temporal stride 2; first unit of conv3..5: spatial stride 2
    tail       BN + ReLU (the units are pre-activation)
    pool       global average; adaptive here (the release hard-codes an 8x7x7 window)
    classifier linear layer

Every convolution inside a unit is pre-activated: BN -> ReLU -> Conv (`BNActConv3d`).
Input N x 3 x T x H x W (16 x 224 x 224 in the paper), output N x num_classes.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from rcca.models.insertion import block_contexts
from rcca.models.positions import FIRST_STAGE, MFNET_STAGE_BLOCKS, stage_name

STAGE_UNITS = {stage_name(stage): units for stage, units in enumerate(MFNET_STAGE_BLOCKS, start=FIRST_STAGE)}
STEM_CHANNELS = 16
CONV2_CHANNELS = 96


class BNActConv3d(nn.Module):
    """Pre-activation convolution: BatchNorm -> ReLU -> Conv3d (no bias). Names: bn, relu, conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        padding: tuple[int, int, int] = (0, 0, 0),
        stride: tuple[int, int, int] = (1, 1, 1),
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.bn = nn.BatchNorm3d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv3d(
            in_channels, out_channels, kernel_size=kernel, padding=padding, stride=stride, groups=groups, bias=False
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.relu(self.bn(x)))


class MultiFiberUnit(nn.Module):
    """One multi-fibre unit: a multiplexer, then two grouped ("fibre") convolutions, plus a shortcut.

    multiplexer: x_in = x + conv_i2(conv_i1(x))   (1x1x1 convs, C -> mid/4 -> C, ungrouped)
    fibres:      h = conv_m2(conv_m1(x_in))       (conv_m1: 3x3x3 grouped, carries the stride;
                                                   conv_m2: 1x3x3 grouped, or 1x1x1 ungrouped in
                                                   the first unit of a stage)
    shortcut:    x itself, or conv_w1(x) (1x1x1, strided) in the first unit of a stage
    output:      h + shortcut, then `context` (an inserted module, e.g. RCCA-3D) when set.

    Args:
        in_channels, mid_channels, out_channels: channel widths.
        groups: number of fibres.
        stride: (t, h, w) stride of conv_m1 and of the shortcut projection.
        first: first unit of its stage (projection shortcut, 1x1x1 conv_m2).
        use_3d: 3x3x3 conv_m1 (True) or 1x3x3 (False).

    Shapes: input N x in_channels x T x H x W, output N x out_channels x T' x H' x W'.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        groups: int = 16,
        stride: tuple[int, int, int] = (1, 1, 1),
        first: bool = False,
        use_3d: bool = True,
    ) -> None:
        super().__init__()
        multiplexer = mid_channels // 4
        kt, pt = (3, 1) if use_3d else (1, 0)
        self.conv_i1 = BNActConv3d(in_channels, multiplexer)
        self.conv_i2 = BNActConv3d(multiplexer, in_channels)
        self.conv_m1 = BNActConv3d(
            in_channels, mid_channels, kernel=(kt, 3, 3), padding=(pt, 1, 1), stride=stride, groups=groups
        )
        if first:
            self.conv_m2 = BNActConv3d(mid_channels, out_channels)
            self.conv_w1 = BNActConv3d(in_channels, out_channels, stride=stride)
        else:
            self.conv_m2 = BNActConv3d(mid_channels, out_channels, kernel=(1, 3, 3), padding=(0, 1, 1), groups=groups)
            self.conv_w1 = None
        self.out_channels = out_channels
        self.context: nn.Module | None = None  # set by insertion; sees N x C x T x H x W

    def forward(self, x: Tensor) -> Tensor:
        x_in = x + self.conv_i2(self.conv_i1(x))
        h = self.conv_m2(self.conv_m1(x_in))
        shortcut = x if self.conv_w1 is None else self.conv_w1(x)
        out = h + shortcut
        if self.context is not None:
            out = self.context(out)
        return out


class MFNet3D(nn.Module):
    """MF-Net 3D for clips of N x 3 x T x H x W.

    Satisfies `VideoBackbone`: units conv2_1 ... conv5_3 (`conv2.B01` ... `conv5.B03`) take
    context modules, applied to their N x C x T x H x W output.

    Args:
        num_classes: classifier outputs.
        num_frames: T of the clips the network is meant for (16 in the paper). Informative
            only: the pooling adapts, so other clip lengths and resolutions also run.
        groups: number of fibres per grouped convolution (16 in MF-Net).
        dropout: dropout before the classifier (the release leaves it out; 0 = none).

    Output: N x num_classes logits.
    """

    def __init__(self, *, num_classes: int = 400, num_frames: int = 16, groups: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.conv1 = nn.Sequential(
            OrderedDict(
                [
                    ("conv", nn.Conv3d(3, STEM_CHANNELS, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2), bias=False)),
                    ("bn", nn.BatchNorm3d(STEM_CHANNELS)),
                    ("relu", nn.ReLU(inplace=True)),
                ]
            )
        )
        self.maxpool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

        in_channels, width = STEM_CHANNELS, CONV2_CHANNELS
        for index, (name, units) in enumerate(STAGE_UNITS.items()):
            first_stride = (2, 1, 1) if index == 0 else (1, 2, 2)
            stage = OrderedDict()
            for i in range(units):
                stage[f"B{i + 1:02d}"] = MultiFiberUnit(
                    in_channels if i == 0 else width,
                    width,  # mid width equals the output width at every stage
                    width,
                    groups=groups,
                    stride=first_stride if i == 0 else (1, 1, 1),
                    first=i == 0,
                )
            setattr(self, name, nn.Sequential(stage))
            in_channels, width = width, width * 2

        self.tail = nn.Sequential(OrderedDict([("bn", nn.BatchNorm3d(in_channels)), ("relu", nn.ReLU(inplace=True))]))
        self.globalpool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """As the release: Xavier-uniform convs and classifier, zero biases, BN weight 1 / bias 0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv3d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight, gain=1.0)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def get_classifier(self) -> nn.Linear:
        """The final linear classifier (`classifier`).

        Returns:
            The `nn.Linear` layer that maps pooled features to `num_classes` logits.
        """
        return self.classifier

    @property
    def num_classes(self) -> int:
        """Number of classes: the classifier's outputs."""
        return self.classifier.out_features

    def residual_blocks(self) -> dict[str, list[nn.Module]]:
        """The multi-fibre units, stage by stage.

        Returns:
            Stage name (conv2..conv5) -> its units in order.
        """
        return {name: list(getattr(self, name)) for name in STAGE_UNITS}

    def block_channels(self, block: nn.Module) -> int:
        """Output channels of a multi-fibre unit.

        Args:
            block: a `MultiFiberUnit` of this network.

        Returns:
            C of the unit's output.
        """
        return block.out_channels

    def context_modules(self) -> dict[str, nn.Module]:
        """The inserted context modules.

        Returns:
            Position name (`convN_i`) -> the module applied after that unit, in network order.
        """
        return block_contexts(self.residual_blocks())

    def forward(self, x: Tensor) -> Tensor:
        h = self.maxpool(self.conv1(x))  # 224 -> 112 -> 56
        h = self.conv5(self.conv4(self.conv3(self.conv2(h))))  # T/2; 56 -> 56 -> 28 -> 14 -> 7
        h = self.globalpool(self.tail(h)).flatten(1)
        return self.classifier(self.dropout(h))
