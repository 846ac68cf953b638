"""The one exception type taskvec raises for bad input: it names the problem and the fix."""


class TaskvecError(ValueError):
    """Bad input or an impossible request; the message says what was wrong and how to fix it.

    Example:
        >>> raise TaskvecError("layer 40 is out of range: gemma-3-270m has layers 0..17")
        Traceback (most recent call last):
        ...
        taskvec.errors.TaskvecError: layer 40 is out of range: gemma-3-270m has layers 0..17
    """
