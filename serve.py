"""Serve trained models over HTTP: `python serve.py --checkpoint RUN_DIR [--port 8000] ...`, the same as
`mulm serve ...` (mulm_jax/api/cli.py, where the flags are: `python serve.py --help`)."""

import sys

from mulm_jax.api.cli import main

if __name__ == "__main__":
    sys.exit(main())
