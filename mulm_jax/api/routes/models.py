"""The served models and those still loading: list them, describe one, and load a trained run folder as a new one."""

from __future__ import annotations

import re
from typing import Annotated

import anyio
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mulm_jax.api.openapi import endpoint
from mulm_jax.api.paths import confine
from mulm_jax.api.registry import ModelCard, ModelList
from mulm_jax.api.schemas import ApiModel, Int, Text, bad_value, one_of

MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
MODEL_ID_RULE = "letters, digits, '.', '_', ':' or '-' (at most 128), starting with a letter or digit"


class LoadModel(ApiModel):
    run_dir: Text = Field(description="a run folder, relative to the runs root")
    id: Annotated[str, Field(pattern=MODEL_ID.pattern), one_of(MODEL_ID_RULE)] = Field(
        None, description="the model's id (default: the run folder's name)"
    )
    step: Int = Field(None, ge=0, description="a checkpoint step (default: the newest)")


def routes(ctx) -> list[Route]:
    @endpoint(response=ModelList)
    async def list_models(request: Request) -> JSONResponse:
        """The models this server serves, and those still loading (`state`: loading, compiling or ready)."""
        return JSONResponse(ModelList(data=ctx.models.describe_all()).model_dump(exclude_none=True))

    @endpoint(response=ModelCard, errors=(404,))
    async def get_model(request: Request) -> JSONResponse:
        """One served (or loading) model."""
        return JSONResponse(ctx.models.describe(request.path_params["model"]).body())

    @endpoint(body=LoadModel, status=201, response=ModelCard, errors=(403, 409))
    async def load(request: Request, body: LoadModel) -> JSONResponse:
        """Serve a trained run folder (under the server's runs root) as a new model; answers once it is compiled.

        Until then GET /v1/models lists it as loading or compiling, and requests for it get 503.
        """
        run_dir = confine(body.run_dir, [ctx.settings.runs_root], param="run_dir")
        model_id = body.id or run_dir.name
        if not MODEL_ID.match(model_id):
            raise bad_value("id", model_id, f"{MODEL_ID_RULE} (the run folder's name is not one: give an id)")
        served = await anyio.to_thread.run_sync(ctx.models.add, model_id, run_dir, body.step)
        return JSONResponse(served.describe().body(), status_code=201)

    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models", load, methods=["POST"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    ]
