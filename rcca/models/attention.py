"""3D criss-cross attention (CCA-3D) and its recurrent form (RCCA-3D), Section III of the paper.

Every position u of a C x T x H x W feature map attends, with one softmax, to the
T + H + W - 2 positions that share two of its three coordinates: its temporal line
(same h, w), its vertical line (same t, w) and its horizontal line (same t, h), the
position itself counted once. Nothing of size THW x THW is ever built: the three
affinity maps are T, H and W wide, so memory is O(THW (T + H + W)).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

STRUCTURES = ("a", "b", "c", "d")


class CrissCrossAttention3D(nn.Module):
    """One CCA-3D operation F(x): the aggregated map H of Eq. (1)-(3), without gamma or residual.

    Args:
        channels: C, channels of the input feature map.
        inner_channels: C', channels of the query and key maps.
        value_channels: channels of the value map (default C). Structure c reduces it and
            restores C with a separate 1x1x1 conv (see `RCCA3D`).

    Shapes: input N x C x T x H x W, output N x value_channels x T x H x W.
    """

    def __init__(self, channels: int, inner_channels: int, value_channels: int | None = None) -> None:
        super().__init__()
        value_channels = channels if value_channels is None else value_channels
        self.query = nn.Conv3d(channels, inner_channels, kernel_size=1)
        self.key = nn.Conv3d(channels, inner_channels, kernel_size=1)
        self.value = nn.Conv3d(channels, value_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.query(x), self.key(x), self.value(x)
        n, _, t, h, w = x.shape
        # Put the line's axis last-but-one so each affinity is one batched matmul:
        # (..., L, C) @ (..., C, L) -> (..., L, L) over the L positions of a line. Contiguous
        # copies let the CPU kernels batch the many small matrices (~10% faster on 2 cores).
        q_t, k_t, v_t = (y.permute(0, 3, 4, 2, 1).contiguous() for y in (q, k, v))  # N x H x W x T x C
        q_h, k_h, v_h = (y.permute(0, 2, 4, 3, 1).contiguous() for y in (q, k, v))  # N x T x W x H x C
        q_w, k_w, v_w = (y.permute(0, 2, 3, 4, 1).contiguous() for y in (q, k, v))  # N x T x H x W x C

        energy_t = torch.matmul(q_t, k_t.transpose(-1, -2))  # N x H x W x T x T'
        energy_h = torch.matmul(q_h, k_h.transpose(-1, -2))  # N x T x W x H x H'
        energy_w = torch.matmul(q_w, k_w.transpose(-1, -2))  # N x T x H x W x W'
        # The position itself lies on all three lines: keep it on the horizontal one only.
        energy_t = energy_t.masked_fill(_diagonal_mask(t, x.device), float("-inf"))
        energy_h = energy_h.masked_fill(_diagonal_mask(h, x.device), float("-inf"))

        # One joint softmax over the T + H + W candidates of every position (Eq. 2).
        energy = torch.cat(
            [
                energy_t.permute(0, 3, 1, 2, 4),  # N x T x H x W x T'
                energy_h.permute(0, 1, 3, 2, 4),  # N x T x H x W x H'
                energy_w,  # N x T x H x W x W'
            ],
            dim=-1,
        )
        attention = torch.softmax(energy, dim=-1)
        att_t, att_h, att_w = attention.split((t, h, w), dim=-1)

        # Aggregation (Eq. 3): weighted sum of V along each line, back to N x T x H x W x C.
        out_t = torch.matmul(att_t.permute(0, 2, 3, 1, 4).contiguous(), v_t).permute(0, 3, 1, 2, 4)
        out_h = torch.matmul(att_h.permute(0, 1, 3, 2, 4).contiguous(), v_h).permute(0, 1, 3, 2, 4)
        out_w = torch.matmul(att_w.contiguous(), v_w)
        return (out_t + out_h + out_w).permute(0, 4, 1, 2, 3).contiguous()


def _diagonal_mask(size: int, device: torch.device) -> Tensor:
    """Boolean size x size identity matrix: True where a line position is the query itself."""
    return torch.eye(size, dtype=torch.bool, device=device)


class RCCA3D(nn.Module):
    """Recurrent CCA-3D: one shared CCA-3D applied `recurrence` times with one learnable gamma.

    Structures (Eq. 4-7 and Fig. 5), with F the shared CCA-3D, Y_0 = X:
      a: Y_r = gamma F(Y_{r-1}) + X                (the paper's choice)
      b: Y_r = gamma F(Y_{r-1}) + Y_{r-1}          (residual to each module's own input)
      c: as a, with V reduced to `value_channels` and a 1x1x1 conv (`restore`) back to C
      d: Y = gamma F(gamma F(... gamma F(X))) + X  (X added once, at the end)

    Args:
        channels: C of the input map.
        structure: one of "a", "b", "c", "d".
        recurrence: R, how many times F is applied (3 in the paper).
        inner_fraction: C_d, query/key channels as a fraction of C (C' = C * C_d).
        gamma_init: initial value of gamma (Table II: 1 is best).
        value_fraction: structure c only: reduced V width as a fraction of C. 0.5 makes
            the module's parameter count equal to structures a/b/d (Table I: 24.69M for all).

    Shapes: input and output N x C x T x H x W.
    """

    def __init__(
        self,
        channels: int,
        structure: str = "a",
        recurrence: int = 3,
        inner_fraction: float = 0.25,
        gamma_init: float = 1.0,
        value_fraction: float = 0.5,
    ) -> None:
        super().__init__()
        if structure not in STRUCTURES:
            raise ValueError(f"module.structure={structure!r}: choose one of {', '.join(STRUCTURES)}")
        if recurrence < 1:
            raise ValueError(f"module.recurrence={recurrence}: must be at least 1")
        inner = max(1, round(channels * inner_fraction))
        value = max(1, round(channels * value_fraction)) if structure == "c" else channels
        self.structure = structure
        self.recurrence = recurrence
        self.cca = CrissCrossAttention3D(channels, inner, value)
        self.restore = nn.Conv3d(value, channels, kernel_size=1) if structure == "c" else None
        self.gamma = nn.Parameter(torch.tensor(float(gamma_init)))

    def context(self, y: Tensor) -> Tensor:
        """F(y), with the channel restoration of structure c. N x C x T x H x W -> same."""
        out = self.cca(y)
        return self.restore(out) if self.restore is not None else out

    def forward(self, x: Tensor) -> Tensor:
        y = x
        for _ in range(self.recurrence):
            if self.structure == "d":
                y = self.gamma * self.context(y)
            elif self.structure == "b":
                y = self.gamma * self.context(y) + y
            else:  # a and c
                y = self.gamma * self.context(y) + x
        return y + x if self.structure == "d" else y
