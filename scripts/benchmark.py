"""Speed and memory benchmarks: `python scripts/benchmark.py modules|data [options]`.

modules  Forward + backward time (median of --repeats runs after --warmup) and peak memory
         of RCCA-3D (structure a, R=3, C_d=1/4) and the non-local block (with and without
         1x2x2 subsampling) at the paper's TSM-ResNet-50 sites for 8-frame clips at 224:
         conv3_3 (C=512, 28x28) and conv4_5 (C=1024, 14x14). Runs on CUDA when available
         (peak = torch.cuda.max_memory_allocated), else on the CPU (peak = the largest
         total of live tensors allocated during the pass, from torch.profiler's memory
         events). Memory counts what the pass allocates on top of the input and weights.
         CPU runs use all of torch's threads unless --threads says otherwise; on a CPU shared
         with other work, multi-threaded timings measure the load more than the modules
         (the load average is printed before and after).
data     Decode + augmentation throughput (clips/s) of the training pipeline
         (VideoDataset -> build_loader, MultiScaleCrop to 224, flip) on 320x240 MPEG-4
         videos it writes to a temporary folder: 8-frame TSM segment clips and 16-frame
         dense clips (every 2nd frame, MF-Net's recipe), for 0, 1 and 2 loader workers,
         with decord and PyAV.

Each prints a table, the ratios, and a last line with one JSON object of the results.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from rcca.data.annotations import VideoRecord
from rcca.data.build import ClipSampling, build_loader
from rcca.data.datasets import VideoDataset
from rcca.data.decoding import read_frames_decord
from rcca.data.synthetic import write_video
from rcca.data.transforms import build_train_transform
from rcca.models.attention import RCCA3D
from rcca.models.nonlocal_block import NonLocal3D

MIB = 2**20

# Feature maps of TSM-ResNet-50 at the paper's insertion sites: name -> (C, H = W).
SITES = {"conv3_3": (512, 28), "conv4_5": (1024, 14)}
MODULES: dict[str, Callable[[int], nn.Module]] = {
    "RCCA3D(R=3)": lambda c: RCCA3D(c),
    "NonLocal3D": lambda c: NonLocal3D(c),
    "NonLocal3D(subsample)": lambda c: NonLocal3D(c, subsample=True),
}
# Clip kinds of the data benchmark: name -> (sampling, frames per clip, dense step).
CLIPS = {"tsm 8x1 segment": ("segment", 8, 1), "mfnet 16x2 dense": ("dense", 16, 2)}
BACKENDS = ("decord", "pyav")


# ---------------------------------------------------------------------------- modules


@dataclass
class ModuleResult:
    """One row of the modules table: median forward + backward time and peak memory."""

    site: str
    module: str
    input_shape: list[int]
    time_ms: float
    peak_mib: float


@dataclass
class TrainingPass:
    """Forward of `module` on `x`, then backward of the fixed upstream gradient `grad` (same shape)."""

    module: nn.Module
    x: torch.Tensor
    grad: torch.Tensor

    def clear(self) -> None:
        """Free the gradients of the previous pass, so each pass allocates its own."""
        self.module.zero_grad(set_to_none=True)
        self.x.grad = None

    def __call__(self) -> None:
        self.module(self.x).backward(self.grad)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(step: TrainingPass, device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of `step` in seconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        step.clear()
        step()
    times = []
    for _ in range(repeats):
        step.clear()
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory(step: TrainingPass, device: torch.device) -> int:
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


def benchmark_modules(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} thread(s)"
    print(
        f"device: {device} ({where}); batch {args.batch} clip(s) of {args.frames} frames; "
        f"median of {args.repeats} after {args.warmup} warm-up"
    )
    print(f"{'site':<8} {'module':<22} {'input N x C x T x H x W':<26} {'fwd+bwd ms':>11} {'peak MiB':>9}")
    results: list[ModuleResult] = []
    for site, (channels, size) in SITES.items():
        shape = (args.batch, channels, args.frames, size, size)
        for name, make in MODULES.items():
            torch.manual_seed(0)
            module = make(channels).to(device)
            x = torch.randn(shape, device=device, requires_grad=True)
            step = TrainingPass(module, x, torch.randn(shape, device=device))
            seconds = median_time(step, device, args.warmup, args.repeats)
            result = ModuleResult(site, name, list(shape), seconds * 1e3, peak_memory(step, device) / MIB)
            results.append(result)
            print(
                f"{site:<8} {name:<22} {' x '.join(map(str, shape)):<26} "
                f"{result.time_ms:>11.1f} {result.peak_mib:>9.1f}",
                flush=True,
            )
            del module, x, step

    ratios = {}
    for site in SITES:
        by_name = {r.module: r for r in results if r.site == site}
        rcca = by_name["RCCA3D(R=3)"]
        for other in ("NonLocal3D", "NonLocal3D(subsample)"):
            key = f"{site}: RCCA / {other}"
            ratios[key] = {
                "time": rcca.time_ms / by_name[other].time_ms,
                "memory": rcca.peak_mib / by_name[other].peak_mib,
            }
            print(f"{key:<40} time x{ratios[key]['time']:.2f}  memory x{ratios[key]['memory']:.2f}")
    return {"device": where, "results": [asdict(r) for r in results], "ratios": ratios}


# ---------------------------------------------------------------------------- data


def write_test_videos(folder: Path, count: int, frames: int, seed: int = 0) -> list[VideoRecord]:
    """`count` 320x240 MPEG-4 videos of smooth moving texture; returns their records."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        coarse = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
        texture = coarse.repeat(8, axis=0).repeat(8, axis=1)  # 240 x 320 x 3
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


def benchmark_data(args: argparse.Namespace) -> dict:
    transform = build_train_transform(224, [1.0, 0.875, 0.75, 0.66], flip=True)
    rates: dict[str, dict[str, dict[int, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        records = write_test_videos(root, args.videos, args.video_frames)
        print(
            f"wrote {args.videos} videos of {args.video_frames} frames, 320x240, in {time.perf_counter() - start:.1f}s"
        )
        # read_frames falls back to PyAV when decord fails: make sure decord reads these videos itself
        probe = read_frames_decord(root / records[0].path, lambda n: [0, n - 1])
        if probe.shape[-2:] != (240, 320):
            raise RuntimeError(f"decord read frames of {tuple(probe.shape[-2:])}, expected 240 x 320")
        print(
            f"{'clips':<18} {'backend':<8} " + " ".join(f"{f'{w} workers':>10}" for w in args.workers) + "   (clips/s)"
        )
        for clip_name, (sampling, frames, interval) in CLIPS.items():
            choose = ClipSampling(sampling, frames, interval).train_indices
            rates[clip_name] = {}
            for backend in BACKENDS:
                dataset = VideoDataset(root, records, backend, choose, transform, seed=0)
                rates[clip_name][backend] = {
                    w: clips_per_second(dataset, args.batch, w, args.epochs) for w in args.workers
                }
                row = " ".join(f"{rates[clip_name][backend][w]:>10.1f}" for w in args.workers)
                print(f"{clip_name:<18} {backend:<8} {row}", flush=True)
    ratios = {clip: {w: rates[clip]["decord"][w] / rates[clip]["pyav"][w] for w in args.workers} for clip in rates}
    for clip, by_workers in ratios.items():
        print(f"decord / PyAV, {clip}: " + ", ".join(f"{w} workers x{r:.2f}" for w, r in by_workers.items()))
    return {"cpus": torch.get_num_threads(), "clips_per_s": rates, "decord_over_pyav": ratios}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    modules = commands.add_parser("modules", help="RCCA-3D vs non-local: time and memory")
    modules.add_argument("--batch", type=int, default=1, help="clips per pass (default 1)")
    modules.add_argument("--frames", type=int, default=8, help="T of the feature maps (default 8)")
    modules.add_argument("--repeats", type=int, default=5)
    modules.add_argument("--warmup", type=int, default=1)
    modules.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    modules.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (default: all)")
    data = commands.add_parser("data", help="decord vs PyAV: loader throughput")
    data.add_argument("--videos", type=int, default=20)
    data.add_argument("--video-frames", type=int, default=90)
    data.add_argument("--batch", type=int, default=4)
    data.add_argument("--epochs", type=int, default=3, help="timed epochs per setting (after one warm-up epoch)")
    data.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load_before:.2f} (other processes slow CPU timings down)")
    summary = benchmark_modules(args) if args.command == "modules" else benchmark_data(args)
    summary["load_average"] = [load_before, os.getloadavg()[0]]
    print(f"load average at the end: {summary['load_average'][1]:.2f}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
