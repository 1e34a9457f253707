"""The API against its own contract: schemathesis (every check, a fixed seed, bounded examples) runs each operation
of /openapi.json on a served tiny random model and finds no failures and no 5xx."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest
import uvicorn

from support import loaded, wait_for
from mulm_jax.api import create_app
from mulm_jax.config import ServeConfig

KEY = "sk-contract-0123456789"
SCHEMATHESIS_CONFIG = Path(__file__).with_name("schemathesis.toml")


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """`app` under uvicorn in a thread, on a port the OS gives; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, "uvicorn to start", 60)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.mark.slow
def test_schemathesis_finds_nothing_against_the_servers_own_description(tmp_path):
    folders = {name: tmp_path / name for name in ("runs", "datasets", "data", "configs", "state")}
    for folder in folders.values():
        folder.mkdir()
    app = create_app(
        ServeConfig(
            api_keys=(KEY,),
            state_dir=str(folders["state"]),
            runs_root=str(folders["runs"]),
            datasets_dir=str(folders["datasets"]),
            data_roots=(str(folders["data"]),),
            configs_dir=str(folders["configs"]),
        )
    )
    with serving(app) as url:
        app.state.ctx.models.serve("tiny", loaded(max_seq_len=64))
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "--config-file",
                str(SCHEMATHESIS_CONFIG),
                "run",
                f"{url}/openapi.json",
                "--checks",
                "all",
                "-H",
                f"Authorization: Bearer {KEY}",
                "--max-examples",
                "10",
                "--seed",
                "1",
                "--workers",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )  # its .schemathesis/ cache too
    report = result.stdout.partition("=== FAILURES ===")[2] or result.stdout
    assert result.returncode == 0, report[-8000:] + result.stderr[-2000:]
