"""The one base class of mistakes a user can fix.

Every stage entry point reports a :class:`UserError` as one line naming the problem (bad
input, a cache from another backbone, a missing file) and exits 1; anything else is a bug
and keeps its traceback. Subclasses keep a builtin base too (``ValueError``...) so callers
that catch those still work.
"""


class UserError(Exception):
    """A mistake in the user's input, files or params: reported as one line, no traceback."""
