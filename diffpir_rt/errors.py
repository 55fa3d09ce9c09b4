"""The project's one user-facing exception type (design.md, "Errors")."""


class DiffPIRError(ValueError):
    """Bad user input: names the input, the value and what was expected.

    Raised where input enters (io, config, operator construction, checkpoint
    loading). The CLI prints its message as one line and exits with code 2.
    """
