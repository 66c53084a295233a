"""The one exception type the package raises for refusals a person must act on."""

from __future__ import annotations


class CblbError(Exception):
    """A refused operation, with a one-line message that says what to do.

    ``errno`` is the kernel's errno when the module refused the command, else 0. ``page`` is
    the same refusal worded for the web page, given only where ``message`` tells the
    reader to run a command (``cblb umount NAME``): the page names its own buttons instead.
    """

    def __init__(self, message: str, errno: int = 0, page: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errno = errno
        self.page = page

    def for_page(self) -> str:
        """The wording for the web page (``page`` when given, else ``message``)."""
        return self.page or self.message

    def __str__(self) -> str:
        return self.message
