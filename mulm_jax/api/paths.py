"""Paths named in requests are confined to configured roots: resolved (links and `..` followed), then checked;
names that must be plain (no separators), and data set versions, are checked here too."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from mulm_jax.api.errors import ApiError
from mulm_jax.config import ServeConfig
from mulm_jax.data.assemble import MANIFEST
from mulm_jax.data.errors import DataError
from mulm_jax.data.sources import NAMED_SOURCES, local_paths
from mulm_jax.data.tasks import TASKS

PLAIN_NAME = "^[A-Za-z0-9][A-Za-z0-9._-]*$"  # a file or folder named directly: no separators, no `..`, not hidden
_PLAIN_NAME = re.compile(PLAIN_NAME)


def confine(path: str, roots: Iterable[str | Path], *, param: str) -> Path:
    """`path` resolved, when it lies inside one of `roots`; relative paths are taken relative to the first root.

    Anything else (an absolute path elsewhere, `..` climbing out, a link pointing out) is refused with 403.
    """
    roots = [Path(r).resolve() for r in roots]
    if not isinstance(path, str) or not path or "\x00" in path:
        raise ApiError(400, f"{param}={path!r} is not a path", param=param, code="invalid_value")
    if not roots:
        raise ApiError(
            403,
            f"{param}: this server allows no paths here",
            type="permission_error",
            param=param,
            code="path_not_allowed",
        )
    given = Path(path).expanduser()
    resolved = (given if given.is_absolute() else roots[0] / given).resolve()
    if not _inside(resolved, roots):
        raise _outside(f"{param}={path!r} is outside", roots, param)
    return resolved


def confine_source(source: str, roots: Iterable[str | Path], *, param: str) -> str:
    """A data source for a request: a named source or built-in task as it is; a file, folder or glob confined to
    `roots`, and so is the real path of every file it reads (a link inside a root that points out of them is refused
    with 403)."""
    if source in NAMED_SOURCES or source in TASKS:
        return source
    roots = [Path(r).resolve() for r in roots]
    spec = str(confine(source, roots, param=param))
    try:
        files = local_paths(spec)
    except DataError as e:
        raise ApiError(400, f"{param}: {e}", param=param, code="invalid_value") from None
    for file in files:
        real = file.resolve()
        if not _inside(real, roots):
            raise _outside(
                f"{param}={source!r} reads {str(file)!r}, a link to {str(real)!r}, which is outside", roots, param
            )
    return spec


def _inside(resolved: Path, roots: list[Path]) -> bool:
    return any(resolved == root or resolved.is_relative_to(root) for root in roots)


def _outside(what: str, roots: list[Path], param: str) -> ApiError:
    return ApiError(
        403,
        f"{what} the folders this server may use ({', '.join(str(r) for r in roots)})",
        type="permission_error",
        param=param,
        code="path_not_allowed",
    )


def plain_name(value: str, param: str) -> str:
    """`value` when it names a folder or file directly (no separators, no `..`, not hidden); else 400."""
    if not _PLAIN_NAME.fullmatch(value):
        raise ApiError(
            400,
            f"{param}={value!r} is not a plain name: expected letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            param=param,
            code="invalid_value",
        )
    return value


def version_folder(settings: ServeConfig, version: str, param: str) -> Path:
    """The folder of an assembled data set version in `settings.datasets_dir`; 404 when there is none."""
    folder = Path(settings.datasets_dir).resolve() / plain_name(version, param)
    if not (folder / MANIFEST).is_file():
        raise ApiError(
            404,
            f"no data set version {version!r} in the data set folder",
            type="not_found_error",
            param=param,
            code="dataset_not_found",
        )
    return folder
