"""The one exception type for user mistakes.

The CLI turns a ``HarnessError`` into a single line on stderr and exit status 2, with
no traceback; anything else is a bug and keeps its traceback.
"""


class HarnessError(Exception):
    """A mistake in user input (file, study key, argument) with a message that says
    what is wrong, where, and how to fix it."""


#: the exit status of a user mistake (argparse's own), for the CLI and worker processes
EXIT_USER_ERROR = 2


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the trial fails with this as its reason."""
