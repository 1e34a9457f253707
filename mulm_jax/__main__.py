"""Command line: `python -m mulm_jax COMMAND ...`; each command lives in the module that owns its concept."""

from __future__ import annotations

import argparse
import importlib
import sys

from mulm_jax.config import ConfigError

# command name -> module exposing `register(subparsers)`, which adds a parser whose `func(args)` runs it.
COMMANDS = {
    "info": "mulm_jax.models.info",
    "data": "mulm_jax.data.cli",
    "generate": "mulm_jax.infer.cli",  # also registers `bench`
    "eval": "mulm_jax.eval.cli",
    "inspect": "mulm_jax.inspect.cli",  # also registers `plot`
    "convert": "mulm_jax.interop.cli",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mulm_jax", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(module).register(subparsers)
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
