"""Training: optimizer, the steps on a device mesh, checkpoints, metrics and the run loop."""
