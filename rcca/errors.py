"""Errors caused by the user's input (config, files), reported as one line without a traceback."""


class UserError(Exception):
    """A problem the user can fix: the message names the file or config key and what to do."""
