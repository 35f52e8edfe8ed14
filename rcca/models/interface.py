"""The interface a backbone offers to context-module insertion, the complexity report and the engine."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class VideoBackbone(Protocol):
    """A video network N x 3 x T x H x W -> N x num_classes whose residual blocks can take a context module.

    Every block listed by `residual_blocks` has a `context` attribute (None or a module) that
    its forward applies to the block's output seen as N x C x T x H x W; insertion sets it
    (`rcca.models.insertion.insert_context_modules`). `TSMResNet` and `MFNet3D` satisfy it.
    """

    @property
    def num_classes(self) -> int:
        """Number of classes: the classifier's outputs."""
        ...

    def get_classifier(self) -> nn.Linear:
        """The final linear classifier.

        Returns:
            The `nn.Linear` layer that maps pooled features to `num_classes` logits.
        """
        ...

    def residual_blocks(self) -> dict[str, list[nn.Module]]:
        """The residual blocks, stage by stage.

        Returns:
            Stage name (conv2, conv3, ..., see `rcca.models.positions`) -> its blocks in
            network order, stages in network order.
        """
        ...

    def block_channels(self, block: nn.Module) -> int:
        """Output channels of one of this network's residual blocks.

        Args:
            block: a block listed by `residual_blocks`.

        Returns:
            C of the block's output, the channels its context module sees.
        """
        ...

    def context_modules(self) -> dict[str, nn.Module]:
        """The inserted context modules.

        Returns:
            Position name (`convN_i`) -> the module applied after that block, in network
            order; empty when none is inserted.
        """
        ...
