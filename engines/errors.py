"""The one base class for errors that are the user's to fix.

The CLI prints such an error as a single line and exits non-zero; anything else is a bug and keeps
its traceback.
"""


class SegstreamError(Exception):
    """A user-facing error: bad input, bad configuration, missing file or device."""
