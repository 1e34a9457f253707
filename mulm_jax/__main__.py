"""Command line: `mulm COMMAND ...` (the installed console script) or `python -m mulm_jax COMMAND ...`; each command
lives in the module that owns its concept."""

from __future__ import annotations

import argparse
import importlib
import sys

from mulm_jax.errors import MulmError

# command name -> module exposing `register(subparsers)`, which adds the parsers of the commands it maps to here,
# each with a `func(args)` that runs it.
COMMANDS = {
    "train": "mulm_jax.train.cli",
    "serve": "mulm_jax.api.cli",
    "info": "mulm_jax.models.info",
    "data": "mulm_jax.data.cli",
    "generate": "mulm_jax.infer.cli",
    "bench": "mulm_jax.infer.cli",
    "eval": "mulm_jax.eval.cli",
    "inspect": "mulm_jax.inspect.cli",
    "plot": "mulm_jax.inspect.cli",
    "convert": "mulm_jax.interop.cli",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="mulm", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Only the named command's module is imported (a training job starts as fast as train.py); --help, or a name
    # that is none of them, lists them all.
    named = [COMMANDS[argv[0]]] if argv and argv[0] in COMMANDS else COMMANDS.values()
    for module in dict.fromkeys(named):
        importlib.import_module(module).register(subparsers)
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except MulmError as e:  # what the user got wrong: one line; anything else is a bug and shows its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
