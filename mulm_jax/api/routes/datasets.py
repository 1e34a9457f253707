"""Data sets: assemble a versioned data set as a background job, list the versions, read one's manifest and (pairs)
its examples with their loss mask."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mulm_jax.api.errors import ApiError
from mulm_jax.api.openapi import endpoint
from mulm_jax.api.paths import PLAIN_NAME, confine, confine_source, version_folder
from mulm_jax.api.quotas import admit_job
from mulm_jax.api.schemas import ConfigBody, config_body
from mulm_jax.config import Config, DataConfig, ServeConfig
from mulm_jax.data.assemble import TRAINED_TOKENIZERS, check_settings, list_versions, read_manifest
from mulm_jax.data.errors import DataError
from mulm_jax.data.loader import show_examples

SHOWN_EXAMPLES = 10  # GET /v1/datasets/{version}/examples/{split}: the first ones

AssembleDataset = config_body(
    "AssembleDataset",
    DataConfig,
    exclude=("dataset", "out_dir"),
    required=("sources",),
    doc="POST /v1/datasets: the data section of a config (`data assemble`'s flags, with underscores); its files "
    "inside the data roots, its version written to the server's data set folder.",
)


def confine_data(data: DataConfig, settings: ServeConfig, param: Callable[[str], str]) -> DataConfig:
    """The data section with its paths checked and resolved: sources and a tokenizer file inside the data roots, and
    output to `datasets_dir`; `param(field)` names the request field an error blames."""
    sources = tuple(confine_source(source, settings.data_roots, param=param("sources")) for source in data.sources)
    tokenizer = data.tokenizer
    if tokenizer not in TRAINED_TOKENIZERS:
        tokenizer = str(confine(tokenizer, settings.data_roots, param=param("tokenizer")))
    return dataclasses.replace(
        data, sources=sources, tokenizer=tokenizer, out_dir=str(Path(settings.datasets_dir).resolve())
    )


def dataset_config(body: ConfigBody, settings: ServeConfig) -> DataConfig:
    """The request as the data section of a config, confined (confine_data) and its settings checked together (as
    `data assemble` would), so that a bad combination is a 400, not a failed job."""
    public = {option.name: option.public for option in body.options}
    data = confine_data(DataConfig(**body.config_values()), settings, param=public.get)
    try:
        check_settings(data)
    except DataError as e:
        raise ApiError(400, str(e), code="invalid_value") from None
    return data


def routes(ctx) -> list[Route]:
    settings: ServeConfig = ctx.settings

    @endpoint(body=AssembleDataset, status=202, errors=(403,), scope="data")
    async def create_dataset(request: Request, body: AssembleDataset) -> JSONResponse:
        """Assemble a data set version from sources, as a background job (202 with the job), owned by the key."""
        who = ctx.caller(request)
        config = Config(data=dataset_config(body, settings))
        admit_job(who, ctx.jobs.running(who.owner), steps=None)
        command = [sys.executable, "-m", "mulm_jax", "data", "assemble", "--json"]
        job = ctx.jobs.start(
            "dataset",
            command,
            config=config,
            workdir=None,
            request=body.model_dump(exclude_unset=True),
            owner=who.owner,
        )
        return JSONResponse(job, status_code=202)

    @endpoint(scope="data")
    async def list_jobs(request: Request) -> JSONResponse:
        """Data set jobs, newest first: the key's own (an `admin` key's: every key's)."""
        return JSONResponse({"object": "list", "data": ctx.jobs.list("dataset", ctx.caller(request).sees)})

    @endpoint(errors=(404,), scope="data")
    async def get_job(request: Request) -> JSONResponse:
        """One data set job: its state and, once it succeeded, the manifest of the version it made."""
        return JSONResponse(ctx.jobs.get(request.path_params["id"], "dataset", ctx.caller(request).sees))

    @endpoint(scope=("data", "train"))
    async def list_datasets(request: Request) -> JSONResponse:
        """The assembled data set versions, each as its manifest."""
        folder = Path(settings.datasets_dir)
        manifests = list_versions(folder) if folder.is_dir() else []
        return JSONResponse({"object": "list", "data": manifests})

    @endpoint(errors=(400, 404), params={"version": PLAIN_NAME}, scope=("data", "train"))
    async def get_dataset(request: Request) -> JSONResponse:
        """One data set version's manifest: sources, settings, tokenizer, token counts."""
        return JSONResponse(read_manifest(version_folder(settings, request.path_params["version"], "version")))

    @endpoint(errors=(400, 404), params={"version": PLAIN_NAME, "split": "^(train|val)$"}, scope=("data", "train"))
    async def get_examples(request: Request) -> JSONResponse:
        """A data set of pairs: the first examples of a split, each token with its text and whether it is trained on
        (the loss mask), as `data show` prints them."""
        folder = version_folder(settings, request.path_params["version"], "version")
        manifest = read_manifest(folder)
        if manifest.get("kind", "text") == "text":
            raise ApiError(
                400,
                f"data set {manifest['version']} holds text, not pairs: it has no examples to show",
                param="version",
                code="not_pairs",
            )
        split = request.path_params["split"]
        if split not in ("train", "val"):
            raise ApiError(
                404,
                f"no split {split!r}: expected train or val",
                type="not_found_error",
                param="split",
                code="split_not_found",
            )
        return JSONResponse(
            {"object": "list", "kind": manifest["kind"], "data": show_examples(folder, split, 0, SHOWN_EXAMPLES)}
        )

    return [
        Route("/v1/datasets", create_dataset, methods=["POST"]),
        Route("/v1/datasets", list_datasets, methods=["GET"]),
        Route("/v1/datasets/jobs", list_jobs, methods=["GET"]),
        Route("/v1/datasets/jobs/{id}", get_job, methods=["GET"]),
        Route("/v1/datasets/{version}", get_dataset, methods=["GET"]),
        Route("/v1/datasets/{version}/examples/{split}", get_examples, methods=["GET"]),
    ]
