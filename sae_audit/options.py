"""Fields of the library's request dataclasses: a default, a help text and the allowed values, in one place.

The requests (:class:`sae_audit.audit.AuditRequest`,
:class:`sae_audit.train.TrainRequest`, :class:`sae_audit.train.CacheRequest`
and the option groups they hold) declare every setting with :func:`option`.
The command line reads defaults, help and choices from them
(:func:`option_info`), so nothing is written twice.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["OptionInfo", "option", "option_info"]


def option(default: Any = dataclasses.MISSING, *, help: str, choices: tuple | None = None,  # noqa: A002
           metavar: str | None = None) -> Any:
    """A dataclass field with its help text (and allowed values): ``x: int = option(32, help="...")``."""
    metadata = {"help": help, "choices": choices, "metavar": metavar}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    """What :func:`option_info` reads from a field: its default (``MISSING`` if required), help and choices."""

    name: str
    default: Any
    help: str
    choices: tuple | None
    metavar: str | None


def option_info(cls: type, name: str) -> OptionInfo:
    """The default, help and choices of field ``name`` of the dataclass ``cls``.

    Raises:
        KeyError: ``cls`` has no such field (a bug in the caller).
    """
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return OptionInfo(name, f.default, f.metadata.get("help", ""), f.metadata.get("choices"),
                      f.metadata.get("metavar"))
