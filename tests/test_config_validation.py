"""Bad config values and keys fail at start, with one line naming the key, the value and what is allowed.

The in-process tests call `validate_config` and `check_overrides` directly, over every case; the
end-to-end tests run train.py / test.py on a few of them, one per way a bad command line is caught.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from conftest import run_entry
from omegaconf import OmegaConf, open_dict

from rcca.config import (
    CHOICES,
    GENERATED_CLASSES,
    RULE,
    Config,
    check_overrides,
    compose_config,
    validate_config,
)
from rcca.errors import UserError


def schema_fields(schema: type = Config, prefix: str = "") -> list[tuple[str, type, dataclasses.Field]]:
    """(dotted key, type, field) of every value key of the schema (sections are walked, not listed)."""
    types = typing.get_type_hints(schema)
    found = []
    for entry in dataclasses.fields(schema):
        if dataclasses.is_dataclass(types[entry.name]):
            found += schema_fields(types[entry.name], f"{prefix}{entry.name}.")
        else:
            found.append((prefix + entry.name, types[entry.name], entry))
    return found


def refusal(overrides: list[str]) -> str:
    """The message `validate_config` refuses the composed config with."""
    with pytest.raises(UserError) as error:
        validate_config(compose_config(overrides))
    return str(error.value)


def bad_choice(kind: type, choices: tuple) -> str | int:
    """A value of the key's type outside `choices`."""
    return "bogus" if kind is str else max(choices) + 1


CHOICE_CASES = [
    (
        f"{key}={bad_choice(kind, entry.metadata[CHOICES])}",
        f"{key}={bad_choice(kind, entry.metadata[CHOICES])}: must be one of "
        + ", ".join(map(str, entry.metadata[CHOICES])),
    )
    for key, kind, entry in schema_fields()
    if CHOICES in entry.metadata
]

BAD_VALUES = [
    ("trainer.eval_every=0", "trainer.eval_every=0: must be an integer >= 1"),
    ("trainer.log_every=0", "trainer.log_every=0: must be an integer >= 1"),
    ("test.num_clips=0", "test.num_clips=0: must be an integer >= 1"),
    ("data.scales=[]", "data.scales=[]: must be a non-empty list of numbers in (0, 1]"),
    ("data.scales=[1.0,1.5]", "data.scales=[1.0, 1.5]: must be a non-empty list of numbers in (0, 1]"),
    ("trainer.batch_size=0", "trainer.batch_size=0: must be an integer >= 1"),
    ("trainer.batch_size=-4", "trainer.batch_size=-4: must be an integer >= 1"),
    ("trainer.num_workers=-1", "trainer.num_workers=-1: must be an integer >= 0"),
    ("trainer.threads=0", "trainer.threads=0: must be an integer >= 1"),
    ("optimizer.lr=-0.1", "optimizer.lr=-0.1: must be a number > 0"),
    ("optimizer.lr=inf", "optimizer.lr=inf: must be a number > 0"),
    ("backbone.num_frames=0", "backbone.num_frames=0: must be an integer >= 1"),
    ("test.num_crops=7", "test.num_crops=7: must be one of 1, 3, 10"),
    ("seed=-1", "seed=-1: must be an integer from 0 to 4294967295"),
    ("module.inner_fraction=2", "module.inner_fraction=2.0: must be a number in (0, 1]"),
    ("module.value_fraction=0", "module.value_fraction=0.0: must be a number in (0, 1]"),
    ("module.recurrence=0", "module.recurrence=0: must be an integer >= 1"),
    ("module.positions=[layer3]", "module.positions=[layer3]: must be a list of blocks convN_i"),
    ("trainer.epochs=0", "trainer.epochs=0: must be an integer >= 1"),
    ("trainer.checkpoint_every=-1", "trainer.checkpoint_every=-1: must be an integer >= 0"),
    ("trainer.data_timeout=-1", "trainer.data_timeout=-1.0: must be a number >= 0"),
    ("trainer.device=cuda:1", "trainer.device=cuda:1: must be one of auto, cpu, cuda"),
    ("backbone.dropout=1", "backbone.dropout=1.0: must be a number in [0, 1)"),
    ("backbone.shift_div=1", "backbone.shift_div=1: must be an integer >= 2"),
    ("backbone.frame_interval=0", "backbone.frame_interval=0: must be an integer >= 1"),
    ("backbone.width=0", "backbone.width=0: must be an integer >= 1"),
    ("optimizer.momentum=1", "optimizer.momentum=1.0: must be a number in [0, 1)"),
    ("optimizer.weight_decay=-1e-4", "optimizer.weight_decay=-0.0001: must be a number >= 0"),
    ("optimizer.clip_grad_norm=0", "optimizer.clip_grad_norm=0.0: must be a number > 0"),
    ("schedule.factor=0", "schedule.factor=0.0: must be a number in (0, 1]"),
    ("schedule.milestones=[0]", "schedule.milestones=[0]: must be a list of epochs >= 1"),
    ("schedule.warmup_epochs=-1", "schedule.warmup_epochs=-1.0: must be a number >= 0"),
    ("test.batch_size=0", "test.batch_size=0: must be an integer >= 1"),
    ("test.resize_short=0", "test.resize_short=0: must be an integer >= 1"),
    ("data.crop_size=0", "data.crop_size=0: must be an integer >= 1"),
    ("data.cache_dir=''", "data.cache_dir=: must be a non-empty path"),
    ("dataset.num_classes=1", "dataset.num_classes=1: must be an integer >= 2"),
    ("dataset.synthetic.size=40", "dataset.synthetic.size=40: must be a multiple of 16, at least 32"),
    ("dataset.synthetic.num_test=0", "dataset.synthetic.num_test=0: must be an integer >= 1"),
    ("resume=''", "resume=: must be auto or a checkpoint path"),
    # Rules that tie keys together.
    (
        "data.crop_size=96",
        "data.crop_size=96 is larger than test.resize_short=64: test crops are cut from the resized "
        "frames; raise test.resize_short or lower data.crop_size",
    ),
    (
        "trainer.effective_batch_size=24",
        "trainer.effective_batch_size=24: must be a multiple of trainer.batch_size=16 "
        "(the clips of one update are whole batches)",
    ),
    (
        "module.positions=[conv3_3]",
        "module.positions=[conv3_3]: conv3_3 is not a block of tsm18; valid: conv2_1, conv2_2, "
        "conv3_1, conv3_2, conv4_1, conv4_2, conv5_1, conv5_2",
    ),
    ("module.positions=[conv3_1,conv3_1]", "module.positions=[conv3_1, conv3_1]: conv3_1 is listed twice"),
    ("module.positions=[]", "module.positions is empty for module.name=rcca; list blocks such as [conv3_3]"),
    ("optimizer.momentum=0 optimizer.nesterov=true", "optimizer.nesterov=true needs optimizer.momentum > 0 (it is 0)"),
    (
        "backbone=mfnet backbone.pretrained=r50.pth",
        "backbone.pretrained=r50.pth: ImageNet weights apply to TSM backbones only; use init_from for MF-Net",
    ),
    ("dataset.num_classes=5", "dataset.num_classes=5: the synthetic set has 8 classes"),
] + CHOICE_CASES


@pytest.mark.parametrize("overrides, message", BAD_VALUES, ids=[case[0] for case in BAD_VALUES])
def test_bad_value_is_refused_naming_key_value_and_rule(overrides, message):
    assert refusal(overrides.split()) == message


def test_every_choice_key_is_covered():
    keys = {case[0].split("=")[0] for case in CHOICE_CASES}
    assert {
        "backbone.name",
        "backbone.depth",
        "backbone.sampling",
        "module.name",
        "module.structure",
        "dataset.name",
        "dataset.backend",
        "dataset.layout",
        "dataset.split",
        "trainer.amp",
        "trainer.device",
        "test.num_crops",
        "init_from_format",
        "backbone.shift_place",
    } == keys


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["experiment=none"],
        ["experiment=paper_tsm"],
        ["experiment=paper_mfnet"],
        ["experiment=paper_tsm", "dataset=ucf101", "module=nl"],
        ["experiment=paper_mfnet", "module=none"],
        ["experiment=none", "dataset=kinetics400", "dataset.layout=per_label"],
        ["experiment=none", "dataset=video_list"],  # root and num_classes still ??? (reported as missing elsewhere)
        ["trainer.device=cuda", "trainer.amp=bf16", "init_from_format=tsn", "resume=auto", "seed=4294967295"],
    ],
)
def test_shipped_configs_and_good_values_pass(overrides):
    validate_config(compose_config(overrides))


def test_every_key_has_a_rule():
    """Every key but the booleans (whose type is their rule) states what it allows."""
    unruled = [key for key, kind, entry in schema_fields() if kind is not bool and RULE not in entry.metadata]
    assert unruled == []


def test_choices_match_the_code_that_uses_them():
    from rcca.data.annotations import _KINETICS_LAYOUTS, _LOADERS, _SPLITS
    from rcca.data.decoding import BACKENDS
    from rcca.data.sampling import SAMPLING_MODES
    from rcca.data.synthetic import TASKS
    from rcca.data.transforms import MULTI_VIEW_CROPS
    from rcca.engine.trainer import AMP_DTYPES
    from rcca.models.attention import STRUCTURES
    from rcca.models.build import BACKBONES, MODULES
    from rcca.models.convert import KINDS
    from rcca.models.tsm import LAYERS, SHIFT_PLACES

    choices = {key: set(entry.metadata[CHOICES]) for key, _, entry in schema_fields() if CHOICES in entry.metadata}
    assert choices["backbone.name"] == set(BACKBONES)
    assert choices["backbone.depth"] == set(LAYERS)
    assert choices["backbone.sampling"] == set(SAMPLING_MODES)
    assert choices["module.name"] == set(MODULES)
    assert choices["module.structure"] == set(STRUCTURES)
    assert choices["dataset.name"] == set(_LOADERS) | set(TASKS)
    assert choices["dataset.backend"] == set(BACKENDS)
    assert choices["dataset.layout"] == set(_KINETICS_LAYOUTS)
    assert choices["dataset.split"] == set(_SPLITS)
    assert choices["trainer.amp"] == set(AMP_DTYPES)
    assert choices["test.num_crops"] == set(MULTI_VIEW_CROPS)
    assert choices["init_from_format"] == set(KINDS)
    assert choices["backbone.shift_place"] == set(SHIFT_PLACES)
    assert GENERATED_CLASSES == {name: len(classes) for name, (classes, _) in TASKS.items()}


def test_missing_values_are_left_to_the_required_check():
    cfg = compose_config(["experiment=none", "dataset=video_list", "trainer.epochs=0"])
    with pytest.raises(UserError, match=r"^trainer.epochs=0: must be an integer >= 1$"):
        validate_config(cfg)  # dataset.root and dataset.num_classes (???) are passed over


@pytest.mark.parametrize("section", ["", "trainer.", "dataset.synthetic."])
def test_key_that_the_schema_lacks_is_refused(section):
    cfg = compose_config([])
    node = OmegaConf.select(cfg, section[:-1]) if section else cfg
    with open_dict(node):
        node["epoch"] = 2
    with pytest.raises(UserError, match=rf"^{section}epoch: unknown key; "):
        validate_config(cfg)


@pytest.mark.parametrize("prefix", ["", "+", "++", "~"])
@pytest.mark.parametrize(
    "key, hint",
    [
        ("trainer.epoch", "did you mean trainer.epochs?"),
        ("trainr.epochs", "did you mean trainer.epochs?"),
        ("backbone.nam", "did you mean backbone.name?"),
        ("dataset.rot", "did you mean dataset.root?"),
        ("dataset.synthetic.num_trian", "did you mean dataset.synthetic.num_train?"),
        ("module.recurence", "did you mean module.recurrence?"),
        ("optimizer.learning_rate", "the keys of optimizer are lr, "),
        ("schedule.milestone", "did you mean schedule.milestones?"),
        ("test.num_clip", "did you mean test.num_clips?"),
        ("data.scale", "did you mean data.scales?"),
        ("sead", "did you mean seed?"),
        ("num_workers", "did you mean trainer.num_workers?"),
        ("zzz", "the keys are backbone, dataset, "),
    ],
)
def test_unknown_key_on_the_command_line_is_refused_with_a_suggestion(prefix, key, hint):
    override = f"{prefix}{key}" if prefix == "~" else f"{prefix}{key}=2"
    with pytest.raises(UserError) as error:
        check_overrides([override])
    assert str(error.value).startswith(f"{override}: unknown key {key}; {hint}")


def test_schema_key_cannot_be_deleted():
    with pytest.raises(UserError, match=r"^~trainer.epochs: trainer.epochs cannot be deleted"):
        check_overrides(["~trainer.epochs"])


def test_group_choices_hydra_keys_and_known_keys_pass(tmp_path):
    check_overrides(
        [
            "-m",
            "--cfg",
            "job",
            "experiment=none",
            "+experiment=paper_tsm",
            "~experiment",
            "dataset=ucf101",
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "hydra.job.chdir=true",
            f"hydra.run.dir={tmp_path}/new/run",
            "hydra.sweep.dir=outputs/${now:%Y}",
            "trainer.epochs=1,2",
            "++trainer.epochs=3",
            "seed=0",
            "dataset.synthetic.num_train=3",
            "dataset.synthetic={num_train: 3}",
            "data.scales=[1.0]",
        ]
    )


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_output_folder_that_cannot_be_created_is_refused(tmp_path, key):
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(UserError, match=rf"^{key}={afile}/run: cannot create this folder: {afile} is a file$"):
        check_overrides([f"{key}={afile}/run"])


def test_compose_config_refuses_unknown_keys():
    with pytest.raises(UserError, match="did you mean trainer.epochs"):
        compose_config(["+trainer.epoch=2"])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(fragment in last for fragment in fragments), result.stderr[-2000:]


@pytest.mark.parametrize(
    "script, override, fragments",
    [
        ("train.py", "+trainer.epoch=2", ["+trainer.epoch=2", "did you mean trainer.epochs?"]),
        ("test.py", "+test.num_clip=2", ["+test.num_clip=2", "did you mean test.num_clips?"]),
        ("train.py", "hydra.run.dir={tmp}/afile/run", ["hydra.run.dir=", "afile is a file"]),
    ],
)
def test_end_to_end_command_line_key(tmp_path, script, override, fragments):
    (tmp_path / "afile").write_text("")
    result = run_entry(
        script,
        f"data.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        override.format(tmp=tmp_path),
        "ckpt=none.pt",
        timeout=60,
        check=False,
    )
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.eval_every=0", "trainer.eval_every=0: must be an integer >= 1"),
        ("module.inner_fraction=2", "module.inner_fraction=2.0: must be a number in (0, 1]"),
    ],
)
def test_end_to_end_value_fails_before_any_work(tmp_path: Path, override, message):
    cache, run = tmp_path / "cache", tmp_path / "run"
    result = run_entry("train.py", override, f"data.cache_dir={cache}", f"hydra.run.dir={run}", timeout=60, check=False)
    assert_one_line_error(result, message)
    assert not cache.exists() and not list(run.glob("*.pt"))  # no data generated, no training step
