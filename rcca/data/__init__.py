"""Video data: annotation parsers, decoding, frame sampling, clip transforms, datasets and loaders."""
