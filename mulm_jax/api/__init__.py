"""The HTTP API: a Starlette app over inference, data set assembly and training jobs (`create_app`)."""

from mulm_jax.api.app import ApiContext, create_app
from mulm_jax.api.errors import ApiError

__all__ = ["ApiContext", "ApiError", "create_app"]
