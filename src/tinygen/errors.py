"""The one exception type users see.

Every error caused by user input (a missing file, a corrupt checkpoint, a prompt with
unknown characters, a config that does not fit) is raised as a `TinygenError` whose
message names the problem and the fix. The CLI prints it as one line and exits 2.
"""


class TinygenError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""
