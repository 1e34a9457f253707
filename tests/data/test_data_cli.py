"""`python -m mulm_jax data assemble | list`: flags, --json manifest, reuse, and `error:` exits for user mistakes."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from mulm_jax.__main__ import main
from mulm_jax.config import DataConfig
from mulm_jax.config_schema import options
from mulm_jax.data import cli


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("First paragraph of text.\n\nSecond paragraph here.\n\nA third one, long enough.\n")
    return path


def test_module_entry_point_assembles_and_prints_the_manifest_last(corpus, tmp_path, repo_root):
    args = [
        sys.executable,
        "-m",
        "mulm_jax",
        "data",
        "assemble",
        "--source",
        str(corpus),
        "--tokenizer",
        "char",
        "--split-documents",
        "paragraphs",
        "--out",
        str(tmp_path / "out"),
        "--json",
    ]
    done = subprocess.run(args, cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout.strip().splitlines()[-1])
    assert (tmp_path / "out" / manifest["version"] / "manifest.json").is_file()
    assert manifest["documents"]["train"] + manifest["documents"]["val"] == 3
    bad = subprocess.run(
        args[:6] + [str(tmp_path / "missing.txt")] + args[7:],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
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
    assert (
        main(
            [
                "data",
                "assemble",
                "--source",
                str(corpus),
                "--out",
                str(tmp_path / "out"),
                "--val-fraction",
                "0.25",
                "--no-fold-whitespace",
                "--dedup",
                "exact",
                "--min-doc-chars",
                "3",
                "--json",
            ]
        )
        == 0
    )
    settings = json.loads(capsys.readouterr().out.splitlines()[-1])["settings"]
    assert (settings["val_fraction"], settings["fold_whitespace"], settings["dedup"], settings["min_doc_chars"]) == (
        0.25,
        False,
        "exact",
        3,
    )


def assemble_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    return parser


def test_every_data_config_field_but_dataset_has_a_flag_that_sets_it():
    """A field added to DataConfig reaches `data assemble` as a flag (its alias, else its name) of its type."""
    flags, expected = [], {}
    for option in options(DataConfig, exclude=cli.NOT_FLAGS):
        flag = "--" + option.public.replace("_", "-")
        if option.type is bool:
            flags.append(flag if not option.default else "--no-" + flag[2:])
            value = not option.default
        else:
            choices = typing.get_args(option.type)
            value = choices[-1] if choices else {int: 7, float: 0.5, str: "x"}[option.type]
            flags += [flag, str(value)] * (2 if option.many else 1)
        expected[option.name] = (value, value) if option.many else value
    data = cli.data_config(assemble_parser().parse_args(["data", "assemble", *flags]))
    assert data == DataConfig(**expected)
    assert {f.name for f in dataclasses.fields(DataConfig)} - set(cli.NOT_FLAGS) == set(expected)


def test_a_config_files_data_section_is_read_and_flags_win(corpus, tmp_path, capsys):
    config = tmp_path / "recipe.yaml"
    config.write_text(
        f"data:\n  sources: [{str(corpus)!r}]\n  dedup: exact\n  val_fraction: 0.25\n"
        f"  out_dir: {str(tmp_path / 'out')!r}\n"
    )
    assert main(["data", "assemble", "--config", str(config), "--val-fraction", "0.5", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (manifest["settings"]["dedup"], manifest["settings"]["val_fraction"]) == ("exact", 0.5)
    assert (tmp_path / "out" / manifest["version"]).is_dir()


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
