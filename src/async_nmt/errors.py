"""User-facing errors: the CLI prints them as one line on stderr and exits with their `exit_code`."""


class UserError(Exception):
    """A problem with the user's input (file, option, checkpoint): one line, no traceback, exit code 2."""

    exit_code = 2


class WorkerFailed(UserError):
    """A worker process raised or died, so the run stopped: one line naming the worker, exit code 1."""

    exit_code = 1


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: the run stopped without saving, exit code 1."""

    exit_code = 1
