"""The training loop: SGD with gradient accumulation, per-epoch video-level validation, checkpoints.

One optimizer update consumes `effective_batch_size` clips: `accumulation` micro-batches
of `batch_size` clips on each of `world_size` processes. Each micro-batch loss is divided
by `accumulation` and DDP averages over processes, so the accumulated gradient equals the
gradient of the mean loss over the effective batch: one update on the effective batch
with the configured LR. (The paper's "lr/8 with 8 accumulated batches" sums unscaled
micro-batch losses instead; with lr/8 that is the same update.)

How a run ends early: a stop signal saves last.pt and raises `TrainingStopped`; a non-finite loss
raises `TrainingDiverged`; a data loader that fails (`DataLoadingFailed`) raises a `UserError`
that says how to continue without the video at fault. The entry point reports them and exits
(after a cluster's pre-emption signal it may first requeue the job: `rcca.engine.requeue`).

Without progress bars, the plain progress lines of an epoch also give the run's ETA (see `work_after_epoch`).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from time import perf_counter

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from rcca.config import OptimizerConfig, ScheduleConfig, TrainerConfig
from rcca.data.build import loading_failure
from rcca.engine.board_images import can_draw, write_class_activation_maps, write_confusion_matrix
from rcca.engine.checkpoints import (
    RunCheckpoint,
    TrainingPosition,
    TrainingState,
    rng_state,
    set_rng_state,
)
from rcca.engine.distributed import any_process, gather_lists, is_distributed, is_main_process, reduce_mean
from rcca.engine.evaluation import predict_videos
from rcca.engine.meters import TrainingMeter
from rcca.engine.metrics import topk_correct, validation_metrics
from rcca.engine.optim import build_optimizer, build_scheduler
from rcca.errors import TrainingStopped, UserError
from rcca.progress import Ahead, count_of, track

log = logging.getLogger(__name__)

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Signals that save last.pt after the current update and stop: kill, Ctrl-C, and the warnings a job
# gets before its SLURM time limit (sbatch --signal, submitit's USR2).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
# Optimizer settings of a parameter group that come from the run config (and may change on resume).
CONFIGURABLE = ("initial_lr", "momentum", "weight_decay", "nesterov")


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class _VerifiedState:
    """The last update boundary at whose weights every forward was finite: what a divergence saves.

    `tensors` are copies of `Trainer._stepped_state()`: the parameters, then the optimizer's state
    tensors at `optimizer_places`; with `lrs` (per parameter group), `scheduler` and `scaler` they are
    kept on rank 0 only (empty elsewhere).
    """

    boundary: _UpdateBoundary
    step: int
    tensors: list[Tensor]
    optimizer_places: list[tuple[Tensor, str]]
    lrs: list[float]
    scheduler: dict
    scaler: dict


@dataclass
class _UpdateBoundary:
    """The state as the last complete update left it: what a stop in between saves."""

    position: TrainingPosition
    rng: dict
    buffers: dict[str, Tensor]  # BatchNorm statistics change at every micro-batch, weights only at updates


class Trainer:
    """Fits a model on `train_loader`, validating on `test_loader` at video level.

    Writes into `run_dir`: last.pt, best.pt and TensorBoard scalars (rank 0 only). `fit()` returns
    the final validation metrics; `rcca.engine.metrics` turns them into metrics.json.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        model_without_ddp: nn.Module,
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
        progress_bars: bool = False,
        continue_command: Callable[[dict[str, str]], str] | None = None,
    ) -> None:
        """Build the optimizer, LR schedule and gradient scaler; training starts at epoch 0 unless `restore`d.

        Args:
            model: what runs the forward pass: the model, or its DDP and/or torch.compile wrapper.
            model_without_ddp: the bare model (parameter names, checkpoints, optimizer, `get_classifier()`).
            train_loader: this process's share of the training videos (an `EpochSampler` as sampler).
            test_loader: this process's share of the test videos.
            class_names: the class names in label order.
            trainer_cfg: batch sizes, epochs, precision, logging and checkpoint frequency.
            optimizer_cfg: SGD settings.
            schedule_cfg: the LR schedule.
            run_dir: where checkpoints go.
            config: the resolved run config, stored in every checkpoint.
            device: this process's device.
            world_size: processes training together.
            writer: a TensorBoard `SummaryWriter` (rank 0), or None.
            progress_bars: draw progress bars (else plain log lines now and then); decided by the caller.
            continue_command: `continue_command({key: value})` is the command line that continues this run
                with those overrides changed, quoted in stop messages.
        """
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
        self.progress_bars = progress_bars
        self.model = model
        self.model_without_ddp = model_without_ddp
        self._parameters = list(model_without_ddp.parameters())
        self.accumulation, self.updates_per_epoch = self._plan_updates()
        self.optimizer = build_optimizer(model_without_ddp, optimizer_cfg)
        self.scheduler = build_scheduler(self.optimizer, schedule_cfg, self.updates_per_epoch)
        self.autocast_dtype = autocast_dtype(trainer_cfg.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast_dtype == torch.float16)
        # The configured hyper-parameters win over a resumed checkpoint's (see `restore`).
        self._configured = [{key: group[key] for key in CONFIGURABLE} for group in self.optimizer.param_groups]
        self.position = TrainingPosition()
        self.config_history: list[dict] = []  # settings changed on resume: {"step", "epoch", "changes"}
        self.failed_train: dict[str, str] = {}  # undecodable training videos seen by this process: reason
        self._verified: _VerifiedState | None = None  # the last state whose losses were all finite
        self.stop_requested = False  # on any process (after the next check)
        self._stop_signal: int | None = None  # the stop signal this process received
        self._draws_images: bool | None = None  # TensorBoard images at validations: decided at the first one
        self._validations_drawn = 0
        self._previous_handlers: dict[int, object] = {}  # what handled each stop signal before `fit` (a scheduler's)
        self._validation_s: float | None = None  # how long the last validation of this process took
        self._update_loss_sum: Tensor | None = None  # float64 sum of the current update's micro-batch losses so far
        self._mark_update_boundary()

    def _plan_updates(self) -> tuple[int, int]:
        """Micro-batches per update and updates per epoch; UserError when one update needs more videos than there are.

        Returns:
            (accumulation steps, updates per epoch).
        """
        cfg = self.cfg
        accumulation = accumulation_steps(cfg.effective_batch_size, cfg.batch_size, self.world_size)
        updates = len(self.train_loader) // accumulation
        processes = count_of(self.world_size, "process")
        if updates == 0:
            raise UserError(
                f"one update needs trainer.effective_batch_size={cfg.effective_batch_size} clips "
                f"(trainer.batch_size={cfg.batch_size} x {count_of(accumulation, 'step')} x {processes}) but each "
                f"process has {count_of(len(self.train_loader.sampler), 'training video')}: lower these sizes"
            )
        log.info(
            "one update = %d clips (%d per step x %s x %s); %s per epoch",
            cfg.effective_batch_size,
            cfg.batch_size,
            count_of(accumulation, "accumulated step"),
            processes,
            count_of(updates, "update"),
        )
        return accumulation, updates

    # ----------------------------------------------------------------- checkpoints
    def checkpoint(self) -> RunCheckpoint:
        """The run as it is now: weights, config, classes and everything needed to continue it."""
        training = TrainingState(
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            position=replace(self.position),
            rng=rng_state(),
            config_history=list(self.config_history),
            failed_train=dict(self.failed_train),
        )
        return RunCheckpoint(self.model_without_ddp.state_dict(), self.config, self.class_names, training)

    def restore(self, checkpoint: RunCheckpoint) -> None:
        """Continue exactly where `checkpoint` was saved (its `training` must be set, as `resume_checkpoint` ensures).

        The optimizer's configured hyper-parameters (LR, momentum, weight decay per group) and the
        LR schedule stay those of this run's config, so a resume may change them; the LR is set to
        what the schedule gives at the restored update.

        Args:
            checkpoint: a run checkpoint with training state.

        Raises:
            UserError: the checkpoint's weights do not fit the configured model.
        """
        state = checkpoint.training
        if state is None:
            raise ValueError("the checkpoint holds no training state to continue from")
        try:
            self.model_without_ddp.load_state_dict(checkpoint.model)
        except RuntimeError as error:
            detail = " ".join(str(error).split())[:300]
            raise UserError(
                f"the checkpoint does not match the configured model (use the run's own overrides): {detail}"
            ) from None
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self._apply_configured_hyperparameters()
        if self.scaler.is_enabled() and state.scaler:  # empty when saved without fp16: the scale starts afresh
            self.scaler.load_state_dict(state.scaler)
        self.position = replace(state.position)
        self.config_history = list(state.config_history)
        self.failed_train = dict(state.failed_train)
        set_rng_state(state.rng)
        self._mark_update_boundary()

    def _apply_configured_hyperparameters(self) -> None:
        """After loading a checkpoint's optimizer and scheduler: this run's settings, and the LR they give now."""
        for group, configured in zip(self.optimizer.param_groups, self._configured):
            group.update(configured)
        self.scheduler.base_lrs = [group["initial_lr"] for group in self.optimizer.param_groups]
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * factor(self.scheduler.last_epoch)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def record_config_changes(self, changes: dict[str, tuple]) -> None:
        """Note settings that this resumed run changed, kept in checkpoints.

        Args:
            changes: {key: (checkpoint value, new value)}; nothing is noted when empty.
        """
        if changes:
            entry = {
                "step": self.position.step,
                "epoch": self.position.epoch,
                "changes": {key: list(values) for key, values in changes.items()},
            }
            self.config_history.append(entry)

    def save(self, name: str) -> None:
        """Write `checkpoint()` as `run_dir/name` (rank 0 only).

        Args:
            name: the file name (last.pt, best.pt).
        """
        if is_main_process():
            self.checkpoint().save(self.run_dir / name)

    # ----------------------------------------------------------------- training
    def fit(self) -> dict:
        """Train to `trainer.epochs`, validating every `eval_every` epochs.

        Returns:
            The final validation metrics (`rcca.engine.metrics.validation_metrics`).

        Raises:
            TrainingStopped: a stop signal arrived; last.pt holds the last complete update.
            TrainingDiverged: a loss was not finite; last.pt holds the last state with finite losses.
            UserError: the data loader failed (a video that crashes or hangs the decoder); the message says
                how to continue without it.
        """
        previous = {sig: signal.signal(sig, self._request_stop) for sig in STOP_SIGNALS}
        self._previous_handlers = dict(previous)
        try:
            return self._run_epochs()
        except RuntimeError as error:  # DataLoadingFailed, or a worker's death raised outside the iteration
            failure = loading_failure(error)
            if failure is None:
                raise
            if self.stop_requested:  # a job-wide stop signal (SLURM) also ended the data workers
                raise self._stopped() from None
            raise UserError(
                f"epoch {self.position.epoch + 1}: {failure}, then continue from {self.run_dir / 'last.pt'} "
                "with dataset.exclude=<file> resume=auto"
            ) from None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run_epochs(self) -> dict:
        """The epochs of `fit`, each followed by its end-of-epoch work; raises `TrainingStopped` on a stop."""
        metrics: dict = {}
        while True:
            if not self.position.validated:  # also an epoch whose validation a kill interrupted
                metrics = self._end_epoch() or metrics
                if any_process(self.stop_requested, self.device):  # a signal during validation
                    self._mark_update_boundary()
                    raise self._stopped()
            if self.position.epoch >= self.cfg.epochs:
                return metrics or self.validate()  # a resumed run that had already finished still reports
            self.train_epoch()
            if any_process(self.stop_requested, self.device):  # a signal may reach one rank after the last update
                raise self._stopped()
            self.save("last.pt")  # the epoch is safe before validation starts

    def _end_epoch(self) -> dict:
        """Validate the finished epoch when due, keep best.pt, then record that in last.pt.

        last.pt says `validated=False` until this is done, so a run killed during validation or
        while writing best.pt validates that epoch again when resumed (with the same result).

        Returns:
            The validation metrics, or {} when this epoch is not validated.
        """
        epoch = self.position.epoch
        due = validation_due(epoch, self.cfg.epochs, self.cfg.eval_every)
        metrics = self.validate() if due else {}
        self.position.validated = True
        if metrics and metrics["top1"] > self.position.best_top1:
            self.position.best_top1 = metrics["top1"]
            self.save("best.pt")
        self.save("last.pt")
        return metrics

    def _mark_update_boundary(self) -> None:
        """Remember where the last complete update left off: what a stop in between saves."""
        self._boundary = _UpdateBoundary(
            position=replace(self.position),
            rng=rng_state(),
            buffers={name: b.detach().clone() for name, b in self.model_without_ddp.named_buffers()},
        )

    def _boundary_checkpoint(self) -> RunCheckpoint:
        """The checkpoint of the last complete update: weights as they are, BatchNorm buffers, RNG and
        position as they were then (micro-batches since then are repeated by a resumed run)."""
        checkpoint = self.checkpoint()
        boundary = self._boundary
        checkpoint.model = {key: boundary.buffers.get(key, value) for key, value in checkpoint.model.items()}
        checkpoint.training = replace(checkpoint.training, position=replace(boundary.position), rng=boundary.rng)
        return checkpoint

    def _stepped_state(self) -> tuple[list[Tensor], list[tuple[Tensor, str]]]:
        """What an optimizer step changes in place: the parameters, and the optimizer's state tensors with
        their (parameter, key) places."""
        state = self.optimizer.state
        places = [
            (parameter, key)
            for parameter in self._parameters
            for key, value in state.get(parameter, {}).items()
            if isinstance(value, Tensor)
        ]
        return [p.detach() for p in self._parameters] + [state[p][key] for p, key in places], places

    def _remember_verified_state(self) -> None:
        """Just before an optimizer step: every forward since the last update was finite at these weights,
        so this update boundary is a state from which training can go on (with a lower LR if it diverges).

        Only rank 0, which writes checkpoints, keeps copies: of the tensors the step changes, refreshed in
        place in buffers kept from one update to the next, and of the small schedule and scaler states.
        """
        previous = self._verified
        copies: list[Tensor] = []
        places: list[tuple[Tensor, str]] = []
        small: tuple[list[float], dict, dict] = ([], {}, {})
        if is_main_process():
            small = (
                [group["lr"] for group in self.optimizer.param_groups],
                copy.deepcopy(self.scheduler.state_dict()),
                copy.deepcopy(self.scaler.state_dict()),
            )
            tensors, places = self._stepped_state()
            reusable = previous is not None and [t.shape for t in previous.tensors] == [t.shape for t in tensors]
            if reusable:
                copies = previous.tensors
                torch._foreach_copy_(copies, tensors)
            else:
                copies = [t.detach().clone() for t in tensors]
        self._verified = _VerifiedState(
            boundary=self._boundary,
            step=self.position.step,
            tensors=copies,
            optimizer_places=places,
            lrs=small[0],
            scheduler=small[1],
            scaler=small[2],
        )

    def _return_to_verified_state(self) -> None:
        """Put the verified state back in place (rank 0, which then only saves it): weights, optimizer state and
        learning rates, schedule, scaler, boundary."""
        verified = self._verified
        parameters = [p.detach() for p in self._parameters]
        torch._foreach_copy_(parameters, verified.tensors[: len(parameters)])
        state_copies = verified.tensors[len(parameters) :]
        kept = {id(p): p for p, _ in verified.optimizer_places}
        for parameter in list(self.optimizer.state):
            if id(parameter) not in kept:  # no state yet at the verified boundary (its first step came later)
                del self.optimizer.state[parameter]
        for (parameter, key), value in zip(verified.optimizer_places, state_copies, strict=True):
            self.optimizer.state[parameter][key] = value
        for group, lr in zip(self.optimizer.param_groups, verified.lrs, strict=True):
            group["lr"] = lr
        self.scheduler.load_state_dict(verified.scheduler)
        if self.scaler.is_enabled():
            self.scaler.load_state_dict(verified.scaler)
        self._boundary = verified.boundary

    def _stopped(self) -> TrainingStopped:
        """Save last.pt as of the last complete update (a resumed run repeats nothing and skips nothing).

        Returns:
            The exception to raise, with the command that continues the run.
        """
        last = self.run_dir / "last.pt"
        if self._stop_signal:
            log.warning(
                "received signal %s: saving last.pt as of update %d",
                signal.Signals(self._stop_signal).name,
                self.position.step,
            )
        if is_main_process():
            self._boundary_checkpoint().save(last)
        received = signal.Signals(self._stop_signal).name if self._stop_signal else "another process's stop signal"
        return TrainingStopped(
            f"stopped by {received}; saved {last}. Continue with: {self.continue_command({})}",
            exit_code=130 if self._stop_signal == signal.SIGINT else 143,
            signum=self._stop_signal,
            previous_handler=self._previous_handlers.get(self._stop_signal),
            resume=self.config.get("resume"),
        )

    def _diverged(self, loss: float) -> TrainingDiverged:
        """Save the last state whose losses were finite as last.pt.

        Args:
            loss: this process's loss (the update's mean micro-batch loss): non-finite unless another process's was.

        Returns:
            The exception to raise, which says how to go on from that state.
        """
        step, epoch = self.position.step + 1, self.position.epoch + 1
        where = f"loss is {loss} (on this process or another) at update {step} (epoch {epoch})"
        if self._verified is None:
            return TrainingDiverged(
                f"{where}, before any update of this run succeeded: the starting weights or the data give it; "
                "check init_from / resume and the inputs"
            )
        if is_main_process():
            self._return_to_verified_state()
            self._boundary_checkpoint().save(self.run_dir / "last.pt")
        if is_distributed():
            torch.distributed.barrier()  # no rank exits (and gets the job killed) before the file is written
        command = self.continue_command({"optimizer.lr": "<lower>"})
        return TrainingDiverged(
            f"{where}; saved the last state with finite losses (update {self._verified.step}) as "
            f"{self.run_dir / 'last.pt'}; continue from it with a lower LR: {command}"
        )

    def _request_stop(self, signum: int, frame) -> None:
        """Signal handler: stop after the current update.

        Args:
            signum: the signal received.
            frame: the interrupted frame (unused).
        """
        # Flags only: another signal's handler may run in the middle of this one (between two bytecodes), and
        # PyTorch's SIGCHLD handler raises when a data worker died of the same job-wide signal, which could cut
        # a log call short (or deadlock on the logging lock the interrupted code holds). `_stopped` says it.
        self.stop_requested = True
        self._stop_signal = signum

    def train_epoch(self) -> None:
        """Train the rest of the current epoch, or up to a stop request (then `position.epoch` stays)."""
        self.model.train()
        position = self.position
        self.train_loader.sampler.set_epoch(position.epoch, start=position.batches_in_epoch * self.cfg.batch_size)
        self._mark_update_boundary()
        self._update_loss_sum = None
        total = self.updates_per_epoch * self.accumulation  # the last incomplete accumulation group is not used
        batches = track(
            itertools.islice(self.train_loader, total - position.batches_in_epoch),
            total=total,
            initial=position.batches_in_epoch,
            desc=f"epoch {position.epoch + 1}/{self.cfg.epochs}",
            bars=self.progress_bars,
            ahead=work_after_epoch(position.epoch, self.cfg.epochs, self.cfg.eval_every, total, self._validation_s),
        )
        meter = TrainingMeter()
        with contextlib.closing(batches):
            tick = perf_counter()
            for batch in batches:
                self._train_batch(batch, meter, data_wait=perf_counter() - tick)
                if position.batches_in_epoch % self.accumulation == 0 and self._after_update(meter):
                    return
                tick = perf_counter()
        position.epoch += 1
        position.batches_in_epoch = 0
        position.validated = False
        self._mark_update_boundary()

    def _train_batch(self, batch: dict, meter: TrainingMeter, data_wait: float) -> None:
        """Forward and backward one micro-batch, count it, and report its undecodable videos (once each).

        Args:
            batch: `clip`, `label`, and `failed` / `reason` for videos that were replaced.
            meter: the running sums of the training log.
            data_wait: seconds spent waiting for this batch.
        """
        loss, correct1, correct5 = self._micro_step(batch)
        meter.update(loss=loss, correct1=correct1, correct5=correct5, clips=len(batch["label"]), data_wait=data_wait)
        for path, reason in zip(batch["failed"], batch["reason"]):
            if path and path not in self.failed_train:
                self.failed_train[path] = reason
                log.warning("replaced undecodable training video %s (reported once): %s", path, reason)
        self.position.batches_in_epoch += 1

    def _after_update(self, meter: TrainingMeter) -> bool:
        """After the last micro-batch of an update: step, checkpoint and log when due, and agree on stopping.

        Args:
            meter: the running sums of the training log (reset after each log point).

        Returns:
            Whether to stop (a stop signal reached any process).
        """
        self._update()
        self._mark_update_boundary()
        if self.cfg.checkpoint_every and self.position.step % self.cfg.checkpoint_every == 0:
            self.save("last.pt")
        if self.position.step % self.cfg.log_every == 0:
            self._log_training(meter)
            meter.reset()
        # All ranks stop together. Only ever set here, never cleared: a signal whose handler runs while the
        # ranks agree (between reading the flag and this assignment) must not be lost.
        if any_process(self.stop_requested, self.device):
            self.stop_requested = True
        return self.stop_requested

    def _micro_step(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        """Forward and backward one micro-batch; DDP syncs gradients only on the last of a group.

        Nothing is read back to the host: the loss and hits stay on the device (the meter reads them at log
        points), and whether the loss is finite is checked once per update, before its step (`_check_losses`).

        Args:
            batch: `clip` N x C x T x H x W and `label` N.

        Returns:
            (mean loss, clips with the label top-1, clips with the label in the top 5), tensors on the device.
        """
        clips = batch["clip"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        last_of_group = (self.position.batches_in_epoch + 1) % self.accumulation == 0
        sync = contextlib.nullcontext() if last_of_group or not hasattr(self.model, "no_sync") else self.model.no_sync()
        with sync:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                logits = self.model(clips)
                loss = nn.functional.cross_entropy(logits.float(), labels)
            self.scaler.scale(loss / self.accumulation).backward()  # a non-finite loss only spoils gradients not used
        loss, logits = loss.detach(), logits.detach()
        losses = self._update_loss_sum
        self._update_loss_sum = loss.double() if losses is None else losses + loss.double()  # NaN or inf stays
        return loss, topk_correct(logits, labels, 1).sum(), topk_correct(logits, labels, 5).sum()

    def _check_losses(self) -> None:
        """Before an update's step: raise `TrainingDiverged` on every process when a loss of the update was not
        finite on any of them (one all-reduce, with several processes, and one read from the device per update).

        Every process runs the update's forward and backward passes to the end first, so none waits for another
        in DDP's gradient all-reduce; the step is not applied.
        """
        losses, self._update_loss_sum = self._update_loss_sum, None
        if losses is not None and any_process(~torch.isfinite(losses), self.device):
            raise self._diverged(losses.item() / self.accumulation)

    def _update(self) -> None:
        """One optimizer step on the accumulated gradients (unscaled and clipped as configured), and the LR's.

        Raises:
            TrainingDiverged: a loss of this update was not finite (on this process or another); no step is taken.
        """
        self._check_losses()
        self._remember_verified_state()
        if self.optimizer_cfg.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.optimizer_cfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.position.step += 1

    def _training_scalars(self, meter: TrainingMeter) -> dict[str, float]:
        """What the training log reports at a log point, averaged over processes where each has its own.

        Args:
            meter: the running sums since the last log point.

        Returns:
            {TensorBoard tag: value}: loss, accuracies, LR, throughput, data wait, undecodable videos,
            every `.gamma` parameter (RCCA-3D's) and, on a GPU, the peak memory.
        """
        values = {
            "train/loss": reduce_mean(meter.loss, self.device),
            "train/top1": reduce_mean(meter.top1, self.device),
            "train/top5": reduce_mean(meter.top5, self.device),
            "train/lr": self.optimizer.param_groups[0]["lr"],
            "train/clips_per_s": meter.clips_per_s(self.world_size),
            "train/data_wait_fraction": meter.data_wait_fraction(),
            "train/undecodable_videos": len(self.failed_train),
        }
        for name, parameter in self.model_without_ddp.named_parameters():
            if name.endswith(".gamma"):
                values[f"gamma/{name}"] = parameter.item()
        if self.device.type == "cuda":
            values["train/gpu_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return values

    def _log_training(self, meter: TrainingMeter) -> None:
        """Write the training scalars to TensorBoard and a summary line to the log (rank 0).

        Args:
            meter: the running sums since the last log point.
        """
        values = self._training_scalars(meter)  # every rank: the averages are collective
        if not is_main_process():
            return
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, self.position.step)
        log.info(
            "epoch %d, update %d: loss %.3f top1 %.1f lr %.4g, %.1f clips/s",
            self.position.epoch + 1,
            self.position.step,
            values["train/loss"],
            values["train/top1"],
            values["train/lr"],
            values["train/clips_per_s"],
        )

    # ----------------------------------------------------------------- validation
    def validate(self) -> dict:
        """Video-level metrics on the test loader, logged to TensorBoard and the log.

        Returns:
            `rcca.engine.metrics.validation_metrics` of the current weights.

        Raises:
            TrainingDiverged: the scores are not finite (the last update diverged).
        """
        self.test_loader.sampler.set_epoch(0)
        started = perf_counter()
        scores, labels, _, failed = predict_videos(
            self.model,
            self.test_loader,
            self.device,
            progress_bars=self.progress_bars,
            autocast_dtype=self.autocast_dtype,
        )
        self._validation_s = perf_counter() - started
        if not torch.isfinite(scores).all():  # the last update diverged: its weights must not become best.pt
            raise self._diverged(float("nan"))
        train_failed = dict(sorted(gather_lists(sorted(self.failed_train.items()))))
        metrics = validation_metrics(
            scores, labels, self.class_names, failed_videos=failed, train_failed_videos=train_failed
        )
        if is_main_process():
            self._report_validation(metrics)
        return metrics

    def _report_validation(self, metrics: dict) -> None:
        """Log a validation's accuracies and write them to TensorBoard.

        Args:
            metrics: `validation_metrics` after `position.epoch` epochs.
        """
        undecodable = len(metrics["failed_videos"])
        log.info(
            "epoch %d validation: top1 %.2f top5 %.2f mean-class %.2f (%s%s)",
            self.position.epoch,
            metrics["top1"],
            metrics["top5"],
            metrics["mean_class_accuracy"],
            count_of(metrics["num_videos"], "video"),
            f", {undecodable} undecodable" if undecodable else "",
        )
        if self.writer is not None:
            for key in ("top1", "top5", "mean_class_accuracy"):
                self.writer.add_scalar(f"val/{key}", metrics[key], self.position.step)
            if self._draws_images is None:
                self._draws_images = can_draw()
            if self._draws_images:
                self._write_images(metrics)

    def _write_images(self, metrics: dict) -> None:
        """The validation's TensorBoard images (rank 0). A failure to draw them costs the images, not the run:
        it is logged with its traceback and no more images are drawn."""
        cam = self.cfg.cam_every > 0 and self._validations_drawn % self.cfg.cam_every == 0
        step = self.position.step
        try:
            write_confusion_matrix(self.writer, step, metrics["confusion_matrix"], self.class_names)
            clip = self._cam_clip() if cam else None
            if clip is not None:
                write_class_activation_maps(self.writer, step, self.model_without_ddp, clip, self.class_names)
        except Exception:
            log.warning("TensorBoard images failed; the run goes on without them", exc_info=True)
            self._draws_images = False
        self._validations_drawn += 1

    def _cam_clip(self) -> Tensor | None:
        """The first view of the first test video (None when it cannot be decoded): the clip of the CAM images."""
        item = self.test_loader.dataset[0]
        return item["clip"][0] if item["ok"] else None


def autocast_dtype(amp: str) -> torch.dtype | None:
    """The autocast dtype of `trainer.amp`; works on GPUs and CPUs alike.

    Args:
        amp: `off`, `bf16` or `fp16`.

    Returns:
        The dtype, or None when off.
    """
    if amp not in AMP_DTYPES:
        raise UserError(f"trainer.amp={amp!r}: choose one of {', '.join(AMP_DTYPES)}")
    return AMP_DTYPES[amp]


def validation_due(epoch: int, epochs: int, eval_every: int) -> bool:
    """Whether the end of an epoch is validated: every `eval_every` epochs, and the last epoch always.

    Args:
        epoch: the epoch's number, counted from 1.
        epochs: the run's epochs.
        eval_every: `trainer.eval_every`.

    Returns:
        Whether that epoch ends with a validation.
    """
    return epoch % eval_every == 0 or epoch == epochs


def work_after_epoch(
    epoch: int, epochs: int, eval_every: int, batches_per_epoch: int, validation_s: float | None
) -> Ahead:
    """What the run still does after the training batches of an epoch, for the run's ETA on plain progress lines.

    The run's ETA is the time its remaining training batches take at the rate the current epoch measures
    (this epoch's rest and every later epoch's batches), plus every validation still due (this epoch's
    included) at the duration of the last validation this process timed. Until one has been timed (the
    first epoch of a run or of a resumed run), validations are not guessed: the line names them instead
    (`run ETA 9 min 40 s + 6 validations`). Start-up and checkpoint writing are not counted.

    Args:
        epoch: epochs already completed (`position.epoch`): the epoch being trained is `epoch + 1`.
        epochs: the run's epochs.
        eval_every: `trainer.eval_every`.
        batches_per_epoch: the batches (micro-batches of this process) that one epoch trains on.
        validation_s: the last validation's duration in seconds, or None when none has been timed.

    Returns:
        The later epochs' batches, and the validations still due: timed, or named as `untimed`.
    """
    validations = sum(validation_due(number, epochs, eval_every) for number in range(epoch + 1, epochs + 1))
    later_batches = max(epochs - epoch - 1, 0) * batches_per_epoch
    if validation_s is None:
        return Ahead(
            label="run", items=later_batches, untimed=count_of(validations, "validation") if validations else ""
        )
    return Ahead(label="run", items=later_batches, seconds=validations * validation_s)


def accumulation_steps(effective_batch_size: int, batch_size: int, world_size: int) -> int:
    """Micro-batches per update; the effective batch must be an exact multiple of batch x processes.

    Args:
        effective_batch_size: clips per optimizer update, over all processes.
        batch_size: clips per micro-batch on one process.
        world_size: processes.

    Returns:
        The micro-batches each process accumulates per update.
    """
    per_round = batch_size * world_size
    if effective_batch_size % per_round != 0:
        raise UserError(
            f"trainer.effective_batch_size={effective_batch_size} is not a multiple of trainer.batch_size x processes "
            f"= {batch_size} x {world_size}: choose sizes that divide exactly"
        )
    return effective_batch_size // per_round
