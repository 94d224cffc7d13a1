"""One project-level exception type, so the CLI can turn any expected failure
into a one-line message and a non-zero exit code."""


class MoaspaceError(Exception):
    """An expected failure caused by input, configuration or environment.

    The message must name the file, column or ids at fault.
    """


class InputError(MoaspaceError):
    """Bad or inconsistent input data (files, tables, matrices)."""
