"""The one exception type for mistakes a user can make.

Anything a user can cause (a bad path, an unknown hook point, an SAE whose
width does not match the model, an empty image set, ...) raises
:class:`SaeAuditError` with a message that says what to do. The CLI prints the
message without a traceback and exits with status 2; any other exception is a
bug and exits with status 3.

Library messages name the library's parameters in backquotes (`` `image_size` ``,
`` `batch_size` ``), never command-line flags; the CLI translates those into the
flags the user typed (``--image-size``). An error about one parameter also
says which in :attr:`SaeAuditError.field`.
"""

from __future__ import annotations

import re


class SaeAuditError(Exception):
    """A user-facing error: the message is complete and actionable.

    Args:
        message: what is wrong and what to do.
        field: the request field or function parameter the error is about
            (``"image_size"``), if one; the CLI names the matching flag instead.
    """

    def __init__(self, message: str = "", *, field: str | None = None):
        super().__init__(message)
        self.field = field

    def with_names(self, names: dict[str, str]) -> str:
        """The message with each backquoted parameter name replaced as ``names`` says.

        ``{"image_size": "--image-size"}`` turns `` `image_size` `` into ``--image-size``;
        names not in ``names`` keep their backquotes. Used by the CLI to speak in flags.
        """
        return _NAME.sub(lambda m: names.get(m.group(1), m.group(0)), str(self))


_NAME = re.compile(r"`([A-Za-z_][A-Za-z0-9_.]*)`")


def is_network_error(exc: BaseException) -> bool:
    """Whether ``exc`` says a network request failed (no route, refused, DNS, TLS, a timeout).

    huggingface_hub raises its HTTP clients' own exception types (``httpx`` or
    ``requests``, depending on its version) besides ``OSError``; they are
    recognised by module so that a user's broken network is one clear message.
    """
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    return any(cls.__module__.split(".")[0].rstrip("0123456789") in ("httpx", "httpcore", "requests", "urllib")
               for cls in type(exc).__mro__)
