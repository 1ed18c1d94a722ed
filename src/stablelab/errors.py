"""Exceptions with a meaning for the user."""


class UsageError(ValueError):
    """Bad input from the user: the CLI prints it on one line and exits with status 2."""
