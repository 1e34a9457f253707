"""The README and docs/: every code block is marked, and the runnable ones run as written on a tiny run."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from support import ROOT, wait_for
from mulm_jax.api.cli import address_in

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A fence's info string: `text` (output, layouts: never run), or a language and what the test does with the block
# (docs/testing.md#code-blocks-in-the-docs): `run` [`server`] [`slow`], `serve`, `file NAME`, `norun: REASON`.
MARK = re.compile(
    r"(?P<lang>python|bash) (?:(?P<run>run(?: server)?(?: slow)?)|(?P<serve>serve)"
    r"|file (?P<file>[\w.-]+)|norun: (?P<reason>\S.*))"
)
# The tiny stand-in for configs/shakespeare_char.yaml in the workspace: the same data, trained in seconds.
TINY = {
    "model": {"d_model": 32, "num_layers": 2, "num_heads": 2, "d_ff": 64, "max_seq_len": 64},
    "train": {
        "steps": 20,
        "batch_size": 8,
        "seq_len": 64,
        "warmup_steps": 5,
        "eval_every": 20,
        "eval_batches": 2,
        "checkpoint_every": 20,
        "log_every": 5,
    },
}
# What a block may use from the repository root, linked into the workspace.
LINKED = (".venv", "mulm_jax", "bench", "train.py", "serve.py", "requirements.txt")
DOC_PORT = re.compile(r"(?:127\.0\.0\.1|localhost):8000")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the opening fence
    info: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def mark(self) -> re.Match | None:
        return MARK.fullmatch(self.info)


def code_blocks(page: Path) -> list[Block]:
    """Every fenced block of a markdown page, its lines unindented by the opening fence's indentation."""
    blocks, opened, lines = [], None, []
    for number, line in enumerate(page.read_text().splitlines(), 1):
        fence = re.match(r"(\s*)```(.*)", line)
        if opened is None and fence:
            opened, indent, lines = (number, fence.group(2).strip()), len(fence.group(1)), []
        elif opened is not None and fence and not fence.group(2).strip():
            blocks.append(Block(str(page.relative_to(ROOT)), opened[0], opened[1], "\n".join(lines) + "\n"))
            opened = None
        elif opened is not None:
            lines.append(line[indent:] if not line[:indent].strip() else line.lstrip())
    assert opened is None, f"{page.relative_to(ROOT)}:{opened[0]}: the fence is never closed"
    return blocks


BLOCKS = [block for page in PAGES for block in code_blocks(page)]


def test_every_code_block_is_marked_runnable_or_not():
    unmarked = [f"{b.where}: ```{b.info}" for b in BLOCKS if b.info != "text" and b.mark is None]
    assert not unmarked, (
        "blocks without a mark (text, or python/bash with run, run server, run slow, serve, "
        "file NAME or norun: REASON; see docs/testing.md):\n" + "\n".join(unmarked)
    )
    serves = [b for b in BLOCKS if b.mark and b.mark["serve"]]
    needs_server = [b for b in BLOCKS if b.mark and b.mark["run"] and "server" in b.mark["run"]]
    assert len(serves) == 1 if needs_server else len(serves) <= 1, f"serve blocks: {[b.where for b in serves]}"
    files = [b.mark["file"] for b in BLOCKS if b.mark and b.mark["file"]]
    assert len(files) == len(set(files)), files


def anchor(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def prose(page: Path) -> str:
    """A page without its code blocks."""
    return re.sub(r"^\s*```.*?^\s*```\s*$", "", page.read_text(), flags=re.M | re.S)


def heading_anchors(page: Path) -> set[str]:
    return {anchor(title) for title in re.findall(r"^#+ (.*)$", prose(page), re.M)}


def test_relative_links_reach_a_file_and_heading():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or (fragment and fragment not in heading_anchors(linked)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("page", [p for p in PAGES if p.parent.name == "docs"], ids=lambda p: p.name)
def test_each_docs_page_opens_with_its_table_of_contents(page):
    text = prose(page)
    head, _, _ = text.partition("\n## ")
    sections = re.findall(r"^## (.*)$", text, re.M)
    anchors = set(re.findall(r"\]\(#([^)]+)\)", head))
    missing = [s for s in sections if anchor(s) not in anchors]
    assert sections and not missing, f"{page.name}: sections missing from the contents at its top: {missing}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, mirror) -> dict:
    """A folder laid out like the repository root, where configs/shakespeare_char.yaml is a 2-layer, width-32,
    20-step version of the recipe, trained once as runs/shakespeare (docs/testing.md)."""
    ws = tmp_path_factory.mktemp("docs")
    for name in LINKED:
        (ws / name).symlink_to(ROOT / name)
    (ws / "configs").mkdir()
    for config in (ROOT / "configs").glob("*.yaml"):
        (ws / "configs" / config.name).symlink_to(config)
    recipe = ws / "configs" / "shakespeare_char.yaml"
    cfg = yaml.safe_load(recipe.read_text())
    recipe.unlink()
    for section, values in TINY.items():
        cfg[section].update(values)
    recipe.write_text(yaml.safe_dump(cfg, sort_keys=False))
    for block in BLOCKS:
        if block.mark and block.mark["file"]:
            (ws / block.mark["file"]).write_text(block.code)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MULM_COMPILATION_CACHE": str(ws / ".compilation-cache"),
    }  # shared by the blocks' processes
    done = run(
        ["python", "train.py", "--config", "configs/shakespeare_char.yaml", "--workdir", "runs/shakespeare", "--quiet"],
        ws,
        env,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    return {"dir": ws, "env": env}


def run(command: list[str], cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )


def run_block(block: Block, workspace: dict, url: str | None = None) -> None:
    code = DOC_PORT.sub(url.removeprefix("http://"), block.code) if url else block.code
    command = ["bash", "-e", "-o", "pipefail", "-c", code] if block.mark["lang"] == "bash" else ["python", "-c", code]
    started, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    done = run(command, workspace["dir"], workspace["env"])
    print(
        f"{block.where}: {time.perf_counter() - started:.1f} s, "
        f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - cpu:.1f} s CPU"
    )
    assert done.returncode == 0, f"{block.where} exited {done.returncode}:\n{code}\n---\n{done.stdout[-4000:]}"


class DocServer:
    """The docs' `serve` block, run in the workspace on the port the OS gives it (--port 0) until stop()."""

    def __init__(self, block: Block, workspace: dict):
        self.log = workspace["dir"] / "serve.log"
        with open(self.log, "w") as log:  # the server writes to its own copy of the descriptor
            self.process = subprocess.Popen(
                ["bash", "-c", f"{block.code.strip()} --port 0"],
                cwd=workspace["dir"],
                env=workspace["env"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.url = wait_for(lambda: self.running() and address_in(self.log.read_text()), f"{block.where} to bind", 300)
        wait_for(self.ready, f"{block.where} to serve", 300)

    def running(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"the serve block exited: {self.log.read_text()[-3000:]}")
        return True

    def ready(self) -> bool:
        self.running()
        try:
            return httpx.get(f"{self.url}/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(60)


def run_blocks(workspace: dict, subtests, slow: bool) -> None:
    """Each runnable block (of this speed) in page order; the server blocks after the others, against one server."""
    chosen = [b for b in BLOCKS if b.mark and b.mark["run"] and ("slow" in b.mark["run"]) == slow]
    served = [b for b in chosen if "server" in b.mark["run"]]
    for block in chosen:
        if block not in served:
            with subtests.test(block.where):
                run_block(block, workspace)
    if served:
        server = DocServer(next(b for b in BLOCKS if b.mark and b.mark["serve"]), workspace)
        try:
            for block in served:
                with subtests.test(block.where):
                    run_block(block, workspace, server.url)
        finally:
            server.stop()


def test_runnable_blocks_run_as_written(workspace, subtests):
    run_blocks(workspace, subtests, slow=False)


@pytest.mark.slow
def test_slow_runnable_blocks_run_as_written(workspace, subtests):
    run_blocks(workspace, subtests, slow=True)


def test_bench_train_step_without_pytorch_says_to_install_it_or_pass_no_reference(monkeypatch, capsys):
    import importlib.util

    from bench import bench_train_step

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real_find_spec(name, *a)
    )
    monkeypatch.setattr(
        bench_train_step, "build", lambda *a: pytest.fail("built the step before finding PyTorch missing")
    )
    monkeypatch.setattr(sys, "argv", ["bench_train_step.py", "--rounds", "1"])
    with pytest.raises(SystemExit) as exit_:
        bench_train_step.main()
    assert exit_.value.code == 2
    message = capsys.readouterr().err
    assert "pip install -r bench/requirements.txt" in message and "--no-reference" in message
