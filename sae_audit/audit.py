"""One audit: images -> model -> hook points -> SAEs -> suites -> results dict.

Two entry points:

- :func:`run_audit` takes an :class:`AuditRequest` (what ``sae-audit run``
  builds from its flags): it opens the image sets, loads the SAEs and the
  model (at the SAEs' training resolution unless told otherwise) and the
  judge model, and audits;
- :func:`audit_loaded` audits objects already in memory (a
  :class:`~sae_audit.models.VisionModel`, :class:`AuditedSAE` s, image sets).

Each image set is read once; every hook point any SAE needs is captured in one
forward pass per batch (stopped after the deepest hooked block), every SAE
encodes, and the codes stream into per-(SAE, set) accumulators. The returned
dict is the ``results.json`` document (:mod:`sae_audit.results`).

Plugins take part through the lifecycle hooks (:mod:`sae_audit.hookspecs`):
``sae_audit_run_configured`` before the first image, ``sae_audit_audit_image_set``
around each image set (the built-in plugin's implementation is
:func:`audit_image_set`), ``sae_audit_run_finished`` on the finished document.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sae_audit.data import ImageOptions, ImageSet, iter_batches, open_image_set
from sae_audit.errors import SaeAuditError
from sae_audit.memory import limit_heap_fragmentation
from sae_audit.models import (
    FamilyAdapter,
    HookPoint,
    ModelSpec,
    VisionModel,
    capture,
    capture_and_pool,
    load_model,
    select_tokens,
)
from sae_audit.models.hookpoint import TOKEN_SETS
from sae_audit.options import option
from sae_audit.plugin_manager import PluginError, get_plugin_manager
from sae_audit.results import build_results, dataset_fingerprint, files_sha256
from sae_audit.results.gate import Condition, check_conditions, parse_condition
from sae_audit.sae import load_sae
from sae_audit.sae.io import resolve_sae_folder
from sae_audit.suites import PairContext, SuiteBatch, SuiteContext, SuiteInfo, resolve_suites
from sae_audit.suites.coverage import CoverageAccumulator, compare

if TYPE_CHECKING:
    from sae_audit.sae import SAE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditSettings:
    """How the streaming pass runs.

    Raises:
        SaeAuditError: ``dense_threshold`` outside [0, 1].
    """

    images: ImageOptions = field(default_factory=ImageOptions)
    dense_threshold: float = option(0.1, metavar="F",
                                    help="a latent firing on more than F of the inputs counts as dense")

    def __post_init__(self) -> None:
        t = self.dense_threshold
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 <= t <= 1:
            raise SaeAuditError(f"`dense_threshold` is a fraction of inputs between 0 and 1, got {t!r}",
                                field="dense_threshold")

    @property
    def batch_size(self) -> int:
        return self.images.batch_size

    def as_json(self) -> dict:
        """The ``settings`` block of the results document (flat)."""
        return {**asdict(self.images), "dense_threshold": self.dense_threshold}


@dataclass(frozen=True, kw_only=True)
class AuditRequest:
    """Everything one audit needs, by name: what ``sae-audit run`` builds from its flags.

    Raises:
        SaeAuditError: no SAE or OOD set, the same image set twice, a token set
            that does not exist (the message names the field).
    """

    model: ModelSpec
    saes: tuple[str, ...] = option(help="SAE folder, hub id or hub_id/subfolder (several SAEs are shown side by "
                                        "side)", metavar="SAE")
    id_set: str = option(help="in-distribution image set: a named set (see `sae-audit sets`), a folder or an IDX "
                              "file", metavar="SET")
    ood_sets: tuple[str, ...] = option(help="out-of-distribution image set(s)", metavar="SET")
    settings: AuditSettings = field(default_factory=AuditSettings)
    hook: str | None = option(None, metavar="block.L", help="hook point for SAEs whose config records none")
    tokens: str | None = option(None, choices=TOKEN_SETS, help="token set for SAEs whose config records none")
    suites: tuple[str, ...] = option((), metavar="NAME",
                                     help="audit suites to run besides coverage (`all` for every one; "
                                          "`sae-audit suites` lists them)")
    judge: str | None = option(None, metavar="MODEL",
                               help="model whose pooled output gives the monosemanticity suite's judge embeddings "
                                    "(default: the audited model)")
    fail_on: tuple[str, ...] = option(
        (), metavar="COND",
        help="conditions to gate on, e.g. 'fvu_gap>0.2', 'fvu[digits]>=0.5', 'shared_alive<0.8' (any metric of "
             "results.json; see sae_audit.results.gate); checked against the image sets before the audit runs")

    def __post_init__(self) -> None:
        for name in ("saes", "ood_sets", "suites", "fail_on"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise SaeAuditError(f"`{name}` must be a sequence of strings, got {value!r}", field=name)
            object.__setattr__(self, name, tuple(value))
        if not self.saes:
            raise SaeAuditError("no SAE to audit: pass at least one `saes`", field="saes")
        if not self.ood_sets:
            raise SaeAuditError("no OOD image set: pass at least one `ood_sets`", field="ood_sets")
        names = [self.id_set, *self.ood_sets]
        if len(set(names)) != len(names):
            raise SaeAuditError(f"every image set must differ: `id_set` and `ood_sets` were given {names}",
                                field="ood_sets")
        if self.tokens is not None and self.tokens not in TOKEN_SETS:
            raise SaeAuditError(f"`tokens` must be one of {', '.join(TOKEN_SETS)}, got {self.tokens!r}",
                                field="tokens")
        self.conditions()  # a typo fails here, before any work

    def input_paths(self) -> list[str]:
        """The local files and folders this audit reads (model, SAEs, image sets, judge): outputs must not hold them."""
        names = [self.model.name, *self.saes, self.id_set, *self.ood_sets, self.judge]
        return [n for n in names if n is not None and os.path.lexists(os.path.expanduser(n))]

    def image_folders(self) -> list[str]:
        """The image-set folders this audit reads (outputs must not lie inside them)."""
        return [n for n in (self.id_set, *self.ood_sets) if os.path.isdir(os.path.expanduser(n))]

    def conditions(self) -> list[Condition]:
        """The parsed ``fail_on`` conditions (:func:`sae_audit.results.gate.parse_condition`)."""
        return [parse_condition(c) for c in self.fail_on]


@dataclass(frozen=True)
class AuditedSAE:
    """An SAE with where it reads the model and how the report names it."""

    spec: str
    sae: SAE
    hook_point: HookPoint
    label: str


@dataclass(frozen=True)
class AuditContext:
    """One audit run as the image-set hook sees it.

    Attributes:
        model: the audited :class:`~sae_audit.models.VisionModel`.
        saes: the :class:`AuditedSAE` s, in order.
        settings: the :class:`AuditSettings`.
        suites: the :class:`~sae_audit.suites.SuiteInfo` s to run besides coverage.
        judge: the model giving judge embeddings (``None``: the audited model).
        progress: show a progress bar per image set.
    """

    model: VisionModel
    saes: tuple[AuditedSAE, ...]
    settings: AuditSettings
    suites: tuple[SuiteInfo, ...] = ()
    judge: VisionModel | None = None
    progress: bool = True


@dataclass(frozen=True)
class ImageSetAudit:
    """What streaming one image set produced (see the ``sae_audit_audit_image_set`` hook).

    Attributes:
        coverage: one coverage accumulator per SAE, in order.
        suites: one ``{suite name: accumulator}`` dict per SAE, in order.
        description: the JSON-ready description of the set as read
            (``name``, ``n_images``, ``n_skipped``, ``skipped``, provenance).
    """

    coverage: tuple
    suites: tuple
    description: dict


def sae_label(spec: str, sae: SAE) -> str:
    """How reports name an SAE: its folder's name, variant and budget (``k16 (fixed-k, k=16)``)."""
    cfg = sae.config
    return f"{Path(str(spec).rstrip('/')).name} ({cfg.variant}, k={cfg.k})"


def sae_hook_point(sae: SAE, hook: str | None = None, tokens: str | None = None) -> HookPoint:
    """The hook point of ``sae``: from its config, or from ``hook``/``tokens`` when it records none.

    Raises:
        SaeAuditError: neither the SAE config nor the caller names a hook point,
            or they disagree.
    """
    cfg = sae.config
    if hook is not None and cfg.hook_point is not None and HookPoint.parse(hook).block != HookPoint.parse(cfg.hook_point).block:
        raise SaeAuditError(f"`hook` {hook} contradicts the SAE's own hook point {cfg.hook_point}", field="hook")
    if tokens is not None and cfg.tokens is not None and tokens != cfg.tokens:
        raise SaeAuditError(
            f"`tokens` {tokens} contradicts the SAE's own token set {cfg.tokens!r} (it was trained on "
            f"{cfg.tokens} tokens); leave `tokens` out for SAEs that record their token set", field="tokens"
        )
    text = hook or cfg.hook_point
    if text is None:
        raise SaeAuditError("the SAE does not record its hook point; pass `hook` (block.L)", field="hook")
    return HookPoint.parse(text, tokens or cfg.tokens or "patch")


def check_compatible(vm: VisionModel, item: AuditedSAE) -> None:
    """Raise :class:`SaeAuditError` if ``item`` cannot read ``vm`` (depth, width or token layout)."""
    vm.check_hook_point(item.hook_point, f"SAE {item.spec}: ")
    if item.sae.d_in != vm.d_model:
        raise SaeAuditError(
            f"SAE {item.spec} has d_in={item.sae.d_in} but {vm.name} produces activations of width "
            f"{vm.d_model} at {item.hook_point.name}; use an SAE trained on this model"
        )


# --------------------------------------------------------------------------- one image set
@torch.no_grad()
def audit_image_set(run: AuditContext, image_set: ImageSet) -> ImageSetAudit:
    """Stream one image set through the model and every SAE (the built-in image-set pass).

    Judge embeddings come from ``run.judge`` (default: the audited model
    itself, from the same forward pass) when a suite needs them.

    Raises:
        SaeAuditError: no image of the set could be read (or one could not under
            strict mode).
    """
    vm, saes, settings = run.model, run.saes, run.settings
    judge = run.judge
    accs = tuple(CoverageAccumulator(s.sae.d_sae, s.sae.d_in, s.sae.k, settings.dense_threshold) for s in saes)
    judge_vm = judge or vm
    want_emb = any(info.needs_embeddings for info in run.suites)
    extra = tuple(
        {info.name: info.factory(SuiteContext(s.sae, judge_vm.name, judge_vm.d_model if want_emb else None,
                                              settings.images.seed)) for info in run.suites}
        for s in saes
    )
    preprocess = vm.preprocess
    if want_emb and judge is not None and judge is not vm:
        preprocess = _PairedPreprocess(vm, judge)
    it = iter_batches(image_set, preprocess, settings.images.batch_size, strict=settings.images.strict,
                      progress=image_set.name if run.progress else None)
    n_images = 0
    hps = [HookPoint.parse(h) for h in sorted({s.hook_point.name for s in saes})]
    # The audited model as its own judge: one full forward gives both the block
    # outputs and the pooled embedding (unless a plugin's adapter pools its own way).
    one_pass = want_emb and not isinstance(preprocess, _PairedPreprocess) and \
        type(vm.adapter).pooled is FamilyAdapter.pooled
    for batch in it:
        pixel_values, embeddings = batch.pixel_values, None
        if isinstance(preprocess, _PairedPreprocess):
            pixel_values, judge_pv = preprocess.split(pixel_values)
            embeddings = judge.pooled(judge_pv).float().cpu()
        elif want_emb and not one_pass:
            embeddings = vm.pooled(pixel_values).float().cpu()
        if one_pass:
            acts, pooled = capture_and_pool(vm, pixel_values, hps)
            embeddings = pooled.float().cpu()
        else:
            acts = capture(vm, pixel_values, hps)
        n_images += pixel_values.shape[0]
        for item, acc, more in zip(saes, accs, extra):
            sb = _suite_batch(item, acts, vm, batch, embeddings)
            acc.accumulate(sb)
            for suite_acc in more.values():
                suite_acc.accumulate(sb)
    if n_images == 0:
        raise SaeAuditError(f"no readable image in image set {image_set.name!r}")
    description = dict(image_set.describe())
    description.update(dataset_fingerprint(image_set))
    description.update({
        "n_images": n_images,
        "n_skipped": len(it.skipped),
        "skipped": [{"item": str(a), "reason": str(b)} for a, b in it.skipped[:20]],
    })
    return ImageSetAudit(accs, extra, description)


def _suite_batch(item: AuditedSAE, acts: dict, vm: VisionModel, batch, embeddings) -> SuiteBatch:
    """Encode one batch's tokens at ``item``'s hook point: what every suite of that SAE reads."""
    sel = select_tokens(acts[item.hook_point.name], item.hook_point.tokens, vm.layout)
    n_tok = sel.shape[1]
    x = sel.reshape(-1, sel.shape[-1]).float()
    image_index = batch.indices.repeat_interleave(n_tok)
    labels = batch.labels.repeat_interleave(n_tok)
    finite = torch.isfinite(x).all(dim=1)
    n_bad = int((~finite).sum())
    if n_bad:
        x, image_index, labels = x[finite], image_index[finite], labels[finite]
    x = x.to(item.sae.W_enc.device)
    codes = item.sae.encode(x)
    x_hat = item.sae.decode(codes)
    return SuiteBatch(x.cpu(), codes.to("cpu"), x_hat.cpu(), image_index, labels, n_nonfinite=n_bad,
                      images=batch.indices, image_labels=batch.labels, embeddings=embeddings)


class _PairedPreprocess:
    """Preprocess each batch for the audited model and for a separate judge model at once.

    Returns one float32 tensor ``[B, P + Q]`` (both models' pixel values, flattened
    side by side) so the batch iterator can carry it; :meth:`split` undoes it.
    """

    def __init__(self, vm: VisionModel, judge: VisionModel):
        self.vm, self.judge = vm, judge
        self.shapes: tuple | None = None

    def __call__(self, images: list) -> torch.Tensor:
        a, b = self.vm.preprocess(images), self.judge.preprocess(images)
        self.shapes = (tuple(a.shape[1:]), tuple(b.shape[1:]))
        return torch.cat([a.float().cpu().flatten(1), b.float().cpu().flatten(1)], dim=1)

    def split(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sa, sb = self.shapes
        n_a = int(torch.tensor(sa).prod())
        a = packed[:, :n_a].reshape(-1, *sa).to(self.vm.device, self.vm.dtype)
        b = packed[:, n_a:].reshape(-1, *sb).to(self.judge.device, self.judge.dtype)
        return a, b


# --------------------------------------------------------------------------- a whole audit
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
    if not saes:
        raise SaeAuditError("no SAE to audit: pass at least one `saes`", field="saes")
    if not ood_sets:
        raise SaeAuditError("no OOD image set: pass at least one `ood_sets`", field="ood_sets")
    for item in saes:
        check_compatible(vm, item)
    names = [id_set.name] + [s.name for s in ood_sets]
    if len(set(names)) != len(names):
        raise SaeAuditError(f"image set names must differ, got {names}")
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

    per_sae: list[dict] = [{} for _ in saes]
    suite_store: list[dict] = [{info.name: {} for info in infos} for _ in saes]
    datasets = []
    for role, image_set in [("id", id_set)] + [("ood", s) for s in ood_sets]:
        run_here = tuple(i for i in infos if not (i.needs_labels and image_set.name in unlabelled))
        run = AuditContext(vm, tuple(saes), settings, run_here, judge, progress)
        found = plugins.call("sae_audit_audit_image_set", run=run, image_set=image_set, role=role)
        if not isinstance(found, ImageSetAudit):
            raise PluginError(f"sae_audit_audit_image_set returned {type(found).__name__}, expected a "
                              "sae_audit.audit.ImageSetAudit")
        desc = dict(found.description, role=role)
        datasets.append(desc)
        for store, acc in zip(per_sae, found.coverage):
            store[image_set.name] = acc.finish()
        for store, got in zip(suite_store, found.suites):
            for name, suite_acc in got.items():
                store[name][image_set.name] = suite_acc

    sae_entries = []
    for item, stats, store in zip(saes, per_sae, suite_store):
        pairs = [{"id": id_set.name, "ood": s.name, **compare(stats[id_set.name], stats[s.name])} for s in ood_sets]
        entry = {
            "spec": item.spec,
            "label": item.label,
            "hook_point": str(item.hook_point),
            "weights_sha256": _weights_hash(item.spec),
            "config": item.sae.config.to_dict(),
            "datasets": stats,
            "pairs": pairs,
        }
        if infos:
            entry["suites"] = _finish_suites(infos, store, all_sets, pairs)
        sae_entries.append(entry)
    settings_json = settings.as_json()
    if infos:
        settings_json["suites"] = [i.name for i in infos]
        if any(i.needs_embeddings for i in infos):
            settings_json["judge"] = (judge or vm).name
    results = build_results(vm, datasets, sae_entries, settings=settings_json, plugins=plugins.provenance())
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
    suite_names = [i.name for i in resolve_suites(request.suites)]
    images = request.settings.images
    id_set = open_image_set(request.id_set, images.max_images, images.seed)
    ood_sets = [open_image_set(s, images.max_images, images.seed) for s in request.ood_sets]
    check_conditions(request.conditions(), id_set.name, [id_set.name, *(s.name for s in ood_sets)])
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


def _finish_suites(infos, accs: dict, all_sets: list, coverage_pairs: list[dict]) -> dict:
    """``{suite: {"datasets": {set: finish()}, "pairs": [...]}}`` for one SAE."""
    id_set, ood_sets = all_sets[0], all_sets[1:]
    out = {}
    for info in infos:
        per_set = accs[info.name]
        entry: dict = {"description": info.description, "datasets": {}}
        for s in all_sets:
            if s.name in per_set:
                entry["datasets"][s.name] = per_set[s.name].finish()
            else:
                entry["datasets"][s.name] = {"skipped": f"image set {s.name!r} has no labels"}
        if info.compare is not None:
            entry["pairs"] = []
            for s, cov in zip(ood_sets, coverage_pairs):
                if id_set.name in per_set and s.name in per_set:
                    ctx = PairContext(id_set, s, cov)
                    entry["pairs"].append({"id": id_set.name, "ood": s.name,
                                           **info.compare(per_set[id_set.name], per_set[s.name], ctx)})
        out[info.name] = entry
    return out
