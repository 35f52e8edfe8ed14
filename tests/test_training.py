"""Training behaviour: accumulation equivalence (1 and 2 processes), NaN stop, aggregation, schedule."""

from __future__ import annotations

import logging
import os
import re
import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rcca.config import BackboneConfig, ModuleConfig, OptimizerConfig, ScheduleConfig, TrainerConfig
from rcca.data.build import VideoLoader
from rcca.data.samplers import EpochSampler
from rcca.engine.checkpoints import read_run_checkpoint
from rcca.engine.evaluation import _first_occurrence, predict_videos
from rcca.engine.metrics import video_metrics
from rcca.engine.optim import build_optimizer, build_scheduler, lr_factor
from rcca.engine.resuming import resume_checkpoint
from rcca.engine.runtime import leave_outputs_to_rank_zero
from rcca.engine.trainer import Trainer, TrainingDiverged, accumulation_steps, work_after_epoch
from rcca.errors import TrainingStopped, UserError
from rcca.models.attention import RCCA3D
from rcca.models.build import build_model, to_channels_last
from rcca.progress import Ahead


class PointsDataset(Dataset):
    """Fixed random 'clips' (C x T x H x W = 2 x 2 x 2 x 2) with labels, in the trainer's dict format."""

    def __init__(self, size: int = 32, scale: float = 1.0) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(size, 2, 2, 2, 2, generator=generator) * scale
        self.y = torch.randint(0, 3, (size,), generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key):
        _, index = key
        return {"clip": self.x[index], "label": self.y[index], "index": index, "ok": True, "failed": "", "reason": ""}


class LinearClassifier(nn.Module):
    """No BatchNorm, no dropout: the update is a pure function of the batch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.hidden = nn.Linear(16, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.hidden(x.flatten(1))))

    def get_classifier(self) -> nn.Linear:
        return self.fc


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


def one_update(
    batch_size: int,
    effective: int,
    rank: int = 0,
    world_size: int = 1,
    tmp: Path | None = None,
    scale=1.0,
    amp: str = "off",
    clip: float | None = None,
    device: str = "cpu",
):
    """Train exactly one optimizer update and return the weights (on the CPU)."""
    dataset = PointsDataset(scale=scale)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(len(dataset), True, 0, rank, world_size))
    model = LinearClassifier().to(device)
    runner = nn.parallel.DistributedDataParallel(model) if world_size > 1 else None
    cfg = TrainerConfig(
        epochs=1, batch_size=batch_size, effective_batch_size=effective, log_every=1000, progress=False, amp=amp
    )
    trainer = Trainer(
        model=runner or model,
        model_without_ddp=model,
        train_loader=loader,
        test_loader=loader,
        class_names=["a", "b", "c"],
        trainer_cfg=cfg,
        optimizer_cfg=OptimizerConfig(lr=0.5, weight_decay=0.01, clip_grad_norm=clip),
        schedule_cfg=ScheduleConfig(),
        run_dir=tmp or Path("."),
        config={},
        device=torch.device(device),
        world_size=world_size,
    )
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    trainer.updates_per_epoch = 1
    trainer.train_epoch()
    assert trainer.position.step == 1
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _distributed_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    weights = one_update(batch_size=2, effective=8, rank=rank, world_size=2)
    if rank == 0:
        torch.save(weights, out)
    dist.destroy_process_group()


def test_accumulation_equals_one_big_batch(tmp_path):
    reference = one_update(batch_size=8, effective=8)
    accumulated = one_update(batch_size=2, effective=8)
    untouched = LinearClassifier().state_dict()
    assert any(not torch.equal(reference[k], untouched[k]) for k in reference)
    for key in reference:
        torch.testing.assert_close(accumulated[key], reference[key], rtol=1e-5, atol=1e-6)

    out = tmp_path / "ddp.pt"
    port = 29500 + os.getpid() % 1000
    mp.spawn(_distributed_worker, args=(port, str(out)), nprocs=2, join=True)
    distributed = torch.load(out)
    for key in reference:
        torch.testing.assert_close(distributed[key], reference[key], rtol=1e-5, atol=1e-6)


def _relative_difference(update: dict, reference: dict, start: dict) -> float:
    """|update - reference| / |reference - start| over all weights, as parameter vectors."""
    delta = torch.cat([(update[k] - start[k]).flatten() for k in start])
    expected = torch.cat([(reference[k] - start[k]).flatten() for k in start])
    return float((delta - expected).norm() / expected.norm())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("amp, tolerance", [("fp16", 0.01), ("bf16", 0.05)])
def test_mixed_precision_update_matches_float32(device, amp, tolerance):
    # An fp16 update goes through the gradient scaler: a missing unscale (before clipping or
    # stepping) would make the update 2**16 times too large or clip the wrong norm.
    start = LinearClassifier().state_dict()
    for clip in (None, 0.05):
        reference = one_update(batch_size=2, effective=8, clip=clip, device=device)
        mixed = one_update(batch_size=2, effective=8, clip=clip, device=device, amp=amp)
        difference = _relative_difference(mixed, reference, start)
        assert 1e-5 < difference < tolerance, clip  # low precision did run, and the update is still right
    unclipped = one_update(batch_size=2, effective=8, device=device)
    assert _relative_difference(reference, unclipped, start) > 0.5  # the clip above was active


@pytest.fixture
def full_float32() -> Iterator[None]:
    """Full float32 on CUDA: PyTorch's CUDA convolutions default to TF32 (10-bit mantissa), whose rounding
    (~1e-3) differs between two layouts' kernels and would hide a layout error of that size."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backbone", ["tsm", "mfnet"])
def test_channels_last_keeps_outputs_and_gradients(device, backbone, full_float32):
    frames = 8 if backbone == "tsm" else 16
    cfg = BackboneConfig(name=backbone, depth=18, width=16, num_frames=frames, dropout=0.0)
    torch.manual_seed(0)
    model = build_model(cfg, ModuleConfig(name="rcca", positions=["conv3_1"]), num_classes=5).to(device)
    clips = torch.randn(2, 3, frames, 48, 48, device=device)
    labels = torch.tensor([1, 3], device=device)
    reference = model(clips)
    nn.functional.cross_entropy(reference, labels).backward()
    gradients = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad()

    to_channels_last(model)
    # RCCA-3D applies its convolutions' weights itself, channels-last: its output is watched instead.
    contexts = [m for m in model.modules() if isinstance(m, RCCA3D)]
    inside = {id(m) for context in contexts for m in context.modules()}
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)) and id(m) not in inside]
    convs += contexts
    layouts = []  # whether each convolution's output came out channels-last: the layout really ran
    for conv in convs:
        conv.register_forward_hook(
            lambda module, args, out: layouts.append(
                out.is_contiguous(memory_format=torch.channels_last if out.dim() == 4 else torch.channels_last_3d)
            )
        )
    output = model(clips)
    assert len(layouts) >= len(convs) and all(layouts)
    torch.testing.assert_close(output, reference, rtol=1e-4, atol=1e-5)
    nn.functional.cross_entropy(output, labels).backward()
    # Float32 rounding in another summation order, amplified by batch-2 BatchNorm: close, not equal.
    changed = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert float((changed - gradients).norm() / gradients.norm()) < 0.05


class PointsViews(PointsDataset):
    """PointsDataset as test videos of one view each (the `clip` of a test item is V x C x T x H x W)."""

    def __getitem__(self, key):
        item = super().__getitem__(key)
        return {**item, "clip": item["clip"][None]}


def cpu_trainer(
    train_loader: DataLoader,
    tmp_path: Path,
    cfg: TrainerConfig,
    config: dict | None = None,
    model: nn.Module | None = None,
    writer=None,
) -> Trainer:
    """A Trainer on the CPU of `model` (a fresh LinearClassifier by default), validated on PointsViews."""
    model = model or LinearClassifier()
    test_set = PointsViews()
    test_loader = DataLoader(test_set, batch_size=4, sampler=EpochSampler(len(test_set), False))
    return Trainer(
        model=model,
        model_without_ddp=model,
        train_loader=train_loader,
        test_loader=test_loader,
        class_names=["a", "b", "c"],
        trainer_cfg=cfg,
        optimizer_cfg=OptimizerConfig(),
        schedule_cfg=ScheduleConfig(),
        run_dir=tmp_path,
        config=config or {},
        device=torch.device("cpu"),
        writer=writer,
    )


def _trainer(amp: str, tmp_path: Path) -> Trainer:
    dataset = PointsDataset()
    loader = DataLoader(dataset, batch_size=4, sampler=EpochSampler(len(dataset), True))
    cfg = TrainerConfig(epochs=1, batch_size=4, effective_batch_size=4, progress=False, amp=amp)
    return cpu_trainer(loader, tmp_path, cfg)


def test_resume_restores_the_gradient_scale_across_precisions(tmp_path):
    saved = _trainer("fp16", tmp_path)
    saved.scaler.scale(torch.ones(()))  # the scale tensor is created on first use
    saved.scaler.update(new_scale=1024.0)
    state = saved.checkpoint()
    resumed = _trainer("fp16", tmp_path)
    resumed.restore(state)
    assert resumed.scaler.get_scale() == 1024.0
    # Into a float32 or bf16 run the scale is dropped; from one, an fp16 run starts at the initial scale.
    _trainer("bf16", tmp_path).restore(state)
    fresh = _trainer("fp16", tmp_path)
    fresh.restore(_trainer("off", tmp_path).checkpoint())
    assert fresh.scaler.get_scale() == 2.0**16


def test_accumulation_steps_must_divide():
    assert accumulation_steps(128, 16, 2) == 4
    assert accumulation_steps(128, 8, 1) == 16
    with pytest.raises(UserError, match="trainer.effective_batch_size=100"):
        accumulation_steps(100, 16, 2)


def test_nan_loss_stops_with_step_and_checkpoint(tmp_path):
    # Non-finite from the first forward: no state of this run is known to be good, and the message says so.
    with pytest.raises(TrainingDiverged, match=r"loss is (nan|inf) .* at update 1 .*before any update of this run"):
        one_update(batch_size=4, effective=4, tmp=tmp_path, scale=float("nan"))


def _nan_on_one_rank_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        one_update(batch_size=2, effective=8, rank=rank, world_size=2, scale=float("nan") if rank == 1 else 1.0)
    except TrainingDiverged:
        Path(out, f"stopped{rank}").write_text("")
    dist.destroy_process_group()


def test_nan_loss_on_one_process_stops_every_process(tmp_path):
    # Rank 0's loss is finite: it must stop with rank 1 rather than wait for it in the gradient all-reduce.
    mp.spawn(_nan_on_one_rank_worker, args=(29500 + (os.getpid() + 13) % 1000, str(tmp_path)), nprocs=2, join=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stopped0", "stopped1"]


def test_the_classifier_group_is_what_get_classifier_returns():
    model = LinearClassifier()
    optimizer = build_optimizer(model, OptimizerConfig(lr=0.1, classifier_lr_mult=10.0, weight_decay=1e-4))
    lr = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert len(lr) == len(list(model.parameters()))  # each parameter in exactly one group
    assert lr[id(model.fc.weight)] == lr[id(model.fc.bias)] == pytest.approx(1.0)
    assert lr[id(model.hidden.weight)] == lr[id(model.hidden.bias)] == pytest.approx(0.1)
    assert decay[id(model.fc.weight)] == decay[id(model.hidden.weight)] == 1e-4  # biases are not decayed
    assert decay[id(model.fc.bias)] == decay[id(model.hidden.bias)] == 0.0


def test_lr_schedule_counts_updates():
    cfg = ScheduleConfig(milestones=[2, 4], factor=0.1, warmup_epochs=1)
    per_epoch = 10
    assert lr_factor(0, per_epoch, cfg) == pytest.approx(0.1)  # warm-up: 1/10
    assert lr_factor(9, per_epoch, cfg) == pytest.approx(1.0)
    assert lr_factor(19, per_epoch, cfg) == pytest.approx(1.0)
    assert lr_factor(20, per_epoch, cfg) == pytest.approx(0.1)
    assert lr_factor(40, per_epoch, cfg) == pytest.approx(0.01)


class ViewsDataset(Dataset):
    """Videos whose V views are constant tensors: the model below turns them into known scores."""

    def __init__(self, view_values: list[list[float]], labels: list[int]) -> None:
        self.view_values, self.labels = view_values, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key):
        _, index = key
        clip = torch.tensor(self.view_values[index]).view(-1, 1, 1, 1, 1)  # V x C x T x H x W
        return {"clip": clip, "label": self.labels[index], "index": index, "ok": True, "failed": "", "reason": ""}


class ValueToLogits(nn.Module):
    """Logits [log v, log (1 - v)]: softmax gives probabilities exactly (v, 1 - v)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 2)

    def forward(self, x):
        v = x.flatten(1)[:, :1]
        return torch.cat([v.log(), (1 - v).log()], dim=1)

    def get_classifier(self) -> nn.Linear:
        return self.fc


def test_video_scores_are_mean_of_view_probabilities():
    # 3 videos x 2 views; with 2 ranks, EpochSampler pads rank 1 with video 0 again.
    views = [[0.9, 0.5], [0.2, 0.4], [0.3, 0.9]]
    labels = [0, 1, 0]
    dataset = ViewsDataset(views, labels)
    shares = [list(EpochSampler(3, shuffle=False, rank=r, world_size=2)) for r in range(2)]
    assert [i for _, i in shares[0]] == [0, 2] and [i for _, i in shares[1]] == [1, 0]

    model = ValueToLogits()
    gathered = []
    for rank in range(2):
        loader = DataLoader(dataset, batch_size=2, sampler=EpochSampler(3, False, rank=rank, world_size=2))
        gathered.append(predict_videos(model, loader, torch.device("cpu")))
    # What the gather returns: rank 0's rows, then rank 1's (duplicate of video 0 included).
    indices = torch.tensor(sum((g[2] for g in gathered), []))
    unique, first = _first_occurrence(torch.tensor([0, 2, 1, 0]))
    assert unique.tolist() == [0, 1, 2] and first.tolist() == [0, 2, 1]
    assert sorted(indices.tolist()) == [0, 0, 1, 2]

    scores, video_labels, order, _ = gathered[0]
    expected = {0: 0.7, 2: 0.6}
    for row, index in enumerate(order):
        assert scores[row, 0].item() == pytest.approx(expected[index])
    metrics = video_metrics(torch.tensor([[0.7, 0.3], [0.3, 0.7], [0.6, 0.4]]), torch.tensor(labels), ["x", "y"])
    assert metrics["top1"] == pytest.approx(100.0)
    assert metrics["confusion_matrix"] == [[2, 0], [0, 1]]
    wrong = video_metrics(torch.tensor([[0.2, 0.8], [0.3, 0.7], [0.6, 0.4]]), torch.tensor(labels), ["x", "y"])
    assert wrong["top1"] == pytest.approx(200 / 3)
    assert wrong["per_class_accuracy"] == {"x": 50.0, "y": 100.0}
    assert wrong["mean_class_accuracy"] == pytest.approx(75.0)


class HangingDataset(PointsDataset):
    """Item 5 never finishes loading, like a decoder stuck on a malformed file."""

    def __getitem__(self, key):
        if key[1] == 5:
            import time

            time.sleep(3600)
        return super().__getitem__(key)


def test_hung_worker_stops_the_run_with_a_resumable_error(tmp_path):
    dataset = HangingDataset()
    sampler = EpochSampler(len(dataset), shuffle=False)
    loader = VideoLoader(dataset, batch_size=4, sampler=sampler, num_workers=1, timeout=2)  # the project's loader
    cfg = TrainerConfig(epochs=1, batch_size=4, effective_batch_size=4, log_every=1000, progress=False)
    trainer = cpu_trainer(loader, tmp_path, cfg)
    with pytest.raises(UserError, match=r"epoch 1: data loading failed .*resume=auto"):
        trainer.fit()
    assert trainer.position.step == 1  # the batch before the hung one was trained on


class SignallingDataset(PointsDataset):
    """Sends `signum` to this process while item 5 (in the second batch of 4) loads, as `kill` would."""

    def __init__(self, signum: int) -> None:
        super().__init__()
        self.signum = signum

    def __getitem__(self, key):
        if key[1] == 5:
            os.kill(os.getpid(), self.signum)
        return super().__getitem__(key)


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGUSR2, 143)])
def test_a_stop_signal_saves_the_last_update_and_raises_training_stopped(tmp_path, signum, exit_code):
    dataset = SignallingDataset(signum)
    loader = DataLoader(dataset, batch_size=4, sampler=EpochSampler(len(dataset), shuffle=False))
    cfg = TrainerConfig(epochs=2, batch_size=4, effective_batch_size=4, log_every=1000, progress=False)
    trainer = cpu_trainer(loader, tmp_path, cfg)
    handler = signal.getsignal(signum)
    with pytest.raises(TrainingStopped) as stopped:
        trainer.fit()
    assert stopped.value.exit_code == exit_code
    assert f"saved {tmp_path / 'last.pt'}. Continue with: resume=auto" in str(stopped.value)
    # What a requeue needs (rcca.engine.requeue): the signal, the handler fit replaced for it, the run's resume.
    assert (stopped.value.signum, stopped.value.previous_handler, stopped.value.resume) == (signum, handler, None)
    assert signal.getsignal(signum) is handler  # fit's handlers are gone
    # The update of the batch being loaded completes, then training stops: after 2 updates of epoch 1.
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (saved["step"], saved["epoch"], saved["batches_in_epoch"], saved["validated"]) == (2, 0, 2, True)
    for key, value in trainer.model_without_ddp.state_dict().items():
        assert torch.equal(saved["model"][key], value), key


@pytest.mark.parametrize(
    "epoch, eval_every, validation_s, expected",
    [
        # Epoch 1 of 6, validated every 2: 5 later epochs of 8 batches, validations after epochs 2, 4 and 6.
        (0, 2, None, Ahead(label="run", items=40, untimed="3 validations")),
        (0, 2, 1.5, Ahead(label="run", items=40, seconds=4.5)),
        # Epoch 5 of 6: one later epoch; epoch 5 is not validated, epoch 6 (the last) is.
        (4, 2, 2.0, Ahead(label="run", items=8, seconds=2.0)),
        # The last epoch, validated every 4: only its own (last) validation is left.
        (5, 4, None, Ahead(label="run", items=0, untimed="1 validation")),
        (5, 4, 3.0, Ahead(label="run", items=0, seconds=3.0)),
    ],
)
def test_the_runs_eta_counts_later_epochs_and_the_validations_still_due(epoch, eval_every, validation_s, expected):
    assert work_after_epoch(epoch, 6, eval_every, 8, validation_s) == expected


def test_plain_epoch_lines_carry_the_runs_eta(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rcca.progress")
    dataset = PointsDataset()
    loader = DataLoader(dataset, batch_size=4, sampler=EpochSampler(len(dataset), shuffle=True))
    cfg = TrainerConfig(epochs=2, batch_size=4, effective_batch_size=4, log_every=1000, progress=False)
    cpu_trainer(loader, tmp_path, cfg).fit()
    epochs = [
        r.getMessage() for r in caplog.records if r.name == "rcca.progress" and r.getMessage().startswith("epoch")
    ]
    # Epoch 1 has not timed a validation yet: they are named; epoch 2 counts epoch 1's validation time.
    assert re.fullmatch(
        r"epoch 1/2: 8/8 batches \(100%\), [\d.]+ batch/s, in \d+ s, run ETA \d+ s \+ 2 validations", epochs[0]
    )
    assert re.fullmatch(r"epoch 2/2: 8/8 batches \(100%\), [\d.]+ batch/s, in \d+ s, run ETA \d+ s", epochs[1])


# What last.pt and best.pt hold on disk: files of every rcca version must keep loading.
ON_DISK_KEYS = {
    "model",
    "config",
    "classes",
    "optimizer",
    "scheduler",
    "scaler",
    "rng",
    "epoch",
    "batches_in_epoch",
    "step",
    "best_top1",
    "validated",
    "config_history",
    "failed_train",
}


def test_a_checkpoint_keeps_its_layout_and_resumes_where_it_was_saved(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rcca.engine.trainer")
    dataset = PointsDataset()
    loader = DataLoader(dataset, batch_size=4, sampler=EpochSampler(len(dataset), shuffle=True))
    cfg = TrainerConfig(epochs=1, batch_size=4, effective_batch_size=4, log_every=1000, progress=False)
    config = {"seed": 0, "model": {"name": "linear"}}
    trained = cpu_trainer(loader, tmp_path, cfg, config)
    metrics = trained.fit()
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert set(saved) == ON_DISK_KEYS
    assert (saved["epoch"], saved["batches_in_epoch"], saved["step"], saved["validated"]) == (1, 0, 8, True)
    assert saved["best_top1"] == metrics["top1"] and saved["config"] == config and saved["classes"] == ["a", "b", "c"]
    assert "epoch 1 validation: top1" in caplog.text and "(32 videos)" in caplog.text  # epochs counted from 1

    resumed = cpu_trainer(loader, tmp_path, cfg, config)
    resumed.restore(read_run_checkpoint(tmp_path / "last.pt", "resume"))
    assert resumed.position == trained.position
    for key, value in trained.model_without_ddp.state_dict().items():
        assert torch.equal(resumed.model_without_ddp.state_dict()[key], value), key
    momentum = [state["momentum_buffer"] for state in trained.optimizer.state_dict()["state"].values()]
    restored = [state["momentum_buffer"] for state in resumed.optimizer.state_dict()["state"].values()]
    assert len(momentum) == 4 and all(torch.equal(a, b) for a, b in zip(momentum, restored))
    assert resumed.fit()["top1"] == metrics["top1"]  # a finished run resumed: nothing to train, the same report


def test_checkpoints_of_earlier_versions_load_and_other_files_are_one_line_errors(tmp_path):
    _trainer("off", tmp_path).save("last.pt")
    old = torch.load(tmp_path / "last.pt", weights_only=True)
    for key in ("validated", "config_history", "failed_train", "classes"):  # keys that later versions added
        del old[key]
    torch.save(old, tmp_path / "old.pt")
    checkpoint = read_run_checkpoint(tmp_path / "old.pt", "resume")
    assert checkpoint.classes is None and checkpoint.training.position.validated is True
    assert checkpoint.training.config_history == [] and checkpoint.training.failed_train == {}
    _trainer("off", tmp_path).restore(checkpoint)

    torch.save(old["model"], tmp_path / "weights.pt")
    with pytest.raises(UserError, match=f"^ckpt={tmp_path / 'weights.pt'} was not written by rcca's trainer"):
        read_run_checkpoint(tmp_path / "weights.pt", "ckpt")
    # Weights and config only: enough to evaluate, not to continue.
    torch.save({"model": old["model"], "config": old["config"]}, tmp_path / "model.pt")
    assert read_run_checkpoint(tmp_path / "model.pt", "ckpt").training is None
    with pytest.raises(UserError, match="holds weights but no training state to continue from"):
        resume_checkpoint(str(tmp_path / "model.pt"), tmp_path)


class GammaClassifier(LinearClassifier):
    """LinearClassifier with an (unused) RCCA-3D-like `gamma` parameter in a submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.Module()
        self.attention.gamma = nn.Parameter(torch.tensor(0.5))


class RecordingWriter:
    """Collects what a TensorBoard SummaryWriter would write: (tag, value, step)."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []
        self.images: list[tuple[str, tuple[int, ...], int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def add_image(self, tag: str, image, step: int, dataformats: str) -> None:
        assert dataformats == "HWC" and image.dtype == np.uint8 and image.shape[2] == 3
        self.images.append((tag, image.shape, step))


def test_training_logs_scalars_and_gammas_by_parameter_name(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rcca.engine.trainer")
    dataset = PointsDataset()
    loader = DataLoader(dataset, batch_size=4, sampler=EpochSampler(len(dataset), shuffle=True))
    writer = RecordingWriter()
    cfg = TrainerConfig(epochs=1, batch_size=4, effective_batch_size=4, log_every=4, progress=False)
    trainer = cpu_trainer(loader, tmp_path, cfg, model=GammaClassifier(), writer=writer)
    metrics = trainer.fit()
    steps = {tag: [step for name, _, step in writer.scalars if name == tag] for tag, _, _ in writer.scalars}
    assert steps["train/loss"] == steps["gamma/attention.gamma"] == [4, 8]  # every log_every=4 updates
    assert ("gamma/attention.gamma", 0.5, 4) in writer.scalars
    assert ("val/top1", metrics["top1"], 8) in writer.scalars
    assert "epoch 1, update 4: loss" in caplog.text and "epoch 1, update 8: loss" in caplog.text
    assert [(tag, step) for tag, _, step in writer.images][:1] == [("val/confusion_matrix", 8)]


def test_images_that_fail_to_draw_cost_the_images_not_the_run(tmp_path, caplog, monkeypatch):
    calls = []

    def failing(*args) -> None:
        calls.append(args)
        raise RuntimeError("no fonts")

    monkeypatch.setattr("rcca.engine.trainer.write_confusion_matrix", failing)
    dataset = PointsDataset()
    loader = DataLoader(dataset, batch_size=4, sampler=EpochSampler(len(dataset), shuffle=True))
    cfg = TrainerConfig(epochs=2, batch_size=4, effective_batch_size=4, progress=False)
    metrics = cpu_trainer(loader, tmp_path, cfg, writer=RecordingWriter()).fit()
    assert metrics["num_videos"] > 0 and len(calls) == 1  # tried at the first validation only
    assert "TensorBoard images failed; the run goes on without them" in caplog.text and "no fonts" in caplog.text


class RecordingClassifier(LinearClassifier):
    """LinearClassifier that keeps the clips and logits of its training forward passes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x):
        logits = super().forward(x)
        if self.training:
            self.seen.append((x.detach().clone(), logits.detach().clone()))
        return logits


def test_logged_training_averages_are_those_of_the_micro_batches_since_the_last_log_point(tmp_path):
    # 2 micro-batches per update, 8 updates per epoch, a log point every 3 updates: 3 and 6, then 9, 12 and 15.
    dataset = PointsDataset()
    loader = DataLoader(dataset, batch_size=2, sampler=EpochSampler(len(dataset), shuffle=True))
    writer = RecordingWriter()
    model = RecordingClassifier()
    cfg = TrainerConfig(epochs=2, batch_size=2, effective_batch_size=4, log_every=3, progress=False)
    cpu_trainer(loader, tmp_path, cfg, model=model, writer=writer).fit()
    # Brute force over the micro-batches the model saw: each one's labels found by its clips.
    rows = dataset.x.flatten(1)
    expected, interval = {}, []
    for number, (clips, logits) in enumerate(model.seen, start=1):
        labels = dataset.y[[int((rows == clip).all(dim=1).nonzero()) for clip in clips.flatten(1)]]
        loss = nn.functional.cross_entropy(logits, labels).item()
        interval.append((loss * len(labels), int((logits.argmax(dim=1) == labels).sum()), len(labels)))
        step = number // 2
        if number % 2 == 0 and step % 3 == 0:  # a log point: the averages of the interval's clips
            clip_count = sum(n for _, _, n in interval)
            expected[step] = (
                sum(x for x, _, _ in interval) / clip_count,
                100 * sum(c for _, c, _ in interval) / clip_count,
            )
            interval = []
        if number % 16 == 0:  # an epoch's end: the next interval starts with the next epoch
            interval = []
    logged = {
        tag: {step: value for name, value, step in writer.scalars if name == tag}
        for tag in ("train/loss", "train/top1")
    }
    assert sorted(expected) == sorted(logged["train/loss"]) == [3, 6, 9, 12, 15]
    for step, (loss, top1) in expected.items():
        assert logged["train/loss"][step] == pytest.approx(loss, rel=1e-12, abs=0), step
        assert logged["train/top1"][step] == pytest.approx(top1, rel=1e-12, abs=0), step


HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")  # what waits for a GPU to finish


def test_a_micro_batch_reads_nothing_back_from_the_device(tmp_path, monkeypatch):
    # Losses and hits are read at log points, and whether the losses are finite once per update: never per batch.
    dataset = PointsDataset()
    loader = DataLoader(dataset, batch_size=2, sampler=EpochSampler(len(dataset), shuffle=True))
    cfg = TrainerConfig(epochs=1, batch_size=2, effective_batch_size=8, log_every=2, progress=False)
    trainer = cpu_trainer(loader, tmp_path, cfg)
    train_batch = trainer._train_batch

    def refuse(name: str):
        def read(*args, **kwargs):
            raise AssertionError(f"Tensor.{name} in a training micro-batch")

        return read

    def train_batch_without_reads(*args, **kwargs) -> None:
        with monkeypatch.context() as patch:
            for name in HOST_READS:
                patch.setattr(torch.Tensor, name, refuse(name))
            train_batch(*args, **kwargs)

    trainer._train_batch = train_batch_without_reads
    trainer.fit()
    assert trainer.position.step == 4


class NanAtFetch(PointsDataset):
    """PointsDataset whose item fetched as number `nan_at` (from 0) is all NaN."""

    def __init__(self, nan_at: int) -> None:
        super().__init__()
        self.nan_at, self.fetched = nan_at, 0

    def __getitem__(self, key):
        item = super().__getitem__(key)
        if self.fetched == self.nan_at:
            item = {**item, "clip": torch.full_like(item["clip"], float("nan"))}
        self.fetched += 1
        return item


def test_a_non_finite_loss_in_the_last_micro_batch_of_an_update_stops_it_before_its_step(tmp_path):
    # Update 2 is micro-batches 3 and 4 (items 4-7): item 6 makes micro-batch 4's loss NaN after a finite one.
    loader = DataLoader(NanAtFetch(6), batch_size=2, sampler=EpochSampler(32, shuffle=True))
    cfg = TrainerConfig(epochs=1, batch_size=2, effective_batch_size=4, log_every=1000, progress=False)
    trainer = cpu_trainer(loader, tmp_path, cfg)
    with pytest.raises(TrainingDiverged, match=r"^loss is nan .* at update 2 \(epoch 1\); saved the last state with"):
        trainer.fit()
    assert trainer.position.step == 1
    assert all(torch.isfinite(p).all() for p in trainer.model_without_ddp.parameters())  # no step on NaN gradients
    assert (
        torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 0
    )  # the forwards of update 1 were finite there


def test_divergence_saves_exactly_the_state_of_the_last_finite_update(tmp_path):
    # Update 3 (micro-batches 5 and 6, items 8-11) meets a NaN at weights after update 2; the state to save is
    # the boundary before update 2's step, i.e. after update 1: weights, momentum, schedule, position and RNG.
    def trainer_on(dataset: PointsDataset, folder: Path) -> Trainer:
        loader = DataLoader(dataset, batch_size=2, sampler=EpochSampler(32, shuffle=True))
        cfg = TrainerConfig(epochs=1, batch_size=2, effective_batch_size=4, log_every=1000, progress=False)
        trainer = cpu_trainer(loader, folder, cfg)
        # A warm-up schedule: the LR changes at every update, so a state one step off shows in it.
        trainer.scheduler = build_scheduler(trainer.optimizer, ScheduleConfig(warmup_epochs=1.0), 8)
        return trainer

    torch.manual_seed(0)
    diverging = trainer_on(NanAtFetch(10), tmp_path)
    with pytest.raises(
        TrainingDiverged, match=r"at update 3 \(epoch 1\); saved the last state with finite losses \(update 1\)"
    ):
        diverging.fit()
    saved = torch.load(tmp_path / "last.pt", weights_only=True)

    torch.manual_seed(0)
    reference = trainer_on(NanAtFetch(-1), tmp_path / "reference")
    reference.updates_per_epoch = 1
    reference.train_epoch()
    expected = reference.checkpoint().to_dict()
    assert saved["step"] == expected["step"] == 1
    for key in ("model", "optimizer", "scheduler", "rng"):
        assert identical(saved[key], expected[key]), key


def identical(a: object, b: object) -> bool:
    """Equal nested dicts, lists and values, with tensors equal element for element (numpy arrays too)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(identical, a, b))
    if isinstance(a, (torch.Tensor, np.ndarray)):
        return torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    return a == b


def test_a_stop_signal_during_the_ranks_agreement_is_not_lost(tmp_path, monkeypatch):
    # The signal handler runs between two bytecodes: here, while the ranks agree on stopping, after the flag was
    # read as False. Once a stop was requested, the trainer must stop after this update all the same.
    loader = DataLoader(PointsDataset(), batch_size=4, sampler=EpochSampler(32, True))
    cfg = TrainerConfig(epochs=1, batch_size=4, effective_batch_size=4, log_every=1000, progress=False)
    trainer = cpu_trainer(loader, tmp_path, cfg)

    def agree_while_a_signal_arrives(flag, device):
        if isinstance(flag, bool):  # the agreement on stopping (not the per-update check of the losses)
            trainer._request_stop(signal.SIGTERM, None)
        return bool(flag)

    monkeypatch.setattr("rcca.engine.trainer.any_process", agree_while_a_signal_arrives)
    with pytest.raises(TrainingStopped, match="stopped by SIGTERM"):
        trainer.fit()
    assert trainer.position.step == 1  # after the first update, not at the end of the epoch


def test_the_handler_only_records_the_stop_and_the_stop_says_so(tmp_path, caplog):
    # A job-wide SIGTERM also kills the data workers: PyTorch's SIGCHLD handler may then raise in the middle of
    # the trainer's own handler, and a log call there could be cut short or wait on a lock the interrupted code
    # holds. So the handler only records the stop, and the stop itself (after the update) logs it.
    caplog.set_level(logging.INFO)
    loader = DataLoader(PointsDataset(), batch_size=4, sampler=EpochSampler(32, True))
    trainer = cpu_trainer(loader, tmp_path, TrainerConfig(epochs=1, batch_size=4, effective_batch_size=4))
    trainer._request_stop(signal.SIGTERM, None)
    assert trainer.stop_requested and trainer._stop_signal == signal.SIGTERM and "received signal" not in caplog.text
    stop = trainer._stopped()
    assert "received signal SIGTERM: saving last.pt as of update 0" in caplog.text and stop.exit_code == 143
    assert (tmp_path / "last.pt").is_file()


class ViewsWithFailure(ViewsDataset):
    """ViewsDataset in which video 3 could not be decoded (ok=False, zero views)."""

    def __getitem__(self, key):
        item = super().__getitem__(key)
        if item["index"] == 3:
            item.update(ok=False, failed="v3.mp4", reason="v3.mp4: broken", clip=torch.zeros_like(item["clip"]) + 0.5)
        return item


def _distributed_evaluation_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    dataset = ViewsWithFailure([[0.9, 0.5], [0.2, 0.4], [0.3, 0.9], [0.5, 0.5], [0.8, 0.6]], [0, 1, 0, 1, 0])
    loader = DataLoader(dataset, batch_size=2, sampler=EpochSampler(5, False, rank=rank, world_size=2))
    scores, labels, indices, failed = predict_videos(ValueToLogits(), loader, torch.device("cpu"))
    if rank == 0:
        torch.save({"scores": scores, "labels": labels, "indices": indices, "failed": failed}, out)
    dist.destroy_process_group()


def test_distributed_evaluation_counts_each_video_once_and_gathers_failures(tmp_path):
    # 5 videos on 2 ranks: rank 0 gets 0, 2, 4; rank 1 gets 1, 3 and video 0 again as padding.
    out = tmp_path / "eval.pt"
    mp.spawn(_distributed_evaluation_worker, args=(29500 + (os.getpid() + 7) % 1000, str(out)), nprocs=2, join=True)
    result = torch.load(out)
    assert result["indices"] == [0, 1, 2, 4]
    assert result["failed"] == {"v3.mp4": "v3.mp4: broken"}
    assert result["labels"].tolist() == [0, 1, 0, 0]
    expected_first_class = [0.7, 0.3, 0.6, 0.7]  # mean over the two views of each video
    assert result["scores"][:, 0].tolist() == pytest.approx(expected_first_class)


def test_other_ranks_leave_outputs_to_rank_zero(tmp_path):
    shared, own = tmp_path / "rank0", tmp_path / "rank1"
    for folder in (shared, own):
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "config.yaml").write_text("seed: 0\n")
    handler = logging.FileHandler(own / "train.log")
    logging.getLogger().addHandler(handler)
    try:
        leave_outputs_to_rank_zero(own, shared)
        assert handler not in logging.getLogger().handlers
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert not own.exists() and (shared / ".hydra" / "config.yaml").is_file()
    # A folder holding anything else (or rank 0's own folder) is never removed.
    (own / ".hydra").mkdir(parents=True)
    (own / "last.pt").write_bytes(b"")
    leave_outputs_to_rank_zero(own, shared)
    leave_outputs_to_rank_zero(shared, shared)
    assert (own / "last.pt").is_file() and shared.is_dir()
