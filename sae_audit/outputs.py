"""Writing what sae-audit produces: atomic files and output folders.

Every file the tool writes goes through :func:`atomic_write_bytes` (a
temporary file in the same folder, then a rename), so a crash or an error
half-way leaves the previous file untouched. :func:`check_out_dir` is the one
check every command makes on its output folder before any work.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sae_audit.errors import SaeAuditError

__all__ = ["atomic_write_bytes", "atomic_write_text", "check_out_dir"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    A crash or error half-way leaves the previous file (if any) untouched. The
    file gets permission bits ``mode``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, mode: int = 0o644) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def check_out_dir(path: str | os.PathLike, overwrite: bool, field: str = "out") -> Path:
    """Refuse an output folder that is a file, or exists and is not empty unless ``overwrite``.

    Nothing is written or deleted here.

    Raises:
        SaeAuditError: naming ``field`` (the parameter that holds the folder).
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise SaeAuditError(f"`{field}` {out} exists and is a file; name a folder", field=field)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SaeAuditError(f"output folder {out} (`{field}`) already exists and is not empty; pass "
                            "`overwrite` to replace its files", field=field)
    return out
