"""Evaluate a checkpoint at video level: `python test.py ckpt=<path> [overrides]`.

The model config is read from the checkpoint; overrides such as test.num_clips=10
test.num_crops=3 or dataset.split=2 change only what they name.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rcca.config import check_overrides, register_configs
from rcca.engine.launch import test, user_errors

register_configs()


@hydra.main(version_base=None, config_path="rcca/configs", config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    with user_errors():
        test(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))


if __name__ == "__main__":
    with user_errors():
        check_overrides(sys.argv[1:])  # before Hydra parses them: unknown keys, unwritable output folders
    main()
