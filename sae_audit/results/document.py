"""The results document (``results.json``): building, writing atomically, reading.

Top level (schema version 2)::

    schema_version   int
    tool             {name, version, git_revision}
    created          ISO-8601 UTC timestamp
    model            {name, revision, family, num_blocks, d_model, image_size, device, dtype}
    settings         the audit's settings (batch size, dense threshold, seed, ...)
    provenance       {python, platform, packages: {torch, transformers, ...}, plugins, seeds, command}
    metrics          {key: {label, higher_is_better, scope, description}}; a metric a suite declared
                     also has suite, path, plugin, pct, digits and optionally interval, floor
                     (see sae_audit.results.metric_info)
    datasets         [{name, role: "id"|"ood", source, size, n_images, n_skipped, skipped, classes,
                       content_hash, content_hash_of}]
    saes             [{spec, label, hook_point, weights_sha256, config, datasets: {name: metrics},
                       pairs: [...], noise_floor, suites: {name: {datasets, pairs, noise_floor}}}]
    plugins          [{name, distribution, version}]: the plugins that took part (built-in first;
                     see sae_audit.audit.contributors); provenance.plugins lists every installed one
    extensions       optional {plugin name: dict} returned by plugins' sae_audit_run_finished

Intervals, noise floor, shift (version 2; SPEC section 5). Every metrics dict
(a set's, a pair's, a suite's) holds its point values where version 1 had them
and, beside them, ``intervals: {metric: [low, high]}``: the 95% Poisson-bootstrap
interval (the interval has the value's shape with each number replaced by
``[low, high]``; ``null`` or a missing key: unavailable). Every pair holds
``shifted: {metric: true | false | null}`` (:mod:`sae_audit.results.shift`) and,
when there is a floor, ``floor: {metric: [low, high]}``, the floor's interval; every
SAE holds ``noise_floor``, the pair metrics between two halves of the ID set
(``{"id", "n_images": [A, B], metric: value, ..., "intervals"}``) or
``{"unavailable": reason}``, and each suite with pairs its own ``noise_floor``.
``settings.bootstrap`` is the number of replicates (0: intervals off).
A version-1 file is upgraded with ``upgraded_from: 1`` and every floor marked
unavailable, so it renders with intervals shown as unavailable.

The JSON Schema is shipped in the package: ``sae_audit/results/schema/results-v2.json``
(:func:`schema`; ``results-v1.json`` for the previous version). Every renderer
reads this document alone.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
from pathlib import Path

from sae_audit.errors import SaeAuditError

RESULTS_SCHEMA_VERSION = 2


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


def files_sha256(folder: str | os.PathLike, pattern: str = "*.safetensors") -> str | None:
    """``sha256:<64 hex>`` of the files of ``folder`` matching ``pattern``; ``None`` when none match.

    One file: the SHA-256 of its bytes (what ``sha256sum FILE`` prints). Several
    files: the SHA-256 of the ``sha256sum`` listing of them, sorted by name
    (``"<hex>  <name>\\n"`` per file), so renaming a shard changes it too.
    """
    import hashlib

    files = sorted(Path(folder).glob(pattern))
    if not files:
        return None
    hexes = []
    for f in files:
        digest = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        hexes.append(digest.hexdigest())
    if len(files) == 1:
        return "sha256:" + hexes[0]
    listing = "".join(f"{h}  {f.name}\n" for h, f in zip(hexes, files))
    return "sha256:" + hashlib.sha256(listing.encode()).hexdigest()


def dataset_fingerprint(image_set) -> dict:
    """A cheap content hash of an image set as the audit reads it.

    Reads only the provenance contract of :class:`sae_audit.data.ImageSet`:
    hashes, in order, every item's id and label and, where
    ``item_file(i)`` names the image's own file, that file's size; then the
    bytes of each of ``content_files()`` (an IDX file and its labels,
    OpenCV's ``digits.png``; a wrapper set reports its base's). It identifies
    *which* images were read without decoding them again. Returns
    ``{"content_hash": "sha256:<64 hex>", "content_hash_of": what}``.
    """
    import hashlib

    digest = hashlib.sha256()
    what = ["item ids", "labels"]
    sized = False
    for i in range(len(image_set)):
        item, size = str(image_set.item_id(i)), ""
        path = image_set.item_file(i)
        if path is not None:
            sized = True
            try:
                size = str(os.path.getsize(path))
            except OSError:
                size = "?"
        digest.update(f"{item}\0{image_set.label(i)}\0{size}\n".encode())
    if sized:
        what.append("file sizes")
    for f in image_set.content_files():
        if f is not None and Path(f).is_file():
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            what.append(f"bytes of {Path(f).name}")
    return {"content_hash": "sha256:" + digest.hexdigest(),
            "content_hash_of": ", ".join(what[:-1]) + " and " + what[-1]}


def provenance(seed: int | None = None, command: str | None = None) -> dict:
    """Versions of Python and the key packages, the platform, installed plugins, seeds and the command line."""
    import platform
    from importlib import metadata

    packages = {}
    for name in ("torch", "transformers", "huggingface_hub", "safetensors", "numpy", "scipy", "pillow"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    plugins = {}
    try:
        for ep in metadata.entry_points(group="sae_audit"):
            dist = getattr(ep, "dist", None)
            plugins[ep.name] = dist.version if dist is not None else None
    except Exception:  # noqa: BLE001 - a broken plugin install must not break provenance
        pass
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "plugins": plugins,
        "seeds": {"subset": seed},
        "command": command,  # the CLI fills in its command line; None from the Python API
    }


def build_results(vm, datasets: list[dict], saes: list[dict], settings: dict, plugins: list[dict] | None = None) -> dict:
    """Assemble the results document with provenance (see the module docstring).

    ``plugins`` defaults to every plugin loaded in the process-wide plugin manager.
    """
    from sae_audit import __version__
    from sae_audit.results.metric_info import metrics_table

    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "tool": {"name": "sae-audit", "version": __version__, "git_revision": git_revision()},
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "model": {
            "name": vm.name,
            "display_name": getattr(vm, "display_name", "") or vm.name,
            "revision": vm.revision or local_revision(vm.name),
            "family": vm.family,
            "num_blocks": vm.num_blocks,
            "d_model": vm.d_model,
            "image_size": vm.image_size,
            "device": str(vm.device),
            "dtype": str(vm.dtype).replace("torch.", ""),
        },
        "settings": settings,
        "provenance": provenance(settings.get("seed")),
        "metrics": metrics_table(),
        "datasets": datasets,
        "saes": saes,
        "plugins": plugins if plugins is not None else _loaded_plugins(),
    }


def _loaded_plugins() -> list[dict]:
    from sae_audit.plugin_manager import get_plugin_manager

    return get_plugin_manager().provenance()


def dump_results(results: dict) -> str:
    return json.dumps(results, indent=1, allow_nan=False) + "\n"


def schema(version: int = RESULTS_SCHEMA_VERSION) -> dict:
    """The JSON Schema of results documents of ``version`` (shipped in the package)."""
    from importlib import resources

    text = resources.files("sae_audit.results").joinpath(f"schema/results-v{version}.json").read_text("utf-8")
    return json.loads(text)


def _json_path(parts) -> str:
    path = "$"
    for p in parts:
        path += f"[{p}]" if isinstance(p, int) else (f".{p}" if str(p).isidentifier() else f"[{json.dumps(p)}]")
    return path


def validate_results(data: dict, where: str = "results") -> None:
    """Check ``data`` against the shipped JSON Schema (and a few cross-field rules).

    Raises:
        SaeAuditError: naming the JSON path of the first error, e.g.
            ``$.saes[0].datasets.digits.fvu: 'x' is not of type 'number', 'null'``.
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    try:
        errors = sorted(validator.iter_errors(data),
                        key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    except RecursionError:
        raise SaeAuditError(f"{where} is nested too deeply to be a results file") from None
    if errors:
        first = errors[0]
        more = f" ({len(errors) - 1} more error(s))" if len(errors) > 1 else ""
        raise SaeAuditError(
            f"{where} does not match the results schema v{RESULTS_SCHEMA_VERSION} at "
            f"{_json_path(first.absolute_path)}: {first.message}{more}"
        )
    roles = [d["role"] for d in data["datasets"]]
    if roles.count("id") != 1 or "ood" not in roles:
        raise SaeAuditError(f"{where}: $.datasets must hold exactly one 'id' set and at least one 'ood' set, "
                            f"got roles {roles}")
    names = [d["name"] for d in data["datasets"]]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SaeAuditError(f"{where}: $.datasets names image set(s) {twice} more than once; each set needs its "
                            "own name")
    for i, s in enumerate(data["saes"]):
        missing = [n for n in names if n not in s["datasets"]]
        if missing:
            raise SaeAuditError(f"{where}: $.saes[{i}].datasets has no metrics for image set(s) {missing}")
        ood_pairs = {p["ood"] for p in s["pairs"]}
        lacking = [n for d, n in zip(roles, names) if d == "ood" and n not in ood_pairs]
        if lacking:
            raise SaeAuditError(f"{where}: $.saes[{i}].pairs has no ID/OOD comparison for {lacking}")


def _upgrade_1_to_2(doc: dict) -> dict:
    """Version 1 had no intervals, floors or shift flags: mark them unavailable (nothing is invented)."""
    doc = dict(doc, schema_version=2)
    doc.setdefault("upgraded_from", 1)
    why = ("written by an sae-audit without intervals or a noise floor (results schema 1); re-run the audit for "
           "them")
    saes = []
    for s in doc.get("saes") or []:
        if isinstance(s, dict):
            s = dict(s)
            s.setdefault("noise_floor", {"unavailable": why})
        saes.append(s)
    if isinstance(doc.get("saes"), list):
        doc["saes"] = saes
    return doc


# Upgraders from an older schema version to the next one: {old_version: fn(doc) -> doc}.
UPGRADERS: dict[int, object] = {1: _upgrade_1_to_2}


def upgrade_results(data: dict, where: str = "results") -> dict:
    """Bring ``data`` to :data:`RESULTS_SCHEMA_VERSION`, or say exactly why it cannot.

    Files of the current version written before optional blocks existed
    (``metrics``) get them filled in from this version's tables.

    Raises:
        SaeAuditError: a version newer than this sae-audit reads (upgrade
            sae-audit), an older one with no upgrade path, or not an integer.
    """
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise SaeAuditError(f"{where}: schema_version must be an integer, got {version!r}")
    if version > RESULTS_SCHEMA_VERSION:
        raise SaeAuditError(
            f"{where} has results schema version {version}, written by a newer sae-audit; this sae-audit "
            f"reads versions up to {RESULTS_SCHEMA_VERSION}: upgrade sae-audit (pip install -U sae-audit)"
        )
    while version < RESULTS_SCHEMA_VERSION:
        step = UPGRADERS.get(version)
        if step is None:
            raise SaeAuditError(
                f"{where} has results schema version {version}; sae-audit {RESULTS_SCHEMA_VERSION} has no "
                f"upgrade from it (the first published version is 1): re-run the audit with this sae-audit"
            )
        data = step(data)  # type: ignore[operator]
        version = data["schema_version"]
    if "metrics" not in data:
        from sae_audit.results.metric_info import metrics_table

        data["metrics"] = metrics_table()
    return data


def load_results(path: str | os.PathLike) -> dict:
    """Read, upgrade and validate a ``results.json``.

    Raises:
        SaeAuditError: the file is missing or not JSON, is not a results file,
            has a schema version that cannot be upgraded, or does not match the
            schema (the message gives the JSON path of the first error).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise SaeAuditError(f"{path} is nested too deeply to be a results file") from None
    except FileNotFoundError:
        raise SaeAuditError(f"results file {path} does not exist") from None
    except IsADirectoryError:
        raise SaeAuditError(f"{path} is a folder; pass the results.json inside it") from None
    except (OSError, ValueError) as exc:
        raise SaeAuditError(f"{path} is not a readable JSON file: {exc}") from None
    if not isinstance(data, dict) or "schema_version" not in data:
        raise SaeAuditError(f"{path} is not an sae-audit results file (no schema_version)")
    data = upgrade_results(data, str(path))
    validate_results(data, str(path))
    return data


def json_ready_problem(value, path: str = "$") -> str | None:
    """Why ``value`` cannot go into a results document as is, or ``None`` when it can.

    Allowed: ``None``, ``bool``, ``int``, finite ``float``, ``str``, lists of
    these and dicts with string keys. NaN and infinities must be ``None``;
    numpy scalars and tensors must be converted (``float(x)``, ``x.tolist()``).
    Returns the JSON path and the problem, e.g. ``"$.per_latent[3] is NaN (use None)"``.
    """
    if value is None or isinstance(value, (bool, str)):
        return None
    if isinstance(value, int) and type(value) is int:
        return None
    if isinstance(value, float) and type(value) is float:
        return None if value == value and value not in (float("inf"), float("-inf")) else \
            f"{path} is {value} (write None for a missing value)"
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            problem = json_ready_problem(v, f"{path}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"{path} has a key {k!r} of type {type(k).__name__} (keys must be strings)"
            problem = json_ready_problem(v, f"{path}.{k}" if k.isidentifier() else f"{path}[{json.dumps(k)}]")
            if problem:
                return problem
        return None
    return f"{path} is a {type(value).__module__}.{type(value).__name__} (convert it to a plain number, string or list)"
