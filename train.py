"""Train a video action-recognition model: `python train.py [hydra overrides]`.

With no arguments this runs the CPU quick-start (experiment=quickstart). See README.md.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rcca.config import check_overrides, register_configs
from rcca.engine.launch import train, user_errors
from rcca.engine.resuming import check_named_run_folder

register_configs()


@hydra.main(version_base=None, config_path="rcca/configs", config_name="config")
def main(cfg: DictConfig) -> float:
    with user_errors():
        hydra_cfg = HydraConfig.get()
        metrics = train(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))
    return metrics.get("top1", 0.0)


if __name__ == "__main__":
    with user_errors():
        check_overrides(sys.argv[1:])  # before Hydra parses them: unknown keys, unwritable output folders
        check_named_run_folder(sys.argv[1:])  # before Hydra writes its records into a folder another run holds
    main()
