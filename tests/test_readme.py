"""README.md stays true: its commands run with today's config, and its parameter counts are today's models'.

* Every command in the README that runs an entry point taking Hydra overrides (`train.py`, `test.py`, and
  the scripts that compose the config) is composed with `rcca.config.compose_config` and checked with
  `validate_config`, as the entry point would: an unknown key, a removed group option or a bad value fails
  with the README line. Commands are read from ```bash blocks (line continuations joined, comments dropped)
  and from inline `python ...` spans of the prose. Placeholders are fine: `<date>` becomes `date`, a
  value written `...` is checked for its key only, and a bare `...` argument is ignored. A multirun
  (`-m`) is composed for every combination of its sweep values; a sweep without `-m` is an error.
* The complexity table of *Measured figures* (the table whose second column is "params"): each row's
  parameter count is recomputed, with random weights, for the model the table's own
  `python scripts/complexity.py ...` command builds (with the row's module), and a row label that states
  a class count ("400 classes") must match the command's dataset.

Only models are built (no forward pass); the file takes about 20 s on 2 CPU cores, mostly composing configs.
"""

from __future__ import annotations

import functools
import itertools
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from conftest import load_script
from hydra.core.override_parser.overrides_parser import OverridesParser

from rcca.config import check_overrides, check_quickstart_choices, compose_config, validate_config
from rcca.models.build import build_model
from rcca.models.complexity import count_parameters

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)  # fenced block: language, body
INLINE = re.compile(r"`([^`]+)`")  # inline code span (fences blanked out first)
PLACEHOLDER = re.compile(r"<([^<>\s][^<>\n]*)>")  # <date>, <k400 run>: a value the reader fills in
LAUNCHER = re.compile(r"^(\w+=\S*\s+)*(srun\s+)?(python3?|torchrun)\s")  # how a command of the prose starts
SEPARATORS = {"&&", "||", ";", "|"}  # shell operators between commands of one line
MULTIRUN_FLAGS = {"-m", "--multirun"}
ELLIPSIS = "..."  # a value (or argument) the reader fills in
ASSIGNMENT = re.compile(r"([A-Z_][A-Z0-9_]*)=([\"'])(.*)\2")  # UCF="dataset=ucf101 ...": a shell variable
VARIABLE = re.compile(r"\$([A-Z_][A-Z0-9_]*)")  # its use: $UCF


# --------------------------------------------------------------------------- reading the README


@dataclass(frozen=True)
class Command:
    """One command of the README that runs an entry point taking Hydra overrides."""

    line: int  # README line where the command starts
    script: str  # the entry point, relative to the repository (train.py, scripts/complexity.py)
    args: list[str]  # its arguments, placeholders <...> filled in

    @property
    def multirun(self) -> bool:
        return any(arg in MULTIRUN_FLAGS for arg in self.args)

    @property
    def overrides(self) -> list[str]:
        """The Hydra overrides: arguments with `=` that are not options (`--nproc_per_node=2` is torchrun's)."""
        return [arg for arg in self.args if "=" in arg and not arg.startswith("-")]


def blank_fences(text: str) -> str:
    """`text` with every fenced block replaced by as many empty lines (line numbers are kept)."""
    return FENCE.sub(lambda match: "\n" * match.group(0).count("\n"), text)


def shell_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, logical line) of every ```bash block: `\\` continuations joined, comment lines dropped,
    the block's shell variables (`UCF="dataset=ucf101 ..."`, then `$UCF`) expanded."""
    for match in FENCE.finditer(text):
        if match.group(1) not in ("bash", "sh", "shell"):
            continue
        first = text.count("\n", 0, match.start(2)) + 1
        start, parts, variables = None, [], {}
        for number, line in enumerate(match.group(2).splitlines(), start=first):
            start = number if start is None else start
            line = line.rstrip()
            if line.endswith("\\"):
                parts.append(line[:-1])
                continue
            parts.append(line)
            logical = expand(" ".join(parts), variables)
            assignment = ASSIGNMENT.fullmatch(logical)
            if assignment:
                variables[assignment.group(1)] = assignment.group(3)
            else:
                yield start, logical
            start, parts = None, []
        if parts:
            yield start, " ".join(parts)


def expand(line: str, variables: dict[str, str]) -> str:
    """`line` with the shell variables it uses (`$UCF`) replaced by their values (unknown ones kept)."""
    return VARIABLE.sub(lambda use: variables.get(use.group(1), use.group(0)), line)


def inline_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, span) of every inline code span of the prose that is a command (`python train.py ...`)."""
    prose = blank_fences(text)
    for match in INLINE.finditer(prose):
        span = " ".join(match.group(1).split())
        if LAUNCHER.match(span + " "):
            yield prose.count("\n", 0, match.start()) + 1, span


def strip_comment(line: str) -> str:
    """`line` up to its shell comment: a `#` that starts a word, outside quotes."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def shell_words(line: str) -> list[str]:
    """The words of a shell line, comment dropped, placeholders `<name>` filled in (`<k400 run>`: `k400_run`)."""
    line = PLACEHOLDER.sub(lambda match: re.sub(r"\W+", "_", match.group(1)).strip("_") or "x", strip_comment(line))
    return shlex.split(line)


def takes_overrides(script: Path) -> bool:
    """Whether an entry point reads Hydra overrides (it composes the config, or is a Hydra app)."""
    source = script.read_text()
    return "compose_config(" in source or "@hydra.main(" in source


@functools.cache
def script_keys(script: str) -> frozenset[str]:
    """The `key=` arguments a script of `scripts/` owns (its `KEYS`, read by `rcca.engine.cli.script_arguments`)."""
    if not script.startswith("scripts/") or "script_arguments(" not in (REPO / script).read_text():
        return frozenset()
    return frozenset(load_script(Path(script).stem).KEYS)


def find_commands(lines: Iterator[tuple[int, str]], problems: list[str]) -> list[Command]:
    """The commands of `lines` that run an entry point taking overrides; a `.py` the repository lacks is a
    problem (appended to `problems`)."""
    commands = []
    for number, line in lines:
        try:
            words = shell_words(line)
        except ValueError as error:  # an unbalanced quote
            problems.append(f"README.md:{number}: `{line}`: {error}")
            continue
        pieces = [list(group) for sep, group in itertools.groupby(words, lambda w: w in SEPARATORS) if not sep]
        for piece in pieces:
            script = next((word for word in piece if word.endswith(".py")), None)
            if script is None:
                continue
            if not (REPO / script).is_file():
                problems.append(f"README.md:{number}: `{line}`: {script} does not exist")
            elif takes_overrides(REPO / script):
                own = script_keys(script)  # the script's own key=value arguments are not overrides
                args = [arg for arg in piece[piece.index(script) + 1 :] if arg.split("=", 1)[0] not in own]
                commands.append(Command(number, script, args))
    return commands


def readme_commands(text: str, problems: list[str]) -> list[Command]:
    """Every command of the README (```bash blocks and inline spans) running an entry point with overrides."""
    commands = find_commands(shell_lines(text), problems) + find_commands(inline_lines(text), problems)
    return sorted(commands, key=lambda command: command.line)


# --------------------------------------------------------------------------- checking a command


def is_placeholder(override: str) -> bool:
    """`key=...`: the reader fills in the value; only the key can be checked."""
    return override.split("=", 1)[1] == ELLIPSIS


def compositions(command: Command) -> list[list[str]]:
    """The override lists the command runs: one, or one per combination of a multirun's sweep values.

    Raises AssertionError for a sweep (`a,b`) in a command without `-m`.
    """
    parsed = OverridesParser.create().parse_overrides([o for o in command.overrides if not is_placeholder(o)])
    choices = []
    for override in parsed:
        if not override.is_sweep_override():
            choices.append([override.input_line])
        elif not command.multirun:
            raise AssertionError(f"{override.input_line} is a sweep, but the command has no -m (--multirun)")
        else:
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
    return [list(combination) for combination in itertools.product(*choices)]


def check_command(command: Command) -> list[str]:
    """What is wrong with the command's overrides: one line per problem, naming the README line."""
    where = f"README.md:{command.line}: `{command.script} {' '.join(command.args)}`"
    try:
        check_overrides([o for o in command.overrides if is_placeholder(o)])  # their keys must exist
        if command.script == "train.py":
            check_quickstart_choices(command.overrides)
        runs = compositions(command)
    except Exception as error:  # every failure is reported with its line
        return [f"{where}: {type(error).__name__}: {error}"]
    problems = []
    for overrides in runs:
        error = composition_error(tuple(overrides), validate="--cfg" not in command.args)
        if error:
            shown = f" (run {' '.join(overrides)})" if len(runs) > 1 else ""
            problems.append(f"{where}{shown}: {error}")
    return problems


@functools.cache
def composition_error(overrides: tuple[str, ...], validate: bool = True) -> str | None:
    """Why `overrides` do not compose into a valid config (None: they do); cached, as commands repeat.
    `validate`: False for a command that only prints the config (`--cfg job`), as Hydra does before any check."""
    try:
        cfg = compose_config(list(overrides))
        if validate:
            validate_config(cfg)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def readme_problems(text: str) -> tuple[list[Command], list[str]]:
    problems: list[str] = []
    commands = readme_commands(text, problems)
    for command in commands:
        problems += check_command(command)
    return commands, problems


def test_readme_commands_compose_with_the_config() -> None:
    commands, problems = readme_problems(README.read_text(encoding="utf-8"))
    assert not problems, "README commands that do not run with today's config:\n" + "\n".join(problems)
    # The reader found the commands it should (it would pass vacuously otherwise).
    scripts = {command.script for command in commands}
    assert {"train.py", "test.py", "scripts/inspect_dataset.py"} <= scripts, scripts
    assert any(command.multirun for command in commands)
    assert any(command.script == "train.py" and len(command.overrides) >= 5 for command in commands)


SAMPLE = """\
Intro `python train.py experiment=none trainer.epochs=2`, and `trainer.eval_every=0: must be ...` (not a command).

```bash
# a comment line, then a continued command
python train.py experiment=paper_tsm dataset=ucf101 ... \\
    trainer.workers=4  # the old name, it's gone
pip install -r requirements.txt && python test.py ckpt=outputs/<date>/<time>/best.pt test.num_clip=3
python train.py -m experiment=paper_tsm dataset=ucf101 dataset.root=... module=rcca module.recurrence=1,2,0
python train.py experiment=none module.structure=a,b
torchrun --nproc_per_node=2 train.py experiment=paper_tsm dataset=ucf101 dataset.root=/data/ucf101 trainer.amp=bf16
python scripts/inspect_dataset.py --decode --write-exclude bad.txt dataset=ucf101 dataset.annotations=...
python scripts/nothing.py dataset=ucf101
python train.py dataset=ucf101 modul=...
```
"""


def test_the_check_flags_what_it_should() -> None:
    """The checker itself: unknown keys (also after a continuation), bad values of one sweep point, sweeps
    without -m, missing scripts and unknown placeholder keys fail with their line; placeholders pass."""
    commands, problems = readme_problems(SAMPLE)
    assert [(c.line, c.script) for c in commands] == [
        (1, "train.py"), (5, "train.py"), (7, "test.py"), (8, "train.py"), (9, "train.py"), (10, "train.py"),
        (11, "scripts/inspect_dataset.py"), (13, "train.py"),
    ]  # fmt: skip
    assert commands[3].multirun and commands[2].args[0] == "ckpt=outputs/date/time/best.pt"
    torchrun = ["experiment=paper_tsm", "dataset=ucf101", "dataset.root=/data/ucf101", "trainer.amp=bf16"]
    assert commands[5].overrides == torchrun  # not torchrun's own --nproc_per_node=2
    text = "\n".join(problems)
    assert "README.md:5: " in text
    assert "trainer.workers=4: unknown key trainer.workers; did you mean trainer.num_workers" in text
    assert "README.md:7: " in text and "unknown key test.num_clip" in text
    assert "README.md:8: " in text and "module.recurrence=0" in text and "module.recurrence=1 " not in text
    assert "README.md:9: " in text and "module.structure=a,b is a sweep, but the command has no -m" in text
    assert "README.md:12: `python scripts/nothing.py dataset=ucf101`: scripts/nothing.py does not exist" in text
    assert "README.md:13: " in text and "unknown key modul" in text
    assert len(problems) == 6, text  # lines 1, 10 and 11 are fine


# --------------------------------------------------------------------------- the complexity table

FIVE = "module.positions=[conv3_1,conv3_3,conv4_1,conv4_3,conv4_5]"
# The models of the table's rows (label less any "(N classes)"), one override list per number of its params
# column, appended to the table's command; a "+" number is the increment over the row's model with module=none.
ROW_MODELS = {
    "TSM-R50": [["backbone=tsm_r50", "module=none"]],
    "+ RCCA-3D at conv3_3 (a, R=3, C_d=1/4)": [
        ["backbone=tsm_r50", "module=rcca", "module.positions=[conv3_3]", "module.structure=a",
         "module.recurrence=3", "module.inner_fraction=0.25"],
    ],
    "+ RCCA-3D at conv4_5 / conv5_2": [
        ["backbone=tsm_r50", "module=rcca", "module.positions=[conv4_5]"],
        ["backbone=tsm_r50", "module=rcca", "module.positions=[conv5_2]"],
    ],
    "+ non-local at conv4_5": [["backbone=tsm_r50", "module=nl", "module.positions=[conv4_5]"]],
    "+ 5 non-local (subsampled)": [["backbone=tsm_r50", "module=nl", FIVE, "module.subsample=true"]],
    "+ 5 RCCA-3D (C_d = 1/2)": [["backbone=tsm_r50", "module=rcca", FIVE, "module.inner_fraction=0.5"]],
    "MF-Net": [["backbone=mfnet", "module=none"]],
    "MF-Net + 5 non-local / + 5 RCCA-3D": [
        ["backbone=mfnet", "module=nl", FIVE, "module.subsample=true"],
        ["backbone=mfnet", "module=rcca", FIVE],
    ],
}  # fmt: skip
CLASSES = re.compile(r"\s*\((\d+) classes\)")
MILLIONS = re.compile(r"([+-]?)(\d+(?:\.(\d+))?)M\b")


@dataclass
class Table:
    line: int  # README line of its header
    rows: list[tuple[int, list[str]]]  # (README line, cells) of each body row
    command: list[str]  # the overrides of the `python scripts/complexity.py ...` command written before it


def params_table(text: str) -> Table:
    """The table whose second column is "params ..." and the complexity command written before it."""
    prose = blank_fences(text)
    lines = prose.splitlines()
    tables = []
    for number, line in enumerate(lines, start=1):
        if line.startswith("|") and (number == 1 or not lines[number - 2].startswith("|")):
            tables.append(number)
    cells = {n: [cell.strip() for cell in lines[n - 1].strip().strip("|").split("|")] for n in tables}
    found = [n for n in tables if len(cells[n]) > 1 and cells[n][1].lower().startswith("params")]
    assert len(found) == 1, f"expected one table with a 'params' column in README.md, found lines {found}"
    header = found[0]
    rows = []
    for number in itertools.count(header + 2):  # past the --- line
        if number > len(lines) or not lines[number - 1].startswith("|"):
            break
        rows.append((number, [cell.strip() for cell in lines[number - 1].strip().strip("|").split("|")]))
    before = "\n".join(lines[: header - 1])
    spans = [" ".join(m.group(1).split()) for m in INLINE.finditer(before)]
    commands = [span for span in spans if span.startswith("python scripts/complexity.py")]
    assert commands, "no `python scripts/complexity.py ...` command before the params table of README.md"
    words = shell_words(commands[-1])
    overrides = [w for w in words[words.index("scripts/complexity.py") + 1 :] if "=" in w and not w.startswith("-")]
    return Table(header, rows, [o for o in overrides if not is_placeholder(o)])


def model_parameters(overrides: list[str]) -> tuple[int, int]:
    """(parameters, classes) of the model `scripts/complexity.py <overrides>` counts (random weights)."""
    cfg = compose_config(overrides)
    validate_config(cfg)
    model = build_model(cfg.backbone, cfg.module, cfg.dataset.num_classes)
    return count_parameters(model), cfg.dataset.num_classes


def merged(command: list[str], row: list[str]) -> list[str]:
    """The command's overrides with the row's replacing those of the same key (module=... and module.* too)."""
    keys = {o.split("=", 1)[0] for o in row}
    replaced = {"module"} & keys
    kept = [o for o in command if o.split("=", 1)[0] not in keys and not (replaced and o.startswith("module."))]
    return kept + row


def table_problems(table: Table) -> list[str]:
    problems = []
    cache: dict[tuple[str, ...], tuple[int, int]] = {}

    def count(overrides: list[str]) -> tuple[int, int]:
        if tuple(overrides) not in cache:
            cache[tuple(overrides)] = model_parameters(overrides)
        return cache[tuple(overrides)]

    _, command_classes = count(merged(table.command, ["module=none"]))
    if not any(CLASSES.search(cells[0]) for _, cells in table.rows):
        problems.append(
            f"README.md:{table.line}: the table states no class count; its command builds {command_classes} classes:"
            f" write ({command_classes} classes) in a row's label"
        )
    for number, cells in table.rows:
        label = CLASSES.sub("", cells[0]).strip()
        where = f"README.md:{number}: row {cells[0]!r}"
        stated = CLASSES.search(cells[0])
        if stated and int(stated.group(1)) != command_classes:
            problems.append(
                f"{where} states {stated.group(1)} classes, but the table's command"
                f" (scripts/complexity.py {' '.join(table.command)}) builds {command_classes}"
            )
        ours = cells[1].split(" / ")[0] if len(cells) > 1 else ""
        numbers = MILLIONS.findall(ours)
        if not numbers:
            continue
        if label not in ROW_MODELS:
            problems.append(f"{where}: no model known for this row; add its overrides to ROW_MODELS in {__file__}")
            continue
        models = ROW_MODELS[label]
        if len(models) != len(numbers):
            problems.append(f"{where}: {len(numbers)} parameter counts for {len(models)} models in ROW_MODELS")
            continue
        for (sign, written, decimals), row in zip(numbers, models):
            overrides = merged(table.command, row)
            params, _ = count(overrides)
            if sign:
                base = [o for o in row if not o.startswith("module")] + ["module=none"]
                params -= count(merged(table.command, base))[0]
            actual = f"{params / 1e6:{'+' if sign else ''}.{len(decimals)}f}"
            if actual != f"{sign}{written}":
                problems.append(
                    f"{where}: {sign}{written}M written, {actual}M ({params:,} parameters) computed for"
                    f" scripts/complexity.py {' '.join(overrides)}"
                )
    return problems


def test_complexity_table_parameters_match_its_command() -> None:
    table = params_table(README.read_text(encoding="utf-8"))
    assert sum(bool(MILLIONS.search(cells[1])) for _, cells in table.rows if len(cells) > 1) >= 5, table.rows
    problems = table_problems(table)
    assert not problems, "the README's complexity table disagrees with its command:\n" + "\n".join(problems)


def test_the_table_check_flags_what_it_should() -> None:
    text = (
        "Figures (`python scripts/complexity.py experiment=none dataset=ucf101 module=... module.positions=...`):\n\n"
        "| model | params (ours / paper) | FLOPs |\n| --- | --- | --- |\n"
        "| TSM-R50 (400 classes) | 23.71M / 24.30M | 32.79G |\n"
        "| MF-Net + 5 non-local / + 5 RCCA-3D | 8.81M, 8.55M / 9.04M, 8.78M | 1G |\n"
        "| R = 1 / 2 / 4 | | 38.2G |\n"
        "| + RCCA-3D at conv3_3 (a, R=3, C_d=1/4) | +0.40M / +0.39M | 49.1G |\n"
        "| a new row | 1.00M | 1G |\n"
    )
    table = params_table(text)
    assert table.line == 3 and table.command == ["experiment=none", "dataset=ucf101"]
    problems = "\n".join(table_problems(table))
    assert "README.md:5: row 'TSM-R50 (400 classes)' states 400 classes, but the table's command" in problems
    assert "builds 101" in problems
    assert "README.md:6: " in problems and "8.55M written, 8.54M (8,542,890 parameters) computed" in problems
    assert "8.81M written" not in problems  # 8,805,541 parameters: right
    assert "README.md:8: " in problems and "+0.40M written, +0.39M" in problems
    assert "README.md:9: row 'a new row': no model known for this row" in problems
    assert len(problems.splitlines()) == 4, problems
    unstated = params_table(text.replace(" (400 classes)", ""))
    assert any(
        p.startswith("README.md:3: the table states no class count; its command builds 101")
        for p in table_problems(unstated)
    )
