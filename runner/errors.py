"""The one exception type for mistakes a user can fix: printed as one line, exit status 1."""


class UserError(Exception):
    """Bad input (matrix file, command line, model path); the message says what to change."""
