"""The results document (``results.json``): building, writing atomically, reading.

Top level (schema version 1)::

    schema_version   int
    tool             {name, version, git_revision}
    created          ISO-8601 UTC timestamp
    model            {name, revision, family, num_blocks, d_model, image_size, device, dtype}
    settings         the audit's settings (batch size, dense threshold, ...)
    datasets         [{name, role: "id"|"ood", source, size, n_images, n_skipped, skipped, classes}]
    saes             [{spec, label, hook_point, config, datasets: {name: metrics}, pairs: [...]}]
    plugins          [{name, distribution, version}]: the plugins that took part (built-in first)
    extensions       optional {plugin name: dict} returned by plugins' sae_audit_run_finished

Every renderer reads this document alone.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import tempfile
from pathlib import Path

from sae_audit.errors import SaeAuditError

RESULTS_SCHEMA_VERSION = 1


def git_revision() -> str | None:
    """The commit of the sae-audit checkout this code runs from, if it runs from one."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def local_revision(path: str | os.PathLike) -> str | None:
    """``sha256:<first 16 hex>`` of a local model folder's weights, identifying exactly what ran."""
    import hashlib

    folder = Path(path)
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not folder.is_dir() or not weights:
        return None
    digest = hashlib.sha256()
    for w in weights:
        with open(w, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]


def build_results(vm, datasets: list[dict], saes: list[dict], settings: dict, plugins: list[dict] | None = None) -> dict:
    """Assemble the results document with provenance (see the module docstring).

    ``plugins`` defaults to every plugin loaded in the process-wide plugin manager.
    """
    from sae_audit import __version__

    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "tool": {"name": "sae-audit", "version": __version__, "git_revision": git_revision()},
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "model": {
            "name": vm.name,
            "revision": vm.revision or local_revision(vm.name),
            "family": vm.family,
            "num_blocks": vm.num_blocks,
            "d_model": vm.d_model,
            "image_size": vm.image_size,
            "device": str(vm.device),
            "dtype": str(vm.dtype).replace("torch.", ""),
        },
        "settings": settings,
        "datasets": datasets,
        "saes": saes,
        "plugins": plugins if plugins is not None else _loaded_plugins(),
    }


def _loaded_plugins() -> list[dict]:
    from sae_audit.plugins import get_plugin_manager

    return get_plugin_manager().provenance()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename.

    A crash or error half-way leaves the previous file (if any) untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dump_results(results: dict) -> str:
    return json.dumps(results, indent=1, allow_nan=False) + "\n"


def load_results(path: str | os.PathLike) -> dict:
    """Read a ``results.json``; :class:`SaeAuditError` if unreadable or of an unknown schema."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SaeAuditError(f"results file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise SaeAuditError(f"{path} is not a readable JSON file: {exc}") from None
    if not isinstance(data, dict) or "schema_version" not in data:
        raise SaeAuditError(f"{path} is not an sae-audit results file (no schema_version)")
    if data["schema_version"] != RESULTS_SCHEMA_VERSION:
        raise SaeAuditError(
            f"{path} has results schema version {data['schema_version']}; this sae-audit reads "
            f"version {RESULTS_SCHEMA_VERSION}"
        )
    for key in ("model", "datasets", "saes"):
        if key not in data:
            raise SaeAuditError(f"{path}: missing top-level key {key!r}")
    return data
