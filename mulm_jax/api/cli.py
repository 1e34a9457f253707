"""`mulm serve` (`python serve.py`, `python -m mulm_jax serve`): serve trained models over HTTP.

`mulm serve --checkpoint RUN_DIR [--host 127.0.0.1] [--port 8000] [--api-key KEY ...] [--api-keys-file PATH]
[--slots N] [--state-dir DIR]`: OpenAI-compatible completions and chat (streamed or whole), tokenize / detokenize /
embeddings, data set and training jobs, health, readiness and Prometheus metrics; /openapi.json lists every route.
Settings come from the `serve` section of --config / --set, with the flags on top. API keys may also come from the
MULM_API_KEYS environment variable (comma-separated), which keeps them out of the process list.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Optional

from mulm_jax.config import ServeConfig, add_config_arguments, load_config
from mulm_jax.config_schema import add_flags, flag_values
from mulm_jax.errors import MulmError
from mulm_jax.runs import is_run


def add_arguments(p: argparse.ArgumentParser) -> None:
    """--config / --set, the start-up flags, a flag per ServeConfig field (config_schema) and the logging flags."""
    from mulm_jax.startup import add_startup_arguments

    add_config_arguments(p)
    add_startup_arguments(p)
    add_flags(p, ServeConfig)
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument(
        "--verbose",
        action="store_true",
        help="print the wall time of each start-up phase (each model's load and warm-up are logged at info level)",
    )


def settings_from_args(args: argparse.Namespace) -> ServeConfig:
    """The `serve` section of --config / --set, the flags given on top, then the keys of $MULM_API_KEYS added."""
    settings = dataclasses.replace(load_config(args.config, args.overrides).serve, **flag_values(args, ServeConfig))
    env_keys = tuple(k.strip() for k in os.environ.get("MULM_API_KEYS", "").split(",") if k.strip())
    return dataclasses.replace(settings, api_keys=settings.api_keys + env_keys)


def check_settings(settings: ServeConfig) -> None:
    """Fail before binding the port on what would only fail later: a value out of its range (a flag's, which
    load_config has not seen), missing run folders or keys file."""
    from mulm_jax.api.registry import parse_checkpoint

    settings.validate()
    for spec in settings.checkpoints:
        _, run_dir = parse_checkpoint(spec)
        if not is_run(run_dir):
            raise MulmError(
                f"--checkpoint {spec!r}: {run_dir!r} is not a run folder (expected config.yaml in it; "
                "the --workdir of train.py)"
            )
    if settings.api_keys_file and not Path(settings.api_keys_file).is_file():
        raise MulmError(f"--api-keys-file {settings.api_keys_file!r} does not exist")


def run(args: argparse.Namespace, phases: Optional[Any] = None) -> int:
    """Serve as `args` say until interrupted; `phases` (startup.Phases) times the start-up from the process's start
    where given."""
    from mulm_jax.startup import Phases, start

    phases = phases or Phases()
    # force: importing orbax (through absl) has already given the root logger a bare handler of its own
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # orbax's per-restore chatter, and jax's INFO line for each backend it cannot start ("Unable to initialize backend
    # 'tpu'" on a machine without one): neither is the user's concern
    for chatty in ("absl", "jax._src.xla_bridge"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))

    try:
        settings = settings_from_args(args)
        check_settings(settings)
        phases.mark("settings")
        start(args)  # the compilation cache and the backend's process settings
        phases.mark("backend")
        import uvicorn

        from mulm_jax.api import create_app

        app = create_app(settings)
        phases.mark("app")
    except (MulmError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.verbose:
        print(f"start-up: {phases.line()}; the models load and warm up in the background", flush=True)
    # Our access log (mulm_jax.api.access, JSON lines) replaces uvicorn's.
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    sock = config.bind_socket()  # bound here so that the line below names the port (--port 0: one the OS picked)
    address = f"http://{f'[{settings.host}]' if ':' in settings.host else settings.host}:{sock.getsockname()[1]}"
    print(f"API: {address}/v1    web lab: {address}/    (Ctrl-C stops)", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def address_in(output: str) -> Optional[str]:
    """The base URL (`http://HOST:PORT`) that the line above names in serve.py's `output`; None before it is printed."""
    match = re.search(r"^API: (\S+)/v1 ", output, re.MULTILINE)
    return match.group(1) if match else None


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve trained models over HTTP (as serve.py)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    """serve.py: the same command on its own, its start-up timed from here."""
    from mulm_jax.startup import Phases

    phases = Phases()
    parser = argparse.ArgumentParser(
        prog="serve.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run(parser.parse_args(argv), phases)
