"""Train a video action-recognition model: `python train.py [hydra overrides]`.

With no arguments this runs the CPU quick-start (experiment=quickstart). See README.md.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rcca.config import check_overrides, check_quickstart_choices, register_configs
from rcca.engine.cli import discard_run_folder_on_failure, exit_codes
from rcca.engine.resuming import check_named_run_folder
from rcca.engine.train_pipeline import train

register_configs()


@hydra.main(version_base=None, config_path="rcca/configs", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    with exit_codes(), discard_run_folder_on_failure(run_dir):
        metrics = train(cfg, run_dir, list(hydra_cfg.overrides.task))
    return metrics.get("top1", 0.0)


if __name__ == "__main__":
    with exit_codes():
        check_overrides(sys.argv[1:])  # before Hydra parses them: unknown keys, unwritable output folders
        check_quickstart_choices(sys.argv[1:])  # a real dataset or another backbone needs a named experiment
        check_named_run_folder(sys.argv[1:])  # before Hydra writes its records into a folder another run holds
    main()
