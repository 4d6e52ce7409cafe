"""The one error type users see: a clear message, printed on one line by the CLI."""


class QsposError(Exception):
    """Bad input or an impossible request. The CLI prints the message and exits non-zero."""

    exit_code = 2
