"""A whole audit: every image set, every SAE, every suite -> the results document."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace

from sae_audit import distributed
from sae_audit.audit.contributors import plugins_that_took_part
from sae_audit.audit.request import AuditRequest, AuditSettings
from sae_audit.audit.stream import (
    AuditContext,
    AuditedSAE,
    ImageSetAudit,
    _suite_call,
    check_compatible,
    check_suite_output,
    sae_hook_point,
    sae_label,
)
from sae_audit.data import ImageSet, open_image_set
from sae_audit.errors import SaeAuditError
from sae_audit.memory import limit_heap_fragmentation
from sae_audit.models import ModelSpec, VisionModel, load_model
from sae_audit.plugin_manager import PluginError, get_plugin_manager
from sae_audit.results import build_results, files_sha256
from sae_audit.results.gate import check_conditions
from sae_audit.results.shift import shifted_flags
from sae_audit.sae import load_sae
from sae_audit.sae.io import resolve_sae_folder
from sae_audit.suites import PairContext, known_metrics, resolve_suites
from sae_audit.suites.bootstrap import MIN_HALF_IMAGES
from sae_audit.suites.coverage import compare

logger = logging.getLogger("sae_audit.audit")


def audit_loaded(
    vm: VisionModel,
    saes: list[AuditedSAE],
    id_set: ImageSet,
    ood_sets: list[ImageSet],
    settings: AuditSettings = AuditSettings(),
    suites: list[str] | None = None,
    judge: VisionModel | None = None,
    progress: bool = True,
) -> dict:
    """Run the coverage suite, and the named ``suites``, of every SAE on the ID set and each OOD set.

    Args:
        vm: the audited model.
        saes: the SAEs with their hook points and labels (:class:`AuditedSAE`).
        id_set, ood_sets: the in-distribution set and the out-of-distribution sets.
        settings: batching, strictness and the dense threshold (:class:`AuditSettings`).
        suites: suite names (or ``"all"``); coverage always runs.
        judge: the model whose pooled output gives the monosemanticity suite's
            judge embeddings (default: ``vm`` itself).
        progress: show a progress bar per image set.

    Returns the results document (``schema_version``, ``model``, ``datasets``,
    ``saes`` with per-dataset metrics and per-ID/OOD-pair comparisons; with
    suites, each SAE entry also has ``suites: {name: {"datasets": {set: dict},
    "pairs": [{"id", "ood", ...}]}}``; a suite skipped on a set has
    ``{"skipped": reason}`` there), ``plugins`` that took part, and
    ``extensions`` when a plugin's ``sae_audit_run_finished`` returned data.

    Raises:
        SaeAuditError: no SAE, an SAE incompatible with the model, duplicate set
            names, an empty or unreadable image set, an unknown suite, or (under
            strict mode) a suite that needs labels on an unlabelled set.
        sae_audit.plugin_manager.PluginError: a plugin raised in a lifecycle hook (the
            message names the plugin and the hook).
    """
    infos = resolve_suites(suites)
    plugins = get_plugin_manager()
    progress = progress and distributed.is_main()
    if not saes:
        raise SaeAuditError("no SAE to audit: pass at least one `saes`", field="saes")
    if not ood_sets:
        raise SaeAuditError("no OOD image set: pass at least one `ood_sets`", field="ood_sets")
    for item in saes:
        check_compatible(vm, item)
    names = [id_set.name] + [s.name for s in ood_sets]
    if len(set(names)) != len(names):
        twice = ", ".join(repr(n) for n in dict.fromkeys(n for n in names if names.count(n) > 1))
        raise SaeAuditError(f"image set names must differ, but {twice} names more than one set (a folder's set is "
                            "named after the folder, a derived set such as corrupt:... after its base set): rename "
                            "or move a folder so that the names differ")
    plugins.call("sae_audit_run_configured", model=vm, saes=list(saes), id_set=id_set, ood_sets=list(ood_sets),
                 config=settings)

    all_sets = [id_set] + list(ood_sets)
    unlabelled = {s.name for s in all_sets if not _has_labels(s)}
    for info in infos:
        if info.needs_labels and unlabelled and settings.images.strict:
            raise SaeAuditError(
                f"suite {info.name!r} needs class labels but image set(s) {sorted(unlabelled)} have none; "
                "drop `strict` to skip it there, or use labelled sets (class subfolders or IDX labels)",
                field="strict",
            )

    ablation = None
    if any(i.needs_outputs for i in infos):
        from sae_audit.audit.splicing import ablation_means

        ablation = tuple(ablation_means(vm, saes, id_set, settings.batch_size, settings.images.strict, progress))
    per_sae: list[dict] = [{} for _ in saes]
    cov_accs: list[dict] = [{} for _ in saes]
    suite_store: list[dict] = [{info.name: {} for info in infos} for _ in saes]
    floors: tuple = tuple({"unavailable": "the image-set pass returned no noise floor"} for _ in saes)
    datasets = []
    for role, image_set in [("id", id_set)] + [("ood", s) for s in ood_sets]:
        run_here = tuple(i for i in infos if not (i.needs_labels and image_set.name in unlabelled))
        run = AuditContext(vm, tuple(saes), settings, run_here, judge, progress, ablation)
        found = plugins.call("sae_audit_audit_image_set", run=run, image_set=image_set, role=role)
        if not isinstance(found, ImageSetAudit):
            raise PluginError(f"sae_audit_audit_image_set returned {type(found).__name__}, expected a "
                              "sae_audit.audit.ImageSetAudit")
        desc = dict(found.description, role=role)
        datasets.append(desc)
        if role == "id" and found.floor is not None:
            floors = found.floor
        for store, accs, acc in zip(per_sae, cov_accs, found.coverage):
            store[image_set.name] = acc.finish()
            accs[image_set.name] = acc
        for store, got in zip(suite_store, found.suites):
            for name, suite_acc in got.items():
                info = next(i for i in infos if i.name == name)
                # A suite without pairs is finished at once, so its accumulator's memory is freed.
                store[name][image_set.name] = suite_acc if info.compare is not None else \
                    _Finished(check_suite_output(info, _suite_call(info, "finish", suite_acc.finish)))

    sae_entries = []
    for item, stats, accs, store, floor in zip(saes, per_sae, cov_accs, suite_store, floors):
        cov_floor = floor.get("coverage") if "unavailable" not in floor else None
        pairs = []
        for s in ood_sets:
            pair = {"id": id_set.name, "ood": s.name, **compare(accs[id_set.name], accs[s.name])}
            _judge(pair, cov_floor)
            pairs.append(pair)
        entry = {
            "spec": item.spec,
            "label": item.label,
            "hook_point": str(item.hook_point),
            "weights_sha256": _weights_hash(item.spec),
            "config": item.sae.config.to_dict(),
            "datasets": stats,
            "pairs": pairs,
            "noise_floor": _floor_entry(floor, cov_floor),
        }
        if infos:
            entry["suites"] = _finish_suites(infos, store, all_sets, pairs, floor)
        sae_entries.append(entry)
    settings_json = settings.as_json()
    if infos:
        settings_json["suites"] = [i.name for i in infos]
        if any(i.needs_embeddings for i in infos):
            settings_json["judge"] = (judge or vm).name
    took_part = plugins_that_took_part(plugins, vm, saes, all_sets, infos)
    results = build_results(vm, datasets, sae_entries, settings=settings_json, plugins=took_part)
    results["metrics"].update({m.key: m.to_json() for info in infos for m in info.metrics})
    results["provenance"].update(distributed.world().to_json())
    extensions = _run_finished(results)
    if extensions:
        results["extensions"] = extensions
    return results


def run_audit(request: AuditRequest, progress: bool = True) -> dict:
    """Run the audit an :class:`AuditRequest` describes; the results document (see :func:`audit_loaded`).

    Opens the image sets and loads the SAEs first (a bad name fails before the
    model loads), then the model: at the SAEs' recorded training resolution when
    ``request.model.image_size`` is ``None`` and they agree on one (a warning
    when the request names another), then the judge model when the
    monosemanticity suite runs. Fixes glibc's mmap threshold for the process
    (:func:`sae_audit.memory.limit_heap_fragmentation`). Records the wall time
    in ``settings.wall_seconds``.

    Raises:
        SaeAuditError: as :func:`audit_loaded`, plus unknown image sets, SAEs or
            models, and ``fail_on`` conditions that name a set the audit does not
            have (the message names the field).
    """
    with distributed.together():  # under torchrun, a rank that cannot start stops every rank here
        suite_names = [i.name for i in resolve_suites(request.suites)]
        images = request.settings.images
        id_set = open_image_set(request.id_set, images.max_images, images.seed, max_pixels=images.max_pixels)
        ood_sets = [open_image_set(s, images.max_images, images.seed, max_pixels=images.max_pixels)
                    for s in request.ood_sets]
        _check_conditions(request, suite_names, id_set.name, [id_set.name, *(s.name for s in ood_sets)],
                          len(id_set))
        saes = _load_saes(request)
        model_spec = _resolution(request.model, saes)
        vm = load_model(model_spec)
        saes = [replace(s, sae=s.sae.to(vm.device)) for s in saes]
        judge = None
        if request.judge and "monosemanticity" in suite_names:
            judge = load_model(replace(model_spec, name=request.judge, revision=None, image_size=None))
        elif request.judge:
            logger.warning("sae-audit: `judge` is only used by the monosemanticity suite; ignoring it")
    limit_heap_fragmentation()  # memory must not grow with the number of images (see sae_audit/memory.py)
    t0 = time.perf_counter()
    results = audit_loaded(vm, saes, id_set, ood_sets, request.settings, suite_names, judge, progress)
    results["settings"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return results


def _check_conditions(request: AuditRequest, suite_names: list[str], id_name: str, set_names: list[str],
                      n_id: int | None = None) -> None:
    """Refuse ``fail_on`` conditions that can never hold: a set the audit lacks, a suite metric whose suite does
    not run, an interval bound or ``shifted`` with the bootstrap off (:func:`sae_audit.results.gate.check_conditions`),
    ``shifted`` when the ID set (``n_id`` images) is too small to split for the noise floor: a gate that could
    never fire would pass silently."""
    conditions = request.conditions()
    metrics = known_metrics()
    needs_floor = next((c for c in conditions if c.shifted), None)
    if needs_floor is not None and n_id is not None and n_id < 2 * MIN_HALF_IMAGES:
        raise SaeAuditError(f"`fail_on` {needs_floor.text!r} needs the ID-vs-ID noise floor, but the ID set "
                            f"{id_name!r} has {n_id} image(s) and the floor needs at least {2 * MIN_HALF_IMAGES} "
                            f"({MIN_HALF_IMAGES} in each half); use a larger ID set or a condition on a metric",
                            field="fail_on")
    for c in conditions:
        suite = metrics[c.metric].suite if c.metric else None
        if suite is not None and suite not in suite_names:
            raise SaeAuditError(f"`fail_on` {c.text!r}: {c.metric} is a metric of suite {suite!r}, which this audit "
                                f"does not run; add {suite} to `suites`", field="suites")
    check_conditions(conditions, id_name, set_names, metrics, request.settings.bootstrap)


def _load_saes(request: AuditRequest) -> list[AuditedSAE]:
    out, seen = [], {}
    for spec in request.saes:
        sae = load_sae(spec)
        label = sae_label(spec, sae)
        n = seen.get(label, 0)
        seen[label] = n + 1
        out.append(AuditedSAE(spec, sae, sae_hook_point(sae, request.hook, request.tokens),
                              f"{label} #{n + 1}" if n else label))
    return out


def _resolution(model: ModelSpec, saes: list[AuditedSAE]) -> ModelSpec:
    """The model spec at the SAEs' training resolution, when they agree on one and the request names none."""
    sizes = {s.sae.config.image_size for s in saes} - {None}
    if model.image_size is None and len(sizes) == 1:
        size = sizes.pop()
        logger.info("using the SAEs' training resolution: `image_size` %d", size)
        return replace(model, image_size=size)
    if model.image_size is not None and sizes and sizes != {model.image_size}:
        logger.warning("sae-audit: warning: `image_size` %d differs from the resolution the SAEs were trained at "
                       "(%s px); their latents may not mean the same at this scale",
                       model.image_size, ", ".join(map(str, sorted(sizes))))
    return model


def _weights_hash(spec: str) -> str | None:
    """``sha256:`` of the SAE's safetensors files, or ``None`` if its folder is not on disk."""
    try:
        return files_sha256(resolve_sae_folder(spec))
    except (SaeAuditError, OSError):
        return None


def _run_finished(results: dict) -> dict:
    """Call ``sae_audit_run_finished``; ``{plugin name: dict}`` of what implementations returned.

    Raises:
        PluginError: an implementation raised or returned something other than a JSON-ready dict or ``None``.
    """
    manager = get_plugin_manager()
    extensions = {}
    for plugin, result in manager.call_each("sae_audit_run_finished", results=results):
        if result is None:
            continue
        if not isinstance(result, dict):
            raise PluginError(f"{manager.who(plugin)}: sae_audit_run_finished returned "
                              f"{type(result).__name__}, expected a dict or None")
        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PluginError(f"{manager.who(plugin)}: sae_audit_run_finished returned a dict that is not "
                              f"JSON-serialisable ({exc})") from None
        extensions[plugin] = result
    return extensions


def _has_labels(image_set: ImageSet) -> bool:
    """Whether the set carries class labels (class folders, IDX labels, a named labelled set)."""
    if image_set.classes:
        return True
    try:
        return len(image_set) > 0 and image_set.label(0) >= 0
    except Exception:
        return False


def _judge(pair: dict, floor: dict | None, metrics=None) -> None:
    """Add the floor's intervals (``floor``) and the ``shifted`` flags to a pair dict, in place.

    ``metrics``: the metrics the pair holds (a suite's declared ones; default coverage's).
    """
    if floor is not None and "unavailable" not in floor and floor.get("intervals") is not None:
        pair["floor"] = {k: v for k, v in floor["intervals"].items() if k in (pair.get("intervals") or {})}
    pair["shifted"] = shifted_flags(pair, floor, metrics)


class _Finished:
    """A suite's per-set result, finished as soon as its set was streamed."""

    def __init__(self, value: dict):
        self.value = value

    def finish(self) -> dict:
        return self.value


def _floor_entry(floor: dict, cov_floor: dict | None) -> dict:
    """The SAE entry's ``noise_floor``: coverage's pair metrics on the ID halves, or why there are none."""
    if cov_floor is None:
        return {"unavailable": floor.get("unavailable") or "no noise floor"}
    keep = ("intervals", "fvu_gap", "shared_alive", "n_ood_only", "ood_only_fraction", "n_id_only", "id_only_fraction",
            "js_divergence", "spearman")
    return {"id": floor["id"], "n_images": floor["n_images"], **{k: cov_floor[k] for k in keep if k in cov_floor}}


def _finish_suites(infos, accs: dict, all_sets: list, coverage_pairs: list[dict], floor: dict | None = None) -> dict:
    """``{suite: {"datasets": {set: finish()}, "pairs": [...], "noise_floor": {...}}}`` for one SAE."""
    id_set, ood_sets = all_sets[0], all_sets[1:]
    floor = floor or {}
    out = {}
    for info in infos:
        per_set = accs[info.name]
        entry: dict = {"description": info.description, "datasets": {}}
        for s in all_sets:
            if s.name in per_set:
                entry["datasets"][s.name] = check_suite_output(info, _suite_call(info, "finish", per_set[s.name].finish))
            else:
                entry["datasets"][s.name] = {"skipped": f"image set {s.name!r} has no labels"}
        if info.compare is not None:
            suite_floor = (floor.get("suites") or {}).get(info.name)
            if info.floor:
                entry["noise_floor"] = suite_floor if suite_floor is not None else {
                    "unavailable": floor.get("unavailable") or f"image set {id_set.name!r} has no labels"}
            entry["pairs"] = []
            for s, cov in zip(ood_sets, coverage_pairs):
                if id_set.name in per_set and s.name in per_set:
                    ctx = PairContext(id_set, s, cov)
                    pair = check_suite_output(info, _suite_call(info, "compare", info.compare, per_set[id_set.name],
                                                                per_set[s.name], ctx), "compare")
                    pair = {"id": id_set.name, "ood": s.name, **pair}
                    if info.floor:
                        _judge(pair, suite_floor, info.metrics)
                    entry["pairs"].append(pair)
        out[info.name] = entry
    return out
