"""The one exception type users see.

A ``VitDeployError`` means the *input* was wrong (a path, a shape, an option), never that
vitdeploy has a bug. The CLI prints its message on one line and exits with code 2.
"""


class VitDeployError(Exception):
    """A user-facing error whose message says what went wrong and what to do next."""

    exit_code = 2
