"""The one exception type the command line turns into a one-line error and a non-zero exit."""


class ToolkitError(ValueError):
    """Bad input the user can fix; the message says what to do instead.

    ``toolkit`` prints ``error: <message>`` and exits with status 2, without a traceback.
    """
