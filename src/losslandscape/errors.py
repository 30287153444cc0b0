"""The one exception type for mistakes a user can fix.

`cli.py` catches it and prints its message as one line on stderr (exit 1);
every other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a spec value, a missing file, a model that does not fit its checkpoint."""
