"""Speed and memory benchmarks: `python scripts/benchmark.py modules|data|training [options]`.

modules  The efficiency figures of RCCA-3D (structure a, R=3, C_d=1/4), from one run. At the paper's
         TSM-ResNet-50 sites for 8-frame clips at 224, conv3_3 (C=512, 28x28) and conv4_5 (C=1024,
         14x14), float32, forward + backward, median of --repeats after --warmup (the modules of a
         site timed in turn, one pass of each per round, in reverse order every other round): the
         time, the bytes
         autograd saves for backward (distinct storages) and the peak memory of RCCA-3D, of RCCA-3D
         with memory_efficient=true, of its own q, k, v 1x1x1 convolutions applied R times (its
         floor), and of the non-local block with and without 1x2x2 subsampling. Peak: on CUDA
         torch.cuda.max_memory_allocated; on the CPU the largest total of live tensors during the
         pass, from torch.profiler's memory events; both on top of the input and weights. Then a
         scaling table over T x H x W (C=512) for RCCA-3D and the full non-local block; a shape whose
         non-local maps would not fit (half the free memory on the CPU) is reported as out of memory.
         On the CPU also: the slowdown of RCCA-3D and non-local while --busy other busy processes
         run (--repeats rounds, each timing both with the processes paused and running); the
         trainer's step against a bare forward-backward-step loop on the same batches (the
         quick-start model and recipe); and the quick-start `python train.py` on a quiet machine and
         next to one busy process (--no-runs skips these two, a few minutes). It ends with the
         ratios and their targets. CPU runs use all of torch's threads unless --threads says
         otherwise; --shrink N divides channels and sizes for a smoke test.
data     Decode + augmentation throughput (clips/s) of the training pipeline
         (VideoDataset -> build_loader, MultiScaleCrop to 224, flip) on 320x240 MPEG-4
         videos it writes to a temporary folder: 8-frame TSM segment clips and 16-frame
         dense clips (every 2nd frame, MF-Net's recipe), for 0, 1 and 2 loader workers,
         with decord and PyAV.
training Training throughput (clips/s) of full models, the rows of the paper's Table VI
         (--rows, default all; rcca/configs/model/<row>.yaml with a 400-class classifier):
         forward, cross-entropy, backward and the row's SGD update (momentum, weight decay;
         no gradient clipping) on random clips of batch x 3 x backbone.num_frames x size x
         size (8 frames for TSM, 16 for MF-Net) and random labels, median step time over
         --steps after --warmup. On CUDA: batch 16 at 224, 10 steps after 3, unless told;
         autocast per --amp (fp16 with a gradient scaler), cuDNN as the trainer's default
         (no benchmark mode); peak = torch.cuda.max_memory_allocated over the row's steps
         (weights, optimizer state and activations); a row that runs out of memory is
         reported as such. On the CPU: batch 2 at 112, 3 steps after 1, unless told, a
         couple of minutes on 2 cores. Ratios: each row's clips/s over its plain backbone's
         (tsm, mfnet) measured in the same run. Also the hours one training epoch of the
         paper's datasets would take at these rates: a compute-only lower bound, without
         decoding, augmentation or loading.

Each prints a table, the ratios, and a last line with one JSON object of the results.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader

from rcca.config import GENERATED_CLASSES, compose_config
from rcca.data.annotations import VideoRecord
from rcca.data.build import ClipSampling, build_loader
from rcca.data.datasets import VideoDataset
from rcca.data.decoding import read_frames_decord
from rcca.data.preparation.media import resize_jobs
from rcca.data.preparation.runner import run_jobs
from rcca.data.samplers import EpochSampler
from rcca.data.synthetic import write_video
from rcca.data.transforms import build_train_transform
from rcca.engine.optim import build_optimizer
from rcca.engine.trainer import AMP_DTYPES, Trainer, autocast_dtype
from rcca.models.attention import RCCA3D, channels_last_map
from rcca.models.build import build_model, to_channels_last
from rcca.models.complexity import count_parameters, saved_tensor_bytes
from rcca.models.nonlocal_block import NonLocal3D

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20
GIB = 2**30

# Feature maps of TSM-ResNet-50 at the paper's insertion sites: name -> (C, H = W).
SITES = {"conv3_3": (512, 28), "conv4_5": (1024, 14)}
MODULES: dict[str, Callable[[int], nn.Module]] = {
    "RCCA3D(R=3)": lambda c: RCCA3D(c),
    "RCCA3D(memory_efficient)": lambda c: RCCA3D(c, memory_efficient=True),
    "q,k,v convs x3": lambda c: Projections(RCCA3D(c)),
    "NonLocal3D": lambda c: NonLocal3D(c),
    "NonLocal3D(subsample)": lambda c: NonLocal3D(c, subsample=True),
}
# Efficiency targets of the README, set at the paper's site conv3_3 (lower is better).
TARGETS = {
    "conv3_3: time, RCCA-3D / its q, k, v convolutions": 1.5,
    "conv3_3: saved for backward, RCCA-3D / non-local": 0.5,
    "conv3_3: peak memory, RCCA-3D / non-local": 0.5,
    "conv3_3: slowdown when busy, RCCA-3D / non-local": 1.5,
    "trainer step / bare forward-backward-step loop": 1.03,
    "quick-start with 1 busy process / quiet": 2.5,
}
# Scaling table: feature maps of C = 512 channels at these T x H x W.
SCALING_CHANNELS = 512
SCALING_SHAPES = ((8, 14, 14), (8, 28, 28), (16, 28, 28), (8, 56, 56))
# Clip kinds of the data benchmark: name -> (sampling, frames per clip, dense step).
CLIPS = {"tsm 8x1 segment": ("segment", 8, 1), "mfnet 16x2 dense": ("dense", 16, 2)}
BACKENDS = ("decord", "pyav")
# Rows of the paper's Table VI (rcca/configs/model/<row>.yaml); the plain rows are the backbones' names.
TABLE_VI = ("tsm", "tsm_nl", "tsm_rcca", "tsm_nl_x5", "tsm_rcca_x5", "mfnet", "mfnet_nl_x5", "mfnet_rcca_x5")
CLASSES = 400  # the paper's Kinetics-400 classifier, as in its parameter counts
# Training defaults per device: the paper's batch and crop on a GPU; on the CPU, small enough for a
# couple of minutes on 2 cores.
TRAINING_DEFAULTS = {
    "cuda": {"batch": 16, "size": 224, "steps": 10, "warmup": 3},
    "cpu": {"batch": 2, "size": 112, "steps": 3, "warmup": 1},
}
# Training videos in one epoch of the paper's datasets: the official split files' counts (UCF101, HMDB51), the
# Mini-Kinetics-200 training id list's 80,000, and the paper's ~246k Kinetics-400 training clips.
TRAIN_VIDEOS = {"UCF101 split 1": 9537, "HMDB51 split 1": 3570, "Mini-Kinetics-200": 80_000, "Kinetics-400": 246_000}


# ---------------------------------------------------------------------------- modules


@dataclass
class ModuleResult:
    """One row of the modules table: median forward + backward time, bytes saved for backward, peak memory."""

    site: str
    module: str
    input_shape: list[int]
    time_ms: float | None  # None where the pass would not fit in memory
    saved_mib: float | None
    peak_mib: float | None


Key = TypeVar("Key", bound=Hashable)  # what names the steps timed together


class Step(Protocol):
    """A timed step: `clear` frees what the previous call left (its gradients), a call runs one step."""

    def clear(self) -> None: ...

    def __call__(self) -> None: ...


@dataclass
class TrainingPass:
    """Forward of `module` on `x`, then backward of fixed upstream gradients (one per output, same shapes)."""

    module: nn.Module
    x: torch.Tensor
    grads: list[torch.Tensor]

    def clear(self) -> None:
        """Free the gradients of the previous pass, so each pass allocates its own."""
        self.module.zero_grad(set_to_none=True)
        self.x.grad = None

    def __call__(self) -> None:
        outputs = self.module(self.x)
        torch.autograd.backward(list(outputs) if isinstance(outputs, tuple) else [outputs], self.grads)


class Projections(nn.Module):
    """An RCCA-3D's own 1x1x1 convolutions alone: q, k and v of the input, applied `recurrence` times,
    with the products the module itself uses (on one channels-last copy of the input, q and k
    stacked, v on its own).

    The floor of the module's cost: RCCA-3D adds the affinities, softmax and aggregation to these.
    Output: the 2R maps, each with its own upstream gradient in the benchmark.
    """

    def __init__(self, module: RCCA3D) -> None:
        super().__init__()
        self.cca = module.cca
        self.recurrence = module.recurrence

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x_last = channels_last_map(x)
        projections = self.cca.projections()
        return tuple(nn.functional.linear(x_last, *weights) for _ in range(self.recurrence) for weights in projections)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Step, device: torch.device) -> float:
    """Wall seconds of one call of `step` (after clearing what the previous one left)."""
    step.clear()
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def median_time(step: Step, device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of `step` in seconds, after `warmup` untimed calls."""
    return median_times({"step": step}, device, warmup, repeats)["step"]


def median_times(steps: dict[Key, Step], device: torch.device, warmup: int, repeats: int) -> dict[Key, float]:
    """Median wall seconds of each of `steps`, after `warmup` untimed calls of each. The steps are
    timed in turn, one call of each per round and in reverse order every other round, so that a change
    in the machine's load during the measurement affects them alike and none of them always goes first."""
    order = list(steps)
    times: dict[Key, list[float]] = {name: [] for name in steps}
    for round_ in range(warmup + repeats):
        for name in order if round_ % 2 == 0 else reversed(order):
            seconds = timed(steps[name], device)
            if round_ >= warmup:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory(step: Step, device: torch.device) -> int:
    """Peak bytes allocated by `step` beyond what was allocated before it.

    CUDA: the allocator's peak statistic. CPU: replays the profiler's allocation and free
    events in time order and takes the largest running total.
    """
    step.clear()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    return max(itertools.accumulate((nbytes for _, nbytes in events), initial=0))


def module_pass(name: str, channels: int, shape: tuple[int, ...], device: torch.device) -> TrainingPass:
    """A forward + backward pass of `MODULES[name]` for C = `channels` on a random input of `shape`."""
    torch.manual_seed(0)
    module = MODULES[name](channels).to(device)
    x = torch.randn(shape, device=device, requires_grad=True)
    outputs = module(x)
    grads = [torch.randn_like(y) for y in (outputs if isinstance(outputs, tuple) else (outputs,))]
    del outputs
    return TrainingPass(module, x, grads)


def nonlocal_bytes(shape: tuple[int, ...]) -> int:
    """What a full non-local block's backward pass holds at once: four float32 THW x THW maps
    (energies, attention, and their gradients), the part that outgrows memory."""
    n, _, t, h, w = shape
    return 4 * 4 * n * (t * h * w) ** 2


def measure_modules(
    site: str,
    names: list[str],
    shape: tuple[int, ...],
    device: torch.device,
    timing: tuple[int, int],
    limit: int,
) -> list[ModuleResult]:
    """Time (`median_times`: the modules timed in turn), saved bytes and peak memory of each module
    of `names` at one input shape. None for a full non-local block whose maps would exceed `limit`
    bytes, and for all of `names` if they run out of GPU memory together."""
    unmeasured = {name: ModuleResult(site, name, list(shape), None, None, None) for name in names}
    fits = [name for name in names if not (name == "NonLocal3D" and nonlocal_bytes(shape) > limit)]
    try:
        steps = {name: module_pass(name, shape[1], shape, device) for name in fits}
        seconds = median_times(steps, device, *timing)
        measured = {}
        for name, step in steps.items():
            saved = saved_tensor_bytes(lambda step=step: step.module(step.x))
            peak = peak_memory(step, device)
            measured[name] = ModuleResult(site, name, list(shape), seconds[name] * 1e3, saved / MIB, peak / MIB)
    except torch.cuda.OutOfMemoryError:
        return list(unmeasured.values())
    return list({**unmeasured, **measured}.values())


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[Callable[[bool], None]]:
    """`count` other CPU-bound processes (busy Python loops) running while the block runs. The block
    gets a function that pauses (False) or resumes (True) them, with SIGSTOP and SIGCONT."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]

    def set_running(running: bool) -> None:
        for spinner in spinners:
            spinner.send_signal(signal.SIGCONT if running else signal.SIGSTOP)

    try:
        time.sleep(0.5)  # let them start spinning
        yield set_running
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def memory_limit(device: torch.device) -> int:
    """Bytes a pass may use: the GPU's total memory, or half the memory available on this machine."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return int(meminfo["MemAvailable"].split()[0]) * 1024 // 2


def print_module_rows(results: list[ModuleResult], label: Callable[[ModuleResult], str]) -> None:
    print(f"{'':<12} {'module':<26} {'fwd+bwd ms':>11} {'saved MiB':>10} {'peak MiB':>9}")
    for r in results:
        missing = "  out of memory" if r.time_ms is None else ""
        print(
            f"{label(r):<12} {r.module:<26} {optional(r.time_ms, '.1f', 11)} {optional(r.saved_mib, '.1f', 10)} "
            f"{optional(r.peak_mib, '.1f', 9)}{missing}",
            flush=True,
        )


def benchmark_modules(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} thread(s)"
    timing = (args.warmup, args.repeats)
    limit = memory_limit(device)
    print(
        f"device: {device} ({where}); torch {torch.__version__}; float32; batch {args.batch}; "
        f"median of {args.repeats} forward + backward passes after {args.warmup} warm-up"
    )
    if args.shrink > 1:
        print(
            f"--shrink {args.shrink}: channels and sizes divided by {args.shrink} (a smoke test, not the paper's sizes)"
        )
    # The process's first passes pay for fresh memory pages: take them before anything is timed.
    first_site = next(iter(SITES.values()))
    warm_up_shape = (
        args.batch,
        first_site[0] // args.shrink,
        args.frames,
        *(2 * [max(2, first_site[1] // args.shrink)]),
    )
    for name in MODULES:
        module_pass(name, warm_up_shape[1], warm_up_shape, device)()
    results: list[ModuleResult] = []
    for site, (channels, size) in SITES.items():
        channels, size = channels // args.shrink, max(2, size // args.shrink)
        shape = (args.batch, channels, args.frames, size, size)
        print(f"{site}: input {' x '.join(map(str, shape))}")
        rows = measure_modules(site, list(MODULES), shape, device, timing, limit)
        print_module_rows(rows, lambda r: r.site)
        results += rows

    channels = SCALING_CHANNELS // args.shrink
    print(f"scaling (C = {channels}, batch {args.batch}; one timed pass each): RCCA-3D vs the full non-local block")
    scaling: list[ModuleResult] = []
    for t, h, w in SCALING_SHAPES:
        t, h, w = t, max(2, h // args.shrink), max(2, w // args.shrink)
        shape = (args.batch, channels, t, h, w)
        for name in ("RCCA3D(R=3)", "NonLocal3D"):
            scaling += measure_modules(f"{t}x{h}x{w}", [name], shape, device, (0, 1), limit)
    print_module_rows(scaling, lambda r: r.site)
    if any(r.time_ms is None for r in scaling):
        print(f"out of memory: a full non-local block needs over {limit / GIB:.1f} GiB there (4 THW x THW maps)")

    busy: dict[str, dict[str, float]] = {}
    if device.type == "cpu" and args.busy:
        compared = [r for r in results if r.module in ("RCCA3D(R=3)", "NonLocal3D") and r.time_ms is not None]
        print(
            f"with {args.busy} other busy processes on the {os.cpu_count()} CPUs (running and paused in turn, "
            f"{args.repeats} rounds; quiet ms, busy ms, slowdown):"
        )
        for (site, module), (quiet, loaded) in busy_times(compared, device, args.busy, timing).items():
            busy.setdefault(site, {})[module] = loaded / quiet
            print(f"{site:<12} {module:<26} {quiet * 1e3:>11.1f} {loaded * 1e3:>9.1f}: x{loaded / quiet:.2f}")

    ratios = module_ratios(results, busy)
    runs: dict[str, float] = {}
    if args.runs and device.type == "cpu":
        rounds = 5
        print(
            f"training loop: the quick-start model and recipe, {args.loop_steps} steps on one repeated batch, "
            f"median of {rounds} epochs of each (in turn)"
        )
        loop = benchmark_training_loop(args.loop_steps, rounds=rounds)
        print(f"  trainer {loop['trainer_s'] * 1e3:.1f} ms/step, bare loop {loop['bare_s'] * 1e3:.1f} ms/step")
        print("quick-start `python train.py`, quiet, then with 1 other busy process:", flush=True)
        quiet, loaded = time_quickstart(0), time_quickstart(1)
        print(f"  {quiet:.0f} s, then {loaded:.0f} s")
        runs = {"trainer_s_per_step": loop["trainer_s"], "bare_s_per_step": loop["bare_s"]}
        runs |= {"quickstart_quiet_s": quiet, "quickstart_busy_s": loaded}
        ratios["trainer step / bare forward-backward-step loop"] = loop["trainer_s"] / loop["bare_s"]
        ratios["quick-start with 1 busy process / quiet"] = loaded / quiet
    print("ratios from this run (target where the README sets one):")
    for key, value in ratios.items():
        target = f"target <= {TARGETS[key]}" if key in TARGETS else ""
        print(f"  {key:<62} {value:>6.2f}  {target}")
    return {
        "device": where,
        "torch": torch.__version__,
        "results": [asdict(r) for r in results],
        "scaling": [asdict(r) for r in scaling],
        "busy_slowdown": busy,
        "runs": runs,
        "ratios": ratios,
    }


@dataclass
class WhileBusy:
    """`step` timed with the other busy processes running or paused (`busy_processes`): they are set so
    when the step is cleared, before its timed call."""

    step: Step
    running: bool
    set_running: Callable[[bool], None]

    def clear(self) -> None:
        self.set_running(self.running)
        self.step.clear()

    def __call__(self) -> None:
        self.step()


def busy_times(
    compared: list[ModuleResult], device: torch.device, count: int, timing: tuple[int, int]
) -> dict[tuple[str, str], tuple[float, float]]:
    """(site, module) -> median seconds of its pass with `count` other busy processes paused, then
    running. Every round times every pass with the processes paused and every pass with them running
    (`median_times`), so both medians come from the same minutes of the machine's own load."""
    steps = {
        (r.site, r.module): module_pass(r.module, r.input_shape[1], tuple(r.input_shape), device) for r in compared
    }
    with busy_processes(count) as set_running:
        phases = {
            (key, running): WhileBusy(step, running, set_running)
            for running in (False, True)
            for key, step in steps.items()
        }
        seconds = median_times(phases, device, *timing)
    return {key: (seconds[key, False], seconds[key, True]) for key in steps}


def module_ratios(results: list[ModuleResult], busy: dict[str, dict[str, float]]) -> dict[str, float]:
    """The figures the README's efficiency table reports, per site."""
    ratios = {}
    for site in SITES:
        by_name = {r.module: r for r in results if r.site == site}
        rcca, nl = by_name["RCCA3D(R=3)"], by_name["NonLocal3D"]
        if rcca.time_ms is None:  # the site's passes ran out of GPU memory together: no figures
            continue
        ratios[f"{site}: time, RCCA-3D / its q, k, v convolutions"] = rcca.time_ms / by_name["q,k,v convs x3"].time_ms
        if nl.time_ms is not None:
            ratios[f"{site}: time, RCCA-3D / non-local"] = rcca.time_ms / nl.time_ms
            ratios[f"{site}: saved for backward, RCCA-3D / non-local"] = rcca.saved_mib / nl.saved_mib
            ratios[f"{site}: peak memory, RCCA-3D / non-local"] = rcca.peak_mib / nl.peak_mib
            efficient = by_name["RCCA3D(memory_efficient)"]
            ratios[f"{site}: saved, memory-efficient RCCA-3D / non-local"] = efficient.saved_mib / nl.saved_mib
        if site in busy and len(busy[site]) == 2:
            slowdown = busy[site]
            ratios[f"{site}: slowdown when busy, RCCA-3D / non-local"] = (
                slowdown["RCCA3D(R=3)"] / slowdown["NonLocal3D"]
            )
    return ratios


# ---------------------------------------------------------------------------- training loop


class RepeatedBatch(torch.utils.data.Dataset):
    """`length` training items that are all the same clip and label, as the trainer's dataset gives them."""

    def __init__(self, clip: torch.Tensor, label: int, length: int) -> None:
        self.clip, self.label, self.length = clip, label, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: tuple[int, int]) -> dict:
        return {"clip": self.clip, "label": self.label, "failed": "", "reason": ""}


def quickstart_trainer(steps: int, run_dir: Path) -> tuple[Trainer, DataLoader]:
    """A Trainer of the quick-start model and recipe (`python train.py`) on `steps` batches of one repeated clip."""
    cfg = compose_config([])
    torch.manual_seed(0)
    model = build_model(cfg.backbone, cfg.module, GENERATED_CLASSES["synthetic"])
    frames, size, batch = cfg.backbone.num_frames, cfg.data.crop_size, cfg.trainer.batch_size
    dataset = RepeatedBatch(torch.randn(3, frames, size, size), 1, steps * batch)
    loader = DataLoader(dataset, batch_size=batch, sampler=EpochSampler(len(dataset), shuffle=False))
    trainer_cfg = replace(
        OmegaConf.to_object(cfg.trainer),
        epochs=1,
        effective_batch_size=batch,
        log_every=steps,
        checkpoint_every=0,
        progress=False,
    )
    optimizer_cfg = OmegaConf.to_object(cfg.optimizer)
    trainer = Trainer(
        model=model,
        model_without_ddp=model,
        train_loader=loader,
        test_loader=loader,
        class_names=[str(i) for i in range(GENERATED_CLASSES["synthetic"])],
        trainer_cfg=trainer_cfg,
        optimizer_cfg=optimizer_cfg,
        schedule_cfg=OmegaConf.to_object(cfg.schedule),
        run_dir=run_dir,
        config={},
        device=torch.device("cpu"),
    )
    return trainer, loader


def bare_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, clip_norm: float | None) -> None:
    """The least a training epoch does: forward, cross-entropy, backward, clipping as configured, SGD step."""
    model.train()
    for batch in loader:
        loss = nn.functional.cross_entropy(model(batch["clip"]), batch["label"])
        loss.backward()
        if clip_norm:
            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@dataclass
class Epoch:
    """One pass of `run` over its loader, as a timed step (`clear` has nothing to free: each epoch ends
    with its gradients cleared)."""

    run: Callable[[], None]

    def clear(self) -> None:
        pass

    def __call__(self) -> None:
        self.run()


def benchmark_training_loop(steps: int, rounds: int) -> dict[str, float]:
    """Seconds per step of the trainer and of `bare_epoch` on the same batches: the median of `rounds`
    epochs of each, after one warm-up epoch of each, timed in turn (`median_times`: the order reversed
    every other round, so that neither always goes first)."""
    with tempfile.TemporaryDirectory() as folder:
        trainer, loader = quickstart_trainer(steps, Path(folder))
        bare_optimizer = build_optimizer(trainer.model_without_ddp, trainer.optimizer_cfg)

        def trainer_epoch() -> None:
            trainer.position.epoch = 0
            trainer.train_epoch()

        def bare() -> None:
            bare_epoch(trainer.model_without_ddp, loader, bare_optimizer, trainer.optimizer_cfg.clip_grad_norm)

        epochs = {"trainer": Epoch(trainer_epoch), "bare": Epoch(bare)}
        seconds = median_times(epochs, torch.device("cpu"), warmup=1, repeats=rounds)
    return {"trainer_s": seconds["trainer"] / steps, "bare_s": seconds["bare"] / steps}


def time_quickstart(busy: int) -> float:
    """Wall seconds of `python train.py` (the quick-start, into a temporary folder) with `busy` other busy processes."""
    with tempfile.TemporaryDirectory() as folder, busy_processes(busy):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, str(REPO / "train.py"), f"hydra.run.dir={folder}/run", "trainer.progress=false"],
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return time.perf_counter() - start


# ---------------------------------------------------------------------------- data


def write_test_videos(
    folder: Path, count: int, frames: int, seed: int = 0, size: tuple[int, int] = (320, 240)
) -> list[VideoRecord]:
    """`count` MPEG-4 videos of `size` (width, height; multiples of 8) of smooth moving texture; their records."""
    rng = np.random.default_rng(seed)
    width, height = size
    records = []
    for i in range(count):
        coarse = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8)
        texture = coarse.repeat(8, axis=0).repeat(8, axis=1)  # height x width x 3
        dy, dx = rng.integers(-3, 4, size=2)
        video = np.stack([np.roll(texture, (t * dy, t * dx), axis=(0, 1)) for t in range(frames)])
        path = f"video_{i:03d}.mp4"
        write_video(folder / path, video, fps=30)
        records.append(VideoRecord(path, i % 2))
    return records


def clips_per_second(dataset: VideoDataset, batch: int, workers: int, epochs: int) -> float:
    """Clips/s over `epochs` timed epochs, after one untimed epoch that starts the workers."""
    loader = build_loader(dataset, batch_size=batch, num_workers=workers, train=True, seed=0)
    clips, start = 0, 0.0
    for epoch in range(epochs + 1):
        if epoch == 1:
            start, clips = time.perf_counter(), 0
        loader.sampler.set_epoch(epoch)
        for sample in loader:
            clips += len(sample["clip"])
    return clips / (time.perf_counter() - start)


def video_size(text: str) -> tuple[int, int]:
    """`--size WxH`: width and height, multiples of 8."""
    width, _, height = text.partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) % 8 == 0 and int(height) % 8 == 0):
        raise argparse.ArgumentTypeError(f"{text}: expected WIDTHxHEIGHT, multiples of 8 (e.g. 1280x720)")
    return int(width), int(height)


def loader_rates(root: Path, records: list[VideoRecord], args: argparse.Namespace) -> dict:
    """Training-pipeline clips/s of the videos under `root`, per clip sampling, backend and worker count (printed)."""
    transform = build_train_transform(224, [1.0, 0.875, 0.75, 0.66], flip=True)
    print(f"{'clips':<18} {'backend':<8} " + " ".join(f"{f'{w} workers':>10}" for w in args.workers) + "   (clips/s)")
    rates: dict[str, dict[str, dict[int, float]]] = {}
    for clip_name, (sampling, frames, interval) in CLIPS.items():
        choose = ClipSampling(sampling, frames, interval).train_indices
        rates[clip_name] = {}
        for backend in BACKENDS:
            dataset = VideoDataset(root, records, backend, choose, transform, seed=0)
            rates[clip_name][backend] = {w: clips_per_second(dataset, args.batch, w, args.epochs) for w in args.workers}
            row = " ".join(f"{rates[clip_name][backend][w]:>10.1f}" for w in args.workers)
            print(f"{clip_name:<18} {backend:<8} {row}", flush=True)
    return rates


def benchmark_data(args: argparse.Namespace) -> dict:
    width, height = args.size
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "videos"
        start = time.perf_counter()
        records = write_test_videos(root, args.videos, args.video_frames, size=args.size)
        print(
            f"wrote {args.videos} videos of {args.video_frames} frames, {width}x{height}, "
            f"in {time.perf_counter() - start:.1f}s"
        )
        # read_frames falls back to PyAV when decord fails: make sure decord reads these videos itself
        probe = read_frames_decord(root / records[0].path, lambda n: [0, n - 1])
        if probe.shape[-2:] != (height, width):
            raise RuntimeError(f"decord read frames of {tuple(probe.shape[-2:])}, expected {height} x {width}")
        rates = loader_rates(root, records, args)
        ratios = {clip: {w: rates[clip]["decord"][w] / rates[clip]["pyav"][w] for w in args.workers} for clip in rates}
        for clip, by_workers in ratios.items():
            print(f"decord / PyAV, {clip}: " + ", ".join(f"{w} workers x{r:.2f}" for w, r in by_workers.items()))
        result = {"cpus": torch.get_num_threads(), "clips_per_s": rates, "decord_over_pyav": ratios}
        if args.resized_short_side:
            resized = Path(tmp) / "resized"
            jobs = resize_jobs(root, resized, args.resized_short_side)
            start = time.perf_counter()
            summary = run_jobs(jobs, verb="resize", destination=resized, workers=2, bars=False, unit="video")
            if summary.failed:
                raise RuntimeError(f"resizing failed: {next(iter(summary.failed.items()))}")
            seconds = time.perf_counter() - start
            print(f"resized to short side {args.resized_short_side} (scripts/prepare.py resize) in {seconds:.1f}s:")
            after = loader_rates(resized, records, args)
            gains = {
                clip: {b: {w: after[clip][b][w] / rates[clip][b][w] for w in args.workers} for b in BACKENDS}
                for clip in rates
            }
            for clip, by_backend in gains.items():
                for backend, by_workers in by_backend.items():
                    line = ", ".join(f"{w} workers x{g:.2f}" for w, g in by_workers.items())
                    print(f"resized / original, {clip}, {backend}: {line}")
            result.update(resized_clips_per_s=after, resized_over_original=gains, resize_seconds=seconds)
    return result


# ---------------------------------------------------------------------------- training


@dataclass
class OptimizerStep:
    """Forward of `model` on `clips` under autocast to `dtype` (None: float32), cross-entropy against
    `labels`, backward (scaled by `scaler`, which is only enabled for float16) and one `optimizer` update."""

    model: nn.Module
    clips: torch.Tensor
    labels: torch.Tensor
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None

    def clear(self) -> None:
        """Drop the gradients of the last step."""
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self) -> None:
        """One training step."""
        with torch.autocast(self.clips.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss = nn.functional.cross_entropy(self.model(self.clips).float(), self.labels)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


@dataclass
class TrainingSettings:
    """How the training benchmark runs every row."""

    amp: str  # autocast dtype: off, bf16 or fp16
    batch: int  # clips per step
    size: int  # input height and width
    steps: int  # timed steps
    warmup: int  # untimed steps before them
    channels_last: bool  # channels-last weights (`to_channels_last`)


@dataclass
class TrainingResult:
    """One row of the training table; the timings and memory are None where the row ran out of GPU memory."""

    row: str
    backbone: str
    frames: int
    params_m: float
    clips_per_s: float | None
    ms_per_step: float | None
    peak_gib: float | None
    vs_plain: float | None = None  # clips/s over the plain backbone's row of the same run


def measure_training(row: str, device: torch.device, settings: TrainingSettings) -> TrainingResult:
    """Build the Table VI `row` with a `CLASSES`-way classifier and time its training steps.

    Args:
        row: an option of the `model` config group (`tsm_rcca`).
        device: where to run.
        settings: batch, input size, precision, layout and how many steps to time.

    Returns:
        Its parameters, clips/s, ms per step and peak GPU memory (None where it ran out of GPU memory).
    """
    cfg = compose_config(["experiment=none", f"model={row}", "dataset=kinetics400", "dataset.root=unused"])
    frames = cfg.backbone.num_frames
    torch.manual_seed(0)
    model = build_model(cfg.backbone, cfg.module, CLASSES).to(device).train()
    if settings.channels_last:
        to_channels_last(model)
    params_m = count_parameters(model) / 1e6
    dtype = autocast_dtype(settings.amp)
    batch, size = settings.batch, settings.size
    step = OptimizerStep(
        model,
        torch.randn(batch, 3, frames, size, size, device=device),
        torch.randint(0, CLASSES, (batch,), device=device),
        build_optimizer(model, cfg.optimizer),
        torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        dtype,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        seconds = median_time(step, device, settings.warmup, settings.steps)
    except torch.cuda.OutOfMemoryError:
        return TrainingResult(row, cfg.backbone.name, frames, params_m, None, None, None)
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    return TrainingResult(row, cfg.backbone.name, frames, params_m, batch / seconds, seconds * 1e3, peak)


def table_rows(text: str) -> list[str]:
    """Parse --rows: comma-separated names of `TABLE_VI` rows."""
    rows = [row.strip() for row in text.split(",") if row.strip()]
    unknown = [row for row in rows if row not in TABLE_VI]
    if unknown or not rows:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or text!r}: choose from {', '.join(TABLE_VI)}")
    return rows


def optional(value: float | None, spec: str, width: int) -> str:
    """`value` formatted by `spec`, or "-" when there is none, right-aligned in `width` characters."""
    return f"{'-' if value is None else format(value, spec):>{width}}"


def benchmark_training(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    given = {name: getattr(args, name) for name in TRAINING_DEFAULTS[device.type]}
    chosen = {name: TRAINING_DEFAULTS[device.type][name] if value is None else value for name, value in given.items()}
    settings = TrainingSettings(args.amp, channels_last=args.channels_last, **chosen)
    batch, size = settings.batch, settings.size
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} thread(s)"
    print(
        f"device: {device} ({where}); torch {torch.__version__}; amp {settings.amp}"
        f"{', channels-last' if settings.channels_last else ''}; batch {batch} at {size}x{size}; "
        f"median of {settings.steps} step(s) after {settings.warmup} warm-up"
    )
    defaulted = [f"{name} {chosen[name]}" for name, value in given.items() if value is None]
    if device.type == "cpu" and defaulted:
        print(
            f"on the CPU: defaults {', '.join(defaulted)} (GPU: {TRAINING_DEFAULTS['cuda']}), small enough to finish "
            "in a couple of minutes on 2 cores; CPU rates say little about GPU training"
        )
    print(f"{'row':<14} {'frames':>6} {'params M':>9} {'clips/s':>9} {'ms/step':>9} {'peak GiB':>9} {'vs plain':>9}")
    results: list[TrainingResult] = []
    for row in args.rows:
        result = measure_training(row, device, settings)
        results.append(result)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the row's model and optimizer state are gone: start the next one afresh
        plain = next((r for r in results if r.row == result.backbone), None)
        if plain is not None and plain.clips_per_s and result.clips_per_s:
            result.vs_plain = result.clips_per_s / plain.clips_per_s
        print(
            f"{row:<14} {result.frames:>6} {result.params_m:>9.2f} {optional(result.clips_per_s, '.2f', 9)} "
            f"{optional(result.ms_per_step, '.1f', 9)} {optional(result.peak_gib, '.2f', 9)} "
            f"{optional(result.vs_plain, '.2f', 9)}{'  out of GPU memory' if result.clips_per_s is None else ''}",
            flush=True,
        )
    if any(r.vs_plain is None and r.clips_per_s for r in results):
        print("vs plain: '-' where the row's plain backbone (tsm, mfnet) was not measured before it in this run")

    videos = TRAIN_VIDEOS
    unit = "GPU" if device.type == "cuda" else "CPU"
    print(
        f"{unit} hours per training epoch at these rates (batch {batch}, {size}x{size}): a compute-only lower "
        "bound, no video decoding, augmentation or loading. Training videos: "
        + ", ".join(f"{name} {count}" for name, count in videos.items())
    )
    print(f"{'row':<14} " + " ".join(f"{name:>18}" for name in videos))
    hours = {}
    for result in results:
        rate = result.clips_per_s
        hours[result.row] = {name: count / rate / 3600 if rate else None for name, count in videos.items()}
        print(f"{result.row:<14} " + " ".join(optional(h, ".2f", 18) for h in hours[result.row].values()))
    return {
        "device": where,
        "torch": torch.__version__,
        **asdict(settings),
        "results": [asdict(r) for r in results],
        "train_videos": videos,
        "epoch_hours": {"unit": f"{unit} hours", "lower_bound": "compute only, no data loading", "rows": hours},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    runs_models = argparse.ArgumentParser(add_help=False)
    runs_models.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    runs_models.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (default: all)")
    modules = commands.add_parser("modules", parents=[runs_models], help="RCCA-3D vs non-local: time and memory")
    modules.add_argument("--batch", type=int, default=1, help="clips per pass (default 1)")
    modules.add_argument("--frames", type=int, default=8, help="T of the feature maps (default 8)")
    modules.add_argument("--repeats", type=int, default=5, help="timed passes per module (and busy rounds)")
    modules.add_argument("--warmup", type=int, default=1)
    modules.add_argument("--busy", type=int, default=2, help="other busy processes for the slowdown figure (0: skip)")
    modules.add_argument("--shrink", type=int, default=1, help="divide channels and sizes by this (a smoke test)")
    modules.add_argument(
        "--no-runs",
        dest="runs",
        action="store_false",
        help="skip the CPU training figures (trainer overhead, quick-start quiet and busy: a few minutes)",
    )
    modules.add_argument("--loop-steps", type=int, default=20, help="steps per timed epoch of the training-loop figure")
    data = commands.add_parser("data", help="decord vs PyAV: loader throughput")
    data.add_argument("--videos", type=int, default=20)
    data.add_argument("--video-frames", type=int, default=90)
    data.add_argument("--batch", type=int, default=4)
    data.add_argument("--epochs", type=int, default=3, help="timed epochs per setting (after one warm-up epoch)")
    data.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    data.add_argument(
        "--size", type=video_size, default=(320, 240), help="WIDTHxHEIGHT of the videos (default 320x240)"
    )
    data.add_argument(
        "--resized-short-side",
        type=int,
        help="also measure the set resized to this short side (scripts/prepare.py resize)",
    )
    training = commands.add_parser("training", parents=[runs_models], help="Table VI models: training clips/s")
    training.add_argument(
        "--rows",
        type=table_rows,
        default=list(TABLE_VI),
        help=f"comma-separated Table VI rows (default {','.join(TABLE_VI)})",
    )
    training.add_argument("--batch", type=int, help="clips per step (default 16 on a GPU, 2 on the CPU)")
    training.add_argument("--size", type=int, help="input height and width (default 224 on a GPU, 112 on the CPU)")
    training.add_argument("--amp", choices=list(AMP_DTYPES), default="off", help="autocast dtype (default off)")
    training.add_argument("--steps", type=int, help="timed steps (default 10 on a GPU, 3 on the CPU)")
    training.add_argument("--warmup", type=int, help="untimed steps first (default 3 on a GPU, 1 on the CPU)")
    training.add_argument(
        "--channels-last", action="store_true", help="channels-last weights, as trainer.channels_last"
    )
    args = parser.parse_args(argv)
    # The CPU profiler (peak memory) would log each of its starts and stops on stderr.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    print(f"machine: {cores} CPUs, load average {load_before:.2f} (other processes slow CPU timings down)")
    warn_if_loaded(load_before, cores, "at the start")
    summary = {"modules": benchmark_modules, "data": benchmark_data, "training": benchmark_training}[args.command](args)
    summary["load_average"] = [load_before, os.getloadavg()[0]]
    print(f"load average at the end: {summary['load_average'][1]:.2f}")
    warn_if_loaded(summary["load_average"][1], cores, "at the end", own=args.command == "modules" and args.busy)
    print(json.dumps(summary))


def warn_if_loaded(load: float, cores: int, when: str, own: int = 0) -> None:
    """Print a warning when the 1-minute load average, less `own` busy processes this run started, exceeds the cores."""
    if load - own > cores:
        print(
            f"WARNING: load average {load:.2f} {when}{f' ({own} of it from this run)' if own else ''} is above the "
            f"{cores} CPUs: other work shares this machine and CPU figures measure it too; rerun on a quiet machine"
        )


if __name__ == "__main__":
    main()
