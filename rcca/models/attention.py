"""3D criss-cross attention (CCA-3D) and its recurrent form (RCCA-3D), Section III of the paper.

Every position u of a C x T x H x W feature map attends, with one softmax, to the
T + H + W - 2 positions that share two of its three coordinates: its temporal line
(same h, w), its vertical line (same t, w) and its horizontal line (same t, h), the
position itself counted once. Nothing of size THW x THW is ever built: the three
affinity maps are T, H and W wide, so memory is O(THW (T + H + W)).

How it is computed. The module works channels-last (N x T x H x W x C, the layout of
`torch.channels_last_3d`): the query and key maps come from one matrix product of the
input with their stacked 1x1x1 weights, the value map from another. Along every axis the
lines are small matrices of that layout, read where they lie: the W lines are one batch,
the T lines one batch per clip and the H lines one per frame (`_batches`), so each affinity
or aggregation over one axis is one batched matrix product per batch and no line is copied
(`line_affinities`, `line_aggregate`). The W products write the new map itself (or accumulate
into it, after one pass has summed the residual and the T products); the T and H products,
whose lines are not contiguous in it, go to a scratch map and are added. Traced and
autograd-recorded calls take plain out-of-place products of copied lines instead. Each
recurrence, its projections included, is one autograd Function with a written-out backward pass
(`ProjectedCrissCrossFunction`): it saves the input, q, k, v and the attention weights (and the
projections' weights), issues the same batched products, and accumulates the input's gradient from
its three products (and the upstream gradient, when the input is also the residual) in one buffer. With
`memory_efficient=True` an RCCA-3D keeps only the input of each recurrence and
recomputes the rest during the backward pass. The input's channels are moved last once and the
output's back first, in chunks of positions (`moved_channels`), with backward passes that move the
gradients' channels alike.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from rcca.models.compiled import cpu_kernels, kernel_takes

STRUCTURES = ("a", "b", "c", "d")


def _rows(x: Tensor) -> Tensor:
    """An N x T x H x W x K map as a matrix of its positions, P x K (a view when contiguous)."""
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


def _lines(x: Tensor, axis: int) -> Tensor:
    """The lines of `x` along `axis`, a view: N x T x H x W x K -> O x I x L x K.

    L is the size of `axis`, O the product of the axes before it and I of those after it (up to
    W), so the lines of one index o of the outer axes are I matrices L x K a constant stride apart.
    A view when `x`'s positions are rows of one matrix with unit channel stride (`_position_rows`),
    else a copy (fine for what is only read).
    """
    outer, inner = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1 : 4])
    return _rows(x).view(outer, x.shape[axis], inner, x.shape[-1]).transpose(1, 2)


def _unlines(lines: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Inverse of `_lines` for a contiguous O x I x L x K: -> N x T x H x W x K over the grid `shape` (a view)."""
    return lines.transpose(1, 2).reshape(*shape[:4], lines.shape[-1])


def _batches(lines: Tensor) -> list[Tensor]:
    """The O x I x L x K `lines` as batches of matrices B x L x K that one product each can take,
    views: one batch of all O lines when I = 1 (the W lines: they lie a constant stride apart),
    else one batch of I lines per outer index. E.g. N = 1, T = 8: the W lines are one batch of
    8H, the T lines one batch of HW, the H lines 8 batches (one per frame) of W lines each.
    No line is copied: the matrix kernels take any constant stride between the matrices of a batch.
    """
    return [lines.flatten(0, 1)] if lines.shape[1] == 1 else list(lines.unbind(0))


def _one_batch(lines: Tensor) -> list[Tensor]:
    """The O x I x L x K `lines` as one batch of matrices O*I x L x K: a copy unless they are contiguous."""
    return [lines.reshape(-1, *lines.shape[2:])]


def _line_product(first: Tensor, second: Tensor, out: Tensor | None = None, base: Tensor | None = None) -> Tensor:
    """first @ second for every line: O x I x L x M and O x I x M x K line views -> O x I x L x K, contiguous.

    With `out` (contiguous, O x I x L x K) the products are written into it, each batch by one
    matrix kernel call, and start from `base`'s lines (O x I x L x K) when given; the result must be
    contiguous for the kernels to write it without a copy. On a GPU and under `torch.compile`, the
    lines are copied into one batch instead (one kernel launch; no graph per batch size). Without
    `out`, one out-of-place product of the lines copied into one batch (what tracing, for any batch
    size, and autograd can record).
    """
    if out is None:  # one product of copied lines: the traced graph holds for any batch size
        return torch.bmm(_one_batch(first)[0], _one_batch(second)[0]).view(*first.shape[:3], -1)
    # Per-batch views on the CPU; one batch of copied lines on a GPU (one kernel launch) and when
    # compiling (a graph that holds for any batch size).
    split = _batches if out.device.type == "cpu" and not torch.compiler.is_compiling() else _one_batch
    results = split(out)
    bases = split(base) if base is not None else [None] * len(results)
    for a, b, result, start in zip(split(first), split(second), results, bases, strict=True):
        if start is None:
            torch.bmm(a, b, out=result)
        else:
            torch.baddbmm(start, a, b, out=result)
    return out


def _position_rows(x: Tensor) -> Tensor:
    """`x` (N x T x H x W x K) itself when its positions are rows of one matrix with unit channel
    stride (contiguous, or some channels of such a map), else a contiguous copy."""
    rows = _rows(x)
    return (rows if rows.stride(-1) == 1 else rows.contiguous()).view(x.shape)


def _writes_in_place(*tensors: Tensor) -> bool:
    """Whether the line products may write into new tensors through `out=`: not when tracing
    (TorchScript, ONNX export: the exporters mistranslate writes through views) and not when
    autograd records the call (`out=` products refuse inputs that need gradients)."""
    recorded = torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors)
    return not (recorded or torch.jit.is_tracing())


def line_columns(shape: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(axis, first column, size) of the T, H and W line blocks of an energy map over an N x T x H x W grid."""
    t, h, w = shape[1:4]
    return [(1, 0, t), (2, t, h), (3, t + h, w)]


def line_affinities(a: Tensor, b: Tensor) -> Tensor:
    """Dot products of every position of `a` with the positions of `b` on its three lines.

    a, b: N x T x H x W x C -> N x T x H x W x (T + H + W), at least float32, the columns ordered
    [t' = 0..T-1 | h' = 0..H-1 | w' = 0..W-1]: out[n,t,h,w,t'] = <a[n,t,h,w], b[n,t',h,w]>,
    out[n,t,h,w,T+h'] = <a[n,t,h,w], b[n,t,h',w]>, out[n,t,h,w,T+H+w'] = <a[n,t,h,w], b[n,t,h,w']>.
    """
    shape, in_place = tuple(a.shape[:4]), _writes_in_place(a, b)
    a, b = _position_rows(a), _position_rows(b)
    kernels = cpu_kernels() if in_place and a.dtype == b.dtype and kernel_takes(a) else None
    if kernels is not None:  # one kernel writes every line's block of columns (csrc/line_products.cpp)
        return kernels.line_affinities(_rows(a), _rows(b), shape)
    blocks = []
    for axis, _, _ in line_columns(shape):
        a_lines, b_lines = _lines(a, axis), _lines(b, axis).transpose(-2, -1)  # O x I x L x C, O x I x C x L
        out = a.new_empty(*a_lines.shape[:3], b_lines.shape[-1]) if in_place else None
        blocks.append(_unlines(_line_product(a_lines, b_lines, out), shape))
    return torch.cat(blocks, dim=-1).to(torch.promote_types(a.dtype, torch.float32))


def line_aggregate(weights: Tensor, values: Tensor, transpose: bool = False, base: Tensor | None = None) -> Tensor:
    """Weighted sums of `values` along the three lines of every position, added to `base` if given.

    weights: N x T x H x W x (T + H + W), columns as in `line_affinities`; values and base:
    N x T x H x W x K. Returns a new N x T x H x W x K tensor, contiguous (Eq. 3 of the paper):
        out[n,t,h,w] = base[n,t,h,w] + sum_t' weights[n,t,h,w,t'] values[n,t',h,w]
                     + sum_h' weights[n,t,h,w,T+h'] values[n,t,h',w] + sum_w' weights[n,t,h,w,T+H+w'] values[n,t,h,w'].
    With `transpose`, each line's weight matrix is transposed (the adjoint map, used by the
    backward pass): out[n,t',h,w] gets weights[n,t,h,w,t'] values[n,t,h,w], and so on.
    The W lines' products write the new map (whose lines they are) or, with `base` (e.g. a residual),
    accumulate into it after one pass has summed base and the T products; the T and H products go to one
    scratch map in turn and are added (the matrix kernels write only contiguous results without
    falling back to one matrix at a time). Plain
    out-of-place products and sums instead (`base` added by a pass of its own) when tracing
    (TorchScript, ONNX export), when autograd records the call, and when `base` is wider than
    `values` (mixed precision: the sum in the wider type).
    """
    shape, weights = tuple(values.shape[:4]), weights.to(values.dtype)
    inputs = (weights, values) if base is None else (weights, values, base)
    in_place = _writes_in_place(*inputs) and (base is None or base.dtype == values.dtype)
    values = _position_rows(values)
    columns = {axis: (start, size) for axis, start, size in line_columns(shape)}

    def line_operands(axis: int) -> tuple[Tensor, Tensor]:
        """The lines of `axis`: weights O x I x L x L (transposed with `transpose`), values O x I x L x K."""
        start, size = columns[axis]
        line_weights = _lines(weights[..., start : start + size], axis)
        return (line_weights.transpose(-2, -1) if transpose else line_weights), _lines(values, axis)

    if not in_place:
        summed = base  # from the residual (the wider type under mixed precision)
        for axis in columns:
            product = _unlines(_line_product(*line_operands(axis)), shape)
            summed = product if summed is None else summed + product
        return summed
    kernels = cpu_kernels() if kernel_takes(values) else None
    if kernels is not None:  # one kernel, no scratch map (csrc/line_products.cpp)
        start = None if base is None else _rows(base).contiguous()
        return kernels.line_aggregate(_rows(weights).contiguous(), _rows(values), start, shape, transpose)
    out = values.new_empty(*shape, values.shape[-1])
    scratch = torch.empty_like(out)  # the T, then the H products, each in its lines' order

    def scratch_products(axis: int) -> Tensor:
        operands = line_operands(axis)
        return _unlines(_line_product(*operands, scratch.view(operands[1].shape)), shape)

    out_lines = _lines(out, 3)
    if base is None:  # the W products write the new map, the T products are added
        _line_product(*line_operands(3), out_lines)
        out.add_(scratch_products(1))
    else:  # base + the T products make the new map in one pass, the W products accumulate into it
        torch.add(base, scratch_products(1), out=out)
        _line_product(*line_operands(3), out_lines, out_lines)
    return out.add_(scratch_products(2))  # the H products, added


def self_position_mask(t: int, h: int, w: int, device: torch.device) -> Tensor:
    """T x H x W x (T + H + W) booleans, true at each query's own position on its temporal and vertical lines.

    The position lies on all three lines; it is kept on the horizontal one only, so the softmax runs
    over T + H + W - 2 distinct positions. E.g. T = H = W = 2: query (1, 0, w) masks columns 1 (t' = 1)
    and 2 (h' = 0), for either w.
    """
    column = torch.arange(t + h + w, device=device)
    frame = torch.arange(t, device=device).view(t, 1, 1, 1)
    row = torch.arange(h, device=device).view(1, h, 1, 1)
    return ((column == frame) | (column == t + row)).expand(t, h, w, t + h + w)


def criss_cross_attention(qk: Tensor, v: Tensor, base: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """CCA-3D on channels-last maps (Eq. 1-3): the aggregated map (plus `base`, if given) and the attention weights.

    qk: N x T x H x W x 2C', the query channels then the key channels; v and base: N x T x H x W x C_v.
    Returns out (N x T x H x W x C_v, dtype of v or the wider of v and base) and the attention weights
    (N x T x H x W x (T + H + W), at least float32, zero at the two masked self-positions). The
    softmax is taken in float32 whatever the dtype of the maps.
    """
    attention = line_attention(qk)
    return line_aggregate(attention, v, base=base), attention


def line_attention(qk: Tensor) -> Tensor:
    """The attention weights of CCA-3D (Eq. 1-2) from channels-last query and key maps.

    qk: N x T x H x W x 2C', the query channels then the key channels. Returns N x T x H x W x
    (T + H + W), at least float32, columns as in `line_affinities`: each row sums to 1 over the
    T + H + W - 2 distinct positions and is zero at the two masked self-positions.
    """
    q, k = qk.chunk(2, dim=-1)
    _, t, h, w, _ = qk.shape
    energy = line_affinities(q, k).masked_fill_(self_position_mask(t, h, w, qk.device), float("-inf"))
    return torch.softmax(energy, dim=-1)  # one joint softmax over the T + H + W candidates (Eq. 2)


def criss_cross_gradients(grad: Tensor, qk: Tensor, v: Tensor, attention: Tensor) -> tuple[Tensor, Tensor]:
    """The gradients of CCA-3D's query|key and value maps from the gradient `grad` of its output.

    With A the attention (`line_attention`), for an upstream gradient G of out = sum_j A_j v_j (Eq. 3),
    D_j = <G, v_j> and s = sum_j A_j D_j per query:
        dv_j = sum over queries i of A_ij G_i (the adjoint aggregation),
        dE_j = A_j (D_j - s) (softmax backward),
        dq = sum_j dE_j k_j, dk_j = sum over queries i of dE_ij q_i.
    Every one of these is one `line_affinities` or `line_aggregate` call. grad, v: N x T x H x W x C_v
    (one dtype); qk: N x T x H x W x 2C'. Returns dq|dk (N x T x H x W x 2C') and dv.
    """
    q, k = qk.chunk(2, dim=-1)
    # dE = A (D - s): the softmax's own backward kernel, one pass.
    grad_energy = torch._softmax_backward_data(line_affinities(grad, v), attention, -1, attention.dtype)
    grad_v = line_aggregate(attention, grad, transpose=True)
    grad_q = line_aggregate(grad_energy, k)
    grad_k = line_aggregate(grad_energy, q, transpose=True)
    return torch.cat([grad_q, grad_k], dim=-1), grad_v


class ProjectedCrissCrossFunction(torch.autograd.Function):
    """One CCA-3D of its input's own projections, plus a residual: the products of one recurrence,
    with a written-out backward pass.

    Forward: q|k = y W_qk^T + b_qk, v = y W_v^T + b_v (in the autocast dtype, if any), then
    out = CCA-3D(q, k, v) + base, where base is y itself when `adds_input` (`base` must then be
    None), else `base` (or nothing when None). Saves y, q|k, v, the attention and the two weights.

    Backward: `criss_cross_gradients` for q|k and v, then the projections' own gradients. The
    input's gradient is one buffer that both products accumulate into, starting from the upstream
    gradient when `adds_input`, so no separate pass sums the three contributions (under mixed
    precision each is rounded to its own dtype and they are summed in y's, as autograd sums them); the
    gradient of `base` is the upstream gradient itself, in base's dtype.
    """

    @staticmethod
    def forward(
        ctx: Any,
        y: Tensor,
        base: Tensor | None,
        adds_input: bool,
        query_key_weight: Tensor,
        query_key_bias: Tensor | None,
        value_weight: Tensor,
        value_bias: Tensor | None,
    ) -> Tensor:
        if adds_input and base is not None:
            raise ValueError("ProjectedCrissCrossFunction: pass base=None when adds_input (the input is the residual)")
        qk, v = F.linear(y, query_key_weight, query_key_bias), F.linear(y, value_weight, value_bias)
        with torch.autocast(y.device.type, enabled=False):
            out, attention = criss_cross_attention(qk, v, y if adds_input else base)
        ctx.save_for_backward(y, qk, v, attention, query_key_weight, value_weight)
        ctx.adds_input = adds_input
        ctx.base_dtype = None if base is None else base.dtype
        ctx.has_bias = query_key_bias is not None, value_bias is not None
        return out

    @staticmethod
    @once_differentiable  # the backward is not itself differentiable (no second derivatives)
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        y, qk, v, attention, query_key_weight, value_weight = ctx.saved_tensors
        needs_y, needs_base, _, *needs_parameters = ctx.needs_input_grad
        # Contiguous once (it may arrive permuted, through the view that a channels-last output is): a
        # residual's gradient is this same map, before any rounding to the products' dtype.
        grad = grad.contiguous()
        grad_base = grad.to(ctx.base_dtype) if needs_base and ctx.base_dtype is not None else None
        with torch.autocast(y.device.type, enabled=False):
            grad_qk, grad_v = criss_cross_gradients(grad.to(v.dtype), qk, v, attention)
            dtype = v.dtype  # the products' dtype: y's, or the autocast dtype
            grad_y = None
            if needs_y:
                products = (_rows(grad_qk), query_key_weight.to(dtype)), (_rows(grad_v), value_weight.to(dtype))
                if dtype == y.dtype and (not ctx.adds_input or grad.dtype == dtype):
                    # Both products accumulate into one buffer: from the upstream gradient when the input is
                    # also the residual, else from zero.
                    first = (_rows(grad),) if ctx.adds_input else ()
                    grad_y = (torch.addmm if ctx.adds_input else torch.mm)(*first, *products[0])
                    grad_y.addmm_(*products[1])
                else:  # mixed precision: each product rounded to its dtype and summed in y's, as autograd does
                    grad_y = torch.mm(*products[0]).to(y.dtype)
                    grad_y += torch.mm(*products[1])
                    if ctx.adds_input:
                        grad_y += _rows(grad).to(y.dtype)
                grad_y = grad_y.view(y.shape)
            y_rows = _rows(y).to(dtype) if any(needs_parameters) else None
            parameter_grads = []
            for rows, weight, has_bias, (needs_weight, needs_bias) in zip(
                (_rows(grad_qk), _rows(grad_v)),
                (query_key_weight, value_weight),
                ctx.has_bias,
                (needs_parameters[0:2], needs_parameters[2:4]),
                strict=True,
            ):
                parameter_grads.append(rows.t().mm(y_rows).to(weight.dtype) if needs_weight else None)
                parameter_grads.append(rows.sum(0).to(weight.dtype) if needs_bias and has_bias else None)
        return grad_y, grad_base, None, *parameter_grads


Projection = tuple[Tensor, Tensor]  # a 1x1x1 convolution as a matrix product: its out x in weight and its bias


def projection(conv: nn.Conv3d, scale: Tensor | None = None) -> Projection:
    """The weight and bias of a 1x1x1 convolution as a matrix product, both times `scale` when given."""
    weight, bias = conv.weight.flatten(1), conv.bias
    return (weight, bias) if scale is None else (weight * scale, bias * scale)


class CrissCrossAttention3D(nn.Module):
    """One CCA-3D operation F(x): the aggregated map H of Eq. (1)-(3), without gamma or residual.

    Args:
        channels: C, channels of the input feature map.
        inner_channels: C', channels of the query and key maps.
        value_channels: channels of the value map (default C). Structure c reduces it and
            restores C with a separate 1x1x1 conv (see `RCCA3D`).

    Shapes: `forward`: input N x C x T x H x W, output N x value_channels x T x H x W.
    `forward_channels_last`: input N x T x H x W x C, output N x T x H x W x value_channels.
    """

    applies_children = ("query", "key", "value")  # their weights are applied as matrix products

    def __init__(self, channels: int, inner_channels: int, value_channels: int | None = None) -> None:
        super().__init__()
        value_channels = channels if value_channels is None else value_channels
        self.query = nn.Conv3d(channels, inner_channels, kernel_size=1)
        self.key = nn.Conv3d(channels, inner_channels, kernel_size=1)
        self.value = nn.Conv3d(channels, value_channels, kernel_size=1)

    def projections(self, value_scale: Tensor | None = None) -> tuple[Projection, Projection]:
        """The q and k convolutions as one 2C' x C product, and the v convolution times `value_scale`.

        Scaling v scales the output (Eq. 3 is linear in v): RCCA-3D folds its gamma in here, so
        neither pass spends a sweep over the map on it.
        """
        query, key = projection(self.query), projection(self.key)
        query_key = torch.cat([query[0], key[0]]), torch.cat([query[1], key[1]])
        return query_key, projection(self.value, value_scale)

    def forward_channels_last(
        self, y: Tensor, projections: tuple[Projection, Projection] | None = None, base: Tensor | None = None
    ) -> Tensor:
        """F(y) (+ `base`, e.g. a residual, see `line_aggregate`) on an N x T x H x W x C map, with
        `projections()` (made once by a caller that applies F repeatedly)."""
        query_key, value = projections or self.projections()
        inputs = (y, base, *query_key, *value)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
            adds_input = base is y  # one gradient buffer for the input's two roles
            return ProjectedCrissCrossFunction.apply(y, None if adds_input else base, adds_input, *query_key, *value)
        qk, v = F.linear(y, *query_key), F.linear(y, *value)
        return criss_cross_attention(qk, v, base)[0]  # inference: the same products, nothing saved

    def forward(self, x: Tensor) -> Tensor:
        return from_channels_last(self.forward_channels_last(channels_last_map(x)), x)


def _moved_channels(x: Tensor, last: bool) -> Tensor:
    """A contiguous copy of `x` with its channels moved: N x C x T x H x W -> N x T x H x W x C when
    `last`, else back. Always a tensor of its own (never `x` or a view of it).

    Moving them first reads each position's channels a row stride apart; the positions are taken
    in chunks whose rows span about 512 KiB per clip, so each chunk's reads stay within few memory
    pages (e.g. 1 x 8 x 28 x 28 x 512 float32 on a CPU: 25 chunks of 256 positions, 2 ms instead of
    11 ms in one copy). One copy on a GPU, when tracing, when compiling (no loop in the graph) and for
    an empty map.
    """
    moved = x.movedim(1, 4) if last else x.movedim(4, 1)
    chunked = not last and x.device.type == "cpu" and x.numel() > 0
    if not chunked or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return moved.clone(memory_format=torch.contiguous_format)
    out = torch.empty(moved.shape, dtype=x.dtype, device=x.device)
    rows, positions = x.reshape(x.shape[0], -1, x.shape[-1]), out.view(*out.shape[:2], -1)  # N x P x C, N x C x P
    chunk = max(1, 2**19 // (x.shape[-1] * x.element_size()))
    for start in range(0, rows.shape[1], chunk):
        positions[..., start : start + chunk].copy_(rows[:, start : start + chunk].transpose(1, 2))
    return out


class ChannelsMove(torch.autograd.Function):
    """`_moved_channels(x, last)` for autograd; the backward moves the gradient's channels back."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, last: bool) -> Tensor:
        ctx.last = last
        return _moved_channels(x, last)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return moved_channels(grad, not ctx.last), None


def moved_channels(x: Tensor, last: bool) -> Tensor:
    """`x` with its channels moved (see `_moved_channels`), contiguous; through `ChannelsMove` when
    autograd records the call (outside tracing), so the backward moves the gradient back alike."""
    if torch.is_grad_enabled() and x.requires_grad and not torch.jit.is_tracing():
        return ChannelsMove.apply(x, last)
    return _moved_channels(x, last)


def channels_last_map(x: Tensor) -> Tensor:
    """N x C x T x H x W -> N x T x H x W x C, contiguous (a view when `x` is channels-last already)."""
    y = x.movedim(1, 4)
    return y if y.is_contiguous() else moved_channels(x, last=True)


def from_channels_last(y: Tensor, like: Tensor) -> Tensor:
    """N x T x H x W x C -> N x C x T x H x W, in the memory format of `like` (a view when channels-last)."""
    if like.is_contiguous(memory_format=torch.channels_last_3d) and not like.is_contiguous():
        return y.movedim(4, 1).contiguous(memory_format=torch.channels_last_3d)
    return moved_channels(y, last=False)


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
        memory_efficient: during training, keep only the input of each recurrence and
            recompute the rest in the backward pass (about a third of the saved memory for
            one more forward pass of the module). Outputs and gradients are unchanged.

    Shapes: input and output N x C x T x H x W (either memory format; the output keeps the input's).
    """

    def __init__(
        self,
        channels: int,
        structure: str = "a",
        recurrence: int = 3,
        inner_fraction: float = 0.25,
        gamma_init: float = 1.0,
        value_fraction: float = 0.5,
        memory_efficient: bool = False,
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
        self.memory_efficient = memory_efficient
        self.cca = CrissCrossAttention3D(channels, inner, value)
        self.restore = nn.Conv3d(value, channels, kernel_size=1) if structure == "c" else None
        self.gamma = nn.Parameter(torch.tensor(float(gamma_init)))

    @property
    def applies_children(self) -> tuple[str, ...]:
        """Submodules whose weights `forward` applies itself: the CCA-3D's and structure c's restoring conv."""
        restore = ("restore",) if self.restore is not None else ()
        return ("cca", *(f"cca.{name}" for name in self.cca.applies_children), *restore)

    def step(self, y: Tensor, x: Tensor, projections: tuple[Projection, ...]) -> Tensor:
        """One recurrence, Y_{r-1} -> Y_r (before structure d's final residual). gamma comes folded
        into the last of `projections` (v's, or structure c's restoring conv's)."""
        residual = None if self.structure == "d" else y if self.structure == "b" else x
        if self.restore is None:  # the residual enters the aggregation's first product
            return self.cca.forward_channels_last(y, projections[:2], base=residual)
        return F.linear(self.cca.forward_channels_last(y, projections[:2]), *projections[2]) + residual

    def prepared(self, x: Tensor) -> tuple[Tensor, tuple[Projection, ...]]:
        """The channels-last input and the projections with gamma folded in, for `step`."""
        # N x T x H x W x C, contiguous once here (a view for a channels-last input): every recurrence
        # reads it and adds it, and the matrix products would otherwise each copy a permuted input.
        x_last = channels_last_map(x)
        if self.restore is None:
            return x_last, self.cca.projections(value_scale=self.gamma)
        return x_last, (*self.cca.projections(), projection(self.restore, self.gamma))

    def forward(self, x: Tensor) -> Tensor:
        x_last, projections = self.prepared(x)
        recompute = self.memory_efficient and torch.is_grad_enabled()
        y = x_last
        for _ in range(self.recurrence):
            if recompute:
                y = checkpoint(self.step, y, x_last, projections, use_reentrant=False)
            else:
                y = self.step(y, x_last, projections)
        if self.structure == "d":
            y = y + x_last
        return from_channels_last(y, x)

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> list[Tensor]:
        """The attention weights of each of the R passes on the input `x` (N x C x T x H x W), for inspection.

        Returns:
            R tensors N x T x H x W x (T + H + W) (`line_attention`): pass r's weights of every query
            over its temporal, vertical and horizontal lines, computed from Y_{r-1}.
        """
        x_last, projections = self.prepared(x)
        weights, y = [], x_last
        for _ in range(self.recurrence):
            weights.append(line_attention(F.linear(y, *projections[0])))
            y = self.step(y, x_last, projections)
        return weights
