"""Errors a person can act on: one clear message, a non-zero exit."""


class MlclusterError(Exception):
    """An error the CLI prints as one line and exits with ``exit_code``."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class Unreachable(MlclusterError):
    """A host that did not answer over SSH: exit status 3, as a deploy's unreachable host."""

    exit_code = 3
