"""Train a model: `python train.py --config configs/NAME.yaml --workdir DIR [--set key=value ...]`.

Multi-host: start one process per host with --coordinator HOST:PORT --num-processes N --process-id I
(or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from mulm_jax.config import ConfigError, add_config_arguments, config_from_args

    add_config_arguments(parser)
    parser.add_argument("--workdir", required=True, help="run folder: config, tokenizer, checkpoints, metrics")
    parser.add_argument("--coordinator", help="HOST:PORT of process 0, for a multi-process run")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--quiet", action="store_true", help="no per-step progress line (messages still show)")
    parser.add_argument("--init-from", metavar="RUN[@STEP]",
                        help="start a new run from this run's parameters (newest checkpoint, or STEP's)")
    parser.add_argument("--extend-positions", action="store_true",
                        help="with --init-from: extend a learned position table to a longer max_seq_len")
    args = parser.parse_args(argv)
    if args.extend_positions and not args.init_from:
        parser.error("--extend-positions applies only with --init-from")

    from mulm_jax.train.xla_cpu import configure_cpu

    configure_cpu()
    from mulm_jax.train import distributed

    try:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        from mulm_jax.data import DataError
        from mulm_jax.train.loop import TrainingError, train

        cfg = config_from_args(args)
        train(cfg, args.workdir, quiet=args.quiet, init_from=args.init_from, extend_positions=args.extend_positions)
    except (ConfigError, DataError, TrainingError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
