"""The one exception type for mistakes a user can make.

Anything a user can cause (a bad path, an unknown hook point, an SAE whose
width does not match the model, an empty image set, ...) raises
:class:`SaeAuditError` with a message that says what to do. The CLI prints the
message without a traceback and exits with status 2; any other exception is a
bug and exits with status 3.
"""

from __future__ import annotations


class SaeAuditError(Exception):
    """A user-facing error: the message is complete and actionable."""
