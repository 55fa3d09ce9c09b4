"""The project's one user-facing exception type: every user error, one line, exit code 2."""

from __future__ import annotations


def one_line(text: str) -> str:
    """`text` with every line break and other non-printable character written as an escape.

    A message names the user's own paths and values, which may hold a newline; printed
    raw, one error would read as two lines (or forge a second one).
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


class DiffPIRError(ValueError):
    """Bad user input: names the input, the value and what was expected.

    Raised where input enters (io, config, operator construction, checkpoint
    loading). The CLI prints its message as one line and exits with code 2, so the
    message is kept on one line here (control characters escaped).
    """

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(one_line(str(message)), *args)


class TooLargeError(DiffPIRError):
    """An input beyond a size limit (pixels, values, bytes): a service answers it 413."""
