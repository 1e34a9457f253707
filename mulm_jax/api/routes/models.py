"""The served models and those still loading: list them, describe one, load a trained run folder as a new one, and
unload one.

Loading and unloading need the `admin` scope, or `train` for a run folder that the key's own training jobs made
(and a model the key loaded)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import anyio
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mulm_jax.api.errors import ApiError
from mulm_jax.api.openapi import endpoint
from mulm_jax.api.paths import confine
from mulm_jax.api.registry import ModelCard, ModelList
from mulm_jax.api.routes.training import check_run_folder_owner
from mulm_jax.api.schemas import ApiModel, Int, Text, bad_value, one_of

MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
MODEL_ID_RULE = "letters, digits, '.', '_', ':' or '-' (at most 128), starting with a letter or digit"


class LoadModel(ApiModel):
    run_dir: Text = Field(description="a run folder, relative to the runs root")
    id: Annotated[str, Field(pattern=MODEL_ID.pattern), one_of(MODEL_ID_RULE)] = Field(
        None, description="the model's id (default: the run folder's name)"
    )
    step: Int = Field(None, ge=0, description="a checkpoint step (default: the newest)")


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: Literal[True] = True


def routes(ctx) -> list[Route]:
    @endpoint(response=ModelList)
    async def list_models(request: Request) -> JSONResponse:
        """The models this server serves, and those still loading (`state`: loading, compiling or ready)."""
        return JSONResponse(ModelList(data=ctx.models.describe_all()).model_dump(exclude_none=True))

    @endpoint(response=ModelCard, errors=(404,))
    async def get_model(request: Request) -> JSONResponse:
        """One served (or loading) model."""
        return JSONResponse(ctx.models.describe(request.path_params["model"]).body())

    @endpoint(body=LoadModel, status=201, response=ModelCard, errors=(403, 409), scope=("admin", "train"))
    async def load(request: Request, body: LoadModel) -> JSONResponse:
        """Serve a trained run folder (under the server's runs root) as a new model; answers once it is compiled.

        Until then GET /v1/models lists it as loading or compiling, and requests for it get 503. A key without the
        `admin` scope may serve only a run folder that its own training jobs made.
        """
        who = ctx.caller(request)
        run_dir = confine(body.run_dir, [ctx.settings.runs_root], param="run_dir")
        check_run_folder_owner(ctx.jobs, run_dir, who, "serve")
        model_id = body.id or run_dir.name
        if not MODEL_ID.match(model_id):
            raise bad_value("id", model_id, f"{MODEL_ID_RULE} (the run folder's name is not one: give an id)")
        served = await anyio.to_thread.run_sync(ctx.models.add, model_id, run_dir, body.step, who.owner)
        return JSONResponse(served.describe().body(), status_code=201)

    @endpoint(response=ModelDeleted, errors=(403, 404, 409), scope=("admin", "train"))
    async def unload(request: Request) -> JSONResponse:
        """Stop serving a model; what it is generating ends as cancelled (503). A key without the `admin` scope may
        unload only a model it loaded."""
        who = ctx.caller(request)
        model_id = request.path_params["model"]
        served = ctx.models.get(model_id) if model_id not in ctx.models.loading_ids() else None
        if served is not None and not who.owns(served.owner):
            raise ApiError(
                403,
                f"model {model_id!r} was not loaded by this key: unloading it needs the 'admin' scope",
                type="permission_error",
                param="model",
                code="not_owner",
            )
        await anyio.to_thread.run_sync(ctx.models.remove, model_id)
        return JSONResponse(ModelDeleted(id=model_id).model_dump())

    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models", load, methods=["POST"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/models/{model:path}", unload, methods=["DELETE"]),
    ]
