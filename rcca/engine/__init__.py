"""Running experiments: trainer, video-level evaluation, optimizer, checkpoints, distributed helpers."""
