"""The one exception type the package raises for refusals a person must act on."""

from __future__ import annotations


class CblbError(Exception):
    """A refused operation, with a one-line message that says what to do.

    ``errno`` is the kernel's errno when the module refused the command, else 0.
    """

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.errno = errno

    def __str__(self) -> str:
        return self.message
