"""Paths named in requests are confined to configured roots: resolved (links and `..` followed), then checked."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from mulm_jax.api.errors import ApiError


def confine(path: str, roots: Iterable[str | Path], *, param: str) -> Path:
    """`path` resolved, when it lies inside one of `roots`; relative paths are taken relative to the first root.

    Anything else (an absolute path elsewhere, `..` climbing out, a link pointing out) is refused with 403.
    """
    roots = [Path(r).resolve() for r in roots]
    if not isinstance(path, str) or not path or "\x00" in path:
        raise ApiError(400, f"{param}={path!r} is not a path", param=param, code="invalid_value")
    if not roots:
        raise ApiError(403, f"{param}: this server allows no paths here", type="permission_error", param=param,
                       code="path_not_allowed")
    given = Path(path).expanduser()
    resolved = (given if given.is_absolute() else roots[0] / given).resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise ApiError(403, f"{param}={path!r} is outside the folders this server may use "
                            f"({', '.join(str(r) for r in roots)})", type="permission_error", param=param,
                       code="path_not_allowed")
    return resolved
