"""Data preparation before training (`python scripts/prepare.py <verb>`): resizing videos, cutting Kinetics clips
out of full downloads, extracting JPEG frames (`runner` runs the jobs, `media` does the work with PyAV), and
writing train/test lists of a folder of videos (`lists`)."""
