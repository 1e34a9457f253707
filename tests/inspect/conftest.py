"""The inspection tests' API client: a server whose one model, "tiny", is a 2-layer model with random weights served
by the stand-in engine (the inspection routes trace the model themselves; the stand-in compiles nothing)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from support import StandInEngine, loaded
from mulm_jax.api import create_app
from mulm_jax.config import ServeConfig


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspect_api")
    app = create_app(
        ServeConfig(state_dir=str(tmp / "state"), runs_root=str(tmp / "runs"), inspect_max_tokens=40), StandInEngine
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        app.state.ctx.models.serve("tiny", loaded(num_layers=2, max_seq_len=64))
        yield c
