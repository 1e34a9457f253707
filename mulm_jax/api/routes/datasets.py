"""Data sets: assemble a versioned data set as a background job, list the versions, read one's manifest."""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mulm_jax.api.errors import ApiError
from mulm_jax.api.paths import confine, confine_source
from mulm_jax.api.schemas import Body, read_json
from mulm_jax.config import DataConfig, ServeConfig
from mulm_jax.data.assemble import MANIFEST, TRAINED_TOKENIZERS, check_settings, list_versions, read_manifest
from mulm_jax.data.errors import DataError
from mulm_jax.data.clean import SPLIT_MODES
from mulm_jax.data.dedup import DedupMode
from mulm_jax.data.sources import InvalidUtf8

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# The request fields of POST /v1/datasets: the `data assemble` flags, with underscores.
ASSEMBLE_FIELDS = ("source", "tokenizer", "vocab_size", "val_fraction", "seq_len", "text_field", "invalid_utf8",
                   "fold_whitespace", "min_doc_chars", "max_doc_chars", "split_documents", "dedup",
                   "near_dup_threshold")


def plain_name(value: str, param: str) -> str:
    """`value` when it names a folder or file directly (no separators, no `..`, not hidden); else 400."""
    if not _PLAIN_NAME.fullmatch(value):
        raise ApiError(400, f"{param}={value!r} is not a plain name: expected letters, digits, '.', '_' or '-', "
                            "starting with a letter or digit", param=param, code="invalid_value")
    return value


def version_folder(settings: ServeConfig, version: str, param: str) -> Path:
    """The folder of an assembled data set version in `settings.datasets_dir`; 404 when there is none."""
    folder = Path(settings.datasets_dir).resolve() / plain_name(version, param)
    if not (folder / MANIFEST).is_file():
        raise ApiError(404, f"no data set version {version!r} in the data set folder", type="not_found_error",
                       param=param, code="dataset_not_found")
    return folder


def assemble_flags(body: Body, settings: ServeConfig) -> list[str]:
    """The `data assemble` flags for a request body, with the paths it names confined to the data roots and the
    settings checked together (as the command would) so that a bad combination is a 400, not a failed job."""
    sources = body.strings("source")
    if not sources:
        raise ApiError(400, "'source' must name at least one source", param="source", code="invalid_value")
    sources = tuple(confine_source(source, settings.data_roots, param="source") for source in sources)
    tokenizer = body.string("tokenizer", None)
    if tokenizer is not None and tokenizer not in TRAINED_TOKENIZERS:
        tokenizer = str(confine(tokenizer, settings.data_roots, param="tokenizer"))
    values = {
        "tokenizer": tokenizer,
        "vocab_size": body.integer("vocab_size", None, lo=1),
        "val_fraction": body.number("val_fraction", None, lo=0.0, hi=1.0),
        "seq_len": body.integer("seq_len", None, lo=1),
        "text_field": body.string("text_field", None),
        "invalid_utf8": body.string("invalid_utf8", None, choices=typing.get_args(InvalidUtf8)),
        "min_doc_chars": body.integer("min_doc_chars", None, lo=1),
        "max_doc_chars": body.integer("max_doc_chars", None, lo=1),
        "split_documents": body.string("split_documents", None, choices=SPLIT_MODES),
        "dedup": body.string("dedup", None, choices=typing.get_args(DedupMode)),
        "near_dup_threshold": body.number("near_dup_threshold", None, lo=0.0, hi=1.0),
        "fold_whitespace": body.boolean("fold_whitespace", None),
    }
    given = {name: value for name, value in values.items() if value is not None}
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

    async def create_dataset(request: Request) -> JSONResponse:
        """Assemble a data set version from sources, as a background job (202 with the job).
        ---
        requestBody:
          required: true
          content:
            application/json:
              schema:
                type: object
                required: [source]
                properties:
                  source: {oneOf: [{type: string}, {type: array, items: {type: string}}],
                           description: "named sources, or files, folders or globs inside the data roots"}
                  tokenizer: {type: string, description: "char, bpe, unigram or a SentencePiece .model file"}
                  vocab_size: {type: integer, description: "for bpe / unigram"}
                  val_fraction: {type: number}
                  seq_len: {type: integer}
                  text_field: {type: string}
                  invalid_utf8: {type: string, enum: [replace, reject]}
                  fold_whitespace: {type: boolean}
                  min_doc_chars: {type: integer}
                  max_doc_chars: {type: integer}
                  split_documents: {type: string, enum: [none, paragraphs, headings]}
                  dedup: {type: string, enum: [none, exact, near]}
                  near_dup_threshold: {type: number}
        responses:
          "202": {description: "the job, running"}
        """
        body = (await read_json(request, settings.max_body_bytes)).only(ASSEMBLE_FIELDS)
        flags = assemble_flags(body, settings)
        out_dir = str(Path(settings.datasets_dir).resolve())
        command = [sys.executable, "-m", "mulm_jax", "data", "assemble", "--json", "--out", out_dir, *flags]
        job = ctx.jobs.start("dataset", command, workdir=None, request=body.data)
        return JSONResponse(job, status_code=202)

    async def list_jobs(request: Request) -> JSONResponse:
        """Data set jobs, newest first."""
        return JSONResponse({"object": "list", "data": ctx.jobs.list("dataset")})

    async def get_job(request: Request) -> JSONResponse:
        """One data set job: its state and, once it succeeded, the manifest of the version it made."""
        return JSONResponse(ctx.jobs.get(request.path_params["id"], "dataset"))

    async def list_datasets(request: Request) -> JSONResponse:
        """The assembled data set versions, each as its manifest."""
        folder = Path(settings.datasets_dir)
        manifests = list_versions(folder) if folder.is_dir() else []
        return JSONResponse({"object": "list", "data": manifests})

    async def get_dataset(request: Request) -> JSONResponse:
        """One data set version's manifest: sources, settings, tokenizer, token counts."""
        return JSONResponse(read_manifest(version_folder(settings, request.path_params["version"], "version")))

    return [Route("/v1/datasets", create_dataset, methods=["POST"]),
            Route("/v1/datasets", list_datasets, methods=["GET"]),
            Route("/v1/datasets/jobs", list_jobs, methods=["GET"]),
            Route("/v1/datasets/jobs/{id}", get_job, methods=["GET"]),
            Route("/v1/datasets/{version}", get_dataset, methods=["GET"])]
