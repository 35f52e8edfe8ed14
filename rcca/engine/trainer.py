"""The training loop: SGD with gradient accumulation, per-epoch video-level validation, checkpoints.

One optimizer update consumes `effective_batch_size` clips: `accumulation` micro-batches
of `batch_size` clips on each of `world_size` processes. Each micro-batch loss is divided
by `accumulation` and DDP averages over processes, so the accumulated gradient equals the
gradient of the mean loss over the effective batch: one update on the effective batch
with the configured LR. (The paper's "lr/8 with 8 accumulated batches" sums unscaled
micro-batch losses instead; with lr/8 that is the same update.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NoReturn

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from rcca.config import OptimizerConfig, ScheduleConfig, TrainerConfig
from rcca.engine.checkpoints import rng_state, save_checkpoint, set_rng_state
from rcca.engine.distributed import any_process, gather_lists, is_distributed, is_main_process, reduce_mean
from rcca.engine.files import write_atomically
from rcca.engine.evaluation import predict_videos, topk_correct, video_metrics
from rcca.engine.optim import build_optimizer, build_scheduler
from rcca.errors import UserError, data_loading_failure
from rcca.models.attention import RCCA3D

log = logging.getLogger(__name__)

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Signals that save last.pt after the current update and exit: kill, Ctrl-C, and the warnings a job
# gets before its SLURM time limit (sbatch --signal, submitit's USR2).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
# Optimizer settings of a parameter group that come from the run config (and may change on resume).
CONFIGURABLE = ("initial_lr", "momentum", "weight_decay", "nesterov")


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class Progress:
    """Where training stands: epochs done, micro-batches done in the current epoch, updates, best top-1,
    and whether the end-of-epoch work of epoch `epoch` (validation, when due, and best.pt) is done."""

    epoch: int = 0
    batches_in_epoch: int = 0
    step: int = 0
    best_top1: float = -1.0
    validated: bool = True


class Trainer:
    """Fits `model` on `train_loader`, validating on `test_loader` at video level.

    Writes into `run_dir`: last.pt, best.pt, metrics.json and TensorBoard event files
    (rank 0 only). `config` is the resolved run config, stored in every checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: DataLoader,
        test_loader: DataLoader,
        class_names: list[str],
        trainer_cfg: TrainerConfig,
        optimizer_cfg: OptimizerConfig,
        schedule_cfg: ScheduleConfig,
        run_dir: Path,
        config: dict,
        device: torch.device,
        world_size: int = 1,
        writer=None,
        runner: nn.Module | None = None,
        continue_command: Callable[[dict[str, str]], str] | None = None,
    ) -> None:
        """`runner` is what runs the forward pass when it differs from `model` (DDP, torch.compile);
        `continue_command({key: value})` is the command line that continues this run with those overrides
        changed, quoted in stop messages."""
        self.cfg = trainer_cfg
        self.optimizer_cfg = optimizer_cfg
        self.device = device
        self.world_size = world_size
        self.run_dir = run_dir
        self.config = config
        self.class_names = class_names
        self.continue_command = continue_command or (lambda changes: f"resume=auto with hydra.run.dir={run_dir}")
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.writer = writer
        self.accumulation = accumulation_steps(trainer_cfg.effective_batch_size, trainer_cfg.batch_size, world_size)
        self.updates_per_epoch = len(train_loader) // self.accumulation
        if self.updates_per_epoch == 0:
            raise UserError(
                f"one update needs trainer.effective_batch_size={trainer_cfg.effective_batch_size} clips "
                f"(trainer.batch_size={trainer_cfg.batch_size} x {self.accumulation} steps x {world_size} processes) but "
                f"each process has {len(train_loader.sampler)} training videos: lower these sizes"
            )
        log.info(
            "one update = %d clips (%d per step x %d accumulated steps x %d processes); %d updates per epoch",
            trainer_cfg.effective_batch_size, trainer_cfg.batch_size, self.accumulation, world_size, self.updates_per_epoch,
        )
        self.bare_model = model  # without wrappers: parameter names, checkpoints, gammas
        self.model = runner if runner is not None else model
        self.optimizer = build_optimizer(model, optimizer_cfg, model.classifier_name)
        self.scheduler = build_scheduler(self.optimizer, schedule_cfg, self.updates_per_epoch)
        self.autocast_dtype = autocast_dtype(trainer_cfg.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast_dtype == torch.float16)
        # The configured hyper-parameters win over a resumed checkpoint's (see `load_state_dict`).
        self._configured = [{key: group[key] for key in CONFIGURABLE} for group in self.optimizer.param_groups]
        self.progress = Progress()
        self.config_history: list[dict] = []  # settings changed on resume: {"step", "epoch", "changes"}
        self._verified: dict | None = None  # last state whose losses were all finite (rank 0; {} elsewhere)
        self._verified_step = -1  # its update count, on every rank
        self._mark_update_boundary()
        self.stop_requested = False
        self.failed_train: dict[str, str] = {}  # undecodable training videos seen by this process: reason

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {
            "model": self.bare_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.progress.epoch,
            "batches_in_epoch": self.progress.batches_in_epoch,
            "step": self.progress.step,
            "best_top1": self.progress.best_top1,
            "validated": self.progress.validated,
            "rng": rng_state(),
            "config": self.config,
            "config_history": self.config_history,
            "failed_train": dict(self.failed_train),
            "classes": self.class_names,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore everything needed to continue exactly where `state` was saved.

        The optimizer's configured hyper-parameters (LR, momentum, weight decay per group) and the
        LR schedule stay those of this run's config, so a resume may change them; the LR is set to
        what the schedule gives at the restored update.
        """
        try:
            self.bare_model.load_state_dict(state["model"])
        except RuntimeError as error:
            detail = " ".join(str(error).split())[:300]
            raise UserError(f"the checkpoint does not match the configured model (use the run's own overrides): {detail}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for group, configured in zip(self.optimizer.param_groups, self._configured):
            group.update(configured)
        self.scheduler.base_lrs = [group["initial_lr"] for group in self.optimizer.param_groups]
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * factor(self.scheduler.last_epoch)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        if self.scaler.is_enabled() and state["scaler"]:  # empty when saved without fp16: the scale starts afresh
            self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(
            state["epoch"], state["batches_in_epoch"], state["step"], state["best_top1"], state.get("validated", True)
        )
        self.config_history = list(state.get("config_history", []))
        self.failed_train = dict(state.get("failed_train", {}))
        set_rng_state(state["rng"])
        self._mark_update_boundary()

    def record_config_changes(self, changes: dict[str, tuple]) -> None:
        """Note settings that this resumed run changed ({key: (checkpoint value, new value)}), kept in checkpoints."""
        if changes:
            entry = {"step": self.progress.step, "epoch": self.progress.epoch,
                     "changes": {key: list(values) for key, values in changes.items()}}
            self.config_history.append(entry)

    def save(self, name: str) -> None:
        if is_main_process():
            save_checkpoint(self.state_dict(), self.run_dir / name)

    # ----------------------------------------------------------------- training
    def fit(self) -> dict:
        """Train to `trainer.epochs`, validating every `eval_every` epochs. Returns the final metrics."""
        previous = {sig: signal.signal(sig, self._request_stop) for sig in STOP_SIGNALS}
        metrics: dict = {}
        try:
            while True:
                if not self.progress.validated:  # also an epoch whose validation a kill interrupted
                    metrics = self._end_epoch() or metrics
                    if any_process(self.stop_requested, self.device):  # a signal during validation
                        self._mark_update_boundary()
                        self._save_and_exit()
                if self.progress.epoch >= self.cfg.epochs:
                    break
                self._train_epoch()
                if any_process(self.stop_requested, self.device):  # a signal may reach one rank after the last update
                    self._save_and_exit()
                self.save("last.pt")  # the epoch is safe before validation starts
            return metrics or self.validate()  # a resumed run that had already finished still reports
        except RuntimeError as error:
            if self.stop_requested:  # a job-wide stop signal (SLURM) also ended the data workers
                self._save_and_exit()
            failure = data_loading_failure(
                error, f"in epoch {self.progress.epoch + 1}",
                f"continue from {self.run_dir / 'last.pt'} with dataset.exclude=<file> resume=auto",
            )
            if failure is None:
                raise
            raise failure from None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _end_epoch(self) -> dict:
        """Validate the finished epoch when due, keep best.pt, then record that in last.pt.

        last.pt says `validated=False` until this is done, so a run killed during validation or
        while writing best.pt validates that epoch again when resumed (with the same result).
        """
        epoch = self.progress.epoch
        due = epoch % self.cfg.eval_every == 0 or epoch == self.cfg.epochs
        metrics = self.validate() if due else {}
        self.progress.validated = True
        if metrics and metrics["top1"] > self.progress.best_top1:
            self.progress.best_top1 = metrics["top1"]
            self.save("best.pt")
        self.save("last.pt")
        return metrics

    def _mark_update_boundary(self) -> None:
        """Remember where the last complete update left off: what a stop in between saves.

        Weights change only at updates, but BatchNorm statistics change at every micro-batch.
        """
        self._boundary = {
            "epoch": self.progress.epoch,
            "batches_in_epoch": self.progress.batches_in_epoch,
            "rng": rng_state(),
            "buffers": {name: b.detach().clone() for name, b in self.bare_model.named_buffers()},
        }

    def _boundary_state(self) -> dict:
        """The checkpoint of the last complete update: weights as they are, BatchNorm buffers, RNG and
        position as they were then (micro-batches since then are repeated by a resumed run)."""
        state = self.state_dict()
        boundary = dict(self._boundary)
        buffers = boundary.pop("buffers")
        state["model"] = {k: buffers.get(k, v) for k, v in state["model"].items()}
        return {**state, **boundary}

    def _remember_verified_state(self) -> None:
        """Just before an optimizer step: every forward since the last update was finite at these weights,
        so this update boundary is a state from which training can go on (with a lower LR if it diverges).
        Only rank 0, which writes checkpoints, keeps the copy."""
        self._verified = _detached_copy(self._boundary_state()) if is_main_process() else {}
        self._verified_step = self.progress.step

    def _save_and_exit(self) -> NoReturn:
        """Save last.pt as of the last complete update (a resumed run repeats nothing and skips nothing); exit 143."""
        if is_main_process():
            save_checkpoint(self._boundary_state(), self.run_dir / "last.pt")
        log.warning("stopped by signal; saved %s. Continue with: %s", self.run_dir / "last.pt", self.continue_command({}))
        sys.exit(143)

    def _diverged(self, loss: float) -> TrainingDiverged:
        """Save the last state whose losses were finite as last.pt; the error says how to go on from it."""
        where = f"loss is {loss} (on this process or another) at update {self.progress.step + 1} (epoch {self.progress.epoch + 1})"
        if self._verified is None:
            return TrainingDiverged(
                f"{where}, before any update of this run succeeded: the starting weights or the data give it; "
                "check init_from / resume and the inputs"
            )
        if is_main_process():
            save_checkpoint(self._verified, self.run_dir / "last.pt")
        if is_distributed():
            torch.distributed.barrier()  # no rank exits (and gets the job killed) before the file is written
        return TrainingDiverged(
            f"{where}; saved the last state with finite losses (update {self._verified_step}) as "
            f"{self.run_dir / 'last.pt'}; continue from it with a lower LR: {self.continue_command({'optimizer.lr': '<lower>'})}"
        )

    def _request_stop(self, signum: int, frame) -> None:
        log.warning("received signal %d: saving last.pt after the current step", signum)
        self.stop_requested = True

    def _train_epoch(self) -> None:
        self.model.train()
        epoch = self.progress.epoch
        batch_size = self.cfg.batch_size
        self.train_loader.sampler.set_epoch(epoch, start=self.progress.batches_in_epoch * batch_size)
        self._mark_update_boundary()
        total_batches = self.updates_per_epoch * self.accumulation
        bar = tqdm(
            total=total_batches,
            initial=self.progress.batches_in_epoch,
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            unit="batch",
            disable=not (self.cfg.progress and sys.stderr.isatty() and is_main_process()),
        )
        window = self._new_window()
        tick = time.perf_counter()
        for batch in self.train_loader:
            if self.progress.batches_in_epoch >= total_batches:
                break  # the last incomplete accumulation group of the epoch is not used
            window["wait"] += time.perf_counter() - tick
            loss, correct1, correct5 = self._micro_step(batch)
            window["loss"] += loss * len(batch["label"])
            window["correct1"] += correct1
            window["correct5"] += correct5
            window["clips"] += len(batch["label"])
            for path, reason in zip(batch["failed"], batch["reason"]):
                if path and path not in self.failed_train:
                    self.failed_train[path] = reason
                    log.warning("replaced undecodable training video %s (reported once): %s", path, reason)
            self.progress.batches_in_epoch += 1
            bar.update(1)
            if self.progress.batches_in_epoch % self.accumulation == 0:
                self._update()
                self._mark_update_boundary()
                if self.cfg.checkpoint_every and self.progress.step % self.cfg.checkpoint_every == 0:
                    self.save("last.pt")
                if self.progress.step % self.cfg.log_every == 0:
                    self._log_window(window, bar)
                    window = self._new_window()
                self.stop_requested = any_process(self.stop_requested, self.device)  # all ranks stop together
                if self.stop_requested:
                    bar.close()
                    return
            tick = time.perf_counter()
        bar.close()
        self.progress.epoch += 1
        self.progress.batches_in_epoch = 0
        self.progress.validated = False
        self._mark_update_boundary()

    @staticmethod
    def _new_window() -> dict:
        """Running sums between two log points."""
        return {"loss": 0.0, "correct1": 0, "correct5": 0, "clips": 0, "wait": 0.0, "start": time.perf_counter()}

    def _micro_step(self, batch: dict) -> tuple[float, int, int]:
        """Forward and backward one micro-batch; DDP syncs gradients only on the last of a group."""
        clips = batch["clip"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        last_of_group = (self.progress.batches_in_epoch + 1) % self.accumulation == 0
        sync = contextlib.nullcontext() if last_of_group or not hasattr(self.model, "no_sync") else self.model.no_sync()
        with sync:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                logits = self.model(clips)
                loss = nn.functional.cross_entropy(logits.float(), labels)
            if any_process(not torch.isfinite(loss).item(), self.device):  # every rank stops, none waits in backward
                raise self._diverged(loss.item())
            self.scaler.scale(loss / self.accumulation).backward()
        logits = logits.detach()
        return loss.item(), int(topk_correct(logits, labels, 1).sum()), int(topk_correct(logits, labels, 5).sum())

    def _update(self) -> None:
        self._remember_verified_state()
        if self.optimizer_cfg.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.optimizer_cfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.progress.step += 1

    def _log_window(self, window: dict, bar: tqdm) -> None:
        elapsed = time.perf_counter() - window["start"]
        clips = max(1, window["clips"])
        values = {
            "train/loss": reduce_mean(window["loss"] / clips, self.device),
            "train/top1": reduce_mean(100.0 * window["correct1"] / clips, self.device),
            "train/top5": reduce_mean(100.0 * window["correct5"] / clips, self.device),
            "train/lr": self.optimizer.param_groups[0]["lr"],
            "train/clips_per_s": window["clips"] * self.world_size / max(elapsed, 1e-9),
            "train/data_wait_fraction": window["wait"] / max(elapsed, 1e-9),
            "train/undecodable_videos": len(self.failed_train),
        }
        for name, module in self.bare_model.named_modules():
            if isinstance(module, RCCA3D):
                values[f"gamma/{name}"] = module.gamma.item()
        if self.device.type == "cuda":
            values["train/gpu_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if not is_main_process():
            return
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, self.progress.step)
        summary = f"loss {values['train/loss']:.3f} top1 {values['train/top1']:.1f} lr {values['train/lr']:.4g}"
        if bar.disable:
            log.info("epoch %d step %d: %s, %.1f clips/s", self.progress.epoch + 1, self.progress.step, summary, values["train/clips_per_s"])
        else:
            bar.set_postfix_str(summary)

    # ----------------------------------------------------------------- validation
    def validate(self) -> dict:
        """Video-level metrics on the test loader; logged to TensorBoard and the log."""
        self.test_loader.sampler.set_epoch(0)
        scores, labels, _, failed = predict_videos(
            self.model, self.test_loader, self.device,
            progress=self.cfg.progress and sys.stderr.isatty() and is_main_process(), autocast_dtype=self.autocast_dtype,
        )
        if not torch.isfinite(scores).all():  # the last update diverged: its weights must not become best.pt
            raise self._diverged(float("nan"))
        metrics = video_metrics(scores, labels, self.class_names)
        metrics["failed_videos"] = failed
        metrics["train_failed_videos"] = dict(sorted(gather_lists(sorted(self.failed_train.items()))))
        if is_main_process():
            log.info(
                "epoch %d validation: top1 %.2f top5 %.2f mean-class %.2f (%d videos%s)",
                self.progress.epoch, metrics["top1"], metrics["top5"], metrics["mean_class_accuracy"], metrics["num_videos"],
                f", {len(failed)} undecodable" if failed else "",
            )
            if self.writer is not None:
                for key in ("top1", "top5", "mean_class_accuracy"):
                    self.writer.add_scalar(f"val/{key}", metrics[key], self.progress.step)
        return metrics


def autocast_dtype(amp: str) -> torch.dtype | None:
    """The autocast dtype of `trainer.amp` (None when off); works on GPUs and CPUs alike."""
    if amp not in AMP_DTYPES:
        raise UserError(f"trainer.amp={amp!r}: choose one of {', '.join(AMP_DTYPES)}")
    return AMP_DTYPES[amp]


def accumulation_steps(effective_batch_size: int, batch_size: int, world_size: int) -> int:
    """Micro-batches per update; the effective batch must be an exact multiple of batch x processes."""
    per_round = batch_size * world_size
    if effective_batch_size % per_round != 0:
        raise UserError(
            f"trainer.effective_batch_size={effective_batch_size} is not a multiple of trainer.batch_size x processes "
            f"= {batch_size} x {world_size}: choose sizes that divide exactly"
        )
    return effective_batch_size // per_round


def _detached_copy(value: object) -> object:
    """A copy of nested dicts, lists and tuples whose tensors are cloned (they change in place during training)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: _detached_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached_copy(item) for item in value)
    return value


def write_metrics(path: Path, metrics: dict) -> None:
    """metrics.json (atomically), with non-finite numbers written as null."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    write_atomically(path, json.dumps(clean(metrics), indent=2).encode())
