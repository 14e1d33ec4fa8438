"""The one exception type that the command line turns into `error: …` and exit status 2."""


class UserError(ValueError):
    """Bad input from the user: a missing file, an unsupported model, a malformed checkpoint.

    A `ValueError`, so library callers catch it as they would any bad argument. The CLI prints the
    message on one line and exits 2; nothing else is written.
    """
