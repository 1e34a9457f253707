"""Data set and training jobs over HTTP: assembly, confinement, validation, progress, events, cancel and resume."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
from starlette.testclient import TestClient

from support import ROOT, RUN_CORPUS, wait_for
from mulm_jax.api.app import create_app
from mulm_jax.api.errors import ApiError
from mulm_jax.api.jobs import JobManager
from mulm_jax.api.routes.datasets import AssembleDataset
from mulm_jax.api.routes.training import MetricsTail
from mulm_jax.config import DataConfig, ServeConfig, load_config
from mulm_jax.config_schema import options
from mulm_jax.runs import read_metrics

STEPS = 400
# A run that trains in a few seconds; every run here shares it, so that the compiled steps are reused.
TINY = {
    "model.vocab_size": 40,
    "model.d_model": 32,
    "model.num_layers": 1,
    "model.num_heads": 2,
    "model.d_ff": 64,
    "model.max_seq_len": 32,
    "train.seq_len": 32,
    "train.batch_size": 8,
    "train.steps": STEPS,
    "train.warmup_steps": 5,
    "train.eval_every": 200,
    "train.eval_batches": 2,
    "train.checkpoint_every": 100,
    "train.log_every": 10,
}


def wait_finished(client: TestClient, url: str) -> dict:
    def finished() -> dict | None:
        job = client.get(url).json()
        return job if job["state"] != "running" else None

    return wait_for(finished, f"{url} to finish")


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Iterator[ServeConfig]:
    base = tmp_path_factory.mktemp("api")
    (base / "data").mkdir()
    (base / "data" / "corpus.txt").write_text(RUN_CORPUS)
    with pytest.MonkeyPatch.context() as env:
        env.chdir(base)  # a server started outside the repository: its jobs still find the package
        # Job processes inherit the environment: the second and later runs load their compiled steps from here.
        env.setenv("JAX_COMPILATION_CACHE_DIR", str(base / "jax-cache"))
        env.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        env.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
        yield ServeConfig(
            state_dir=str(base / "state"),
            runs_root=str(base / "runs"),
            datasets_dir=str(base / "datasets"),
            data_roots=(str(base / "data"),),
            configs_dir=str(ROOT / "configs"),
        )


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def dataset_job(client) -> dict:
    response = client.post("/v1/datasets", json={"source": "corpus.txt", "tokenizer": "char", "dedup": "exact"})
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "running"
    return wait_finished(client, f"/v1/datasets/jobs/{response.json()['id']}")


@pytest.fixture(scope="module")
def version(dataset_job) -> str:
    assert dataset_job["state"] == "succeeded", dataset_job["error"]
    return dataset_job["result"]["version"]


def start_training(client: TestClient, version: str, **fields) -> dict:
    response = client.post(
        "/v1/training/jobs", json={"config": "shakespeare_char", "dataset": version, "overrides": TINY, **fields}
    )
    assert response.status_code == 202, response.text
    return response.json()


def error_of(response) -> dict:
    return response.json()["error"]


def test_dataset_job_assembles_a_version_that_is_listed(client, dataset_job, version, settings):
    assert dataset_job["object"] == "dataset.job" and dataset_job["exit_code"] == 0
    assert dataset_job["request"] == {"source": "corpus.txt", "tokenizer": "char", "dedup": "exact"}
    assert (Path(settings.datasets_dir) / version / "train.bin").is_file()
    assert [m["version"] for m in client.get("/v1/datasets").json()["data"]] == [version]
    manifest = client.get(f"/v1/datasets/{version}").json()
    assert manifest == dataset_job["result"]
    assert manifest["settings"]["dedup"] == "exact" and manifest["train_tokens"] > 0
    assert dataset_job["id"] in [job["id"] for job in client.get("/v1/datasets/jobs").json()["data"]]

    # The job was handed the request as a config file, not as flags.
    config_file = Path(settings.state_dir).resolve() / "jobs" / f"{dataset_job['id']}.yaml"
    with sqlite3.connect(Path(settings.state_dir) / "mulm.sqlite3") as db:
        ((command,),) = db.execute("SELECT command FROM jobs WHERE id = ?", (dataset_job["id"],))
    assert json.loads(command)[3:] == ["data", "assemble", "--json", "--config", str(config_file)]
    data = load_config(config_file).data
    corpus = str(Path(settings.data_roots[0]).resolve() / "corpus.txt")
    assert data == DataConfig(
        sources=(corpus,), tokenizer="char", dedup="exact", out_dir=str(Path(settings.datasets_dir).resolve())
    )

    missing = client.get("/v1/datasets/0123456789ab")
    assert missing.status_code == 404 and "'0123456789ab'" in error_of(missing)["message"]
    assert client.get("/v1/datasets/.hidden").status_code == 400
    assert client.get(f"/v1/training/jobs/{dataset_job['id']}").status_code == 404  # not a training job


def test_dataset_paths_outside_the_data_roots_are_refused(client, settings):
    outside = Path(settings.data_roots[0]).parent / "secret.txt"
    outside.write_text("not for the API\n")
    jobs_before = client.get("/v1/datasets/jobs").json()["data"]
    for source in (str(outside), "../secret.txt", ["corpus.txt", "../secret.txt"]):
        response = client.post("/v1/datasets", json={"source": source})
        assert response.status_code == 403, source
        assert error_of(response)["param"] == "source" and "secret.txt" in error_of(response)["message"]
    response = client.post("/v1/datasets", json={"source": "corpus.txt", "tokenizer": "../tokenizer.model"})
    assert response.status_code == 403 and error_of(response)["param"] == "tokenizer"
    assert client.get("/v1/datasets/jobs").json()["data"] == jobs_before


@pytest.mark.parametrize("source", ["sub", "sub/*.txt", "sub/**/*.txt", "linked_dir"])
def test_sources_whose_files_link_outside_the_data_roots_are_refused(client, settings, source):
    """A folder or glob inside a data root reads its files by name: a link placed there must not reach out."""
    root = Path(settings.data_roots[0])
    outside = root.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_text("not for the API\n")
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "fine.txt").write_text("a file that is inside\n")
    for link, target in ((root / "sub" / "x.txt", outside / "secret.txt"), (root / "linked_dir", outside)):
        if not link.is_symlink():
            link.symlink_to(target)
    jobs_before = client.get("/v1/datasets/jobs").json()["data"]
    response = client.post("/v1/datasets", json={"source": source, "tokenizer": "char"})
    assert response.status_code == 403, response.text
    reason = "linked_dir" if source == "linked_dir" else "secret.txt"
    assert error_of(response)["param"] == "source" and reason in error_of(response)["message"]
    response = client.post(
        "/v1/training/jobs", json={"config": "shakespeare_char", "overrides": {"data.sources": [source]}}
    )
    assert response.status_code == 403 and error_of(response)["param"] == "data.sources"
    assert client.get("/v1/datasets/jobs").json()["data"] == jobs_before


def test_sources_that_name_no_files_are_a_400_before_any_job(client):
    response = client.post("/v1/datasets", json={"source": "no_such_folder/*.txt"})
    assert response.status_code == 400 and "matches no files" in error_of(response)["message"]
    assert error_of(response)["param"] == "source"


def test_the_dataset_body_has_a_field_for_each_data_config_field_but_where_the_server_decides():
    """A field added to DataConfig reaches POST /v1/datasets (by its alias, else its name) with its default."""
    body = AssembleDataset.model_fields
    public = {option.name: option.public for option in options(DataConfig)}
    assert set(body) == {public[f.name] for f in dataclasses.fields(DataConfig)} - {"dataset", "out"}
    for f in dataclasses.fields(DataConfig):
        if public[f.name] in body and f.name != "sources":  # sources: required
            assert body[public[f.name]].default == f.default, f.name
    assert body["source"].is_required()


@pytest.mark.parametrize(
    "field, value",
    [
        ("vocab_size", "many"),
        ("fold_whitespace", "yes"),
        ("source", 3),
        ("dedup", "fuzzy"),
        ("val_fraction", [0.1]),
        ("val_fraction", 1.0),
        ("near_dup_threshold", 0),
        ("text_field", ""),
    ],
)
def test_dataset_field_of_a_wrong_type_or_out_of_range_is_a_400_naming_it(client, field, value):
    response = client.post("/v1/datasets", json={"source": "corpus.txt", field: value})
    assert response.status_code == 400
    assert error_of(response)["param"] == field and field in error_of(response)["message"]


def test_dataset_settings_that_cannot_work_together_are_a_400_not_a_failed_job(client):
    jobs_before = client.get("/v1/datasets/jobs").json()["data"]
    response = client.post("/v1/datasets", json={"source": "corpus.txt", "tokenizer": "char", "vocab_size": 100})
    assert response.status_code == 400 and "vocab_size=100" in error_of(response)["message"]
    response = client.post("/v1/datasets", json={"source": "corpus.txt", "min_doc_chars": 50, "max_doc_chars": 10})
    assert response.status_code == 400 and "max_doc_chars=10" in error_of(response)["message"]
    assert client.get("/v1/datasets/jobs").json()["data"] == jobs_before


def test_training_job_reports_its_progress_and_streams_its_metrics(client, version, settings):
    job = start_training(client, version)
    assert job["object"] == "training.job"
    assert Path(job["workdir"]) == Path(settings.runs_root).resolve() / job["id"]
    done = wait_finished(client, f"/v1/training/jobs/{job['id']}")
    assert done["state"] == "succeeded" and done["exit_code"] == 0, done["error"]
    assert done["step"] == STEPS
    assert done["latest_metrics"]["train"]["step"] == STEPS and "loss" in done["latest_metrics"]["train"]
    assert done["latest_metrics"]["eval"]["step"] == STEPS and "val_loss" in done["latest_metrics"]["eval"]

    events = client.get(f"/v1/training/jobs/{job['id']}/events")
    assert events.headers["content-type"].startswith("text/event-stream")
    *rows, end = events.text.strip().split("\n\n")
    assert [json.loads(row.removeprefix("data: ")) for row in rows] == read_metrics(Path(job["workdir"]))
    event, data = end.split("\n")
    assert event == "event: end" and json.loads(data.removeprefix("data: "))["state"] == "succeeded"

    listed = client.get("/v1/training/jobs").json()["data"]
    assert job["id"] in [j["id"] for j in listed]
    succeeded = sum(j["state"] == "succeeded" for j in listed)
    assert f'mulm_training_jobs{{state="succeeded"}} {succeeded}' in client.get("/metrics").text
    resume = client.post(f"/v1/training/jobs/{job['id']}/resume")
    assert resume.status_code == 409 and "succeeded" in error_of(resume)["message"]
    assert client.post(f"/v1/training/jobs/{job['id']}/cancel").status_code == 409


def test_training_request_errors_name_the_field_at_fault(client, version):
    jobs_before = client.get("/v1/training/jobs").json()["data"]

    def refused(fields: dict, status: int, param: str) -> str:
        response = client.post("/v1/training/jobs", json={"config": "shakespeare_char", **fields})
        assert response.status_code == status, response.text
        assert error_of(response)["param"] == param
        return error_of(response)["message"]

    assert "'model.no_such_key'" in refused({"overrides": ["model.no_such_key=1"]}, 400, "overrides")
    assert "'train.stepz'" in refused({"overrides": {"train.stepz": 10}}, 400, "overrides")
    assert "'model.widht'" in refused({"config": {"model": {"widht": 64}}}, 400, "config")
    assert "'../outside'" in refused({"name": "../outside"}, 403, "name")
    assert "shakespeare_char" in refused({"config": "no_such_config"}, 404, "config")
    refused({"config": "../configs/shakespeare_char"}, 400, "config")
    refused({"dataset": "0123456789ab"}, 404, "dataset")
    refused({"overrides": ["data.dataset=/etc"]}, 403, "data.dataset")
    refused({"overrides": {"data.sources": ["/etc/passwd"]}}, 403, "data.sources")
    assert client.get("/v1/training/jobs").json()["data"] == jobs_before


def test_cancelled_job_is_interrupted_by_a_restart_and_resumes_from_its_checkpoint(client, version, settings):
    job = start_training(client, version, name="resumable")
    url = f"/v1/training/jobs/{job['id']}"
    metrics = Path(job["workdir"]) / "metrics.jsonl"
    with ThreadPoolExecutor(1) as pool:
        events = pool.submit(client.get, f"{url}/events")  # opened before the first row: it follows the file
        # the first row of training figures (step 10; a start-up row may come before it)
        wait_for(lambda: metrics.exists() and '"loss"' in metrics.read_text(), "the first training row")
        with sqlite3.connect(Path(settings.state_dir) / "mulm.sqlite3") as db:
            ((pid,),) = db.execute("SELECT pid FROM jobs WHERE id = ?", (job["id"],))
        os.killpg(pid, signal.SIGSTOP)  # the trainer frozen mid-run: however fast it is, the cancel comes first
        try:
            assert client.post(f"{url}/cancel").status_code == 200
        finally:
            os.killpg(pid, signal.SIGCONT)
        streamed = events.result(timeout=120).text
    cancelled = wait_finished(client, url)
    assert cancelled["state"] == "cancelled"
    stopped_at = cancelled["step"]
    assert 0 < stopped_at < STEPS
    assert (Path(job["workdir"]) / "checkpoints" / str(stopped_at)).is_dir()
    *rows, end = streamed.strip().split("\n\n")
    assert [json.loads(row.removeprefix("data: ")) for row in rows] == read_metrics(Path(job["workdir"]))
    assert json.loads(end.split("\n")[1].removeprefix("data: "))["state"] == "cancelled"

    # The server dies while the job runs; a new server finds the record still `running`.
    with sqlite3.connect(Path(settings.state_dir) / "mulm.sqlite3") as db:
        db.execute("UPDATE jobs SET state = 'running' WHERE id = ?", (job["id"],))
    restarted = JobManager(settings)
    assert restarted.get(job["id"])["state"] == "interrupted"
    restarted.close()

    resumed = client.post(f"{url}/resume")
    assert resumed.status_code == 200 and resumed.json()["state"] == "running"
    assert resumed.json()["id"] == job["id"]
    done = wait_finished(client, url)
    assert done["state"] == "succeeded", done["error"]
    assert done["step"] == STEPS
    steps = [row["step"] for row in read_metrics(Path(job["workdir"])) if "loss" in row]
    assert steps == sorted(set(steps)) and steps[0] == 10  # one history, continued rather than restarted
    assert f"resumed from step {stopped_at}" in (Path(settings.state_dir) / "logs" / f"{job['id']}.log").read_text()


def test_failed_job_keeps_its_exit_code_and_the_end_of_its_log(tmp_path):
    jobs = JobManager(ServeConfig(state_dir=str(tmp_path)))
    try:
        assert jobs.counts_by_state("dataset") == dict.fromkeys(
            ("running", "succeeded", "failed", "cancelled", "interrupted"), 0
        )
        script = "import sys; print('reading the corpus', flush=True); sys.exit('error: no corpus')"
        command = [sys.executable, "-c", script]
        job = jobs.start("dataset", command, workdir=None, request={"source": "x"})
        done = wait_for(lambda: (j := jobs.get(job["id"]))["state"] != "running" and j, "the job to fail")
        assert (done["state"], done["exit_code"], done["result"]) == ("failed", 1, None)
        assert "reading the corpus\nerror: no corpus" in done["error"]
        assert jobs.counts_by_state("dataset")["failed"] == 1
        with pytest.raises(ApiError, match="no job with id 'job-000000000000'"):
            jobs.get("job-000000000000")
    finally:
        jobs.close()


def test_close_stops_running_jobs_and_records_them_interrupted(tmp_path):
    jobs = JobManager(ServeConfig(state_dir=str(tmp_path)))
    job = jobs.start(
        "training", [sys.executable, "-c", "import time; time.sleep(60)"], workdir=str(tmp_path / "run"), request={}
    )
    start = time.monotonic()
    jobs.close()
    assert time.monotonic() - start < 10
    with sqlite3.connect(tmp_path / "mulm.sqlite3") as db:
        assert db.execute("SELECT state FROM jobs WHERE id = ?", (job["id"],)).fetchone() == ("interrupted",)


def test_metrics_tail_waits_for_a_line_end_and_follows_a_rewritten_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.new_rows() == []
    path.write_text('{"step": 5}\n{"step": 1')
    assert tail.new_rows() == [{"step": 5}]
    with path.open("a") as f:
        f.write('0}\n{"step": 15}\n')
    assert tail.new_rows() == [{"step": 10}, {"step": 15}]
    # A resumed trainer keeps the rows up to its checkpoint (step 10) in a new file, then appends.
    rewritten = tmp_path / "metrics.jsonl.tmp"
    rewritten.write_text('{"step": 5}\n{"step": 10}\n{"step": 15, "again": true}\n')
    os.replace(rewritten, path)
    assert tail.new_rows() == [{"step": 15, "again": True}]


def test_a_pairs_data_set_shows_its_examples_with_the_loss_mask(client, settings):
    from mulm_jax.data import assemble

    data = Path(settings.data_roots[0]) / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"to {n}:", "completion": f" be {n}"}) + "\n" for n in range(12)))
    pairs = assemble(DataConfig(sources=(str(data),), out_dir=settings.datasets_dir, val_fraction=0)).manifest
    response = client.get(f"/v1/datasets/{pairs['version']}/examples/train")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "completion" and len(body["data"]) == 10
    example = body["data"][0]
    eos = pairs["tokenizer"]["eos_id"]
    trained = "".join("|" if t["id"] == eos else t["text"] for t in example["tokens"] if t["loss"])
    read = "".join(t["text"] for t in example["tokens"] if not t["loss"])
    assert example["file"] == "pairs.jsonl" and read == f"to {example['line'] - 1}:"
    assert trained == f" be {example['line'] - 1}|"
    text = assemble(
        DataConfig(sources=(str(Path(settings.data_roots[0]) / "corpus.txt"),), out_dir=settings.datasets_dir)
    ).manifest["version"]
    response = client.get(f"/v1/datasets/{text}/examples/train")
    assert response.status_code == 400 and error_of(response)["code"] == "not_pairs"
    assert client.get(f"/v1/datasets/{pairs['version']}/examples/test").status_code in (400, 404)


def test_the_built_in_task_is_a_source_a_request_may_name(client):
    response = client.post("/v1/datasets", json={"source": "dates", "tokenizer": "char"})
    assert response.status_code == 202, response.text
    job = wait_finished(client, f"/v1/datasets/jobs/{response.json()['id']}")
    assert job["state"] == "succeeded" and job["result"]["kind"] == "seq2seq"
