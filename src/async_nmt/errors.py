"""User-facing errors: the CLI prints them as one line on stderr and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input (file, option, checkpoint): one line, no traceback."""
