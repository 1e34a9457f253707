"""The Python half of bench/device_check.sh: each subcommand measures or summarises one part and prints one JSON line.

python -m bench.device_check precision                    # float32 matmul error at default / highest precision
python -m bench.device_check train [--peak-tflops F] -- TRAIN.PY ARGS   # train.py in-process, then its figures
python -m bench.device_check int8-hlo DUMP_DIR            # do int8 weights feed their matmuls' fusions?
python -m bench.device_check tests JUNIT_XML              # pytest's counts, failures and skip reasons
python -m bench.device_check record NAME RC SECONDS OUTPUT  # one part's row: its output's last JSON line
python -m bench.device_check merge PARTS_JSONL            # all rows -> device_check.json, with the targets
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import statistics
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Optional

from mulm_jax.runs import read_config, read_metrics

H200_BF16_TFLOPS = 989.0  # dense bfloat16 peak of an H100/H200 SXM, the vendor's datasheet


def precision() -> dict:
    """Max relative error of a 1024^3 float32 matmul against float64, at JAX's default and at highest precision:
    about 1e-3 where the default runs in TF32 (a GPU's tensor cores), about 1e-6 in full float32."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((1024, 1024), np.float32) for _ in range(2))
    exact = a.astype(np.float64) @ b.astype(np.float64)
    scale = np.abs(exact).max()
    errors = {}
    for name in ("default", "highest"):
        with jax.default_matmul_precision(name):
            got = np.asarray(jax.jit(jnp.matmul)(a, b), np.float64)
        errors[f"{name}_max_rel_err"] = float(np.abs(got - exact).max() / scale)
    return {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind, **errors}


class _Tee(io.TextIOBase):
    def __init__(self, *streams: Any):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def train(args: list[str], peak_tflops: Optional[float]) -> dict:
    """train.py's main in this process (with --verbose), then: tokens/s and ms/step (median of the logged rows
    after the first, which holds the compilation), start-up, parameters, MFU (6 x parameters x tokens/s over
    `peak_tflops`), the peak device memory, and the start-up phases."""
    import train as train_cli

    from mulm_jax import platform
    from mulm_jax.models.info import describe
    from mulm_jax.train.memory import training_memory

    err = io.StringIO()
    with contextlib.redirect_stderr(_Tee(sys.stderr, err)):
        code = train_cli.main(args + ["--verbose"])
    if code != 0:
        return {"code": code}
    workdir = Path(args[args.index("--workdir") + 1])
    cfg = read_config(workdir)
    rows = read_metrics(workdir)
    speeds = [r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r][1:]
    startup = next((r for r in rows if "startup_s" in r), {})
    tokens_per_sec = statistics.median(speeds) if speeds else None
    tokens_per_step = cfg.train.batch_size * (cfg.train.seq_len or cfg.model.max_seq_len)
    params = describe(cfg.model)["parameters"]
    phases = next(
        (line.removeprefix("start-up: ") for line in err.getvalue().splitlines() if line.startswith("start-up: ")), None
    )
    result = {
        "code": code,
        "parameters": params,
        "batch": cfg.train.batch_size,
        "tokens_per_step": tokens_per_step,
        "steps": max((r["step"] for r in rows), default=0),
        "tokens_per_sec": tokens_per_sec,
        "ms_per_step": tokens_per_step / tokens_per_sec * 1e3 if tokens_per_sec else None,
        "startup_s": startup.get("startup_s"),
        "first_step_s": startup.get("first_step_s"),
        "phases": phases,
        "peak_device_memory_bytes": platform.peak_device_memory(),
        "compute_dtype": cfg.train.compute_dtype,
        "remat": cfg.train.remat,
    }
    # What the training-memory plan (info --train) said of this step, beside the peak the device measured.
    plan = training_memory(cfg, cfg.train.batch_size, tokens_per_step // cfg.train.batch_size)
    result.update(attention=plan.attention, planned_memory_bytes=plan.total)
    if peak_tflops and tokens_per_sec:
        result.update(peak_tflops=peak_tflops, mfu=6 * params * tokens_per_sec / (peak_tflops * 1e12))
    return result


_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+?)(?:\{[^}]*\})? ([\w\-]+)\((.*?)\)(.*)$")


def _computations(hlo: str) -> dict[str, list[tuple[str, str, str, list[str], str]]]:
    """HLO text -> computation name -> its instructions (name, type, op, operand names, attributes)."""
    out: dict[str, list] = {}
    current = None
    for line in hlo.splitlines():
        header = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if header and " = " not in line:
            current = "ENTRY" if header.group(1) else header.group(2)
            out[current] = []
        elif current and (m := _INSTRUCTION.match(line)):
            name, type_, op, operands, attrs = m.groups()
            out[current].append((name, type_, op, re.findall(r"%([\w.\-]+)", operands), attrs))
    return out


def _has_matmul(computations: dict, name: str, seen: Optional[set] = None) -> bool:
    seen = seen if seen is not None else set()
    if name in seen or name not in computations:
        return False
    seen.add(name)
    for _, _, op, _, attrs in computations[name]:
        if op in ("dot", "convolution") or (op == "custom-call" and re.search(r"gemm|matmul", attrs)):
            return True
        if any(_has_matmul(computations, c, seen) for c in re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", attrs)):
            return True
    return False


def int8_hlo(dump_dir: str) -> dict:
    """In the optimized HLO of the int8 decode step (XLA_FLAGS=--xla_dump_to), what reads the int8 weights (past
    bitcasts and reshapes): fusions that also compute a matmul (the conversion fused into the product), and
    fusions without one (the weight dequantised into a buffer a separate matmul reads, or an embedding lookup)."""
    files = sorted(Path(dump_dir).glob("*jit__decode*after_optimizations.txt"), key=lambda p: p.stat().st_size)
    if not files:
        return {"error": f"no optimized jit__decode module in {dump_dir}"}
    computations = _computations(files[-1].read_text())
    entry = computations.get("ENTRY", [])
    users: dict[str, list] = {}
    for inst in entry:
        for operand in inst[3]:
            users.setdefault(operand, []).append(inst)
    int8 = [name for name, type_, op, _, _ in entry if op == "parameter" and type_.startswith("s8[")]
    verdicts = {"readers_with_matmul": 0, "readers_without_matmul": 0, "other_readers": 0}
    for name in int8:
        frontier, consumers = [name], []
        while frontier:  # through bitcasts, copies and reshapes
            for inst in users.get(frontier.pop(), []):
                (frontier.append(inst[0]) if inst[2] in ("bitcast", "copy", "reshape") else consumers.append(inst))
        for _, _, op, _, attrs in consumers:
            called = re.findall(r"calls=%([\w.\-]+)", attrs)
            if (
                op == "dot"
                or (op == "custom-call" and re.search(r"gemm|matmul", attrs))
                or (op == "fusion" and any(_has_matmul(computations, c) for c in called))
            ):
                verdicts["readers_with_matmul"] += 1
            elif op == "fusion":
                verdicts["readers_without_matmul"] += 1
            else:
                verdicts["other_readers"] += 1
    return {"module": files[-1].name, "int8_weights": len(int8), **verdicts}


def tests(junit: str) -> dict:
    """pytest's JUnit XML -> counts, the failed tests (with the first line of why) and why tests were skipped."""
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed, skipped = [], {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        for bad in case.findall("failure") + case.findall("error"):
            failed.append(f"{name}: {(bad.get('message') or '').strip()[:200]}")
        for skip in case.findall("skipped"):
            reason = (skip.get("message") or "")[:200]
            skipped[reason] = skipped.get(reason, 0) + 1
    return {
        **counts,
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "seconds": sum(float(s.get("time", 0)) for s in suites),
        "failed": failed,
        "skipped_reasons": skipped,
    }


def record(name: str, rc: int, seconds: float, output: str) -> dict:
    """One part's row: its exit status, wall seconds and the last JSON object its output printed."""
    lines = Path(output).read_text(errors="replace").splitlines() if Path(output).exists() else []
    result = None
    for line in reversed(lines):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                result = json.loads(line)
                break
    row = {"part": name, "rc": rc, "seconds": round(seconds, 1), "result": result}
    if rc == 124:
        row["note"] = "stopped at its time limit"
    if result is None:
        row["tail"] = lines[-5:]
    return row


def _get(parts: dict, name: str, key: str) -> Any:
    return ((parts.get(name) or {}).get("result") or {}).get(key)


def merge(parts_jsonl: str) -> dict:
    """Every part's row by name, and the issue's targets read off them (None where the part did not run)."""
    parts = {row["part"]: row for row in map(json.loads, Path(parts_jsonl).read_text().splitlines())}
    b1, b64 = _get(parts, "decode_mulm_1gb_b1", "tokens_per_sec"), _get(parts, "decode_mulm_1gb_b64", "tokens_per_sec")
    hf1 = _get(parts, "hf_mulm_1gb_b1", "tokens_per_sec")
    peak = _get(parts, "train_mulm_1gb", "peak_device_memory_bytes")
    ours, theirs = _get(parts, "train_6x384_ours", "ms_per_step"), _get(parts, "train_6x384_nanogpt", "ms_per_iter")
    failed = (_get(parts, "tests", "failures") or 0) + (_get(parts, "tests", "errors") or 0)
    targets = {
        "decode_b1_tokens_per_sec>=1000": b1 and b1 >= 1000,
        "decode_b1_ms_per_step<=1": (ms := _get(parts, "decode_mulm_1gb_b1", "ms_per_step")) and ms <= 1,
        "decode_b1_vs_hf>=5x": b1 and hf1 and b1 / hf1 >= 5,
        "decode_b64_tokens_per_sec>=20000": b64 and b64 >= 20000,
        "train_mfu>=0.40": (mfu := _get(parts, "train_mulm_1gb", "mfu")) and mfu >= 0.40,
        "train_peak_memory<=20GB": peak and peak <= 20e9,
        "warmup_with_filled_cache<=10s": (w := _get(parts, "decode_mulm_1gb_b1_warm", "warmup_s")) and w <= 10,
        "first_train_step<=15s_after_start": (s := _get(parts, "train_mulm_1gb", "startup_s")) and s <= 15,
        "tests_pass": "tests" in parts and parts["tests"].get("result") is not None and failed == 0,
    }
    return {
        "parts": parts,
        "targets": {k: bool(v) if v is not None else None for k, v in targets.items()},
        "ratios": {
            "decode_b1_ours_over_hf": b1 / hf1 if b1 and hf1 else None,
            "train_6x384_nanogpt_ms_over_ours_ms": theirs / ours if ours and theirs else None,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("precision")
    tr = sub.add_parser("train")
    tr.add_argument("--peak-tflops", type=float, help=f"the device's dense bf16 peak (H200: {H200_BF16_TFLOPS})")
    tr.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then train.py's arguments")
    sub.add_parser("int8-hlo").add_argument("dump_dir")
    sub.add_parser("tests").add_argument("junit")
    rec = sub.add_parser("record")
    for name, kind in (("name", str), ("rc", int), ("seconds", float), ("output", str)):
        rec.add_argument(name, type=kind)
    sub.add_parser("merge").add_argument("parts")
    args = parser.parse_args()
    if args.command == "precision":
        out = precision()
    elif args.command == "train":
        out = train([a for a in args.train_args if a != "--"], args.peak_tflops)
    elif args.command == "int8-hlo":
        out = int8_hlo(args.dump_dir)
    elif args.command == "tests":
        out = tests(args.junit)
    elif args.command == "record":
        out = record(args.name, args.rc, args.seconds, args.output)
    else:
        print(json.dumps(merge(args.parts), indent=1))
        return 0
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
