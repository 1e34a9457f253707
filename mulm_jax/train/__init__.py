"""Training: optimizer, pmapped steps, checkpoints, metrics and the run loop."""
