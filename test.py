"""Evaluate a checkpoint at video level: `python test.py ckpt=<path> [overrides]`.

The model config is read from the checkpoint; overrides such as test.num_clips=10
test.num_crops=3 or dataset.split=2 change only what they name. Results go to
<checkpoint's folder>/test/<checkpoint name>-<date>_<time>/ unless hydra.run.dir is given.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rcca.config import check_overrides, register_configs
from rcca.engine.cli import discard_run_folder_on_failure, evaluation_dir_override, exit_codes
from rcca.engine.files import checkpoint_file

register_configs()


@hydra.main(version_base=None, config_path="rcca/configs", config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    with exit_codes(), discard_run_folder_on_failure(run_dir):
        checkpoint_file(cfg.ckpt, "ckpt")  # named and there, before torch and torchvision load (seconds)
        from rcca.engine.test_pipeline import test

        test(cfg, run_dir, list(hydra_cfg.overrides.task))


if __name__ == "__main__":
    with exit_codes():
        check_overrides(sys.argv[1:])  # before Hydra parses them: unknown keys, unwritable output folders
        sys.argv += evaluation_dir_override(sys.argv[1:])  # results beside the checkpoint's run
    main()
