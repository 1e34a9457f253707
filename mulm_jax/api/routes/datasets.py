"""Data sets: assemble a versioned data set as a background job, list the versions, read one's manifest."""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mulm_jax.api.errors import ApiError
from mulm_jax.api.openapi import endpoint
from mulm_jax.api.paths import PLAIN_NAME, confine, confine_source, version_folder
from mulm_jax.api.schemas import ApiModel, Int, Text, one_of
from mulm_jax.config import DataConfig, ServeConfig
from mulm_jax.data.assemble import TRAINED_TOKENIZERS, check_settings, list_versions, read_manifest
from mulm_jax.data.errors import DataError
from mulm_jax.data.clean import SPLIT_MODES
from mulm_jax.data.dedup import DedupMode
from mulm_jax.data.sources import InvalidUtf8

class AssembleDataset(ApiModel):
    """POST /v1/datasets: the `data assemble` flags, with underscores."""

    source: Annotated[Union[Text, Annotated[list[Text], Field(min_length=1)]],
                      one_of("a source or a non-empty array of them")] = Field(
        description="named sources, or files, folders or globs inside the data roots")
    tokenizer: Text = Field(None, description=f"{', '.join(TRAINED_TOKENIZERS)} or a SentencePiece .model file")
    vocab_size: Int = Field(None, ge=1, description="for the trained tokenizers but char")
    val_fraction: float = Field(None, ge=0.0, le=1.0)
    seq_len: Int = Field(None, ge=1)
    text_field: str = None
    invalid_utf8: Literal[typing.get_args(InvalidUtf8)] = None
    fold_whitespace: bool = None
    min_doc_chars: Int = Field(None, ge=1)
    max_doc_chars: Int = Field(None, ge=1)
    split_documents: Literal[SPLIT_MODES] = None
    dedup: Literal[typing.get_args(DedupMode)] = None
    near_dup_threshold: float = Field(None, ge=0.0, le=1.0)


def assemble_flags(body: AssembleDataset, settings: ServeConfig) -> list[str]:
    """The `data assemble` flags for a request body, with the paths it names confined to the data roots and the
    settings checked together (as the command would) so that a bad combination is a 400, not a failed job."""
    sources = (body.source,) if isinstance(body.source, str) else body.source
    sources = tuple(confine_source(source, settings.data_roots, param="source") for source in sources)
    given = body.model_dump(exclude={"source"}, exclude_none=True)
    if body.tokenizer is not None and body.tokenizer not in TRAINED_TOKENIZERS:
        given["tokenizer"] = str(confine(body.tokenizer, settings.data_roots, param="tokenizer"))
    try:
        check_settings(dataclasses.replace(DataConfig(), sources=sources, **given))
    except DataError as e:
        raise ApiError(400, str(e), code="invalid_value") from None
    flags = [flag for source in sources for flag in ("--source", source)]
    for name, value in given.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, str(value)]
    return flags


def routes(ctx) -> list[Route]:
    settings: ServeConfig = ctx.settings

    @endpoint(body=AssembleDataset, status=202, errors=(403,))
    async def create_dataset(request: Request, body: AssembleDataset) -> JSONResponse:
        """Assemble a data set version from sources, as a background job (202 with the job)."""
        flags = assemble_flags(body, settings)
        out_dir = str(Path(settings.datasets_dir).resolve())
        command = [sys.executable, "-m", "mulm_jax", "data", "assemble", "--json", "--out", out_dir, *flags]
        job = ctx.jobs.start("dataset", command, workdir=None, request=body.model_dump(exclude_unset=True))
        return JSONResponse(job, status_code=202)

    @endpoint()
    async def list_jobs(request: Request) -> JSONResponse:
        """Data set jobs, newest first."""
        return JSONResponse({"object": "list", "data": ctx.jobs.list("dataset")})

    @endpoint(errors=(404,))
    async def get_job(request: Request) -> JSONResponse:
        """One data set job: its state and, once it succeeded, the manifest of the version it made."""
        return JSONResponse(ctx.jobs.get(request.path_params["id"], "dataset"))

    @endpoint()
    async def list_datasets(request: Request) -> JSONResponse:
        """The assembled data set versions, each as its manifest."""
        folder = Path(settings.datasets_dir)
        manifests = list_versions(folder) if folder.is_dir() else []
        return JSONResponse({"object": "list", "data": manifests})

    @endpoint(errors=(400, 404), params={"version": PLAIN_NAME})
    async def get_dataset(request: Request) -> JSONResponse:
        """One data set version's manifest: sources, settings, tokenizer, token counts."""
        return JSONResponse(read_manifest(version_folder(settings, request.path_params["version"], "version")))

    return [Route("/v1/datasets", create_dataset, methods=["POST"]),
            Route("/v1/datasets", list_datasets, methods=["GET"]),
            Route("/v1/datasets/jobs", list_jobs, methods=["GET"]),
            Route("/v1/datasets/jobs/{id}", get_job, methods=["GET"]),
            Route("/v1/datasets/{version}", get_dataset, methods=["GET"])]
