"""One exception family for msdmatch.

Every error a user can cause derives from :class:`MsdmatchError`; the CLI turns
these into a single line and a non-zero exit code.  Messages name the
parameter, the value, the rule, and where possible the likely mistake.
"""


class MsdmatchError(Exception):
    """Root of all msdmatch errors.

    ``exit_code`` is what the CLI exits with: 1 for a failure, 2 for a
    mistake in what the user asked for.
    """

    exit_code = 1


class ParameterError(MsdmatchError, ValueError):
    """A function or CLI argument is out of range or of the wrong kind."""

    exit_code = 2


class StoreError(MsdmatchError):
    """A store is missing, unreadable, locked or written by another format."""

    exit_code = 2


class FormatMismatchError(StoreError):
    """A store or model was written with other feature parameters or format."""


class ModelError(MsdmatchError):
    """A model file is missing, malformed or incompatible."""

    exit_code = 2


class InputError(MsdmatchError):
    """One input item (audio or MIDI file) cannot be processed.

    Raised per item inside a stage; the stage records it in ``failures``
    and goes on.
    """


class StoreAccessError(MsdmatchError):
    """A store could not be read or written (network, S3 outage) after retries."""


class StageError(MsdmatchError):
    """Tasks of a stage failed for a reason outside msdmatch (storage, network)."""
