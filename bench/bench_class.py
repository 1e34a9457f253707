"""A class on one server (issue 32): thirty learners with scoped keys, a teacher, and one key's 32 streams beside
another key's one, all against one `serve.py`.

    .venv/bin/python -m bench.bench_class [--checkpoint runs/shakespeare] [--learners 30] [--seconds 180] [--json]

Starts `serve.py` on the run with a keys file (a teacher: admin; learners: generate, inspect and train, the first
also data, each at most 2 streams, 1 job and 200 training steps; `heavy`: 32 streams; `probe`: 1), 16 slots of
which 2 are reserved for keys holding none. Three phases:

1. unloaded: the probe key alone streams short completions one after another: its time to first token.
2. contended: the heavy key keeps its 32 streams going (10 clients in a process of their own, each streaming 4 long
   completions a request back to back, the spare ones' 429s retried) while the probe key does the same again. The target: time to first token p99 within 3x of the unloaded one. Phases 1
   and 2 alternate for --rounds rounds (--probes completions in all, each phase), so that the machine's other load
   falls on both alike. The streams the heavy key has open meanwhile (GET /v1/me) are reported.
3. the class, for --seconds: each learner, thinking 1-4 s between actions, streams completions (now and then two
   requests of two at once: past its 2 streams, a 429), inspects a prompt, tokenizes, reads /v1/me and the model
   list, and tries once what its key may not do (assemble a data set, serve a run it did not train, read another's
   job: 403 / 404). Learner 1 assembles a data set; learners 2 and 3 each train a small model on it, serve their
   run, complete with it and unload it. The teacher lists every job and reads /metrics.

Reports each route's latency percentiles, statuses, 429s by quota (and any without Retry-After), 5xx, streams that
did not end with `data: [DONE]`, jobs that did not succeed, and unexpected permission answers; exits 1 on any of
those or on a time-to-first-token ratio over 3. Clients and server share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Optional

import httpx

from bench.bench_serve import PROMPTS, percentile
from mulm_jax.api.cli import address_in

ROOT = Path(__file__).resolve().parent.parent
MODEL = "bench"
HEAVY_STREAMS = 32  # the heavy key's max_streams
HEAVY_N = 4  # sequences per request: fewer requests for its client process to keep up with on a busy machine
HEAVY_CLIENTS = 10  # each streaming back to back: more than its 32 sequences allow, so that it keeps them all busy
TTFT_RATIO_TARGET = 3.0
RETRY_CAP_S = 5.0  # a learner waits what Retry-After says, at most this
TRAIN = {  # a model that trains in well under a minute on a busy 2-core machine
    "model.vocab_size": 96,
    "model.d_model": 32,
    "model.num_layers": 1,
    "model.num_heads": 2,
    "model.d_ff": 64,
    "model.max_seq_len": 32,
    "train.seq_len": 32,
    "train.batch_size": 8,
    "train.steps": 80,
    "train.warmup_steps": 5,
    "train.eval_every": 40,
    "train.eval_batches": 2,
    "train.checkpoint_every": 40,
    "train.log_every": 10,
}


class Stats:
    """What every client saw: per route latencies and statuses, first tokens, 429s, streams cut short, surprises."""

    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.status: dict[str, Counter] = defaultdict(Counter)
        self.ttft: dict[str, list[float]] = defaultdict(list)
        self.quota: Counter = Counter()  # 429s by code
        self.no_retry_after = 0
        self.incomplete = 0
        self.streams = 0
        self.transport: list[str] = []
        self.surprises: list[str] = []  # a permission answer other than the one expected, a job lost
        self.class_seconds = 0.0
        self.heavy_streams: dict = {}  # the streams the heavy key held during the contended probes

    def merge(self, other: dict) -> None:
        """Add what another process's Stats saw (its __dict__)."""
        for route, values in other["latency"].items():
            self.latency[route] += values
        for route, counts in other["status"].items():
            self.status[route].update(counts)
        for label, values in other["ttft"].items():
            self.ttft[label] += values
        self.quota.update(other["quota"])
        for name in ("no_retry_after", "incomplete", "streams", "transport", "surprises"):
            setattr(self, name, getattr(self, name) + other[name])

    def record(self, route: str, response: httpx.Response, seconds: float) -> None:
        self.latency[route].append(seconds)
        self.status[route][response.status_code] += 1
        if response.status_code == 429:
            self.quota[response.json()["error"]["code"]] += 1
            self.no_retry_after += "retry-after" not in response.headers


def retry_after(response: httpx.Response) -> float:
    return min(float(response.headers.get("retry-after", 1)), RETRY_CAP_S)


async def call(
    http: httpx.AsyncClient, stats: Stats, key: str, method: str, path: str, route: str, body: Any = None
) -> httpx.Response:
    start = time.monotonic()
    response = await http.request(method, path, json=body, headers={"Authorization": f"Bearer {key}"})
    stats.record(route, response, time.monotonic() - start)
    return response


async def stream(
    http: httpx.AsyncClient, stats: Stats, key: str, body: dict, route: str, ttft: Optional[str] = None
) -> Optional[httpx.Response]:
    """Stream a completion; its first text chunk's delay goes to stats.ttft[ttft or route]. Returns the response when
    it was refused (not 200), else None."""
    start = time.monotonic()
    first, done = None, False
    async with http.stream(
        "POST", "/v1/completions", json={**body, "stream": True}, headers={"Authorization": f"Bearer {key}"}
    ) as r:
        if r.status_code != 200:
            await r.aread()
            stats.record(route, r, time.monotonic() - start)
            return r
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
                break
            if line.startswith("data: ") and first is None:
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    stats.surprises.append(f"{route}: an error mid-stream: {chunk['error']}")
                elif any(c.get("text") for c in chunk.get("choices", ())):
                    first = time.monotonic() - start
        stats.record(route, r, time.monotonic() - start)
    stats.streams += 1
    stats.incomplete += not done
    if first is not None:
        stats.ttft[ttft or route].append(first)
    return None


def completion(max_tokens: int, n: int = 1) -> dict:
    return {"model": MODEL, "prompt": random.choice(PROMPTS), "max_tokens": max_tokens, "temperature": 0.8, "n": n}


# ---- phases 1 and 2: one key's first token, alone and beside another key's 32 streams -----------------------------


async def probe(http: httpx.AsyncClient, stats: Stats, key: str, count: int, label: str) -> None:
    for _ in range(count):
        refused = await stream(http, stats, key, completion(8), f"POST /v1/completions (probe, {label})", label)
        if refused is not None:
            await asyncio.sleep(retry_after(refused))
        await asyncio.sleep(0.1)


async def heavy(http: httpx.AsyncClient, stats: Stats, key: str, going, stop) -> None:
    """One of the heavy key's clients: streams back to back while `going` is set, until `stop` is."""
    while not stop.is_set():
        if not going.is_set():
            await asyncio.sleep(0.05)
            continue
        # long streams of staggered lengths: little time between a stream and the next, not all at once
        ask = {**completion(random.randint(40, 56), n=HEAVY_N), "prompt": "ROMEO:", "stream": True}
        start, tail = time.monotonic(), b""
        try:
            async with http.stream(
                "POST", "/v1/completions", json=ask, headers={"Authorization": f"Bearer {key}"}
            ) as r:
                if r.status_code != 200:
                    await r.aread()
                else:
                    async for data in r.aiter_raw():  # read, not parsed: the client keeps up with its streams
                        tail = (tail + data)[-64:]
                    stats.streams += 1
                    stats.incomplete += b"data: [DONE]" not in tail
                stats.record("POST /v1/completions (heavy)", r, time.monotonic() - start)
        except httpx.HTTPError as e:
            stats.transport.append(f"heavy: {e!r}")
            continue
        if r.status_code != 200:
            await asyncio.sleep(0.2)


def heavy_process(url: str, key: str, going, stop, results) -> None:
    """The heavy key's 32 clients, in a process of their own (as another machine's would be), streaming while `going`
    is set, until `stop` is; what they saw is put on `results`."""
    stats = Stats()

    async def run() -> None:
        limits = httpx.Limits(max_connections=HEAVY_CLIENTS, max_keepalive_connections=HEAVY_CLIENTS)
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
            await asyncio.gather(*(heavy(http, stats, key, going, stop) for _ in range(HEAVY_CLIENTS)))

    asyncio.run(run())
    results.put(dict(vars(stats)))


async def streams_of(http: httpx.AsyncClient, stats: Stats, key: str) -> int:
    return (await call(http, stats, key, "GET", "/v1/me", "GET /v1/me")).json()["usage"]["streams"]


async def until_streams(http: httpx.AsyncClient, stats: Stats, key: str, done, what: str) -> None:
    deadline = time.monotonic() + 120
    while not done(streams := await streams_of(http, stats, key)):
        if time.monotonic() > deadline:
            raise SystemExit(f"the heavy key holds {streams} streams after 120 s: expected {what}")
        await asyncio.sleep(0.2)


async def fairness(http: httpx.AsyncClient, stats: Stats, keys: dict, probes: int, rounds: int, url: str) -> dict:
    """The probe key's first tokens alone and beside the heavy key's 32 streams, in `rounds` alternating rounds (so
    that the machine's other load falls on both alike); how many streams the heavy key held meanwhile (GET /v1/me
    twice a second: the least and the mean)."""
    await probe(http, stats, keys["probe"], 3, "warm-up")  # the connection, the server's first requests
    context = multiprocessing.get_context("spawn")
    going, stop, results = context.Event(), context.Event(), context.Queue()
    process = context.Process(target=heavy_process, args=(url, keys["heavy"], going, stop, results))
    process.start()
    held: list[int] = []

    async def sample() -> None:
        while True:
            held.append(await streams_of(http, stats, keys["heavy"]))
            await asyncio.sleep(0.5)

    per_round = max(probes // rounds, 1)
    for _ in range(rounds):
        await until_streams(http, stats, keys["heavy"], lambda n: n == 0, "none")
        await probe(http, stats, keys["probe"], per_round, "unloaded")
        going.set()
        await until_streams(http, stats, keys["heavy"], lambda n: n >= HEAVY_STREAMS, f"{HEAVY_STREAMS}")
        await asyncio.sleep(1.0)  # going steadily
        sampler = asyncio.ensure_future(sample())
        await probe(http, stats, keys["probe"], per_round, "beside 32 streams")
        sampler.cancel()
        going.clear()
    stop.set()
    stats.merge(await asyncio.get_running_loop().run_in_executor(None, results.get, True, 300))
    process.join(60)
    return {"least": min(held), "mean": round(sum(held) / len(held), 1), "samples": len(held)}


# ---- phase 3: the class -------------------------------------------------------------------------------------------


class Class:
    def __init__(self, http: httpx.AsyncClient, stats: Stats, keys: dict, learners: list[str], deadline: float):
        self.http, self.stats, self.keys, self.learners, self.deadline = http, stats, keys, learners, deadline
        self.version: Optional[str] = None
        self.jobs: dict[str, str] = {}  # job id -> owner's learner name
        self.job_started = asyncio.Event()

    def call(self, who: str, method: str, path: str, route: str, body: Any = None):
        return call(self.http, self.stats, self.keys[who], method, path, route, body)

    def expect(self, response: httpx.Response, status: int, what: str) -> None:
        if response.status_code != status:
            self.stats.surprises.append(f"{what}: {response.status_code} (expected {status}): {response.text[:200]}")

    async def act(self, who: str) -> None:
        """One learner's action, chosen at random as a learner in the lab would."""
        roll = random.random()
        if roll < 0.5:
            refused = await stream(self.http, self.stats, self.keys[who], completion(32), "POST /v1/completions")
            if refused is not None:
                await asyncio.sleep(retry_after(refused))
        elif roll < 0.58:  # two tabs at once, two samples each: past max_streams=2, one is a 429
            await asyncio.gather(
                *(
                    stream(self.http, self.stats, self.keys[who], completion(16, n=2), "POST /v1/completions (n=2)")
                    for _ in range(2)
                )
            )
        elif roll < 0.75:
            ask = {"model": MODEL, "prompt": random.choice(PROMPTS), "include": ["tokens", "attention"], "top_k": 5}
            self.expect(await self.call(who, "POST", "/v1/inspect", "POST /v1/inspect", ask), 200, "inspect")
        elif roll < 0.85:
            ask = {"model": MODEL, "prompt": random.choice(PROMPTS)}
            self.expect(await self.call(who, "POST", "/v1/tokenize", "POST /v1/tokenize", ask), 200, "tokenize")
        elif roll < 0.93:
            self.expect(await self.call(who, "GET", "/v1/me", "GET /v1/me"), 200, "me")
        else:
            self.expect(await self.call(who, "GET", "/v1/models", "GET /v1/models"), 200, "models")

    async def forbidden(self, who: str) -> None:
        """What a learner's key may not do: serve a run it did not train, assemble without `data`, load as admin."""
        response = await self.call(who, "POST", "/v1/models", "POST /v1/models (not its run)", {"run_dir": "other"})
        self.expect(response, 403, f"{who} serving a run it did not train")
        if who != self.learners[0]:
            ask = {"source": "corpus.txt", "tokenizer": "char"}
            response = await self.call(who, "POST", "/v1/datasets", "POST /v1/datasets (no data scope)", ask)
            self.expect(response, 403, f"{who} assembling without the data scope")
        try:
            await asyncio.wait_for(self.job_started.wait(), max(self.deadline - time.monotonic(), 1.0))
        except asyncio.TimeoutError:
            self.stats.surprises.append("no training job started during the class")
            return
        job_id, owner = next(iter(self.jobs.items()))
        if owner != who:
            response = await self.call(who, "GET", f"/v1/training/jobs/{job_id}", "GET another's job")
            self.expect(response, 404, f"{who} reading {owner}'s job")
            response = await self.call(who, "POST", f"/v1/training/jobs/{job_id}/cancel", "cancel another's job")
            self.expect(response, 404, f"{who} cancelling {owner}'s job")

    async def learner(self, index: int, who: str) -> None:
        await asyncio.sleep(random.uniform(0, 3))  # they do not all sit down at once
        tasks = [asyncio.ensure_future(self.forbidden(who))]
        if index == 0:
            tasks.append(asyncio.ensure_future(self.assemble(who)))
        elif index in (1, 2):
            tasks.append(asyncio.ensure_future(self.train(who)))
        while time.monotonic() < self.deadline:
            try:
                await self.act(who)
            except httpx.HTTPError as e:
                self.stats.transport.append(f"{who}: {e!r}")
            await asyncio.sleep(random.uniform(1, 4))
        await asyncio.gather(*tasks)

    async def wait_job(self, who: str, path: str, route: str) -> dict:
        while True:
            response = await self.call(who, "GET", path, route)
            if response.status_code == 429:
                await asyncio.sleep(retry_after(response))
                continue
            job = response.json()
            if job.get("state") != "running":
                return job
            await asyncio.sleep(2)

    async def assemble(self, who: str) -> None:
        ask = {"source": "corpus.txt", "tokenizer": "char", "seq_len": 32}
        response = await self.call(who, "POST", "/v1/datasets", "POST /v1/datasets", ask)
        self.expect(response, 202, "assembling the data set")
        job = await self.wait_job(who, f"/v1/datasets/jobs/{response.json()['id']}", "GET /v1/datasets/jobs/{id}")
        if job["state"] != "succeeded":
            self.stats.surprises.append(f"data set job {job['id']} ended {job['state']}: {job['error']}")
        self.version = (job.get("result") or {}).get("version")

    async def train(self, who: str) -> None:
        while self.version is None and time.monotonic() < self.deadline:
            await asyncio.sleep(1)
        ask = {"config": "shakespeare_char", "dataset": self.version, "overrides": TRAIN, "name": f"{who}-run"}
        response = await self.call(who, "POST", "/v1/training/jobs", "POST /v1/training/jobs", ask)
        self.expect(response, 202, f"{who} starting training")
        if response.status_code != 202:
            return
        job_id = response.json()["id"]
        self.jobs[job_id] = who
        self.job_started.set()
        second = await self.call(who, "POST", "/v1/training/jobs", "POST /v1/training/jobs (second)", ask)
        self.expect(second, 429, f"{who} starting a second job past max_jobs=1")
        job = await self.wait_job(who, f"/v1/training/jobs/{job_id}", "GET /v1/training/jobs/{id}")
        if job["state"] != "succeeded":
            self.stats.surprises.append(f"training job {job_id} ended {job['state']}: {job['error']}")
            return
        model = f"{who}-model"
        response = await self.call(who, "POST", "/v1/models", "POST /v1/models", {"run_dir": f"{who}-run", "id": model})
        self.expect(response, 201, f"{who} serving its own run")
        if response.status_code == 201:
            ask = {"model": model, "prompt": "ROMEO:", "max_tokens": 16}
            refused = await stream(self.http, self.stats, self.keys[who], ask, "POST /v1/completions (own model)")
            if refused is not None:
                self.stats.surprises.append(f"{who} completing with its model: {refused.status_code}")
            response = await self.call(who, "DELETE", f"/v1/models/{model}", "DELETE /v1/models/{id}")
            self.expect(response, 200, f"{who} unloading its model")

    async def teacher(self) -> None:
        while time.monotonic() < self.deadline:
            for path in ("/v1/training/jobs", "/v1/datasets/jobs"):
                self.expect(await self.call("teacher", "GET", path, f"GET {path} (admin)"), 200, f"teacher {path}")
            self.expect(await self.call("teacher", "GET", "/metrics", "GET /metrics"), 200, "metrics")
            await asyncio.sleep(10)

    async def check_jobs(self) -> None:
        """Every job started is listed to the teacher, none ended other than succeeded."""
        listed = (await self.call("teacher", "GET", "/v1/training/jobs", "GET /v1/training/jobs (admin)")).json()
        states = {job["id"]: job["state"] for job in listed["data"]}
        for job_id, owner in self.jobs.items():
            if states.get(job_id) != "succeeded":
                self.stats.surprises.append(f"{owner}'s job {job_id}: {states.get(job_id, 'not listed')}")

    async def run(self) -> None:
        await asyncio.gather(self.teacher(), *(self.learner(i, who) for i, who in enumerate(self.learners)))
        await self.check_jobs()


# ---- the server and the report ---------------------------------------------------------------------------------------


def keys_file(folder: Path, learners: int) -> tuple[Path, dict[str, str]]:
    keys = {name: f"sk-{name}-{secrets.token_hex(8)}" for name in ("teacher", "heavy", "probe")}
    lines = [
        f"{keys['teacher']}  name=teacher  scopes=admin  max_streams=0  max_jobs=0  max_steps=0",
        f"{keys['heavy']}  name=heavy  scopes=generate  max_streams={HEAVY_STREAMS}",
        f"{keys['probe']}  name=probe  scopes=generate  max_streams=1",
    ]
    for i in range(1, learners + 1):
        name = f"learner{i:02d}"
        keys[name] = f"sk-{name}-{secrets.token_hex(8)}"
        scopes = "generate,inspect,train" + (",data" if i == 1 else "")
        lines.append(f"{keys[name]}  name={name}  scopes={scopes}  max_jobs=1  max_steps=200  requests_per_minute=120")
    path = folder / "keys"
    path.write_text("# bench_class: a teacher, the learners, and the fairness phase's two keys\n" + "\n".join(lines))
    return path, keys


def corpus() -> str:
    mirror = os.environ.get("MULM_DATA_MIRROR")
    if mirror and (Path(mirror) / "tinyshakespeare.txt").is_file():
        return (Path(mirror) / "tinyshakespeare.txt").read_text()[:200_000]
    return "\n".join(PROMPTS) * 2000


def start_server(args: argparse.Namespace, root: Path, keys: Path, log) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "serve.py"),
            "--checkpoint",
            f"{MODEL}={Path(args.checkpoint).resolve()}",
            "--port",
            "0",
            "--api-keys-file",
            str(keys),
            "--slots",
            str(args.slots),
            "--reserved-slots",
            str(args.reserved_slots),
            "--max-queue",
            "256",
            "--max-streams",
            "2",
            "--state-dir",
            str(root / "state"),
            "--runs-root",
            str(root / "runs"),
            "--datasets-dir",
            str(root / "datasets"),
            "--data-root",
            str(root / "data"),
            "--configs-dir",
            str(ROOT / "configs"),
            "--log-level",
            "warning",
        ],
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url, deadline = None, time.monotonic() + 240
    while True:
        url = url or address_in(Path(log.name).read_text())
        try:
            if url and httpx.get(url + "/readyz").status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"serve.py did not become ready:\n{Path(log.name).read_text()[-2000:]}")
        time.sleep(0.5)


async def load(url: str, keys: dict, args: argparse.Namespace) -> Stats:
    stats = Stats()
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        stats.heavy_streams = await fairness(http, stats, keys, args.probes, args.rounds, url)
        learners = sorted(k for k in keys if k.startswith("learner"))
        the_class = Class(http, stats, keys, learners, time.monotonic() + args.seconds)
        start = time.monotonic()
        await the_class.run()
        stats.class_seconds = time.monotonic() - start
    return stats


def report(stats: Stats, args: argparse.Namespace, load_average: tuple[float, ...]) -> dict:
    routes = {}
    for route in sorted(stats.latency):
        ms = [s * 1e3 for s in stats.latency[route]]
        routes[route] = {
            "count": len(ms),
            "p50_ms": percentile(ms, 50),
            "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99),
            "status": {str(k): v for k, v in sorted(stats.status[route].items())},
        }
    ttft = {label: {q: percentile(values, q) * 1e3 for q in (50, 99)} for label, values in stats.ttft.items()}
    errors_5xx = sum(n for counts in stats.status.values() for code, n in counts.items() if code >= 500)
    ratio = ttft["beside 32 streams"][99] / ttft["unloaded"][99]
    figures = {
        "learners": args.learners,
        "class_seconds": round(stats.class_seconds, 1),
        "requests": sum(len(v) for v in stats.latency.values()),
        "routes": routes,
        "ttft_ms": ttft,
        "ttft_p99_ratio": ratio,
        "heavy_streams": stats.heavy_streams,
        "errors_5xx": errors_5xx,
        "transport_errors": len(stats.transport),
        "streams": stats.streams,
        "incomplete_streams": stats.incomplete,
        "quota_429": dict(stats.quota),
        "429_without_retry_after": stats.no_retry_after,
        "surprises": stats.surprises,
        "load_average": load_average,
    }
    print(f"{args.learners} learners for {figures['class_seconds']} s, {figures['requests']} requests:")
    print(f"  {'route':<44} {'count':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  statuses")
    for route, r in routes.items():
        print(
            f"  {route:<44} {r['count']:>6} {r['p50_ms']:>8.0f} {r['p90_ms']:>8.0f} {r['p99_ms']:>8.0f}  {r['status']}"
        )
    for label, t in ttft.items():
        print(f"  time to first token, {label}: p50 {t[50]:.0f} ms, p99 {t[99]:.0f} ms")
    print(
        f"  the probe key's p99 beside 32 streams / unloaded: {ratio:.2f}x (target <= {TTFT_RATIO_TARGET:.0f}x); "
        f"the heavy key's streams meanwhile: {stats.heavy_streams}"
    )
    print(
        f"  5xx {errors_5xx}, transport errors {len(stats.transport)}, streams {stats.streams} of which incomplete "
        f"{stats.incomplete}, 429 by quota {dict(stats.quota)}, 429 without Retry-After {stats.no_retry_after}"
    )
    print(f"  surprises: {stats.surprises or 'none'}; load average before and after: {load_average}")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "runs" / "shakespeare"))
    parser.add_argument("--learners", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=180.0, help="the class phase")
    parser.add_argument("--probes", type=int, default=100, help="the probe key's completions alone, and beside")
    parser.add_argument("--rounds", type=int, default=4, help="phases 1 and 2 alternate, in this many rounds each")
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--reserved-slots", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line at the end")
    args = parser.parse_args()
    random.seed(args.seed)

    with tempfile.TemporaryDirectory(prefix="bench_class-") as folder:
        root = Path(folder)
        (root / "data").mkdir()
        (root / "data" / "corpus.txt").write_text(corpus())
        keys_path, keys = keys_file(root, args.learners)
        with open(root / "server.log", "w") as log:
            server, url = start_server(args, root, keys_path, log)
            before = os.getloadavg()
            try:
                stats = asyncio.run(load(url, keys, args))
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(90)
            after = os.getloadavg()
            server_log = (root / "server.log").read_text()
        figures = report(stats, args, (round(before[0], 2), round(after[0], 2)))
    if "Traceback" in server_log:
        print(f"the server logged a traceback:\n{server_log[-3000:]}")
        figures["surprises"].append("a traceback in the server's log")
    if args.json:
        print(json.dumps(figures))
    failed = (
        figures["errors_5xx"]
        or figures["transport_errors"]
        or figures["incomplete_streams"]
        or figures["429_without_retry_after"]
        or figures["surprises"]
        or figures["ttft_p99_ratio"] > TTFT_RATIO_TARGET
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
