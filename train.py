"""Train a video action-recognition model: `python train.py [hydra overrides]`.

With no arguments this runs the CPU quick-start (experiment=quickstart). See README.md.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rcca.config import check_overrides, check_quickstart_choices, check_required, register_configs
from rcca.engine.cli import check_named_run_folder, discard_run_folder_on_failure, exit_codes

register_configs()


@hydra.main(version_base=None, config_path="rcca/configs", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    with exit_codes(), discard_run_folder_on_failure(run_dir):
        check_required(cfg)  # every key's rule, before torch and torchvision load (seconds)
        from rcca.engine.train_pipeline import train

        metrics = train(cfg, run_dir, list(hydra_cfg.overrides.task))
    return metrics.get("top1", 0.0)


if __name__ == "__main__":
    with exit_codes():
        check_overrides(sys.argv[1:])  # before Hydra parses them: unknown keys, unwritable output folders
        check_quickstart_choices(sys.argv[1:])  # a real dataset or another backbone needs a named experiment
        check_named_run_folder(sys.argv[1:])  # before Hydra writes its records into a folder another run holds
    main()
