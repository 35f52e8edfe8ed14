"""Typed configuration schemas, registered in Hydra's ConfigStore, with the rule of every key.

`rcca/configs/config.yaml` composes these with the YAML options of each group. Every key is typed,
defaulted and commented once; its field metadata holds the rule its values follow (`at_least(1)`,
`one_of("tsm", "mfnet")`). Bad input fails at start with one line that names the key:
  * `check_overrides` (train.py and test.py, before Hydra parses the command line): keys the schema
    lacks, whatever the prefix (`+trainer.epoch=2` would otherwise be accepted and ignored), and
    output folders that cannot be created;
  * `validate_config` (start of both pipelines): every value against its rule, then the rules that
    tie keys together (`data.crop_size` <= `test.resize_short`, positions that exist in the backbone).
"""

from __future__ import annotations

import difflib
import math
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, OverrideParseException
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rcca.data.context import min_frames
from rcca.errors import UserError
from rcca.models.positions import MFNET_STAGE_BLOCKS, POSITION, TSM_STAGE_BLOCKS, valid_positions

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # package data: composes from any folder
RULE = "rule"  # field metadata key of a key's Rule
CHOICES = "choices"  # field metadata key of the allowed values of a `one_of` key
OUTPUT_DIRS = ("hydra.run.dir", "hydra.sweep.dir")  # Hydra creates these before the run starts
GENERATED_CLASSES = {"synthetic": 8, "context": 2}  # classes of the generated sets (rcca.data.synthetic.TASKS)
INIT_FORMATS = ("rcca", "tsm", "tsn", "mfnet")  # init_from_format: this framework's, or official TSM, TSN, MF-Net files
# What the default quick-start may be combined with: {group or key: allowed values}
QUICKSTART_CHOICES = {
    "dataset": ("synthetic",),
    "dataset.name": ("synthetic",),
    "backbone": ("tsm_r18",),
    "backbone.name": ("tsm",),
    "backbone.depth": ("18",),
}
DATASETS = ("synthetic", "context", "video_list", "ucf101", "hmdb51", "kinetics400", "mini_kinetics200")  # dataset.name


@dataclass(frozen=True)
class Rule:
    """The values a config key may take: those `accepts` returns True for, described by `allowed`."""

    accepts: Callable[[Any], bool]
    allowed: str  # completes "must be ...", e.g. "an integer >= 1"


def rule(accepts: Callable[[Any], bool], allowed: str) -> dict[str, Rule]:
    """Field metadata for a key whose values `accepts` allows (null is left to the type: Optional or not)."""
    return {RULE: Rule(accepts, allowed)}


def at_least(low: int) -> dict[str, Rule]:
    """An integer key of `low` or more."""
    return rule(lambda value: value >= low, f"an integer >= {low}")


def positive() -> dict[str, Rule]:
    """A finite number > 0."""
    return rule(lambda value: math.isfinite(value) and value > 0, "a number > 0")


def non_negative() -> dict[str, Rule]:
    """A finite number >= 0."""
    return rule(lambda value: math.isfinite(value) and value >= 0, "a number >= 0")


def between(low: int, high: int) -> dict[str, Rule]:
    """An integer key from `low` to `high`."""
    return rule(lambda value: low <= value <= high, f"an integer from {low} to {high}")


def multiple_of(step: int, least: int) -> dict[str, Rule]:
    """An integer key that is a multiple of `step`, at least `least`."""
    return rule(lambda value: value >= least and value % step == 0, f"a multiple of {step}, at least {least}")


def fraction() -> dict[str, Rule]:
    """A number in (0, 1]."""
    return rule(lambda value: 0 < value <= 1, "a number in (0, 1]")


def below_one() -> dict[str, Rule]:
    """A number in [0, 1): a probability or a momentum."""
    return rule(lambda value: 0 <= value < 1, "a number in [0, 1)")


def finite() -> dict[str, Rule]:
    """Any finite number."""
    return rule(math.isfinite, "a finite number")


def path(allowed: str = "a non-empty path") -> dict[str, Rule]:
    """A non-blank string: a file or folder path (whether it exists is checked where it is used)."""
    return rule(lambda value: value.strip() != "", allowed)


def one_of(*choices: str | int) -> dict[str, Any]:
    """One of `choices` (also kept under CHOICES, for tests that compare them with the code's)."""
    return {**rule(lambda value: value in choices, f"one of {', '.join(map(str, choices))}"), CHOICES: choices}


def list_of(accepts: Callable[[Any], bool], items: str, nonempty: bool = False) -> dict[str, Rule]:
    """A list (`nonempty`: of one value or more) of values that `accepts` allows, described as `items`."""
    return rule(
        lambda values: len(values) >= nonempty and all(accepts(value) for value in values),
        f"a {'non-empty ' if nonempty else ''}list of {items}",
    )


# fmt: off
# The schema keeps one key per line with its comment (its documentation), whatever the line length.
@dataclass
class BackboneConfig:
    name: str = field(default="tsm", metadata=one_of("tsm", "mfnet"))  # architecture: TSM ResNet or Multi-Fiber Network
    depth: int = field(default=50, metadata=one_of(18, 34, 50))  # TSM ResNet depth (ignored by mfnet)
    width: int = field(default=64, metadata=at_least(1))  # TSM stem channels (64: the standard ResNet; fewer: narrower, for CPUs)
    num_frames: int = field(default=8, metadata=at_least(1))  # frames per clip: TSM segments or MF-Net clip length
    sampling: str = field(default="segment", metadata=one_of("segment", "dense"))  # TSN-style uniform or consecutive frames
    frame_interval: int = field(default=1, metadata=at_least(1))  # dense sampling: step between sampled frames
    shift_div: int = field(default=8, metadata=at_least(2))  # TSM: 1/shift_div of the channels shifted each way in time
    shift_place: str = field(default="blockres", metadata=one_of("blockres", "block"))  # TSM shift inside the residual branch (blockres) or on the block input (block)
    dropout: float = field(default=0.5, metadata=below_one())  # dropout before the classifier
    pretrained: str | None = field(default=None, metadata=path())  # torchvision ImageNet state dict file (TSM; not downloaded)


@dataclass
class SyntheticConfig:
    num_train: int = field(default=480, metadata=at_least(1))  # generated training videos
    num_test: int = field(default=160, metadata=at_least(1))  # generated test videos
    frames: int = field(default=24, metadata=at_least(1))  # frames per generated video
    size: int = field(default=80, metadata=multiple_of(16, least=32))  # frame height and width (decord 0.6 misreads other widths)
    seed: int = field(default=0, metadata=at_least(0))  # generation seed (part of the cache key, like every key here)


@dataclass
class DatasetConfig:
    name: str = field(default="synthetic", metadata=one_of(*DATASETS))  # annotation format: a generated set (synthetic, context), lists, official sets
    root: str = field(default=MISSING, metadata=path())  # folder holding the videos (annotations list paths relative to it)
    annotations: str | None = field(default=None, metadata=path())  # split folder or CSV folder of the official dataset
    train_list: str | None = field(default=None, metadata=path())  # video_list: training list ("relative/path.mp4 label" lines)
    test_list: str | None = field(default=None, metadata=path())  # video_list: test list file
    class_names: str | None = field(default=None, metadata=path())  # video_list: file of class names, one per line in label order
    num_classes: int = field(default=MISSING, metadata=at_least(2))  # number of classes (checked against the annotations)
    split: int = field(default=1, metadata=one_of(1, 2, 3))  # official split (UCF101, HMDB51)
    layout: str = field(default="flat", metadata=one_of("flat", "per_label"))  # Kinetics clips: all in root or root/<label>/<clip>
    backend: str = field(default="decord", metadata=one_of("decord", "pyav", "frames"))  # video reader (frames: img_00001.jpg folders)
    flip: bool = True  # random horizontal flip in training (off where left/right matters)
    allow_missing: bool = False  # train on the videos present when annotations list missing files
    exclude: str | None = field(default=None, metadata=path())  # file of video paths (as listed) left out of both splits
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # generated sets (synthetic, context) only


@dataclass
class ModuleConfig:
    name: str = field(default="none", metadata=one_of("none", "nl", "rcca"))  # context module: none, non-local or RCCA-3D
    positions: list[str] = field(default_factory=list, metadata=list_of(POSITION.fullmatch, "blocks convN_i"))  # e.g. [conv3_3]
    structure: str = field(default="a", metadata=one_of("a", "b", "c", "d"))  # RCCA-3D structure (paper Eq. 5-7, Fig. 5)
    recurrence: int = field(default=3, metadata=at_least(1))  # RCCA-3D: R, applications of the shared CCA-3D
    inner_fraction: float = field(default=0.25, metadata=fraction())  # RCCA-3D: C_d, query/key channels as a fraction of C
    value_fraction: float = field(default=0.5, metadata=fraction())  # RCCA-3D structure c: value channels as a fraction of C
    gamma_init: float = field(default=1.0, metadata=finite())  # RCCA-3D: initial gamma
    subsample: bool = False  # non-local: max-pool keys and values by 1x2x2
    memory_efficient: bool = False  # RCCA-3D: save only each recurrence's input, recompute the rest in backward


@dataclass
class OptimizerConfig:
    lr: float = field(default=0.01, metadata=positive())  # learning rate for an update on the effective batch
    momentum: float = field(default=0.9, metadata=below_one())  # SGD momentum
    weight_decay: float = field(default=5e-4, metadata=non_negative())  # L2 weight decay
    nesterov: bool = False  # Nesterov momentum (needs momentum > 0)
    decay_norm_and_bias: bool = False  # apply weight decay to norm layers, biases and gamma too
    classifier_lr_mult: float = field(default=1.0, metadata=non_negative())  # classifier LR multiplier (e.g. 5 for a new head)
    clip_grad_norm: float | None = field(default=20.0, metadata=positive())  # gradient clipping max norm (TSM: 20); null: none


@dataclass
class ScheduleConfig:
    milestones: list[int] = field(default_factory=list, metadata=list_of(lambda v: v >= 1, "epochs >= 1"))  # LR x factor there
    factor: float = field(default=0.1, metadata=fraction())  # LR decay factor at each milestone
    warmup_epochs: float = field(default=0.0, metadata=non_negative())  # linear warm-up length in epochs (0 disables)


@dataclass
class TrainerConfig:
    epochs: int = field(default=6, metadata=at_least(1))  # training epochs
    batch_size: int = field(default=16, metadata=at_least(1))  # clips per forward pass and process
    effective_batch_size: int = field(default=16, metadata=at_least(1))  # clips per update (accumulated over steps, processes)
    num_workers: int = field(default=2, metadata=at_least(0))  # DataLoader worker processes per process
    threads: int | None = field(default=None, metadata=at_least(1))  # intra-op CPU threads per process; null: its share of the cores less its data workers, at least 1
    data_timeout: float = field(default=600.0, metadata=non_negative())  # seconds a worker may take for a batch (0: no limit)
    device: str = field(default="auto", metadata=one_of("auto", "cpu", "cuda"))  # auto: CUDA when a GPU is visible
    eval_every: int = field(default=1, metadata=at_least(1))  # validate every N epochs (the last epoch always)
    log_every: int = field(default=10, metadata=at_least(1))  # optimizer updates between log lines / TensorBoard points
    cam_every: int = field(default=1, metadata=at_least(0))  # TensorBoard: class activation maps of the first test video every N validations (0: never); the confusion matrix comes with every validation
    checkpoint_every: int = field(default=0, metadata=at_least(0))  # also write last.pt every N updates (0: at epoch ends only)
    progress: bool = True  # progress bar when the output is a terminal (plain log lines otherwise)
    amp: str = field(default="off", metadata=one_of("off", "bf16", "fp16"))  # mixed precision (fp16 adds a gradient scaler)
    channels_last: bool = False  # channels-last weights (NHWC for 2D, NDHWC for 3D convolutions); pays off on GPUs
    compile: bool = False  # torch.compile the model
    cudnn_benchmark: bool = False  # let cuDNN time and pick the fastest kernels: faster, but not bit-reproducible
    sync_bn: bool = False  # synchronise BatchNorm statistics across processes (the paper keeps them per GPU)


@dataclass
class TestConfig:
    num_clips: int = field(default=1, metadata=at_least(1))  # clips per video at test time, spread uniformly
    num_crops: int = field(default=1, metadata=one_of(1, 3, 10))  # crops per clip: 1 (centre), 3 or 10 (see MultiViewCrop)
    batch_size: int = field(default=8, metadata=at_least(1))  # videos per evaluation batch (lowered to hold at most 64 views)
    resize_short: int = field(default=256, metadata=at_least(1))  # test-time short-side resize before cropping


@dataclass
class DataConfig:
    crop_size: int = field(default=224, metadata=at_least(1))  # network input height and width (at most test.resize_short)
    scales: list[float] = field(default_factory=lambda: [1.0, 0.875, 0.75, 0.66], metadata=list_of(lambda v: 0 < v <= 1, "numbers in (0, 1]", nonempty=True))  # multi-scale crop scales
    cache_dir: str = field(default="data", metadata=path())  # where generated datasets are cached (relative to the launch folder)


@dataclass
class ImageNetConfig:
    resnet50: str | None = field(default=None, metadata=path())  # torchvision ResNet-50 ImageNet state dict file: the table presets' TSM start (their backbone.pretrained)
    mfnet: str | None = field(default=None, metadata=path())  # official MF-Net 2D ImageNet-1k file (MFNet2D_ImageNet1k-0000.pth): the table presets' MF-Net start (their init_from)
    required: bool = False  # refuse to start without the file of the run's backbone (resnet50: TSM, mfnet: MF-Net): the table presets start from ImageNet


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
    imagenet: ImageNetConfig = field(default_factory=ImageNetConfig)  # ImageNet weights the table presets start from (read only where a preset uses them)
    results_dir: str = field(default="outputs/paper", metadata=path())  # table presets: one sweep folder per table here; fine-tuning presets find their pre-training checkpoints here
    seed: int = field(default=0, metadata=between(0, 2**32 - 1))  # seed of model init, sampling and augmentation (numpy's range)
    resume: str | None = field(default=None, metadata=path("auto or a checkpoint path"))  # auto: this run folder's last.pt
    overwrite: bool = False  # let a fresh run (no resume) replace the checkpoints already in its run folder
    init_from: str | None = field(default=None, metadata=path())  # checkpoint whose weights start a new run (fine-tuning)
    init_from_format: str = field(default="rcca", metadata=one_of(*INIT_FORMATS))  # this framework's, or an official release's
    ckpt: str | None = field(default=None, metadata=path())  # test.py: checkpoint to evaluate
# fmt: on


def register_configs() -> None:
    """Register the root schema as `base_config` in Hydra's ConfigStore (first in config.yaml's defaults)."""
    ConfigStore.instance().store(name="base_config", node=Config)


def compose_config(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """The config `train.py` would run with these Hydra overrides (for scripts); a bad override is a UserError.

    Values are not checked against their rules here: call `validate_config` on the result (without `hydra`).

    Args:
        overrides: Hydra overrides, as on train.py's command line.
        with_hydra: also return Hydra's own node (`hydra`, unresolved), e.g. a preset's `hydra.sweeper.params`.
    """
    check_overrides(overrides)
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            return compose(config_name="config", overrides=overrides, return_hydra_config=with_hydra)
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(str(error)) from None


def check_overrides(argv: list[str]) -> None:
    """Refuse, before Hydra parses `argv` (a command line less the program), what Hydra would mishandle.

    * A key the schema lacks, whatever its prefix: Hydra refuses `trainer.epoch=2` with the hint to
      append it as `+trainer.epoch=2`, which it then accepts and nothing reads. The error suggests
      the closest key instead. Schema keys cannot be deleted (`~trainer.epochs`) either.
    * `hydra.run.dir` / `hydra.sweep.dir` folders that cannot be created.
    Group choices (`dataset=ucf101`, `experiment=...`) and Hydra's other keys are left to Hydra, and
    so are overrides it cannot parse (it reports them with the grammar's details).
    """
    known, _ = get_args_parser().parse_known_args(argv)
    try:
        overrides = OverridesParser.create().parse_overrides(known.overrides)
    except OverrideParseException:
        return
    groups = {entry.name for entry in CONFIG_DIR.iterdir() if entry.is_dir()}
    for override in overrides:
        key = override.key_or_group
        if override.is_hydra_override():
            value = None if override.is_delete() else override.value()
            if key in OUTPUT_DIRS and isinstance(value, str) and "${" not in value:
                _check_creatable(key, value)
        elif key.split("/")[0] in groups:
            continue
        elif _schema_node(key) is None:
            raise UserError(f"{override.input_line}: unknown key {key}; {_closest_keys(key)}")
        elif override.is_delete():
            raise UserError(f"{override.input_line}: {key} cannot be deleted; set it to another value instead")


def check_quickstart_choices(argv: list[str]) -> None:
    """train.py: refuse another backbone or a real dataset under the quick-start that is the experiment only
    by default.

    The quick-start (`experiment=quickstart`, the default) trains a narrow ResNet-18 with RCCA-3D at conv3_1
    on 64-pixel crops for 8 epochs: right for the synthetic set, silently wrong for UCF101 or a ResNet-50.
    Naming any experiment on the command line (`experiment=paper_tsm`, `experiment=none`, even
    `experiment=quickstart`) makes the choice explicit. The group choices (`dataset=ucf101`) and the keys
    that pick the same thing (`dataset.name=ucf101`) are both checked.
    """
    known, _ = get_args_parser().parse_known_args(argv)
    try:
        overrides = OverridesParser.create().parse_overrides(known.overrides)
    except OverrideParseException:
        return  # Hydra reports it
    if any(override.key_or_group == "experiment" for override in overrides):
        return
    for override in overrides:
        kept = QUICKSTART_CHOICES.get(override.key_or_group)
        if kept is None or override.is_delete():
            continue
        choices = list(override.sweep_string_iterator()) if override.is_sweep_override() else [str(override.value())]
        other = [choice for choice in choices if choice not in kept]
        if other:
            raise UserError(
                f"{override.input_line}: the default experiment is the CPU quick-start (narrow ResNet-18, RCCA-3D at "
                "conv3_1, 64-pixel crops, 8 epochs on the synthetic set); name a preset: experiment=paper_tsm (or "
                "paper_mfnet) for the paper's recipe, experiment=none to choose every group yourself, or "
                f"experiment=quickstart to keep the quick-start with {override.key_or_group}={other[0]}"
            )


def check_required(cfg: DictConfig) -> None:
    """Fail before any work with the key's name: mandatory values (???), then every value's rule."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"{', '.join(missing)} must be set (e.g. {missing[0]}=...) for this dataset or experiment")
    validate_config(cfg)


def validate_config(cfg: DictConfig) -> None:
    """Check a composed config before any work: every key known, every value allowed by its rule.

    Raises UserError with one line naming the key, its value and what is allowed, e.g.
    `trainer.eval_every=0: must be an integer >= 1`. Values still `???` are skipped (reported as
    missing by the caller); then come the rules that tie keys together.
    """
    _check_section(cfg, Config, "")
    _check_together(cfg)


def _check_section(node: DictConfig, schema: type, prefix: str) -> None:
    """Check `node` (a section of the config at `prefix`) against its dataclass, recursively."""
    names = {entry.name for entry in fields(schema)}
    for key in node:
        if key not in names:
            raise UserError(f"{prefix}{key}: unknown key; {_closest_keys(prefix + str(key))}")
    types = typing.get_type_hints(schema)
    for entry in fields(schema):
        key = prefix + entry.name
        if OmegaConf.is_missing(node, entry.name):
            continue
        value = node[entry.name]
        if is_dataclass(types[entry.name]):
            _check_section(value, types[entry.name], f"{key}.")
        elif RULE in entry.metadata and value is not None and not entry.metadata[RULE].accepts(value):
            raise UserError(f"{key}={_show(value)}: must be {entry.metadata[RULE].allowed}")


def _check_together(cfg: DictConfig) -> None:
    """The rules that tie several keys together."""
    if cfg.data.crop_size > cfg.test.resize_short:
        raise UserError(
            f"data.crop_size={cfg.data.crop_size} is larger than test.resize_short={cfg.test.resize_short}: "
            "test crops are cut from the resized frames; raise test.resize_short or lower data.crop_size"
        )
    trainer = cfg.trainer
    if trainer.effective_batch_size % trainer.batch_size:
        raise UserError(
            f"trainer.effective_batch_size={trainer.effective_batch_size}: must be a multiple of "
            f"trainer.batch_size={trainer.batch_size} (the clips of one update are whole batches)"
        )
    if cfg.optimizer.nesterov and cfg.optimizer.momentum == 0:
        raise UserError("optimizer.nesterov=true needs optimizer.momentum > 0 (it is 0)")
    backbone, module = cfg.backbone, cfg.module
    if backbone.pretrained and backbone.name != "tsm":
        raise UserError(
            f"backbone.pretrained={backbone.pretrained}: ImageNet weights apply to TSM backbones only; "
            "use init_from for MF-Net"
        )
    if module.name != "none":
        _check_positions(backbone, module)
    _check_imagenet(cfg)
    _check_generated(cfg.dataset, backbone)


def _check_generated(dataset: DictConfig, backbone: DictConfig) -> None:
    """A generated set's class count; for the context set, the model that keeps its guarantee: a TSM backbone
    taking every frame, of videos long enough that no feature of it sees both squares (rcca.data.context)."""
    classes = GENERATED_CLASSES.get(dataset.name)
    if classes is not None and not OmegaConf.is_missing(dataset, "num_classes") and dataset.num_classes != classes:
        raise UserError(f"dataset.num_classes={dataset.num_classes}: the {dataset.name} set has {classes} classes")
    if dataset.name != "context":
        return
    frames = dataset.synthetic.frames
    if backbone.name != "tsm":
        raise UserError(
            f"backbone.name={backbone.name}: the context set is sized by a TSM backbone's reach in time "
            "(rcca/data/context.py); use experiment=context_bench or backbone=tsm_r18"
        )
    if backbone.num_frames != frames:
        raise UserError(
            f"backbone.num_frames={backbone.num_frames}: the context set's clips are whole videos; set it to "
            f"dataset.synthetic.frames={frames}"
        )
    if frames < min_frames(backbone.depth):
        least = min_frames(backbone.depth)
        raise UserError(
            f"dataset.synthetic.frames={frames}: with a TSM ResNet-{backbone.depth} the context set needs {least} "
            f"frames or more, so that no feature sees both squares; set dataset.synthetic.frames={least}"
        )


def _check_imagenet(cfg: DictConfig) -> None:
    """imagenet.required: the ImageNet file of the run's backbone is set (a table preset would otherwise
    train from random weights without a word)."""
    if not cfg.imagenet.required:
        return
    key, file = (
        ("resnet50", "torchvision's ResNet-50 state dict")
        if cfg.backbone.name == "tsm"
        else ("mfnet", "MF-Net's MFNet2D_ImageNet1k-0000.pth")
    )
    if cfg.imagenet[key] is None:
        raise UserError(
            f"imagenet.{key} is not set: this experiment starts the {cfg.backbone.name} backbone from ImageNet "
            f"weights; set imagenet.{key}=<{file}>, or imagenet.required=false to start from random weights"
        )


def _check_positions(backbone: DictConfig, module: DictConfig) -> None:
    """module.positions: not empty, no block twice, every block present in the configured backbone."""
    positions = list(module.positions)
    if not positions:
        raise UserError(f"module.positions is empty for module.name={module.name}; list blocks such as [conv3_3]")
    valid = valid_positions(TSM_STAGE_BLOCKS[backbone.depth] if backbone.name == "tsm" else MFNET_STAGE_BLOCKS)
    for position in positions:
        if positions.count(position) > 1:
            raise UserError(f"module.positions={_show(positions)}: {position} is listed twice")
        if position not in valid:
            depth = backbone.depth if backbone.name == "tsm" else ""
            raise UserError(
                f"module.positions={_show(positions)}: {position} is not a block of {backbone.name}{depth}; "
                f"valid: {', '.join(valid)}"
            )


def _show(value: Any) -> str:
    """A value as it is written on the command line: [a, b] for lists, strings unquoted."""
    if isinstance(value, (list, ListConfig)):
        return f"[{', '.join(_show(item) for item in value)}]"
    return str(value)


def _schema_node(key: str) -> type | None:
    """The type a dotted key has in the schema (a dataclass for a section), or None if it is no key."""
    node: type = Config
    for part in key.split("."):
        if not is_dataclass(node):
            return None
        types = typing.get_type_hints(node)
        if part not in types:
            return None
        node = types[part]
    return node


def _schema_keys(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key of a schema dataclass, sections included."""
    keys = []
    for name, kind in typing.get_type_hints(schema).items():
        keys.append(prefix + name)
        if is_dataclass(kind):
            keys.extend(_schema_keys(kind, f"{prefix}{name}."))
    return keys


def _closest_keys(key: str) -> str:
    """The end of an unknown-key message: the closest key of the deepest section that `key` names, or that
    section's keys."""
    section = key.rpartition(".")[0]
    while section and not is_dataclass(_schema_node(section)):
        section = section.rpartition(".")[0]
    schema, prefix = (_schema_node(section), f"{section}.") if section else (Config, "")
    close = difflib.get_close_matches(key.removeprefix(prefix), _schema_keys(schema), n=1)
    if close:
        return f"did you mean {prefix}{close[0]}?"
    return f"the keys {f'of {section} ' if section else ''}are {', '.join(typing.get_type_hints(schema))}"


def _check_creatable(key: str, value: str) -> None:
    """Refuse an output folder that neither exists writable nor can be made in its nearest existing folder."""
    ancestor = Path(value).absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{key}={value}: cannot create this folder: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{key}={value}: cannot create this folder: {ancestor} is not writable")
