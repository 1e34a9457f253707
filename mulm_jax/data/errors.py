"""The one exception type for data problems a user can cause and fix."""


class DataError(ValueError):
    """A source, setting, tokenizer or output folder that the data pipeline cannot use; the message names it."""
