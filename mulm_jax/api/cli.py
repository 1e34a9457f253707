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

from mulm_jax.errors import MulmError
from mulm_jax.runs import is_run

# flag -> ServeConfig field, for flags whose value is that field.
_FIELD_FLAGS = {
    "host": "host", "port": "port", "slots": "slots", "max_queue": "max_queue", "state_dir": "state_dir",
    "api_keys_file": "api_keys_file", "requests_per_minute": "requests_per_minute",
    "tokens_per_minute": "tokens_per_minute", "max_body_bytes": "max_body_bytes", "runs_root": "runs_root",
    "datasets_dir": "datasets_dir", "configs_dir": "configs_dir", "inspect_max_tokens": "inspect_max_tokens",
}
_LIST_FLAGS = {"checkpoint": "checkpoints", "api_key": "api_keys", "data_root": "data_roots",
               "extra_routes": "extra_routes"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mulm_jax.config import add_config_arguments
    from mulm_jax.startup import add_startup_arguments

    add_config_arguments(p)
    add_startup_arguments(p)
    p.add_argument("--checkpoint", action="append", metavar="[ID=]RUN_DIR",
                   help="a run folder to serve (repeatable); the model id is ID or the folder's name")
    p.add_argument("--host", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="default 8000; 0: a free port, named in the line printed at start")
    p.add_argument("--api-key", action="append", metavar="KEY", help="accept this key (repeatable)")
    p.add_argument("--api-keys-file", metavar="PATH", help="accept the keys in this file, one per line")
    p.add_argument("--slots", type=int, help="sequences decoded together per model (default 8)")
    p.add_argument("--max-queue", type=int, help="requests waiting per model before 429 (default 64)")
    p.add_argument("--int8", action="store_true", default=None, help="serve with int8 weights")
    p.add_argument("--state-dir", metavar="DIR", help="SQLite records of jobs and logs (default state)")
    p.add_argument("--requests-per-minute", type=int, metavar="N", help="per key; 0: no limit (default)")
    p.add_argument("--tokens-per-minute", type=int, metavar="N", help="generated, per key; 0: no limit (default)")
    p.add_argument("--max-body-bytes", type=int, metavar="N", help="larger request bodies get 413")
    p.add_argument("--inspect-max-tokens", type=int, metavar="N", help="longest prompt POST /v1/inspect traces "
                                                                       "(default 512)")
    p.add_argument("--runs-root", metavar="DIR", help="training jobs write here; POST /v1/models loads from here")
    p.add_argument("--datasets-dir", metavar="DIR", help="data set jobs write versions here")
    p.add_argument("--data-root", action="append", metavar="DIR", help="a folder data set jobs may read")
    p.add_argument("--configs-dir", metavar="DIR", help="configs training jobs may name")
    p.add_argument("--extra-routes", action="append", metavar="MODULE", help="a module with routes(ctx) to add")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--verbose", action="store_true", help="print the wall time of each start-up phase (each "
                                                          "model's load and warm-up are logged at info level)")


def settings_from_args(args: argparse.Namespace):
    from mulm_jax.config import load_config

    base = load_config(args.config, args.overrides).serve
    given = {field: getattr(args, flag) for flag, field in _FIELD_FLAGS.items() if getattr(args, flag) is not None}
    given.update({field: tuple(getattr(args, flag)) for flag, field in _LIST_FLAGS.items() if getattr(args, flag)})
    if args.int8 is not None:
        given["int8"] = args.int8
    env_keys = tuple(k.strip() for k in os.environ.get("MULM_API_KEYS", "").split(",") if k.strip())
    settings = dataclasses.replace(base, **given)
    return dataclasses.replace(settings, api_keys=settings.api_keys + env_keys)


def check_settings(settings) -> None:
    """Fail before binding the port on what would only fail later: missing run folders or keys file."""
    from mulm_jax.api.registry import parse_checkpoint

    for spec in settings.checkpoints:
        _, run_dir = parse_checkpoint(spec)
        if not is_run(run_dir):
            raise MulmError(f"--checkpoint {spec!r}: {run_dir!r} is not a run folder (expected config.yaml in it; "
                             "the --workdir of train.py)")
    if settings.api_keys_file and not Path(settings.api_keys_file).is_file():
        raise MulmError(f"--api-keys-file {settings.api_keys_file!r} does not exist")


def run(args: argparse.Namespace, phases: Optional[Any] = None) -> int:
    """Serve as `args` say until interrupted; `phases` (startup.Phases) times the start-up from the process's start
    where given."""
    from mulm_jax.startup import Phases, start

    phases = phases or Phases()
    # force: importing orbax (through absl) has already given the root logger a bare handler of its own
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
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
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=args.log_level, access_log=False,
                            timeout_graceful_shutdown=10)
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
    parser = subparsers.add_parser("serve", help="serve trained models over HTTP (as serve.py)", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    """serve.py: the same command on its own, its start-up timed from here."""
    from mulm_jax.startup import Phases

    phases = Phases()
    parser = argparse.ArgumentParser(prog="serve.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv), phases)
