"""The one exception type that reaches the user as a one-line message."""


class RagqaError(Exception):
    """A problem the user can fix: printed as a single line, exit status 2."""
