"""The installed package (`pip install -e .`, pyproject.toml): `mulm` and `python -m mulm_jax` work from any folder,
and train.py / serve.py are the same commands as `mulm train` / `mulm serve`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT


def flags(help_text: str) -> set[str]:
    return set(re.findall(r"--[\w-]+", help_text))


def run(*command: str, cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("command", ["train", "serve"])
def test_the_console_script_outside_the_checkout_is_the_top_level_script(command, tmp_path):
    mulm = Path(sys.executable).parent / "mulm"
    assert mulm.is_file(), "no `mulm` beside the interpreter: install the project (`make venv`: pip install -e .)"
    installed = run(str(mulm), command, "--help", cwd=tmp_path)
    assert installed.startswith(f"usage: mulm {command} ")
    assert flags(installed) == flags(run(sys.executable, str(ROOT / f"{command}.py"), "--help", cwd=tmp_path))
    assert "--workdir" in installed or "--checkpoint" in installed


def test_python_m_mulm_jax_runs_from_any_folder_and_imports_only_the_named_command(tmp_path):
    script = (
        "import sys; from mulm_jax.__main__ import main; main(['info', '--config', sys.argv[1]]); "
        "print(sorted(m for m in sys.modules if m.startswith('mulm_jax.') and m.endswith('.cli')))"
    )
    out = run(sys.executable, "-c", script, str(ROOT / "configs/shakespeare_char.yaml"), cwd=tmp_path)
    assert "parameters:" in out
    assert out.splitlines()[-1] == "[]"  # info's module is mulm_jax.models.info: no other command was imported


def test_a_users_mistake_is_one_line_and_a_bug_shows_its_traceback(monkeypatch, capsys):
    from mulm_jax.__main__ import main
    from mulm_jax.config import ConfigError
    from mulm_jax.errors import MulmError
    from mulm_jax.models import info

    assert issubclass(ConfigError, MulmError)
    config = str(ROOT / "configs/shakespeare_char.yaml")
    assert main(["info", "--config", config, "--set", "model.num_layers=0"]) == 2
    assert capsys.readouterr().err == "error: model.num_layers=0 must be a positive integer\n"

    def bug(*args, **kwargs):
        raise ValueError("operands could not be broadcast together")  # what a shape bug in JAX raises

    monkeypatch.setattr(info, "describe", bug)
    with pytest.raises(ValueError, match="could not be broadcast"):
        main(["info", "--config", config])
