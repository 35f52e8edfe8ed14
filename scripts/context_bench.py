"""The context benchmark: `python scripts/context_bench.py [modules=none,nl,rcca] [seeds=0,1,2] [overrides]`.

    python scripts/context_bench.py                                   # 9 runs, about an hour on 2 cores
    python scripts/context_bench.py modules=rcca seeds=0 results_dir=outputs/try
    python scripts/context_bench.py preset=context_recurrence modules=rcca module.recurrence=1

Generates the context set (rcca/data/context.py) unless cached, timing it, then runs
`python train.py -m experiment=<preset> module=<m> seed=<s> <overrides>` once per module and seed, one
after the other, timing each (Python start-up, model building, training, every validation). The runs land
in <results_dir>/<preset>/module=<m>,seed=<s>/ (the other overrides added to the name) as the preset's
own sweep would put them, so that
`python scripts/collect.py <results_dir>/<preset>` and `python scripts/plot.py` read them too. The
folder must not exist yet: a finished run found there would only be validated again, and its time would
mean nothing. Prints a line per run, then the table: per module, parameters and GMACs at the
benchmark's input (1 x 3 x frames x crop x crop, its classes), the final video top-1's mean ± standard
deviation and range over seeds, and the time per run; then how far each module is above the first
(by default the plain backbone), and a last line with one JSON object of the results.
Measure on a quiet machine: the load average is printed first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from rcca.config import compose_config, validate_config
from rcca.data.build import read_annotations
from rcca.engine.cli import ScriptKey, exit_codes, log_to_terminal, script_arguments, script_int
from rcca.errors import UserError
from rcca.results.collect import collect
from rcca.results.costs import count_cost
from rcca.results.seeds import markdown_table, seed_rows

TRAIN = Path(__file__).resolve().parent.parent / "train.py"
KEYS = {
    "preset": ScriptKey("the experiment preset to run", default="context_bench"),
    "modules": ScriptKey("comma-separated module options, the first being the baseline", default="none,nl,rcca"),
    "seeds": ScriptKey("comma-separated seeds", default="0,1,2"),
}
USAGE = "usage: python scripts/context_bench.py [preset=...] [modules=...] [seeds=...] [config overrides]"
TAIL_LINES = 15  # lines of a failed run's output shown


def run_training(preset: str, module: str, seed: int, overrides: list[str]) -> float:
    """Run one training job of the preset; return its wall time in seconds.

    Raises:
        UserError: the run failed (the end of its output is printed first).
    """
    command = [sys.executable, str(TRAIN), "-m", f"experiment={preset}", f"module={module}", f"seed={seed}", *overrides]
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print("\n".join((result.stdout + result.stderr).splitlines()[-TAIL_LINES:]), file=sys.stderr)
        raise UserError(f"{' '.join(command[1:])} failed (exit status {result.returncode}); its output ends above")
    return time.monotonic() - start


def check_one_job_per_run(preset: str, overrides: list[str]) -> None:
    """Refuse what would make one train.py call run several jobs: a sweep among the overrides, or a key the
    preset sweeps (besides module and seed) that the overrides leave open.

    Raises:
        UserError: one line naming the sweep and how to pin it.
    """
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            raise UserError(
                f"{override.input_line}: a sweep; the benchmark runs one job per module and seed, give one value"
            )
    given = {override.split("=", 1)[0].lstrip("+~") for override in overrides}
    params = compose_config([f"experiment={preset}", *overrides], with_hydra=True).hydra.sweeper.params or {}
    for key, values in params.items():
        if key not in ("module", "seed", *given) and "," in str(values):
            raise UserError(
                f"preset={preset} sweeps {key}={values}; the benchmark makes one row per module: pin it to one value, "
                f"e.g. {key}={str(values).split(',')[0]}"
            )


def top1_of(sweep: Path, module: str, seed: int) -> float | None:
    """The final video top-1 of the finished job of `module` and `seed` under the sweep folder (None: no result,
    or not finite)."""
    for job in collect([sweep]).jobs:
        if (job.config.get("module.name"), job.config.get("seed")) == (module, seed) and job.evaluations:
            return job.evaluations[0].top1
    return None


def main(argv: list[str] | None = None) -> None:
    log_to_terminal()
    with exit_codes():
        keys, overrides = script_arguments(sys.argv[1:] if argv is None else argv, KEYS, USAGE)
        preset, modules = keys["preset"], [name for name in keys["modules"].split(",") if name]
        seeds = [script_int("seeds", seed, 0) for seed in keys["seeds"].split(",")]
        check_one_job_per_run(preset, overrides)
        cfg = compose_config([f"experiment={preset}", *overrides])
        validate_config(cfg)
        OmegaConf.resolve(cfg)
        sweep = Path(cfg.results_dir) / preset
        if sweep.exists():
            raise UserError(
                f"{sweep} exists: its finished runs would only be validated again; set results_dir=<a new folder>"
            )
        print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)", flush=True)
        start = time.monotonic()
        read_annotations(cfg.dataset, progress=sys.stderr.isatty())
        generation = time.monotonic() - start
        print(f"{cfg.dataset.name} set ready in {generation:.0f} s", flush=True)
        seconds: dict[tuple[str, int], float] = {}
        runs = [(module, seed) for module in modules for seed in seeds]
        for number, (module, seed) in enumerate(runs, 1):
            seconds[module, seed] = run_training(preset, module, seed, overrides)
            top1 = top1_of(sweep, module, seed)
            result = "no result" if top1 is None else f"top-1 {top1:.1f}"
            left = (len(runs) - number) * sum(seconds.values()) / number
            print(
                f"run {number}/{len(runs)} module={module} seed={seed}: {result} in {seconds[module, seed] / 60:.1f} "
                f"min; about {left / 60:.0f} min left",
                flush=True,
            )
        size, classes = cfg.data.crop_size, cfg.dataset.num_classes
        rows = seed_rows(
            collect([sweep]).jobs, "module.name", modules, lambda cfg: count_cost(cfg, classes, size), seconds
        )
        print(
            f"\n{preset}: {cfg.backbone.num_frames} frames at {size} x {size}, {classes} classes, "
            f"{cfg.trainer.epochs} epochs; set generated in {generation:.0f} s (once, then cached)\n"
        )
        print(markdown_table(rows, "module"))
        for row in rows[1:]:
            print(f"{row.setting} - {rows[0].setting}: {row.mean - rows[0].mean:+.1f} points of mean top-1")
        results = {
            "preset": preset,
            "generation_s": round(generation, 1),
            "load_at_end": round(os.getloadavg()[0], 2),
            "rows": [
                {
                    "module": row.setting,
                    "params_m": round(row.cost.params, 3),
                    "gmacs": round(row.cost.gmacs, 3),
                    "seeds": list(row.seeds),
                    "top1": list(row.top1),
                    "mean": round(row.mean, 2),
                    "std": round(row.std, 2),
                    "seconds": [round(s, 1) for s in row.seconds],
                }
                for row in rows
            ],
        }
        print(json.dumps(results))


if __name__ == "__main__":
    main()
