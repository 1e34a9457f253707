"""The run folders under the server's runs root: GET /v1/runs lists them (architecture, parameters, steps, best
validation loss, data set, the models serving them), and POST /v1/runs/compare puts two to four side by side
(their table, the settings that differ, their curves by step, tokens seen and wall time) for the lab's Compare
view; serving one is POST /v1/models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import anyio
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mulm_jax.api.errors import ApiError
from mulm_jax.api.openapi import endpoint
from mulm_jax.api.paths import confine
from mulm_jax.api.schemas import ApiModel, Text
from mulm_jax.errors import MulmError
from mulm_jax.inspect.runs import RunCurves, config_diff, curves, read_run, runs_table
from mulm_jax.runs import checkpoint_steps, find_runs, is_run, metrics_path, read_config

MAX_COMPARED = 4


class RunSummary(BaseModel):
    """A run folder as GET /v1/runs lists it; one whose config cannot be read has only `run` and `error`."""

    run: str  # the folder, relative to the runs root: what POST /v1/models and POST /v1/runs/compare take
    architecture: Optional[str] = None
    positional: Optional[str] = None
    params: Optional[int] = None
    data: Optional[str] = None
    steps: Optional[int] = None
    tokens_seen: Optional[int] = None
    tokens_per_sec: Optional[float] = None
    best_val_loss: Optional[float] = None
    best_val_step: Optional[int] = None
    best_val_bpb: Optional[float] = None
    checkpoints: list[int] = []  # steps of its finished checkpoints (serving needs one)
    served_as: list[str] = []  # ids of the models serving it
    error: Optional[str] = None


class RunList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RunSummary]


class CompareRuns(ApiModel):
    runs: Annotated[list[Text], Field(min_length=2, max_length=MAX_COMPARED)] = Field(
        description=f"2 to {MAX_COMPARED} run folders, relative to the runs root"
    )


class SettingDiff(BaseModel):
    key: str  # "section.field"
    values: list[Any]  # one per run, in the order asked


class RunCurve(BaseModel):
    run: str
    train: list[dict[str, Any]]  # rows with step, tokens, seconds, loss, ... (at most 1000, evenly thinned)
    evals: list[dict[str, Any]]  # rows with step, tokens, seconds, val_loss, val_bpb, ...


class RunComparison(BaseModel):
    runs: list[RunSummary]
    config_diff: list[SettingDiff]
    curves: list[RunCurve]


def routes(ctx) -> list[Route]:
    root = Path(ctx.settings.runs_root)

    def served_as() -> dict[Path, list[str]]:
        ids: dict[Path, list[str]] = {}
        for card in ctx.models.describe_all():
            ids.setdefault(Path(card.run_dir).resolve(), []).append(card.id)
        return ids

    def summary(run_dir: Path, row: dict, serving: dict[Path, list[str]]) -> RunSummary:
        return RunSummary(
            **{**row, "run": _relative(run_dir, root)},
            checkpoints=checkpoint_steps(run_dir),
            served_as=serving.get(run_dir.resolve(), []),
        )

    def list_all() -> list[RunSummary]:
        serving, listed = served_as(), []
        for run_dir in find_runs(root):
            try:  # a run with no metrics yet (just started) has its config's row, untrained
                run = (
                    read_run(run_dir)
                    if metrics_path(run_dir).is_file()
                    else RunCurves("", read_config(run_dir), [], [])
                )
            except MulmError as e:
                listed.append(RunSummary(run=_relative(run_dir, root), error=str(e)))
                continue
            listed.append(summary(run_dir, runs_table([run])[0], serving))
        return listed

    def compare(names: list[str]) -> RunComparison:
        folders = [confine(name, [root], param=f"runs[{i}]") for i, name in enumerate(names)]
        runs = []
        for i, folder in enumerate(folders):
            if not is_run(folder):
                raise ApiError(
                    404,
                    f"runs[{i}]={names[i]!r} is not a run folder under the runs root",
                    param=f"runs[{i}]",
                    code="run_not_found",
                )
            try:
                runs.append(read_run(folder))
            except MulmError as e:
                raise ApiError(400, f"runs[{i}]: {e}", param=f"runs[{i}]", code="invalid_value") from None
        serving = served_as()
        return RunComparison(
            runs=[summary(folder, row, serving) for folder, row in zip(folders, runs_table(runs))],
            config_diff=[SettingDiff(**d) for d in config_diff([run.config for run in runs])],
            curves=[RunCurve(**{**curves(run), "run": _relative(folder, root)}) for folder, run in zip(folders, runs)],
        )

    @endpoint(response=RunList, scope=("inspect", "train"))
    async def list_runs(request: Request) -> JSONResponse:
        """Every run folder under the server's runs root (up to three folders down), in path order."""
        data = await anyio.to_thread.run_sync(list_all)
        return JSONResponse(RunList(data=data).model_dump(exclude_none=True))

    @endpoint(body=CompareRuns, response=RunComparison, errors=(403, 404), scope="inspect")
    async def compare_runs(request: Request, body: CompareRuns) -> JSONResponse:
        """Two to four runs side by side: their table rows, the settings whose values differ, and their curves."""
        result = await anyio.to_thread.run_sync(compare, body.runs)
        return JSONResponse(result.model_dump(exclude_none=True))

    return [
        Route("/v1/runs", list_runs, methods=["GET"]),
        Route("/v1/runs/compare", compare_runs, methods=["POST"]),
    ]


def _relative(run_dir: Path, root: Path) -> str:
    resolved, base = run_dir.resolve(), root.resolve()
    return "." if resolved == base else str(resolved.relative_to(base))
