"""`mulm train` (`python train.py`, `python -m mulm_jax train`): train a model on a config into a run folder.

Multi-host: start one process per host with --coordinator HOST:PORT --num-processes N --process-id I
(or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional

from mulm_jax.errors import MulmError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mulm_jax.config import add_config_arguments
    from mulm_jax.startup import add_startup_arguments

    add_config_arguments(parser)
    add_startup_arguments(parser)
    parser.add_argument("--workdir", required=True, help="run folder: config, tokenizer, checkpoints, metrics")
    parser.add_argument("--coordinator", help="HOST:PORT of process 0, for a multi-process run")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--quiet", action="store_true", help="no per-step progress line (messages still show)")
    parser.add_argument(
        "--init-from",
        metavar="RUN[@STEP]",
        help="start a new run from this run's parameters (newest checkpoint, or STEP's)",
    )
    parser.add_argument(
        "--extend-positions",
        action="store_true",
        help="with --init-from: extend a learned position table to a longer max_seq_len",
    )
    parser.add_argument("--verbose", action="store_true", help="print the wall time of each start-up phase")


def run(args: argparse.Namespace, phases: Optional[Any] = None) -> int:
    """Train as `args` say; `phases` (startup.Phases) times the start-up from the process's start where given."""
    from mulm_jax.config import config_from_args
    from mulm_jax.startup import Phases, start
    from mulm_jax.train import distributed

    phases = phases or Phases()
    try:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        cfg = config_from_args(args)
        phases.mark("config")
        start(args, cfg.train)  # the compilation cache, the CPU's devices and the backend's process settings
        phases.mark("backend")
        from mulm_jax.train.loop import train

        phases.mark("imports")
        train(
            cfg,
            args.workdir,
            quiet=args.quiet,
            init_from=args.init_from,
            extend_positions=args.extend_positions,
            phases=phases if args.verbose else None,
        )
    except MulmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _checked(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    if args.extend_positions and not args.init_from:
        parser.error("--extend-positions applies only with --init-from")
    return args


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model on a config into a run folder (as train.py)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=lambda args: run(_checked(parser, args)))


def main(argv: list[str] | None = None) -> int:
    """train.py: the same command on its own, its start-up timed from here."""
    from mulm_jax.startup import Phases

    phases = Phases()
    parser = argparse.ArgumentParser(
        prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run(_checked(parser, parser.parse_args(argv)), phases)
