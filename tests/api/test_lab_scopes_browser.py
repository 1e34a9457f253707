"""The web lab shows a key only what its scopes allow (GET /v1/me): a learner's key sees no Training or Data sets view
and no form to load a model; the teacher's sees them all. Headless Chromium against `serve.py` with a keys file."""

from __future__ import annotations

import pytest

from support import SERVER_KEY, Lab, Server

pytestmark = pytest.mark.browser

LEARNER = "sk-learner-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab-scopes")
    (root / "keys").write_text(f"{LEARNER}  name=alice  scopes=generate,inspect\n")
    server = Server(root, "--api-keys-file", str(root / "keys"))
    yield server
    server.stop()


def shown_tabs(lab: Lab) -> list[str]:
    return lab.value("[...document.querySelectorAll('#tabs a')].filter((a) => !a.hidden).map((a) => a.hash)")


def test_a_learner_key_sees_no_training_data_or_model_loading_and_the_teachers_sees_all(browser, server, tmp_path):
    learner = Lab(browser, server, tmp_path, LEARNER)
    try:
        learner.page.goto(f"{learner.url}#training")  # a view outside the key's scopes: the first one it may use
        learner.page.wait_for_selector("body[data-shown=playground]")
        tabs = shown_tabs(learner)
        assert (
            "#training" not in tabs and "#datasets" not in tabs and {"#playground", "#inspect", "#models"} <= set(tabs)
        )
        assert learner.value("document.getElementById('who').textContent") == "alice: generate, inspect"
        learner.open("models")
        assert learner.value("document.getElementById('md-form').hidden")
        assert not learner.value("document.getElementById('md-runs-panel').hidden")  # inspect may list the runs
        assert not learner.errors, learner.errors
    finally:
        learner.page.close()
    teacher = Lab(browser, server, tmp_path, SERVER_KEY)
    try:
        teacher.open("training")
        assert len(shown_tabs(teacher)) == 9
        teacher.open("models")
        assert not teacher.value("document.getElementById('md-form').hidden")
        assert not teacher.errors, teacher.errors
    finally:
        teacher.page.close()
