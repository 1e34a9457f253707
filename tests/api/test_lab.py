"""The web lab's static files over the app (starlette's TestClient): content types, caching, confinement to the
lab folder, no key for the page but for every API route, and the metrics, logs and rate limits of any route."""

from __future__ import annotations

import logging
import re
import shutil

import pytest
from starlette.testclient import TestClient

from mulm_jax.api import create_app
from mulm_jax.api.routes import lab
from mulm_jax.config import ServeConfig

KEY = "sk-lab-0123456789"


@pytest.fixture
def client(tmp_path):
    return TestClient(create_app(ServeConfig(state_dir=str(tmp_path / "state"), api_keys=(KEY,))))


@pytest.fixture
def lab_copy(tmp_path, monkeypatch):
    """A copy of the lab folder served in its place, with a secret file beside it."""
    folder = tmp_path / "lab"
    shutil.copytree(lab.LAB_DIR, folder)
    (tmp_path / "secret.js").write_text("SECRET CONTENT")
    monkeypatch.setattr(lab, "LAB_DIR", folder)
    return folder


def test_the_page_and_its_files_load_without_a_key_with_their_types(client):
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/lab/app.js">' in page.text
    expected = {
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".html": "text/html; charset=utf-8",
    }
    files = sorted(p for p in lab.LAB_DIR.iterdir() if p.is_file())
    assert {p.suffix for p in files} == set(expected)
    for path in files:
        r = client.get(f"/lab/{path.name}")
        assert r.status_code == 200, path.name
        assert r.headers["content-type"] == expected[path.suffix]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.content == path.read_bytes()


def test_every_script_the_page_imports_is_served(client):
    """The modules import each other by relative path: a renamed file would break the page without a 404 here."""
    for path in lab.LAB_DIR.glob("*.js"):
        for name in re.findall(r'from "\./([\w.]+)"', path.read_text()):
            assert client.get(f"/lab/{name}").status_code == 200, f"{path.name} imports {name}"


def test_files_are_revalidated_by_etag_and_a_change_gives_a_new_one(client, lab_copy):
    first = client.get("/lab/lab.css")
    assert first.headers["cache-control"] == "no-cache"
    etag = first.headers["etag"]
    again = client.get("/lab/lab.css", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert client.get("/lab/lab.css", headers={"If-None-Match": '"other", W/' + etag}).status_code == 304
    (lab_copy / "lab.css").write_text("body { color: red; }")
    changed = client.get("/lab/lab.css", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.text == "body { color: red; }"
    assert changed.headers["etag"] != etag


@pytest.mark.parametrize(
    "path",
    [
        "/lab/%2e%2e/secret.js",  # `..` encoded: the client sends it as is, the server decodes it
        "/lab/%2E%2E/%2e%2e/routes/lab.py",
        "/lab/..%2fsecret.js",
        "/lab/%2e/app.js",
        "/lab//app.js",
        "/lab/",
        "/lab/missing.js",
        "/lab/.hidden.js",
        "/lab/inner",  # a folder
        "/lab/inner/",
        "/lab/notes.txt",  # a type the lab does not serve
        "/lab/link.js",  # a link to a file outside the folder
        "/lab/inner/inside.js",  # a link, even to a file inside the folder
        "/lab/%00.js",
    ],
)
def test_anything_but_a_plain_file_of_the_lab_folder_is_404(client, lab_copy, path):
    (lab_copy / ".hidden.js").write_text("hidden")
    (lab_copy / "notes.txt").write_text("notes")
    (lab_copy / "inner").mkdir()
    (lab_copy / "link.js").symlink_to(lab_copy.parent / "secret.js")
    (lab_copy / "inner" / "inside.js").symlink_to(lab_copy / "app.js")
    r = client.get(path)
    assert r.status_code == 404, (path, r.text)
    assert "SECRET CONTENT" not in r.text
    assert r.json()["error"]["code"] == "not_found"


def test_only_the_page_and_its_files_skip_the_key(client):
    assert client.get("/v1/models").status_code == 401
    assert client.get("/lab/%2e%2e/%2e%2e/v1/models").status_code == 404  # the lab route answers, not the API
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.get("/metrics").status_code == 401


def test_lab_requests_are_counted_logged_and_rate_limited_like_any_other(tmp_path, caplog):
    limited = TestClient(create_app(ServeConfig(state_dir=str(tmp_path / "state"), requests_per_minute=3)))
    with caplog.at_level(logging.INFO, logger="mulm_jax.api.access"):
        assert limited.get("/").status_code == 200
        assert limited.get("/lab/app.js").status_code == 200
        assert limited.get("/lab/missing.js").status_code == 404
        refused = limited.get("/")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "requests_per_minute"
    routes = [r.getMessage() for r in caplog.records]
    assert sum('"route": "/lab/{path:path}"' in m for m in routes) == 2
    assert sum('"route": "/", "status": 429' in m for m in routes) == 1
    metrics = TestClient(create_app(ServeConfig(state_dir=str(tmp_path / "s2"))))
    metrics.get("/")
    metrics.get("/lab/app.js")
    text = metrics.get("/metrics").text
    assert 'mulm_http_requests_total{route="/",method="GET",status="200"} 1' in text
    assert 'mulm_http_requests_total{route="/lab/{path:path}",method="GET",status="200"} 1' in text


def test_openapi_lists_the_lab_as_needing_no_key(client):
    paths = client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()["paths"]
    assert paths["/"]["get"]["security"] == [] and paths["/lab/{path}"]["get"]["security"] == []
    assert paths["/lab/{path}"]["get"]["parameters"][0]["name"] == "path"
