"""CCA-3D / RCCA-3D / non-local: exactness against references, gradients, initialisation, sizes, insertion."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import dense_line_weights
from torch import Tensor, nn

from rcca.config import BackboneConfig, ModuleConfig, OptimizerConfig
from rcca.engine.checkpoints import read_checkpoint
from rcca.engine.optim import build_optimizer
from rcca.models.attention import (
    RCCA3D,
    CrissCrossAttention3D,
    ProjectedCrissCrossFunction,
    criss_cross_attention,
    moved_channels,
)
from rcca.models.build import build_model
from rcca.models.complexity import saved_tensor_bytes
from rcca.models.nonlocal_block import NonLocal3D
from rcca.models.tsm import TSMResNet, load_imagenet_weights

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
SMALL_TSM = BackboneConfig(name="tsm", depth=18, width=16, dropout=0.0)
TSM_R50 = BackboneConfig(name="tsm", depth=50)
R50_CHANNELS = {"conv3_3": 512, "conv4_5": 1024, "conv5_2": 2048}  # block output channels of ResNet-50


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights (float64) so that every term of an equation matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64) * 0.3)
    return module


def brute_force_cca(cca: CrissCrossAttention3D, x: Tensor) -> Tensor:
    """Full THW x THW attention, masked to the T+H+W-2 positions sharing two of the query's coordinates.

    x: N x C x T x H x W -> N x Cv x T x H x W.
    """
    n, _, t, h, w = x.shape
    q, k, v = (conv(x).flatten(2).transpose(1, 2) for conv in (cca.query, cca.key, cca.value))  # N x THW x C
    grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), -1)
    coords = grid.reshape(-1, 3)  # THW x 3, (t, h, w) of each flattened position
    shared = (coords[:, None, :] == coords[None, :, :]).sum(-1)  # THW x THW: coordinates in common
    keep = shared >= 2  # same line (2 shared) or the query itself (3 shared)
    assert bool((keep.sum(1) == t + h + w - 2).all())
    energy = (q @ k.transpose(1, 2)).masked_fill(~keep, float("-inf"))
    out = torch.softmax(energy, dim=-1) @ v  # N x THW x Cv
    return out.transpose(1, 2).reshape(n, -1, t, h, w)


@pytest.mark.parametrize("t, h, w", [(3, 4, 5), (1, 3, 4), (4, 5, 3), (2, 1, 6), (1, 1, 1), (5, 2, 2)])
@pytest.mark.parametrize("value_channels", [None, 3])
def test_cca_matches_brute_force(t: int, h: int, w: int, value_channels: int | None, line_kernels: str) -> None:
    torch.manual_seed(t * 100 + h * 10 + w)
    cca = randomise(CrissCrossAttention3D(8, 2, value_channels).double())  # v: 8 float64 channels, one vector
    x = torch.randn(2, 8, t, h, w, dtype=torch.float64)
    out = cca(x)
    assert out.shape == (2, value_channels or 8, t, h, w)
    assert torch.allclose(out, brute_force_cca(cca, x), rtol=1e-10, atol=1e-12)


def paper_equation(structure: str, recurrence: int) -> Callable[[RCCA3D, Tensor], Tensor]:
    """RCCA-3D output written from the paper's equations (4)-(7) with F = CCA-3D (+ restore for c)."""

    def forward(module: RCCA3D, x: Tensor) -> Tensor:
        gamma = module.gamma
        f = lambda y: brute_force_cca(module.cca, y)  # noqa: E731
        if structure == "c":
            f = lambda y: module.restore(brute_force_cca(module.cca, y))  # noqa: E731
        if structure == "d":  # Eq. 7: Y = gF(gF(...gF(X))) + X
            y = x
            for _ in range(recurrence):
                y = gamma * f(y)
            return y + x
        y = x
        for _ in range(recurrence):
            # a, c (Eq. 4-5): every step adds X; b (Eq. 6): every step adds its own input
            y = gamma * f(y) + (y if structure == "b" else x)
        return y

    return forward


def brute_force_attention(cca: CrissCrossAttention3D, x: Tensor) -> Tensor:
    """The masked full softmax of `brute_force_cca`: N x THW x THW."""
    n, _, t, h, w = x.shape
    q, k = (conv(x).flatten(2).transpose(1, 2) for conv in (cca.query, cca.key))
    coords = torch.cartesian_prod(torch.arange(t), torch.arange(h), torch.arange(w))
    keep = (coords[:, None, :] == coords[None, :, :]).sum(-1) >= 2
    return torch.softmax((q @ k.transpose(1, 2)).masked_fill(~keep, float("-inf")), dim=-1)


def test_attention_weights_of_each_pass_match_brute_force() -> None:
    """Pass r's weights are the masked full softmax of CCA-3D on Y_{r-1} (Eq. 4: Y_1 = gamma F(X) + X)."""
    torch.manual_seed(0)
    module = randomise(RCCA3D(8, recurrence=2, gamma_init=0.7).double())
    x = torch.randn(2, 8, 3, 4, 5, dtype=torch.float64)
    first, second = module.attention_weights(x)
    assert torch.allclose(first.sum(-1), torch.ones(2, 3, 4, 5, dtype=torch.float64))
    y1 = module.gamma * brute_force_cca(module.cca, x) + x
    for ours, y in ((first, x), (second, y1)):
        assert torch.allclose(dense_line_weights(ours), brute_force_attention(module.cca, y), atol=1e-12)
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("structure", ["a", "b", "c", "d"])
@pytest.mark.parametrize("recurrence", [1, 2, 3])
def test_rcca_structures_follow_their_equations(structure: str, recurrence: int) -> None:
    torch.manual_seed(recurrence)
    module = randomise(RCCA3D(8, structure=structure, recurrence=recurrence, gamma_init=0.7).double(), seed=recurrence)
    x = torch.randn(2, 8, 3, 4, 5, dtype=torch.float64)
    assert (module.restore is not None) == (structure == "c")
    expected = paper_equation(structure, recurrence)(module, x)
    assert torch.allclose(module(x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("memory_efficient", [False, True], ids=["saved", "recomputed"])
@pytest.mark.parametrize("structure", ["a", "b", "c", "d"])
@pytest.mark.parametrize("gamma", [0.7, 0.0])
def test_rcca_gradients_match_brute_force(
    structure: str, memory_efficient: bool, device: str, gamma: float, line_kernels: str
) -> None:
    """Input and parameter gradients (gamma's too, at gamma = 0 as well) of the written-out backward
    equal autograd through the brute force, with either implementation of the line sums on the CPU."""
    torch.manual_seed(1)
    module = RCCA3D(8, structure=structure, gamma_init=gamma, memory_efficient=memory_efficient)
    module = randomise(module.double()).to(device)
    x = torch.randn(2, 8, 3, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    upstream = torch.randn_like(x)
    gradients = []
    for forward in (RCCA3D.forward, paper_equation(structure, 3)):
        module.zero_grad(set_to_none=True)
        x.grad = None
        forward(module, x).backward(upstream)
        gradients.append([x.grad] + [p.grad for p in module.parameters()])
    for ours, reference in zip(*gradients, strict=True):
        assert torch.allclose(ours, reference, rtol=1e-9, atol=1e-11)


def projected_inputs(n: int, t: int, h: int, w: int, dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """Random inputs of `ProjectedCrissCrossFunction` (C = 3 channels, C' = 2), all requiring gradients."""
    channels, inner = 3, 2
    shapes = {
        "y": (n, t, h, w, channels),
        "base": (n, t, h, w, channels),
        "query_key_weight": (2 * inner, channels),
        "query_key_bias": (2 * inner,),
        "value_weight": (channels, channels),
        "value_bias": (channels,),
    }
    return {name: torch.randn(shape, dtype=dtype, requires_grad=True) for name, shape in shapes.items()}


def projected_reference(inputs: dict[str, Tensor], base: Tensor | None) -> Tensor:
    """The same recurrence through autograd: the projections, then the differentiable inference path."""
    qk = nn.functional.linear(inputs["y"], inputs["query_key_weight"], inputs["query_key_bias"])
    v = nn.functional.linear(inputs["y"], inputs["value_weight"], inputs["value_bias"])
    return criss_cross_attention(qk, v, base)[0]


PROJECTED_BASES = ["none", "separate", "input"]  # no residual, a separate map, the input itself


def projected_call(inputs: dict[str, Tensor], base: str) -> tuple[Callable[..., Tensor], tuple[Tensor, ...]]:
    """The Function as a callable of the tensors that get gradients, for the `base` variant."""
    weights = [inputs[name] for name in ("query_key_weight", "query_key_bias", "value_weight", "value_bias")]
    if base == "separate":
        return lambda y, b, *p: ProjectedCrissCrossFunction.apply(y, b, False, *p), (
            inputs["y"],
            inputs["base"],
            *weights,
        )
    return lambda y, *p: ProjectedCrissCrossFunction.apply(y, None, base == "input", *p), (inputs["y"], *weights)


@pytest.mark.parametrize("base", PROJECTED_BASES)
@pytest.mark.parametrize("n, t, h, w", [(1, 3, 4, 5), (2, 2, 3, 2), (1, 1, 1, 3), (2, 4, 1, 1)])
def test_projected_criss_cross_function_gradcheck(n: int, t: int, h: int, w: int, base: str) -> None:
    """Numerical Jacobians (float64) of one recurrence's written-out backward w.r.t. the input, the base and
    the projections' weights and biases, sizes of 1 included; its forward equals the autograd path's."""
    torch.manual_seed(n + t + h + w)
    inputs = projected_inputs(n, t, h, w)
    function, arguments = projected_call(inputs, base)
    assert torch.autograd.gradcheck(function, arguments)
    residual = {"none": None, "separate": inputs["base"], "input": inputs["y"]}[base]
    with torch.no_grad():
        assert torch.allclose(function(*arguments), projected_reference(inputs, residual), atol=1e-14)


@pytest.mark.parametrize("adds_input", [False, True])
def test_projected_function_with_frozen_weights_and_no_biases(adds_input: bool) -> None:
    """Only the input needs a gradient and the projections have no biases: the backward skips the
    projections' gradients and its input gradient still passes gradcheck; a base next to adds_input is refused."""
    torch.manual_seed(3)
    inputs = projected_inputs(2, 3, 2, 4)
    weights = inputs["query_key_weight"].detach(), None, inputs["value_weight"].detach(), None
    y = inputs["y"]
    assert torch.autograd.gradcheck(lambda y: ProjectedCrissCrossFunction.apply(y, None, adds_input, *weights), (y,))
    if adds_input:
        with pytest.raises(ValueError, match="base=None"):
            ProjectedCrissCrossFunction.apply(y, inputs["base"], True, *weights)


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_rcca_saves_at_most_its_analytic_floor(memory_efficient: bool) -> None:
    """Saved for backward, per position and recurrence: the input Y (C), q and k (2C'), v (C) and one
    attention row (T + H + W), all float32; with memory_efficient, the input Y only. Plus the weights,
    and v's weights once more: gamma times them, which the module applies."""
    n, c, t, h, w = 1, 32, 4, 6, 5
    module = RCCA3D(c, memory_efficient=memory_efficient)
    x = torch.randn(n, c, t, h, w, requires_grad=True)
    inner = module.cca.query.out_channels
    per_position = c if memory_efficient else 2 * c + 2 * inner + (t + h + w)
    weights = sum(p.numel() for p in module.parameters()) + sum(p.numel() for p in module.cca.value.parameters())
    activations = 4 * module.recurrence * per_position * n * t * h * w
    assert activations <= saved_tensor_bytes(lambda: module(x)) <= activations + 4 * weights


def test_line_products_run_as_one_kernel_call_per_batch_of_lines(line_kernels: str) -> None:
    """A forward + backward pass issues one batched product per batch of lines, R x 6 products x
    (1 W batch + N T batches + N*T H batches), and none falls back to one matrix at a time (PyTorch
    does when a product's result is not contiguous: a select and a matrix product per line). With the
    compiled kernels (csrc/line_products.cpp) none is left."""
    # large enough for the matrix kernels (PyTorch loops itself below 400 MACs); C' = 16, a whole vector
    n, c, t, h, w = 2, 64, 4, 8, 8
    module = RCCA3D(c)
    x = torch.randn(n, c, t, h, w, requires_grad=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        module(x).sum().backward()
    products = [event for event in profile.events() if event.name in ("aten::bmm", "aten::baddbmm", "aten::baddbmm_")]
    # 6 products a recurrence: affinities and aggregation forward; D, dV, dQ, dK backward.
    per_recurrence = 0 if line_kernels == "compiled" else 6
    assert len(products) == module.recurrence * per_recurrence * (1 + n + n * t)
    per_matrix = [child.name for event in products for child in event.cpu_children]
    assert not {"aten::select", "aten::addmm_", "aten::mm"} & set(per_matrix), per_matrix


def test_channels_last_input_gives_the_same_output_in_channels_last() -> None:
    torch.manual_seed(0)
    module = RCCA3D(8, gamma_init=0.6)
    x = torch.randn(2, 8, 3, 4, 5)
    x_last = x.contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    out, out_last = module(x), module(x_last)
    assert out.is_contiguous() and out_last.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(out, out_last, atol=1e-6)
    out_last.sum().backward()
    assert x_last.grad is not None and torch.isfinite(x_last.grad).all()
    # The output is a tensor of its own, not a view made inside the autograd function: in-place ops work.
    CrissCrossAttention3D(8, 2)(x_last).relu_().sum().backward()


# N x T x H x W x C shapes: one chunk of positions; 105 positions in chunks of 32 (C = 4096); one
# position per chunk (a row of over 512 KiB); single positions (moving them changes no memory order);
# an empty batch.
@pytest.mark.parametrize(
    "shape", [(2, 3, 4, 5, 6), (2, 5, 7, 3, 4096), (1, 2, 1, 1, 2**17 + 3), (3, 1, 1, 1, 4), (0, 2, 3, 4, 5)]
)
def test_moving_channels_copies_exactly_and_moves_the_gradient_back(shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(0)
    y = torch.randn(shape, generator=generator, requires_grad=True)
    first = moved_channels(y, last=False)
    assert first.is_contiguous() and torch.equal(first, y.movedim(4, 1))
    back = moved_channels(first, last=True)
    assert back.is_contiguous() and torch.equal(back, y)
    grad = torch.randn(first.shape, generator=generator)
    first.backward(grad)
    assert y.grad is not None and y.grad.is_contiguous() and torch.equal(y.grad, grad.movedim(1, 4))
    # Each result is a tensor of its own, which in-place ops may change (not a view of the input).
    for moved in (moved_channels(y * 1, last=False), moved_channels(first.detach().requires_grad_(), last=True)):
        moved.mul_(2).sum().backward()


def test_an_empty_batch_passes_through_rcca() -> None:
    x = torch.randn(0, 8, 2, 3, 3, requires_grad=True)
    out = RCCA3D(8, recurrence=2)(x)
    out.sum().backward()
    assert out.shape == x.shape and x.grad is not None and x.grad.shape == x.shape


def test_moving_channels_gradcheck() -> None:
    y = torch.randn(2, 3, 4, 2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: moved_channels(t, last=False), (y,))
    assert torch.autograd.gradgradcheck(lambda t: moved_channels(t, last=False), (y,))


@pytest.mark.parametrize(
    "device, dtype",
    [
        ("cpu", torch.bfloat16),
        pytest.param("cuda", torch.bfloat16, marks=needs_cuda),
        pytest.param("cuda", torch.float16, marks=needs_cuda),
    ],
)
def test_autocast_keeps_the_softmax_in_float32(device: str, dtype: torch.dtype) -> None:
    """Under autocast the products run in the low precision, the softmax and the attention in float32."""
    torch.manual_seed(0)
    qk, v = (torch.randn(1, 3, 4, 5, c, device=device).to(dtype) for c in (4, 8))
    out, attention = criss_cross_attention(qk, v)
    assert out.dtype == dtype and attention.dtype == torch.float32
    assert torch.allclose(attention.sum(-1), torch.ones(1, 3, 4, 5, device=device))
    module = RCCA3D(16, gamma_init=0.5).to(device)
    x = torch.randn(2, 16, 3, 4, 5, device=device, requires_grad=True)
    with torch.autocast(device, dtype=dtype):
        low = module(x)
    low.float().sum().backward()
    assert low.dtype == x.dtype  # the residual adds the context to the input in its own precision
    assert torch.allclose(low.float(), module(x), rtol=0.05, atol=0.05)
    assert torch.isfinite(x.grad).all() and torch.isfinite(module.gamma.grad)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_the_residual_gets_the_upstream_gradient_in_its_own_precision(device: str) -> None:
    """Under bf16 autocast the products run in bf16, but a float32 residual's gradient is the float32
    upstream gradient itself, unrounded (as for the plain sum context + residual); when the residual is
    the input, its gradient is that upstream gradient plus the products' (as autograd's, to bf16 rounding)."""
    torch.manual_seed(0)
    inputs = {
        name: tensor.detach().to(device).requires_grad_()
        for name, tensor in projected_inputs(1, 3, 4, 5, torch.float32).items()
    }
    for base in ("separate", "input"):
        function, arguments = projected_call(inputs, base)
        with torch.autocast(device, dtype=torch.bfloat16):
            out = function(*arguments)
            reference = projected_reference(inputs, inputs["y"] if base == "input" else inputs["base"])
        upstream = torch.randn_like(out) / 3  # thirds: not representable in bf16
        grads = torch.autograd.grad(out, arguments, upstream)
        expected = torch.autograd.grad(reference, arguments, upstream)
        assert out.dtype == torch.float32 and torch.allclose(out, reference, rtol=0.02, atol=0.02)
        if base == "separate":
            assert torch.equal(grads[1], upstream)
        for ours, autograd in zip(grads, expected, strict=True):
            assert ours.dtype == autograd.dtype
            assert torch.allclose(ours, autograd, rtol=0.03, atol=0.03 * autograd.abs().max().item())


def test_the_inference_path_stays_differentiable() -> None:
    """`criss_cross_attention` and a CCA-3D whose weights are frozen still give autograd a graph
    (the in-place accumulation is for maps that need no gradient), with the written-out backward's gradients."""
    torch.manual_seed(0)
    inputs = projected_inputs(1, 3, 4, 5)
    out = projected_reference(inputs, inputs["base"])
    function, arguments = projected_call(inputs, "separate")
    grads = torch.autograd.grad(out.pow(2).sum(), arguments)
    expected = torch.autograd.grad(function(*arguments).pow(2).sum(), arguments)
    for ours, reference in zip(grads, expected, strict=True):
        assert torch.allclose(ours, reference, atol=1e-12)
    base = inputs["base"].detach().requires_grad_()
    frozen = CrissCrossAttention3D(3, 2).double().requires_grad_(False)
    y = torch.randn(1, 3, 4, 5, 3, dtype=torch.float64)
    frozen.forward_channels_last(y, base=base).sum().backward()
    assert torch.equal(base.grad, torch.ones_like(base))


@pytest.mark.parametrize("device, backend", [("cpu", "aot_eager"), pytest.param("cuda", "inductor", marks=needs_cuda)])
def test_torch_compile_gives_the_eager_output_and_gradients(device: str, backend: str) -> None:
    torch.manual_seed(0)
    module = RCCA3D(8, gamma_init=0.6).to(device)
    x = torch.randn(2, 8, 3, 4, 5, device=device, requires_grad=True)
    results = []
    for model in (module, torch.compile(module, backend=backend)):
        module.zero_grad(set_to_none=True)
        x.grad = None
        out = model(x)
        out.pow(2).sum().backward()
        results.append([out, x.grad] + [p.grad for p in module.parameters()])
    for compiled, eager in zip(results[1], results[0], strict=True):
        assert torch.allclose(compiled, eager, rtol=1e-4, atol=1e-5)


def test_a_compiled_rcca_serves_new_batch_sizes_without_compiling_again() -> None:
    """After the first change of batch size, which makes the batch dimension dynamic, a compiled
    RCCA-3D compiles no new graph for further sizes (a per-frame loop would fix N in the graph)."""
    torch._dynamo.reset()
    module = torch.compile(RCCA3D(8, recurrence=1).eval(), backend="eager")
    frames = []
    with torch.no_grad():
        for n in (2, 3, 4, 5):
            module(torch.randn(n, 8, 3, 4, 5))
            frames.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert frames[2] == frames[1] == frames[3], frames


def test_rcca_structures_differ() -> None:
    """With the same weights, a, b and d give different outputs (the test above is not vacuous)."""
    x = torch.randn(1, 8, 2, 3, 4, dtype=torch.float64)
    outputs = [randomise(RCCA3D(8, structure=s).double())(x) for s in ("a", "b", "d")]
    assert not torch.allclose(outputs[0], outputs[1]) and not torch.allclose(outputs[0], outputs[2])


@pytest.mark.parametrize(
    "module_cfg, context_type",
    [
        (ModuleConfig(name="rcca", positions=["conv3_2", "conv4_1"]), RCCA3D),
        (ModuleConfig(name="nl", positions=["conv3_2", "conv4_1"], subsample=True), NonLocal3D),
    ],
    ids=["rcca", "nl"],
)
def test_every_module_parameter_learns(module_cfg: ModuleConfig, context_type: type) -> None:
    """Each parameter is in exactly one optimizer group and gets a non-zero gradient.

    The non-local block's zero-initialised BN weight blocks the gradient to theta/phi/g/out
    at initialisation, so one SGD step is taken first: it must move that weight (it is in
    the optimizer and has a gradient), after which every parameter has a gradient.
    """
    torch.manual_seed(0)
    model = build_model(SMALL_TSM, module_cfg, num_classes=5)
    contexts = [m for m in model.modules() if isinstance(m, context_type)]
    assert len(contexts) == 2
    optimizer = build_optimizer(model, OptimizerConfig(lr=0.1))
    grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert len(grouped) == len(set(grouped)) == len(list(model.parameters()))
    context_params = {name: p for i, m in enumerate(contexts) for name, p in m.named_parameters(prefix=str(i))}
    assert {id(p) for p in context_params.values()} <= set(grouped)

    clips, labels = torch.randn(2, 3, 8, 64, 64), torch.tensor([1, 3])

    def backward() -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(clips), labels).backward()

    backward()
    if context_type is NonLocal3D:
        assert all(float(m.bn.weight.grad.abs().sum()) > 0 for m in contexts)
        optimizer.step()
        assert all(float(m.bn.weight.detach().abs().sum()) > 0 for m in contexts)
        backward()
    no_gradient = [n for n, p in context_params.items() if p.grad is None or float(p.grad.abs().sum()) == 0]
    assert no_gradient == []
    if context_type is RCCA3D:
        assert {"0.gamma", "1.gamma"} <= set(context_params)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_gamma_initial_value(gamma: float) -> None:
    model = build_model(SMALL_TSM, ModuleConfig(name="rcca", positions=["conv3_1"], gamma_init=gamma), num_classes=5)
    (module,) = [m for m in model.modules() if isinstance(m, RCCA3D)]
    assert module.gamma.item() == gamma
    x = torch.randn(1, 32, 2, 3, 3)
    if gamma == 0.0:  # gamma = 0: the module starts as the identity
        assert torch.equal(module(x), x)
    else:
        assert not torch.allclose(module(x), x)


@pytest.mark.parametrize("train", [True, False])
def test_nonlocal_starts_as_identity(train: bool) -> None:
    torch.manual_seed(0)
    module = NonLocal3D(16).train(train)
    x = torch.randn(2, 16, 3, 4, 4)
    assert torch.equal(module(x), x)


@pytest.mark.parametrize("subsample, keys", [(False, 3 * 8 * 6), (True, 3 * 4 * 3)])
def test_nonlocal_subsampling_reduces_keys_fourfold(subsample: bool, keys: int) -> None:
    module = NonLocal3D(16, subsample=subsample)
    nn.init.ones_(module.bn.weight)
    seen: list[torch.Size] = []
    module.pool.register_forward_hook(lambda _, __, out: seen.append(out.shape))
    x = torch.randn(2, 16, 3, 8, 6)
    out = module(x)
    assert out.shape == x.shape and not torch.allclose(out, x)
    assert seen == [(2, 8, 3, 8 // (1 + subsample), 6 // (1 + subsample))] * 2  # phi (keys) and g (values)
    assert seen[0][2:].numel() == keys


def rcca_parameters(channels: int) -> int:
    """Analytic RCCA-3D size, C_d = 1/4: q and k (C*C' + C'), v (C*C + C), gamma (1)."""
    inner = channels // 4
    return 2 * (channels * inner + inner) + (channels * channels + channels) + 1


def nonlocal_parameters(channels: int) -> int:
    """Analytic non-local size, C' = C/2: theta, phi, g (C*C' + C'), out (C'*C + C), BN (2C)."""
    inner = channels // 2
    return 3 * (channels * inner + inner) + (inner * channels + channels) + 2 * channels


@pytest.fixture(scope="module")
def r50_params() -> int:
    return count(build_model(TSM_R50, ModuleConfig(name="none"), num_classes=400))


@pytest.mark.parametrize(
    "position, expected_m",
    [("conv3_3", 0.39), ("conv4_5", 1.57), ("conv5_2", 6.29)],
)
def test_rcca_parameter_delta_on_tsm_r50(r50_params: int, position: str, expected_m: float) -> None:
    """Table III: +0.39M / +1.57M / +6.29M over TSM (24.30M)."""
    model = build_model(TSM_R50, ModuleConfig(name="rcca", positions=[position]), num_classes=400)
    delta = count(model) - r50_params
    assert delta == rcca_parameters(R50_CHANNELS[position])
    assert round(delta / 1e6, 2) == expected_m


def test_nonlocal_parameter_delta_on_tsm_r50(r50_params: int) -> None:
    """Table VI: TSM + NL at conv4_5 has 26.40M parameters, +2.10M."""
    model = build_model(TSM_R50, ModuleConfig(name="nl", positions=["conv4_5"]), num_classes=400)
    delta = count(model) - r50_params
    assert delta == nonlocal_parameters(1024)
    assert round(delta / 1e6, 2) == 2.10


def test_structure_c_has_the_size_of_a() -> None:
    """Table I: 24.69M for every structure; c with V at C/2 plus the restoring conv."""
    a, c = count(RCCA3D(512, structure="a")), count(RCCA3D(512, structure="c", value_fraction=0.5))
    assert abs(c - a) / a < 1e-3


@pytest.mark.parametrize("position", ["conv3_9", "conv1_1", "conv6_1", "layer2"])
def test_invalid_position_lists_valid_ones(position: str) -> None:
    with pytest.raises(ValueError, match=r"valid: conv2_1, conv2_2, conv3_1, .*conv5_2") as error:
        build_model(SMALL_TSM, ModuleConfig(name="rcca", positions=[position]), num_classes=5)
    assert repr(position) in str(error.value)


def test_torchvision_resnet50_weights_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet50()
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    model = TSMResNet(depth=50, num_classes=400)
    missing = load_imagenet_weights(model, read_checkpoint(path, "backbone.pretrained"))
    assert sorted(missing) == ["fc.bias", "fc.weight"]
    loaded, source = model.state_dict(), reference.state_dict()
    assert set(loaded) == set(source)
    differing = [k for k in source if not k.startswith("fc.") and not torch.equal(loaded[k], source[k])]
    assert differing == []
