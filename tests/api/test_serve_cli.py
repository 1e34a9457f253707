"""serve.py's flags: one per ServeConfig field (made by config_schema), each setting its field, its default in --help,
its range checked before the port is bound; a real serve.py started with them obeys them."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys

import httpx
import pytest

from mulm_jax.api import cli
from mulm_jax.config import ServeConfig
from mulm_jax.config_schema import options
from support import ROOT, Server

# serve.py's flags that set no ServeConfig field
NOT_SETTINGS = {
    "--help",
    "--config",
    "--set",
    "--compilation-cache",
    "--no-compilation-cache",
    "--log-level",
    "--verbose",
}


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser


def test_every_serve_config_field_has_a_flag_that_sets_it_and_no_other_flag_sets_one(monkeypatch):
    """A field added to ServeConfig reaches serve.py as a flag (its alias, else its name) of its type."""
    monkeypatch.delenv("MULM_API_KEYS", raising=False)
    flags, expected, names = [], {}, set()
    for option in options(ServeConfig):
        flag = "--" + option.public.replace("_", "-")
        names |= {flag, "--no-" + flag[2:]} if option.type is bool else {flag}
        if option.type is bool:
            flags.append(flag if not option.default else "--no-" + flag[2:])
            value = not option.default
        else:
            value = {int: 7, str: "x"}[option.type]
            flags += [flag, str(value)] * (2 if option.many else 1)
        expected[option.name] = (value, value) if option.many else value
    assert cli.settings_from_args(serve_parser().parse_args(flags)) == ServeConfig(**expected)
    assert {f.name for f in dataclasses.fields(ServeConfig)} == set(expected)
    assert set(re.findall(r"--[\w-]+", serve_parser().format_help())) - NOT_SETTINGS == names


def test_flags_replace_the_config_files_serve_section_and_the_rest_of_it_stays(tmp_path, monkeypatch):
    monkeypatch.delenv("MULM_API_KEYS", raising=False)
    config = tmp_path / "serve.yaml"
    config.write_text("serve:\n  slots: 3\n  data_roots: [a, b]\n  int8: true\n")
    settings = cli.settings_from_args(
        serve_parser().parse_args(
            ["--config", str(config), "--set", "serve.port=9000", "--data-root", "c", "--no-int8"]
        )
    )
    assert (settings.slots, settings.port, settings.data_roots, settings.int8) == (3, 9000, ("c",), False)


def test_serve_py_help_shows_each_settings_default():
    done = subprocess.run(
        [sys.executable, str(ROOT / "serve.py"), "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    entries = {entry.split()[0].rstrip(","): " ".join(entry.split()) for entry in done.stdout.split("\n  --")[1:]}
    for option in options(ServeConfig):
        entry, default = entries[option.public.replace("_", "-")], option.default
        if default in (None, ()):
            assert "(default" not in entry, entry
            continue
        if isinstance(default, bool):
            shown = "on" if default else "off"
        else:
            shown = ", ".join(default) if option.many else default
        assert entry.endswith(f"(default {shown})"), entry


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--slots", "0"], "serve.slots=0 must be >= 1"),
        (["--port", "65536"], r"serve.port=65536 must be in [0, 65535]"),
        (["--set", "serve.max_queue=-1"], "serve.max_queue=-1 must be >= 0"),
    ],
)
def test_a_setting_out_of_its_range_is_refused_before_the_port_is_bound(flags, message, capsys):
    assert cli.main(flags) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_serve_py_started_with_its_flags_obeys_them(tmp_path):
    server = Server(tmp_path, "--max-body-bytes", "100", "--slots", "1")  # and --api-key, --port 0, the folders
    try:
        assert server.http.get("/v1/models").json()["data"] == []
        too_big = server.http.post("/v1/tokenize", json={"model": "tiny", "prompt": "a" * 200})
        assert too_big.status_code == 413 and too_big.json()["error"]["message"].endswith("the limit is 100")
        assert httpx.get(server.url + "/v1/models").status_code == 401
    finally:
        server.stop()
