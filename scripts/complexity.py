"""Parameters and MACs of a configured model at the paper's input size: `python scripts/complexity.py [overrides]`.

The config is composed exactly as `train.py` composes it (same config folder, same
overrides), e.g.

    python scripts/complexity.py experiment=none backbone=tsm_r50 module=rcca dataset=ucf101
    python scripts/complexity.py experiment=none backbone=tsm_r50 module=nl dataset=ucf101
    python scripts/complexity.py experiment=none backbone=mfnet module=none dataset=ucf101

The dataset only provides num_classes (no videos are read, dataset.root may stay unset).
The input is 1 x 3 x backbone.num_frames x 224 x 224 (TSM: 8 frames, MF-Net: 16), the
size of the paper's tables, whatever data.crop_size says; `--size` changes it. Weights
are not loaded (backbone.pretrained is not read): they do not change the counts.

Prints a table (total and per inserted module: parameters, MACs, share, and the paper's
doubled module increment) and, as its last line, a JSON object with "params", "macs",
"paper_flops" and "modules". See `rcca.models.complexity` for the counting conventions,
including the paper's mixed FLOPs convention and the ~0.3% of RCCA-3D MACs spent on each
query's masked own position.
"""

from __future__ import annotations

import argparse
import json

from rcca.config import compose_config
from rcca.engine.cli import exit_codes
from rcca.models.build import build_model
from rcca.models.complexity import complexity_report, format_report

PAPER_SIZE = 224


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
    parser.add_argument("--size", type=int, default=PAPER_SIZE, help="input height and width (default 224)")
    args = parser.parse_intermixed_args(argv)
    with exit_codes():
        cfg = compose_config(args.overrides)
        backbone = cfg.backbone
        model = build_model(backbone, cfg.module, cfg.dataset.num_classes)
    report = complexity_report(model, (1, 3, backbone.num_frames, args.size, args.size))
    name = f"{backbone.name}-r{backbone.depth}" if backbone.name == "tsm" else backbone.name
    print(f"model: {name} + {cfg.module.name} at {list(cfg.module.positions)}, {cfg.dataset.num_classes} classes")
    print(format_report(report))
    print(json.dumps(report.to_json()))


if __name__ == "__main__":
    main()
