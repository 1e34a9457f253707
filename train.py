"""Train a model: `python train.py --config configs/NAME.yaml --workdir DIR [--set key=value ...]`, the same as
`mulm train ...` (mulm_jax/train/cli.py, where the flags are: `python train.py --help`)."""

import sys

from mulm_jax.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
