"""The served models and those still loading: list them, describe one, and load a trained run folder as a new one."""

from __future__ import annotations

import re

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mulm_jax.api.errors import ApiError
from mulm_jax.api.paths import confine
from mulm_jax.api.schemas import read_json

MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def routes(ctx) -> list[Route]:
    async def list_models(request: Request) -> JSONResponse:
        """The models this server serves, and those still loading (`state`: loading, compiling or ready)."""
        return JSONResponse({"object": "list", "data": ctx.models.describe_all()})

    async def get_model(request: Request) -> JSONResponse:
        """One served (or loading) model."""
        return JSONResponse(ctx.models.describe(request.path_params["model"]))

    async def load(request: Request) -> JSONResponse:
        """Serve a trained run folder (under the server's runs root) as a new model; answers once it is compiled.

        Until then GET /v1/models lists it as loading or compiling, and requests for it get 503.
        ---
        requestBody:
          required: true
          content:
            application/json:
              schema:
                type: object
                required: [run_dir]
                properties:
                  run_dir: {type: string, description: "a run folder, relative to the runs root"}
                  id: {type: string, description: "model id (default: the folder's name)"}
                  step: {type: integer, description: "a checkpoint step (default: the newest)"}
        """
        body = (await read_json(request, ctx.settings.max_body_bytes)).only(("run_dir", "id", "step"))
        run_dir = confine(body.string("run_dir"), [ctx.settings.runs_root], param="run_dir")
        model_id = body.string("id", run_dir.name)
        if not MODEL_ID.match(model_id):
            raise ApiError(400, f"id={model_id!r} is not valid: expected letters, digits, '.', '_', ':' or '-' "
                                "(at most 128)", param="id", code="invalid_value")
        step = body.integer("step", None, lo=0)
        served = await anyio.to_thread.run_sync(ctx.models.add, model_id, run_dir, step)
        return JSONResponse(served.describe(), status_code=201)

    return [Route("/v1/models", list_models, methods=["GET"]), Route("/v1/models", load, methods=["POST"]),
            Route("/v1/models/{model:path}", get_model, methods=["GET"])]
