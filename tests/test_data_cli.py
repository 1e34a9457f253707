"""`python -m mulm_jax data assemble | list`: flags, --json manifest, reuse, and `error:` exits for user mistakes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mulm_jax.__main__ import main


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("First paragraph of text.\n\nSecond paragraph here.\n\nA third one, long enough.\n")
    return path


def test_module_entry_point_assembles_and_prints_the_manifest_last(corpus, tmp_path, repo_root):
    args = [sys.executable, "-m", "mulm_jax", "data", "assemble", "--source", str(corpus), "--tokenizer", "char",
            "--split-documents", "paragraphs", "--out", str(tmp_path / "out"), "--json"]
    done = subprocess.run(args, cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout.strip().splitlines()[-1])
    assert (tmp_path / "out" / manifest["version"] / "manifest.json").is_file()
    assert manifest["documents"]["train"] + manifest["documents"]["val"] == 3
    bad = subprocess.run(args[:6] + [str(tmp_path / "missing.txt")] + args[7:], cwd=repo_root,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: source '") and "missing.txt' not found" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_second_assembly_reports_a_cache_hit_with_the_same_manifest(corpus, tmp_path, capsys):
    args = ["data", "assemble", "--source", str(corpus), "--out", str(tmp_path / "out"), "--json"]
    assert main(args) == 0
    first = capsys.readouterr().out.splitlines()
    assert main(args) == 0
    second = capsys.readouterr().out.splitlines()
    assert first[0].startswith("assembled ") and second[0].startswith("reused (cache hit) ")
    assert json.loads(first[-1]) == json.loads(second[-1])


def test_flags_set_the_data_config_fields(corpus, tmp_path, capsys):
    assert main(["data", "assemble", "--source", str(corpus), "--out", str(tmp_path / "out"), "--val-fraction",
                 "0.25", "--no-fold-whitespace", "--dedup", "exact", "--min-doc-chars", "3", "--json"]) == 0
    settings = json.loads(capsys.readouterr().out.splitlines()[-1])["settings"]
    assert (settings["val_fraction"], settings["fold_whitespace"], settings["dedup"], settings["min_doc_chars"]) == (
        0.25, False, "exact", 3)


def test_list_shows_each_version(corpus, tmp_path, capsys):
    out = str(tmp_path / "out")
    for fraction in ("0.1", "0.2"):
        main(["data", "assemble", "--source", str(corpus), "--out", out, "--val-fraction", fraction, "--json"])
    versions = sorted(json.loads(line)["version"] for line in capsys.readouterr().out.splitlines() if line[0] == "{")
    assert main(["data", "list", "--out", out]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == versions


def test_user_errors_exit_2_with_a_message(corpus, tmp_path, capsys):
    assert main(["data", "assemble", "--source", str(corpus), "--tokenizer", "bpe", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: tokenizer 'bpe' needs vocab_size (--vocab-size)\n"
    assert main(["data", "list", "--out", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
