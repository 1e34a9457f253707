"""Training jobs: start a run as a background job, follow its metrics (also as server-sent events), cancel, resume.

A job is its key's: another key (but an `admin` one) neither lists, reads, cancels nor resumes it (404, as for a job
that does not exist), and a key trains only into a run folder that is new or that its own jobs made."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Optional, Union

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mulm_jax.api.errors import ApiError
from mulm_jax.api.jobs import new_job_id
from mulm_jax.api.keys import Caller
from mulm_jax.api.paths import PLAIN_NAME, confine, plain_name, version_folder
from mulm_jax.api.quotas import admit_job
from mulm_jax.api.openapi import endpoint
from mulm_jax.api.routes.datasets import confine_data
from mulm_jax.api.schemas import ApiModel, Text, one_of
from mulm_jax.api.sse import EventStream, event
from mulm_jax.config import Config, ConfigError, DataConfig, ServeConfig, config_from_dict, load_config
from mulm_jax.data.assemble import MANIFEST
from mulm_jax.runs import metrics_path


class StartTraining(ApiModel):
    config: Annotated[
        Union[Annotated[str, Field(pattern=PLAIN_NAME)], dict[str, Any]],
        one_of("the name of a config file or a config object"),
    ] = Field(description="a config file of the configs folder (with or without .yaml), or a config")
    dataset: Annotated[str, Field(pattern=PLAIN_NAME)] = Field(
        None, description="an assembled data set version to train on"
    )
    overrides: Annotated[
        Union[str, list[str], dict[str, Any]], one_of("section.key=value strings, or an object {section.key: value}")
    ] = None
    name: Text = Field(None, description="the run folder inside the runs folder (default: the job id)")


EVENTS_POLL_S = 0.25  # how often /events looks for new metrics rows


class MetricsTail:
    """Reads the rows appended to a run's metrics.jsonl since the last call.

    A partly written last line waits for its end. When the trainer rewrites the file on resume (dropping rows
    past its checkpoint), the new file is read from its start, skipping the rows already returned.
    """

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.inode: Optional[int] = None
        self.partial = b""
        self.seen: set[bytes] = set()

    def new_rows(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                if inode != self.inode:
                    self.inode, self.offset, self.partial = inode, 0, b""
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        rows = []
        for line in lines:
            if not line.strip() or line in self.seen:
                continue
            self.seen.add(line)
            rows.append(json.loads(line))
        return rows


def training_view(job: dict) -> dict:
    """The job with the run's progress: `step` (of the latest training row) and the latest training and
    evaluation rows of its metrics.jsonl."""
    rows = MetricsTail(metrics_path(job["workdir"])).new_rows()
    train = next((r for r in reversed(rows) if "loss" in r), None)
    evaluation = next((r for r in reversed(rows) if "val_loss" in r), None)
    return {**job, "step": train["step"] if train else None, "latest_metrics": {"train": train, "eval": evaluation}}


def base_config(value: str | dict, settings: ServeConfig) -> Path | dict:
    """The request's `config`: a YAML file named in `settings.configs_dir`, or an inline config object."""
    if isinstance(value, dict):
        return value
    configs_dir = Path(settings.configs_dir)
    path = configs_dir / f"{plain_name(value.removesuffix('.yaml'), 'config')}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in configs_dir.glob("*.yaml"))
        raise ApiError(
            404,
            f"no config {value!r} in the configs folder; it holds {', '.join(known) or 'none'}",
            type="not_found_error",
            param="config",
            code="config_not_found",
        )
    return path


def override_list(overrides: str | list[str] | dict[str, Any] | None) -> list[str]:
    """`overrides` as `key=value` strings: given so, or as an object {dotted key: value}."""
    if isinstance(overrides, dict):
        return [f"{key}={json.dumps(item)}" for key, item in overrides.items()]
    return [overrides] if isinstance(overrides, str) else list(overrides or ())


def build_config(base: Path | dict, overrides: list[str]) -> Config:
    """The validated config; a ConfigError is a 400 blaming `config` when the base alone fails, else `overrides`."""

    def build(with_overrides: list[str]) -> Config:
        if isinstance(base, Path):
            return load_config(base, with_overrides)
        return config_from_dict(base, with_overrides)

    try:
        return build(overrides)
    except ConfigError as error:
        try:
            build([])
        except ConfigError as base_error:
            raise ApiError(400, str(base_error), param="config", code="invalid_config") from None
        raise ApiError(400, str(error), param="overrides", code="invalid_config") from None


def training_data(data: DataConfig, settings: ServeConfig, dataset: Optional[Path]) -> DataConfig:
    """The data section with its paths checked and resolved: a data set inside `datasets_dir` (`dataset` when the
    request named one), and the paths that confine_data checks."""
    if dataset is None and data.dataset:
        dataset = confine(data.dataset, [settings.datasets_dir], param="data.dataset")
        if not (dataset / MANIFEST).is_file():
            raise ApiError(
                404,
                f"data.dataset={data.dataset!r} is not an assembled data set version",
                type="not_found_error",
                param="data.dataset",
                code="dataset_not_found",
            )
    data = dataclasses.replace(data, dataset=str(dataset) if dataset else None)
    return confine_data(data, settings, param=lambda name: f"data.{name}")


def run_folder(name: str, settings: ServeConfig) -> Path:
    runs_root = Path(settings.runs_root).resolve()
    workdir = confine(name, [runs_root], param="name")
    if workdir == runs_root:
        raise ApiError(
            400,
            f"name={name!r} is the runs folder itself: expected a folder inside it",
            param="name",
            code="invalid_value",
        )
    return workdir


def check_run_folder_owner(jobs, workdir: Path, who: Caller, what: str) -> None:
    """403 unless `who` may write or serve run folder `workdir`: an `admin` key may any; another key one that only its
    own training jobs made (or, when `what` is training, one that does not exist yet)."""
    if who.admin:
        return
    owners = jobs.workdir_owners(str(workdir))
    new = not owners and not workdir.exists()
    if (new and what == "train into") or owners == {who.owner}:
        return
    raise ApiError(
        403,
        f"run folder {workdir.name!r} was not made by a training job of this key: to {what} it needs the "
        "'admin' scope" + (" (or choose a new name)" if what == "train into" else ""),
        type="permission_error",
        param="name" if what == "train into" else "run_dir",
        code="not_owner",
    )


def routes(ctx) -> list[Route]:
    settings: ServeConfig = ctx.settings

    @endpoint(body=StartTraining, status=202, errors=(403, 404, 409), scope="train")
    async def create_job(request: Request, body: StartTraining) -> JSONResponse:
        """Start a training run as a background job (202 with the job), owned by the key."""
        who = ctx.caller(request)
        base = base_config(body.config, settings)
        overrides = override_list(body.overrides)
        dataset = version_folder(settings, body.dataset, "dataset") if body.dataset is not None else None
        job_id = new_job_id()
        workdir = run_folder(body.name or job_id, settings)
        check_run_folder_owner(ctx.jobs, workdir, who, "train into")
        config = build_config(base, overrides)
        config = dataclasses.replace(config, data=training_data(config.data, settings, dataset))
        admit_job(who, ctx.jobs.running(who.owner), steps=config.train.steps)
        command = [sys.executable, "-m", "mulm_jax", "train", "--workdir", str(workdir), "--quiet"]
        job = ctx.jobs.start(
            "training",
            command,
            config=config,
            workdir=str(workdir),
            request=body.model_dump(exclude_unset=True),
            job_id=job_id,
            owner=who.owner,
            steps=config.train.steps,
        )
        return JSONResponse(job, status_code=202)

    @endpoint(scope="train")
    async def list_jobs(request: Request) -> JSONResponse:
        """Training jobs, newest first: the key's own (an `admin` key's: every key's)."""
        return JSONResponse({"object": "list", "data": ctx.jobs.list("training", ctx.caller(request).sees)})

    @endpoint(errors=(404,), scope="train")
    async def get_job(request: Request) -> JSONResponse:
        """One training job, with its latest step and its latest training and evaluation metrics."""
        job = ctx.jobs.get(request.path_params["id"], "training", ctx.caller(request).sees)
        return JSONResponse(training_view(job))

    @endpoint(media_types=("text/event-stream",), errors=(404,), scope="train")
    async def job_events(request: Request) -> EventStream:
        """The run's metrics rows as server-sent events, as they are written, then an `end` event with the job."""
        job_id = request.path_params["id"]
        tail = MetricsTail(metrics_path(ctx.jobs.get(job_id, "training", ctx.caller(request).sees)["workdir"]))

        async def events() -> AsyncIterator[str]:
            while True:
                running = ctx.jobs.get(job_id)["state"] == "running"  # before reading: no row written after is lost
                rows = tail.new_rows()
                if rows:
                    yield "".join(event(row) for row in rows)
                if not running:
                    yield event(training_view(ctx.jobs.get(job_id)), "end")
                    return
                await asyncio.sleep(EVENTS_POLL_S)

        return EventStream(events())  # ends the generator as soon as the client leaves

    @endpoint(errors=(404, 409), scope="train")
    async def cancel_job(request: Request) -> JSONResponse:
        """Stop a running training job; the trainer saves a checkpoint first, and the job can be resumed."""
        return JSONResponse(ctx.jobs.cancel(request.path_params["id"], "training", ctx.caller(request).sees))

    @endpoint(errors=(404, 409), scope="train")
    async def resume_job(request: Request) -> JSONResponse:
        """Relaunch an interrupted, cancelled or failed training job; it continues from its latest checkpoint."""
        who = ctx.caller(request)
        job = ctx.jobs.get(request.path_params["id"], "training", who.sees)
        if job["state"] != "running":  # resume answers 409 for a running one
            admit_job(who, ctx.jobs.running(who.owner), steps=job["steps"])
        return JSONResponse(ctx.jobs.resume(job["id"], who.sees))

    return [
        Route("/v1/training/jobs", create_job, methods=["POST"]),
        Route("/v1/training/jobs", list_jobs, methods=["GET"]),
        Route("/v1/training/jobs/{id}", get_job, methods=["GET"]),
        Route("/v1/training/jobs/{id}/events", job_events, methods=["GET"]),
        Route("/v1/training/jobs/{id}/cancel", cancel_job, methods=["POST"]),
        Route("/v1/training/jobs/{id}/resume", resume_job, methods=["POST"]),
    ]
