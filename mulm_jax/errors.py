"""The one base of the errors a user can cause: a bad value, a missing file, a request that cannot be served."""


class MulmError(ValueError):
    """Something the user asked for that cannot be done as asked; the message names the value and what was expected.
    The command lines print it as one line (`error: ...`) and exit with 2; any other exception is a bug, and shows
    its traceback."""
