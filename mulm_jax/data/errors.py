"""The one exception type for data problems a user can cause and fix."""

from mulm_jax.errors import MulmError


class DataError(MulmError):
    """A source, setting, tokenizer or output folder that the data pipeline cannot use; the message names it."""
