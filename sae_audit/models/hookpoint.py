"""Hook points: where an SAE reads a vision model (SPEC section 3).

A hook point is the output of transformer block ``L`` (0-based; the residual
stream after that block, i.e. ``hidden_states[L + 1]`` of a transformers
forward with ``output_hidden_states=True``) on a named token set:

- ``cls``: token 0 (families without a CLS token, such as SigLIP, refuse it);
- ``patch``: every patch token, register tokens excluded;
- ``mean``: the mean over the patch tokens;
- ``all``: every token (CLS, registers and patches).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sae_audit.errors import SaeAuditError

TOKEN_SETS = ("cls", "patch", "mean", "all")

_BLOCK_RE = re.compile(r"^(?:block\.)?(\d+)$")


@dataclass(frozen=True)
class HookPoint:
    """Block output ``block`` (0-based) read on token set ``tokens``.

    ``name`` (``"block.6"``) identifies the captured tensor; ``str(hp)``
    (``"block.6:patch"``) identifies the hook point with its token set.
    """

    block: int
    tokens: str = "patch"

    def __post_init__(self) -> None:
        if self.block < 0:
            raise SaeAuditError(f"hook point block must be >= 0, got {self.block}")
        if self.tokens not in TOKEN_SETS:
            raise SaeAuditError(
                f"unknown token set {self.tokens!r}: choose one of {', '.join(TOKEN_SETS)}"
            )

    @property
    def name(self) -> str:
        return f"block.{self.block}"

    def __str__(self) -> str:
        return f"{self.name}:{self.tokens}"

    @classmethod
    def parse(cls, text: str, tokens: str | None = None) -> "HookPoint":
        """Parse ``"block.L"``, ``"L"`` or ``"block.L:TOKENS"``.

        ``tokens`` is used when the text names no token set (default ``patch``).
        Raises :class:`SaeAuditError` on anything else.
        """
        text = str(text).strip()
        name, _, tok = text.partition(":")
        m = _BLOCK_RE.match(name.strip())
        if not m:
            raise SaeAuditError(
                f"unknown hook point {text!r}: expected 'block.L' (0-based block index), "
                "optionally followed by ':cls', ':patch', ':mean' or ':all'"
            )
        return cls(int(m.group(1)), (tok.strip() or tokens or "patch"))
