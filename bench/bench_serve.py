"""Load on the HTTP API: concurrent streaming clients against `serve.py`, and the engine alone as reference.

    .venv/bin/python -m bench.bench_serve [--checkpoint runs/shakespeare] [--clients 32] [--seconds 60]

Starts `serve.py` on the run in a process of its own; `--clients` clients each stream completions back to back
(`stream: true`, 32 new tokens, temperature 0.8, a prompt drawn from a fixed list) for `--seconds`. Prints
requests/s, generated tokens/s (each stream's usage: a chunk may carry several tokens), p50 and p99 time to the
first chunk with text, and counts of non-200 answers and of streams
that did not end with `data: [DONE]` (the issue's target: no 5xx, every stream complete). The reference is the
same load submitted straight to an Engine in this process (no HTTP, no JSON), for --reference-seconds; the ratio
says what the HTTP layer costs. Both share the 2 cores with their clients, as a real deployment on one box does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from mulm_jax.api.cli import address_in

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "ROMEO:",
    "JULIET:\nO Romeo",
    "First Citizen:\n",
    "GLOUCESTER:\nNow is the winter",
    "HAMLET:\nTo be",
    "MENENIUS:\nWhat work's",
    "All:\nSpeak, speak.",
    "LADY MACBETH:\n",
]  # <= 32 chars


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


async def client_loop(http: httpx.AsyncClient, index: int, deadline: float, new_tokens: int, stats: dict) -> None:
    i = index
    while time.monotonic() < deadline:
        ask = {
            "model": "bench",
            "prompt": PROMPTS[i % len(PROMPTS)],
            "max_tokens": new_tokens,
            "temperature": 0.8,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        i += 1
        start = time.monotonic()
        first, tokens, done = None, 0, False
        try:
            async with http.stream("POST", "/v1/completions", json=ask) as r:
                stats["status"][r.status_code] = stats["status"].get(r.status_code, 0) + 1
                if r.status_code != 200:
                    await r.aread()
                    continue
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):  # a chunk may carry several tokens: the count comes at the end
                        tokens = chunk["usage"]["completion_tokens"]
                    elif chunk["choices"][0]["text"]:
                        first = first or time.monotonic() - start
        except httpx.HTTPError as e:
            stats["errors"].append(repr(e))
            continue
        stats["requests"] += 1
        stats["tokens"] += tokens
        stats["incomplete"] += not done
        if first is not None:
            stats["ttft"].append(first)


async def load(url: str, clients: int, seconds: float, new_tokens: int) -> dict:
    stats = {"status": {}, "requests": 0, "tokens": 0, "incomplete": 0, "ttft": [], "errors": []}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        start = time.monotonic()
        await asyncio.gather(*(client_loop(http, i, start + seconds, new_tokens, stats) for i in range(clients)))
        stats["elapsed"] = time.monotonic() - start
    return stats


def reference(checkpoint: str, clients: int, seconds: float, new_tokens: int, slots: int) -> dict:
    """The same load straight into an Engine: `clients` threads submitting back to back."""
    from mulm_jax.infer import Engine, SamplingParams, load_model

    engine = Engine(load_model(checkpoint), slots=slots)
    engine.warmup()
    counts = {"requests": 0, "tokens": 0}
    lock = threading.Lock()
    with engine:
        deadline = time.monotonic() + seconds

        def loop(index: int) -> None:
            i = index
            while time.monotonic() < deadline:
                result = engine.generate(
                    PROMPTS[i % len(PROMPTS)], SamplingParams(max_tokens=new_tokens, temperature=0.8)
                )
                i += 1
                with lock:
                    counts["requests"] += 1
                    counts["tokens"] += result.completion_tokens

        start, cpu = time.monotonic(), time.process_time()
        threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        counts["elapsed"], counts["cpu"] = time.monotonic() - start, time.process_time() - cpu
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "runs" / "shakespeare"))
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--reference-seconds", type=float, default=20.0)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line at the end")
    args = parser.parse_args()

    log = tempfile.NamedTemporaryFile("w", prefix="bench_serve-", suffix=".log")  # the server's output
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "serve.py"),
            "--checkpoint",
            f"bench={args.checkpoint}",
            "--port",
            "0",
            "--slots",
            str(args.slots),
            "--max-queue",
            str(args.clients * 2),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = None
    try:
        deadline = time.monotonic() + 180
        while True:
            url = url or address_in(Path(log.name).read_text())  # the port serve.py bound, once it says so
            try:
                if url and httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"serve.py did not become ready:\n{Path(log.name).read_text()[-2000:]}")
            time.sleep(0.5)
        server_cpu, client_cpu = cpu_seconds(server.pid), time.process_time()
        stats = asyncio.run(load(url, args.clients, args.seconds, args.new_tokens))
        server_cpu, client_cpu = cpu_seconds(server.pid) - server_cpu, time.process_time() - client_cpu
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    ref = reference(args.checkpoint, args.clients, args.reference_seconds, args.new_tokens, args.slots)

    errors_5xx = sum(n for code, n in stats["status"].items() if code >= 500)
    figures = {
        "clients": args.clients,
        "seconds": round(stats["elapsed"], 1),
        "requests": stats["requests"],
        "requests_per_sec": stats["requests"] / stats["elapsed"],
        "tokens_per_sec": stats["tokens"] / stats["elapsed"],
        "ttft_p50_ms": percentile(stats["ttft"], 50) * 1e3,
        "ttft_p99_ms": percentile(stats["ttft"], 99) * 1e3,
        "status": {str(k): v for k, v in sorted(stats["status"].items())},
        "errors_5xx": errors_5xx,
        "incomplete_streams": stats["incomplete"],
        "client_errors": len(stats["errors"]),
        "engine_tokens_per_sec": ref["tokens"] / ref["elapsed"],
        "server_cores": server_cpu / stats["elapsed"],
        "client_cores": client_cpu / stats["elapsed"],
    }
    figures["http_vs_engine"] = figures["tokens_per_sec"] / figures["engine_tokens_per_sec"]
    # CPU per generated token, server against engine (its client threads included): steadier than tokens/s on a
    # shared machine, and what bounds the throughput when the cores are the limit
    figures["server_cpu_ms_per_token"] = server_cpu / max(stats["tokens"], 1) * 1e3
    figures["engine_cpu_ms_per_token"] = ref["cpu"] / max(ref["tokens"], 1) * 1e3
    print(
        f"{args.clients} streaming clients for {figures['seconds']} s against {args.checkpoint} "
        f"({args.slots} slots, {args.new_tokens} new tokens per request):"
    )
    print(
        f"  {figures['requests_per_sec']:.2f} requests/s, {figures['tokens_per_sec']:.0f} generated tokens/s, "
        f"time to first token p50 {figures['ttft_p50_ms']:.0f} ms, p99 {figures['ttft_p99_ms']:.0f} ms"
    )
    print(
        f"  statuses {figures['status']}, 5xx {errors_5xx}, incomplete streams {stats['incomplete']}, "
        f"client errors {len(stats['errors'])}"
    )
    print(
        f"  CPU: server {figures['server_cores']:.2f} cores, load-generating clients {figures['client_cores']:.2f} "
        "cores (of 2)"
    )
    print(
        f"  engine alone (same load, no HTTP): {figures['engine_tokens_per_sec']:.0f} tokens/s -> HTTP serves "
        f"{figures['http_vs_engine']:.2f}x of it"
    )
    cpu_ratio = figures["engine_cpu_ms_per_token"] / figures["server_cpu_ms_per_token"]
    print(
        f"  CPU per generated token: server {figures['server_cpu_ms_per_token']:.3f} ms, engine alone "
        f"{figures['engine_cpu_ms_per_token']:.3f} ms ({cpu_ratio:.2f}x)"
    )
    if args.json:
        print(json.dumps(figures))
    return 0 if errors_5xx == 0 and stats["incomplete"] == 0 and not stats["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
