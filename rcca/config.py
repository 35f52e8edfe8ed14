"""Typed configuration schemas, registered in Hydra's ConfigStore.

`configs/config.yaml` composes these with the YAML options of each group. Because every
group is backed by a dataclass, a misspelled key (`module.recurence=2`) or a value of the
wrong type (`trainer.epochs=ten`) fails at start with an error that names the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig
from omegaconf.errors import OmegaConfBaseException

from rcca.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class BackboneConfig:
    name: str = "tsm"  # architecture: tsm (TSM ResNet) or mfnet (Multi-Fiber Network)
    depth: int = 50  # TSM ResNet depth: 18, 34 or 50 (ignored by mfnet)
    width: int = 64  # TSM stem channels (64 = the standard ResNet; smaller = narrower, for CPU runs)
    num_frames: int = 8  # frames per clip: TSM segments or MF-Net clip length
    sampling: str = "segment"  # frame sampling: segment (TSN-style, uniform) or dense (consecutive)
    frame_interval: int = 1  # dense sampling: step between sampled frames
    shift_div: int = 8  # TSM: 1/shift_div of the channels shifted each way in time
    dropout: float = 0.5  # dropout before the classifier
    pretrained: Optional[str] = None  # local torchvision ImageNet state dict file (TSM); nothing is downloaded


@dataclass
class SyntheticConfig:
    num_train: int = 480  # generated training videos
    num_test: int = 160  # generated test videos
    frames: int = 24  # frames per generated video
    size: int = 80  # frame height and width in pixels (a multiple of 16: decord 0.6 misreads some other widths)
    seed: int = 0  # generation seed (part of the cache key)


@dataclass
class DatasetConfig:
    name: str = "synthetic"  # annotation format: synthetic, video_list, ucf101, hmdb51, kinetics400, mini_kinetics200
    root: str = MISSING  # folder holding the videos (paths in the annotations are relative to it)
    annotations: Optional[str] = None  # split folder or CSV folder of the official dataset
    train_list: Optional[str] = None  # video_list: training list file ("relative/path.mp4 label" per line)
    test_list: Optional[str] = None  # video_list: test list file
    num_classes: int = MISSING  # number of classes (checked against the annotations)
    split: int = 1  # official split 1, 2 or 3 (UCF101, HMDB51)
    layout: str = "flat"  # Kinetics clip files: flat (all in root) or per_label (root/<label>/<clip>)
    backend: str = "decord"  # video reader: decord, pyav or frames (folders of img_00001.jpg)
    flip: bool = True  # random horizontal flip in training (off where left/right matters)
    allow_missing: bool = False  # train on the videos present when annotations list missing files
    exclude: Optional[str] = None  # file of video paths (one per line, as listed) left out of both splits
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # synthetic set only


@dataclass
class ModuleConfig:
    name: str = "none"  # context module: none, nl (non-local) or rcca (RCCA-3D)
    positions: list[str] = field(default_factory=list)  # blocks after which modules go, e.g. [conv3_3, conv4_5]
    structure: str = "a"  # RCCA-3D structure a, b, c or d (paper Eq. 5-7, Fig. 5)
    recurrence: int = 3  # RCCA-3D: R, applications of the shared CCA-3D
    inner_fraction: float = 0.25  # RCCA-3D: C_d, query/key channels as a fraction of C
    value_fraction: float = 0.5  # RCCA-3D structure c: reduced value channels as a fraction of C
    gamma_init: float = 1.0  # RCCA-3D: initial gamma
    subsample: bool = False  # non-local: max-pool keys and values by 1x2x2


@dataclass
class OptimizerConfig:
    lr: float = 0.01  # learning rate for an update on the effective batch
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # L2 weight decay
    nesterov: bool = False  # Nesterov momentum
    decay_norm_and_bias: bool = False  # apply weight decay to norm layers, biases and gamma too
    classifier_lr_mult: float = 1.0  # LR multiplier for the classifier (e.g. 5 when fine-tuning a new head)
    clip_grad_norm: Optional[float] = 20.0  # gradient clipping max norm (TSM: 20); null disables


@dataclass
class ScheduleConfig:
    milestones: list[int] = field(default_factory=list)  # epochs at which the LR is multiplied by `factor`
    factor: float = 0.1  # LR decay factor at each milestone
    warmup_epochs: float = 0.0  # linear warm-up length in epochs (0 disables)


@dataclass
class TrainerConfig:
    epochs: int = 6  # training epochs
    batch_size: int = 16  # clips per forward pass and process
    effective_batch_size: int = 16  # clips per optimizer update (accumulated across steps and processes)
    num_workers: int = 2  # DataLoader worker processes per process
    data_timeout: float = 600.0  # seconds a worker may spend on one batch before the run stops (hung decoder)
    device: str = "auto"  # auto (CUDA if available), cpu or cuda
    eval_every: int = 1  # validate every N epochs (the last epoch always)
    log_every: int = 10  # optimizer updates between log lines / TensorBoard points
    checkpoint_every: int = 0  # also write last.pt every N optimizer updates (0: at epoch ends only)
    progress: bool = True  # progress bar when the output is a terminal (plain log lines otherwise)
    amp: str = "off"  # mixed precision: off, bf16 or fp16 (fp16 adds a gradient scaler); meant for GPUs, also runs on CPUs
    channels_last: bool = False  # channels-last weights (NHWC for 2D, NDHWC for 3D convolutions); pays off on GPUs
    compile: bool = False  # torch.compile the model
    cudnn_benchmark: bool = False  # let cuDNN time and pick the fastest kernels: faster, but not bit-reproducible
    sync_bn: bool = False  # synchronise BatchNorm statistics across processes (the paper keeps them per GPU)


@dataclass
class TestConfig:
    num_clips: int = 1  # clips per video at test time, spread uniformly
    num_crops: int = 1  # crops per clip: 1 (centre), 3 or 10
    batch_size: int = 8  # videos per evaluation batch (lowered so that a batch holds at most 64 views)
    resize_short: int = 256  # test-time short-side resize before cropping


@dataclass
class DataConfig:
    crop_size: int = 224  # network input height and width
    scales: list[float] = field(default_factory=lambda: [1.0, 0.875, 0.75, 0.66])  # multi-scale crop scales
    cache_dir: str = "data"  # where generated datasets are cached (relative to the launch folder)


@dataclass
class Config:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    module: ModuleConfig = field(default_factory=ModuleConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    test: TestConfig = field(default_factory=TestConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0  # seed of model init, sampling and augmentation
    resume: Optional[str] = None  # auto (this run folder's last.pt) or a checkpoint path
    overwrite: bool = False  # let a fresh run (no resume) replace the checkpoints already in its run folder
    init_from: Optional[str] = None  # checkpoint whose weights start a new run (fine-tuning)
    init_from_format: str = "rcca"  # init_from file format: rcca (this framework), tsm or mfnet (official releases)
    ckpt: Optional[str] = None  # test.py: checkpoint to evaluate


def register_configs() -> None:
    """Register the root schema as `base_config` in Hydra's ConfigStore (first in config.yaml's defaults)."""
    ConfigStore.instance().store(name="base_config", node=Config)


def compose_config(overrides: list[str]) -> DictConfig:
    """The config `train.py` would run with these Hydra overrides (for scripts); a bad override is a UserError."""
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            return compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(str(error)) from None
