"""Parameter and multiply-accumulate (MAC) counts of a network and of its context modules.

MACs are counted with fvcore's `FlopCountAnalysis`, which traces the model and counts
one fused multiply-add as one "flop": convolutions, linear layers and every matrix
product (`aten::matmul`, `bmm`, `einsum`, ...) are counted exactly from their shapes.
Two choices are made here:

* Batch normalisation counts one MAC per element (at inference it is the affine map
  y = a x + b); fvcore's default handle would count two.
* Element-wise work and pooling (`NEGLIGIBLE_OPS`: residual additions, gamma scaling,
  softmax, masks, max-pooling, averages) is not counted, as in the paper and in
  fvcore's own defaults. The report lists every such op it skipped, and any other op
  fvcore cannot count stops the analysis, so no matrix product can go missing silently.

Paper convention. The paper reports "FLOPs" that mix two conventions: its baselines
(TSM 33.0G, MF-Net 11.1G) are MACs, while every increment it reports for an added
RCCA-3D or non-local module is twice that module's MACs (e.g. RCCA-3D at conv3_3 with
R=3, C_d=1/4: 8.15 GMACs, reported as +16.3G). `ComplexityReport.paper_flops` is
backbone MACs + 2 x module MACs, the number that matches the paper's tables.

Self-position MACs. The CCA-3D computes T + H + W energies per query (the position
itself lies on all three of its lines; two copies are masked before the softmax) and
aggregates over the same T + H + W values, whereas the paper's analytic count uses
T + H + W - 2. The measured count therefore exceeds the paper's formula by
R x N x THW x 2 x (C' + C_v) MACs, ~0.3% of an RCCA-3D module at conv3_3;
`ModuleCost.self_position_macs` reports that amount.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from rcca.models.attention import RCCA3D
from rcca.models.insertion import context_modules
from rcca.models.nonlocal_block import NonLocal3D

with warnings.catch_warnings():  # importing fvcore calls torch.jit.script, which PyTorch now deprecates
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

# Ops that fvcore has no handle for and that we deliberately leave uncounted: element-wise
# arithmetic, normalised exponentials, masks, layout views and copies, and pooling (no multiply-accumulate
# chains).
NEGLIGIBLE_OPS = frozenset(
    {
        "aten::add", "aten::add_", "aten::sub", "aten::mul", "aten::mul_", "aten::div",
        "aten::softmax", "aten::eye", "aten::masked_fill", "aten::mean", "aten::new_ones",
        "aten::movedim", "aten::clone", "aten::masked_fill_", "aten::__or__",
        "aten::max_pool2d", "aten::max_pool3d", "aten::avg_pool2d", "aten::avg_pool3d",
        "aten::adaptive_avg_pool3d", "aten::sigmoid", "aten::exp",
    }
)  # fmt: skip


def batchnorm_mac_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for `aten::batch_norm`: one MAC per input element (the inference affine map)."""
    return math.prod(get_shape(inputs[0]))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of `module`."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def mac_analysis(model: nn.Module, inputs: Tensor) -> FlopCountAnalysis:
    """A checked fvcore analysis of `model(inputs)`, counting MACs as described in the module docstring.

    Raises RuntimeError when fvcore meets an op it cannot count that is not in
    `NEGLIGIBLE_OPS`, or when a module with parameters is never called (its cost would
    be missing). Allowed: modules without parameters that tracing does not see
    (nn.Identity), and the children that a called module names in its `applies_children`
    (it applies their weights itself, e.g. CCA-3D's q, k, v convolutions as matrix products,
    and the traced product is counted).
    """
    analysis = FlopCountAnalysis(model, inputs).set_op_handle("aten::batch_norm", batchnorm_mac_jit)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():  # the inference graph: CCA-3D's autograd.Function would trace as one opaque op
        analysis.total()  # runs the trace; the queries below need its results
    unknown = sorted(set(analysis.unsupported_ops()) - NEGLIGIBLE_OPS)
    if unknown:
        raise RuntimeError(f"fvcore cannot count {unknown}: register a handle in rcca.models.complexity")
    modules = dict(model.named_modules())
    applied_by_parent = {
        f"{name}.{child}" if name else child
        for name, module in modules.items()
        if name not in analysis.uncalled_modules()
        for child in getattr(module, "applies_children", ())
    }
    uncalled = sorted(
        name
        for name in analysis.uncalled_modules()
        if count_parameters(modules[name]) > 0 and name not in applied_by_parent
    )
    if uncalled:
        raise RuntimeError(f"modules with parameters were never called, their MACs are missing: {uncalled}")
    return analysis


def saved_tensor_bytes(forward: Callable[[], object]) -> int:
    """Bytes of the distinct storages that autograd saves for the backward pass of `forward()`.

    Every tensor saved for backward (by built-in ops and by `autograd.Function`s alike) is seen
    through `torch.autograd.graph.saved_tensors_hooks`; views of one storage count once.
    """
    storages: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(storages.values())


def count_macs(model: nn.Module, inputs: Tensor) -> int:
    """Total MACs of `model(inputs)` (see `mac_analysis`)."""
    return int(mac_analysis(model, inputs).total())


def describe(module: nn.Module) -> str:
    """Short description of a context module, e.g. "RCCA3D(a, R=3, C=512, C'=128)"."""
    if isinstance(module, RCCA3D):
        cca = module.cca
        extra = f", Cv={cca.value.out_channels}" if module.restore is not None else ""
        return (
            f"RCCA3D({module.structure}, R={module.recurrence}, "
            f"C={cca.query.in_channels}, C'={cca.query.out_channels}{extra})"
        )
    if isinstance(module, NonLocal3D):
        pooled = ", subsample" if isinstance(module.pool, nn.MaxPool3d) else ""
        return f"NonLocal3D(C={module.theta.in_channels}, C'={module.theta.out_channels}{pooled})"
    return type(module).__name__


def self_position_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs an RCCA3D spends on the two masked copies of each query's own position (0 otherwise).

    `input_shape` is the module's N x C x T x H x W input. Per CCA-3D application and query:
    2 extra energies (C' MACs each) and 2 extra aggregation terms (C_v MACs each).
    """
    if not isinstance(module, RCCA3D):
        return 0
    n, _, t, h, w = input_shape
    return module.recurrence * n * t * h * w * 2 * (module.cca.query.out_channels + module.cca.value.out_channels)


@dataclass
class ModuleCost:
    """Cost of one inserted context module.

    `share` is its fraction of the model's MACs; `paper_delta_flops` = 2 x macs, the
    increment the paper's tables report for it.
    """

    position: str
    name: str
    kind: str
    input_shape: list[int]
    params: int
    macs: int
    share: float
    paper_delta_flops: int
    self_position_macs: int


@dataclass
class ComplexityReport:
    """Parameters and MACs of a model at one input size, with its context modules itemised."""

    input_shape: list[int]
    params: int
    macs: int
    modules: list[ModuleCost] = field(default_factory=list)
    skipped_ops: dict[str, int] = field(default_factory=dict)

    @property
    def backbone_macs(self) -> int:
        return self.macs - sum(m.macs for m in self.modules)

    @property
    def paper_flops(self) -> int:
        """Backbone MACs + 2 x module MACs: the paper's "FLOPs" convention."""
        return self.backbone_macs + sum(m.paper_delta_flops for m in self.modules)

    def to_json(self) -> dict[str, Any]:
        return {
            "input_shape": self.input_shape,
            "params": self.params,
            "macs": self.macs,
            "backbone_macs": self.backbone_macs,
            "paper_flops": self.paper_flops,
            "modules": [asdict(m) for m in self.modules],
            "skipped_ops": self.skipped_ops,
        }


def complexity_report(model: nn.Module, input_shape: tuple[int, ...]) -> ComplexityReport:
    """Count the model's parameters and MACs on a zero input of `input_shape` (N x 3 x T x H x W).

    The model is put in eval mode (dropout off, batch norm as an affine map). Its context
    modules are itemised as `rcca.models.insertion.context_modules` finds them: by `convN_i`
    position in a `VideoBackbone`, by submodule name in any other network.
    """
    model.eval()
    inserted = context_modules(model)
    names = {module: name for name, module in model.named_modules()}
    shapes: dict[str, tuple[int, ...]] = {}

    def record_shape(position: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(_: nn.Module, args: tuple[Tensor, ...]) -> None:
            shapes.setdefault(position, tuple(int(d) for d in args[0].shape))

        return hook

    hooks = [module.register_forward_pre_hook(record_shape(position)) for position, module in inserted.items()]
    try:
        with torch.no_grad():
            analysis = mac_analysis(model, torch.zeros(input_shape))
            total = int(analysis.total())
    finally:
        for hook in hooks:
            hook.remove()
    costs = []
    for position, module in inserted.items():
        macs = int(analysis.total(names[module]))
        costs.append(
            ModuleCost(
                position=position,
                name=names[module],
                kind=describe(module),
                input_shape=list(shapes[position]),
                params=count_parameters(module),
                macs=macs,
                share=macs / total,
                paper_delta_flops=2 * macs,
                self_position_macs=self_position_macs(module, shapes[position]),
            )
        )
    skipped = dict(sorted(analysis.unsupported_ops().items()))
    return ComplexityReport(list(input_shape), count_parameters(model), total, costs, skipped)


def format_report(report: ComplexityReport) -> str:
    """The report as a text table (G = 1e9 MACs, M = 1e6 parameters).

    The "paper FLOPs" column is the paper's convention: MACs for the backbone, 2 x MACs for
    each module, their sum for the total (compare with the FLOPs of Tables I-VI).
    """

    def row(label: str, kind: str, params: int, macs: int, share: str, paper: int) -> str:
        return f"{label:<10} {kind:<42} {params:>12,} {macs / 1e9:>8.3f}G {share:>6} {paper / 1e9:>11.2f}G"

    header = f"{'position':<10} {'module':<42} {'params':>12} {'MACs':>9} {'share':>6} {'paper FLOPs':>12}"
    rule = "-" * len(header)
    lines = [f"input {' x '.join(map(str, report.input_shape))}", header, rule]
    lines += [row(m.position, m.kind, m.params, m.macs, f"{m.share:.1%}", m.paper_delta_flops) for m in report.modules]
    backbone_params = report.params - sum(m.params for m in report.modules)
    backbone_share = f"{report.backbone_macs / report.macs:.1%}"
    lines += [
        row("backbone", "", backbone_params, report.backbone_macs, backbone_share, report.backbone_macs),
        rule,
        row("total", "", report.params, report.macs, "", report.paper_flops),
        f"params {report.params / 1e6:.2f}M | MACs {report.macs / 1e9:.2f}G | "
        f"paper convention (backbone MACs + 2 x module MACs) {report.paper_flops / 1e9:.1f}G",
    ]
    for m in report.modules:
        if m.self_position_macs:
            lines.append(
                f"note: {m.position}: {m.self_position_macs / 1e6:.1f}M of the module's MACs "
                f"({m.self_position_macs / m.macs:.2%}) come from the query's own position, computed on all three "
                "lines and masked on two; the paper's formula (T+H+W-2 positions) leaves them out"
            )
    if report.skipped_ops:
        skipped = ", ".join(f"{op} x{n}" for op, n in report.skipped_ops.items())
        lines.append(f"not counted (element-wise, softmax, masks, pooling): {skipped}")
    return "\n".join(lines)
