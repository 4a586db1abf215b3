"""Helpers shared by the format readers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sae_audit.errors import SaeAuditError

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



def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; SaeAuditError when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SaeAuditError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SaeAuditError(f"{path} must hold a JSON object")
    return data


def positive_int(cfg: dict, key: str, source) -> int:
    """``cfg[key]`` as a positive int; SaeAuditError naming the key when missing or bad."""
    if key not in cfg or cfg[key] is None:
        raise SaeAuditError(f"{source} is missing the key {key!r}")
    value = cfg[key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise SaeAuditError(f"{source}: {key} must be a positive integer, got {value!r}")
    return value
