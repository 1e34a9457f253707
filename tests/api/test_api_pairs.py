"""The API on an encoder-decoder trained on pairs: /v1/completions reads the prompt as its source."""

from __future__ import annotations

from starlette.testclient import TestClient

from support import pairs_run
from mulm_jax.api import create_app
from mulm_jax.config import ServeConfig
from mulm_jax.infer import Engine, SamplingParams, load_model


def test_completions_of_an_encoder_decoder_trained_on_pairs_read_the_prompt_as_its_source(tmp_path):
    _, run = pairs_run(tmp_path)
    lm = load_model(run)
    app = create_app(ServeConfig(state_dir=str(tmp_path / "state"), runs_root=str(tmp_path / "runs")))
    with TestClient(app, raise_server_exceptions=False) as client:
        app.state.ctx.models.serve("pairs", lm)
        body = client.post(
            "/v1/completions", json={"model": "pairs", "prompt": "ab ij", "max_tokens": 8, "temperature": 0}
        ).json()
    with Engine(lm, slots=1) as engine:
        expected = engine.generate("ab ij", SamplingParams(max_tokens=8, temperature=0.0))
    assert body["choices"][0]["text"] == expected.text
    assert body["usage"]["prompt_tokens"] == len("ab ij")  # the source
