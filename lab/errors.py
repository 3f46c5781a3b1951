"""The one exception for bad input: the CLI turns it into a message and exit code 2."""


class LabInputError(Exception):
    """Input the user can fix: the message names the problem and the fix."""

    exit_code = 2
