"""Train a model: `python train.py --config configs/NAME.yaml --workdir DIR [--set key=value ...]`.

Multi-host: start one process per host with --coordinator HOST:PORT --num-processes N --process-id I
(or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from mulm_jax.startup import Phases, add_startup_arguments, start

    phases = Phases()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from mulm_jax.config import ConfigError, add_config_arguments, config_from_args

    add_config_arguments(parser)
    add_startup_arguments(parser)
    parser.add_argument("--workdir", required=True, help="run folder: config, tokenizer, checkpoints, metrics")
    parser.add_argument("--coordinator", help="HOST:PORT of process 0, for a multi-process run")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--quiet", action="store_true", help="no per-step progress line (messages still show)")
    parser.add_argument("--init-from", metavar="RUN[@STEP]",
                        help="start a new run from this run's parameters (newest checkpoint, or STEP's)")
    parser.add_argument("--extend-positions", action="store_true",
                        help="with --init-from: extend a learned position table to a longer max_seq_len")
    parser.add_argument("--verbose", action="store_true", help="print the wall time of each start-up phase")
    args = parser.parse_args(argv)
    if args.extend_positions and not args.init_from:
        parser.error("--extend-positions applies only with --init-from")

    from mulm_jax.train import distributed

    try:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        start(args)  # the compilation cache and the backend's process settings
        phases.mark("backend")
        from mulm_jax.data import DataError
        from mulm_jax.train.loop import TrainingError, train

        phases.mark("imports")
        cfg = config_from_args(args)
        phases.mark("config")
        train(cfg, args.workdir, quiet=args.quiet, init_from=args.init_from, extend_positions=args.extend_positions,
              phases=phases if args.verbose else None)
    except (ConfigError, DataError, TrainingError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
