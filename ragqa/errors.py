"""The one exception type that reaches the user as a one-line message."""


class RagqaError(Exception):
    """A problem the user can fix: printed as a single line, exit status 2."""


def first_line(exc: BaseException) -> str:
    """An exception's first message line (its type name when the message is empty), for one-line errors."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
