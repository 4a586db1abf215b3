"""Helpers shared by the format readers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sae_audit.errors import SaeAuditError
from sae_audit.safe_files import json_type, read_json_file

_HOOK_PATTERNS = [
    (re.compile(r"(?:^|\.)blocks\.(\d+)\.hook_resid_post$"), 0),
    (re.compile(r"(?:^|\.)blocks\.(\d+)\.hook_resid_pre$"), -1),
    (re.compile(r"(?:^|\.)(?:encoder\.)?layers?\.(\d+)$"), 0),
]


def hook_from_name(name: str | None) -> str | None:
    """Our hook point (``block.L``) for another library's hook name, when it names a block output.

    ``blocks.L.hook_resid_post`` (TransformerLens) and module paths ending in
    ``layer.L``/``layers.L`` (HF encoders, sparsify) are the output of block L;
    ``blocks.L.hook_resid_pre`` is the output of block L-1. Anything else
    (attention, MLP, ``hook_z``) gives ``None``: the audit then needs ``--hook``.
    """
    if not name:
        return None
    for pattern, shift in _HOOK_PATTERNS:
        m = pattern.search(str(name))
        if m:
            block = int(m.group(1)) + shift
            return f"block.{block}" if block >= 0 else None
    return None



def read_json(path: Path, what: str = "SAE config") -> dict[str, Any]:
    """The JSON object in the regular file ``path`` (at most :data:`~sae_audit.safe_files.MAX_CONFIG_BYTES`).

    Raises:
        SaeAuditError: the file is missing, not a regular file (a FIFO, a
            device), too large, not valid JSON, nested too deeply, or not a
            JSON object (the message names the type it is).
    """
    return read_json_file(path, what)


def positive_int(cfg: dict, key: str, source) -> int:
    """``cfg[key]`` as a positive int; SaeAuditError naming the key (and the JSON type given) when missing or bad."""
    if key not in cfg or cfg[key] is None:
        raise SaeAuditError(f"{source} is missing the key {key!r}")
    value = cfg[key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        kind = "" if isinstance(value, int) and not isinstance(value, bool) else f"{json_type(value)} "
        raise SaeAuditError(f"{source}: {key} must be a positive integer, got {kind}{value!r}")
    return value


def get_object(cfg: dict, key: str, source) -> dict:
    """``cfg[key]`` when it is a JSON object; ``{}`` when absent or null.

    Raises:
        SaeAuditError: ``cfg[key]`` is another JSON type (the message names it).
    """
    value = cfg.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SaeAuditError(f"{source}: {key} must be a JSON object, got {json_type(value)} {_short(value)}")
    return value


def get_bool(cfg: dict, key: str, default: bool, source) -> bool:
    """``cfg[key]`` when it is ``true``/``false``; ``default`` when absent or null.

    Raises:
        SaeAuditError: another JSON type (``"false"`` as a string would
            otherwise read as true).
    """
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise SaeAuditError(f"{source}: {key} must be true or false, got {json_type(value)} {_short(value)}")
    return value


def get_str(cfg: dict, key: str, default: str | None, source) -> str | None:
    """``cfg[key]`` when it is a string; ``default`` when absent or null.

    Raises:
        SaeAuditError: another JSON type.
    """
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise SaeAuditError(f"{source}: {key} must be a string, got {json_type(value)} {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
