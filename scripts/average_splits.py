"""Per-split and mean video top-1 of a multirun sweep, laid out like the paper's Table IX.

    python scripts/average_splits.py outputs/multirun/<date>/<time>

Reads every job folder's `metrics.json` and `.hydra/config.yaml`, groups the jobs by
model (backbone + module + positions) and dataset, and prints S1, S2, S3 and their mean.
The last line is one JSON object with the same numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf


def collect(sweep_dir: Path) -> dict[tuple[str, str], dict[int, float]]:
    """(model, dataset) -> {split: top-1} for every finished job under `sweep_dir`."""
    results: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for metrics_file in sorted(sweep_dir.glob("*/metrics.json")):
        job = metrics_file.parent
        config_file = job / ".hydra" / "config.yaml"
        if not config_file.is_file():
            continue
        cfg = OmegaConf.load(config_file)
        module = cfg.module.name if cfg.module.name == "none" else f"{cfg.module.name}@{','.join(cfg.module.positions)}"
        model = f"{cfg.backbone.name} + {module}"
        results[(model, cfg.dataset.name)][int(cfg.dataset.split)] = json.loads(metrics_file.read_text())["top1"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder: outputs/multirun/<date>/<time>")
    args = parser.parse_args()
    if not args.sweep_dir.is_dir():
        sys.exit(f"error: {args.sweep_dir}: folder not found; pass an outputs/multirun/<date>/<time> folder")
    results = collect(args.sweep_dir)
    if not results:
        sys.exit(f"error: no finished jobs (metrics.json) under {args.sweep_dir}")
    summary = []
    print(f"{'model':40s} {'dataset':18s} {'S1':>7s} {'S2':>7s} {'S3':>7s} {'Avg':>7s}")
    for (model, dataset), splits in sorted(results.items()):
        mean = sum(splits.values()) / len(splits)
        cells = [f"{splits[s]:6.2f}%" if s in splits else f"{'-':>7s}" for s in (1, 2, 3)]
        print(f"{model:40s} {dataset:18s} {' '.join(cells)} {mean:6.2f}%")
        summary.append({"model": model, "dataset": dataset, "splits": splits, "mean": mean})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
