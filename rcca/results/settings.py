"""How run configs are compared: flattened to dotted keys, less the keys that do not change a result.

A job's settings are its resolved config as `{dotted key: value}` (lists stay values). Paths, run handling
and the trainer's housekeeping (`IGNORED_KEYS`, `IGNORED_SECTIONS`) are left out, so two jobs that differ only
there have the same settings. Values compare through `canonical`: numbers as numbers (0 == 0.0), lists as
lists, booleans apart from numbers.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any

# Keys that do not change a result: where the data and files are, how the run is started and shown.
IGNORED_KEYS = frozenset(
    {
        "dataset.root",
        "dataset.annotations",
        "dataset.train_list",
        "dataset.test_list",
        "dataset.class_names",
        "dataset.exclude",
        "data.cache_dir",
        "backbone.pretrained",
        "module.memory_efficient",
        "init_from",
        "resume",
        "ckpt",
        "overwrite",
        "results_dir",
        "name",
        "trainer.num_workers",
        "trainer.threads",
        "trainer.device",
        "trainer.progress",
        "trainer.log_every",
        "trainer.checkpoint_every",
        "trainer.data_timeout",
    }
)
IGNORED_SECTIONS = ("imagenet.",)  # every key under these prefixes
SEED_KEY = "seed"
SPLIT_KEY = "dataset.split"


def is_ignored(key: str) -> bool:
    """Whether a dotted key does not change a result (see the module docstring)."""
    return key in IGNORED_KEYS or key.startswith(IGNORED_SECTIONS)


def canonical(value: Any) -> Hashable:
    """A hashable form of a config value, equal for equal settings.

    Args:
        value: a config value (number, string, bool, None, list, dict).

    Returns:
        Numbers as floats (0 == 0.0), lists as tuples, dicts as sorted tuples of pairs; booleans tagged so that
        true never equals 1.
    """
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return tuple(canonical(item) for item in value)
    if isinstance(value, Mapping):
        return tuple(sorted((str(key), canonical(item)) for key, item in value.items()))
    return value if value is None or isinstance(value, str) else repr(value)


def settings_key(config: Mapping[str, Any], leave_out: Iterable[str] = ()) -> tuple:
    """What identifies a setting: the canonical values of every key that changes a result.

    Args:
        config: a flat config.
        leave_out: further keys to disregard (e.g. `seed`).

    Returns:
        A hashable, order-independent key.
    """
    left_out = set(leave_out)
    return tuple(
        sorted((key, canonical(value)) for key, value in config.items() if not is_ignored(key) and key not in left_out)
    )


def differing_keys(configs: list[Mapping[str, Any]], leave_out: Iterable[str] = ()) -> list[str]:
    """The keys (that change a result) whose values are not the same in all `configs`.

    Args:
        configs: flat configs.
        leave_out: keys to disregard.

    Returns:
        The keys, in the order of their first appearance; a key missing from some configs counts as differing.
    """
    left_out = set(leave_out)
    keys = list(dict.fromkeys(key for config in configs for key in config))
    return [
        key
        for key in keys
        if not is_ignored(key)
        and key not in left_out
        and len({(key in config, canonical(config.get(key))) for config in configs}) > 1
    ]


def show(value: Any) -> str:
    """A value as the command line writes it: [a, b] for lists, true/false, numbers as given."""
    if isinstance(value, (list, tuple)):
        return f"[{', '.join(show(item) for item in value)}]"
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)
