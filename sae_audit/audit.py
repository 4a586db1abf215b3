"""One audit: images -> model -> hook points -> SAEs -> suites -> results dict.

:func:`run_audit` is the library entry point behind ``sae-audit run``. It reads
each image set once, captures every hook point any SAE needs in one forward
pass per batch (stopped after the deepest hooked block), encodes with every
SAE, and streams the codes into per-(SAE, dataset) accumulators. The returned
dict is the ``results.json`` document (see :mod:`sae_audit.report.results`).

Plugins take part through the lifecycle hooks (:mod:`sae_audit.hookspecs`):
``sae_audit_run_configured`` before the first image, ``sae_audit_audit_image_set``
around each image set (the built-in plugin's implementation is
:func:`audit_image_set`), ``sae_audit_run_finished`` on the finished document.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from sae_audit.data import ImageSet, iter_batches
from sae_audit.errors import SaeAuditError
from sae_audit.models import HookPoint, VisionModel, capture, capture_and_pool, select_tokens
from sae_audit.models.adapters import FamilyAdapter
from sae_audit.sae import TopKSAE
from sae_audit.suites.base import SuiteBatch
from sae_audit.suites.coverage import CoverageAccumulator, compare


@dataclass(frozen=True)
class AuditConfig:
    """Settings of one audit run.

    Attributes:
        batch_size: images per forward pass.
        dense_threshold: a latent firing on more than this fraction of inputs is *dense*.
        strict: an unreadable image is an error instead of being skipped and counted.
        max_images: cap per image set (fixed pseudo-random subset), recorded for provenance.
        seed: the subset's seed.
    """

    batch_size: int = 32
    dense_threshold: float = 0.1
    strict: bool = False
    max_images: int | None = None
    seed: int = 0


@dataclass
class AuditedSAE:
    """An SAE with where it reads the model, as the audit uses it."""

    spec: str
    sae: TopKSAE
    hook_point: HookPoint
    label: str


def sae_hook_point(sae: TopKSAE, hook: str | None = None, tokens: str | None = None) -> HookPoint:
    """The hook point of ``sae``: from its config, or from ``hook``/``tokens`` when it records none.

    Raises:
        SaeAuditError: neither the SAE config nor the caller names a hook point,
            or they disagree.
    """
    cfg = sae.config
    if hook is not None and cfg.hook_point is not None and HookPoint.parse(hook).block != HookPoint.parse(cfg.hook_point).block:
        raise SaeAuditError(f"--hook {hook} contradicts the SAE's own hook point {cfg.hook_point}")
    if tokens is not None and cfg.tokens is not None and tokens != cfg.tokens:
        raise SaeAuditError(
            f"--tokens {tokens} contradicts the SAE's own token set {cfg.tokens!r} (it was trained on "
            f"{cfg.tokens} tokens); leave --tokens out for SAEs that record their token set"
        )
    text = hook or cfg.hook_point
    if text is None:
        raise SaeAuditError("the SAE does not record its hook point; pass --hook block.L")
    return HookPoint.parse(text, tokens or cfg.tokens or "patch")


def check_compatible(vm: VisionModel, item: AuditedSAE) -> None:
    """Raise :class:`SaeAuditError` if ``item`` cannot read ``vm`` (depth or width mismatch)."""
    if item.hook_point.block >= vm.num_blocks:
        raise SaeAuditError(
            f"SAE {item.spec}: hook point {item.hook_point.name} is past the model's depth "
            f"({vm.num_blocks} blocks: block.0 .. block.{vm.num_blocks - 1})"
        )
    if item.sae.d_in != vm.d_model:
        raise SaeAuditError(
            f"SAE {item.spec} has d_in={item.sae.d_in} but {vm.name} produces activations of width "
            f"{vm.d_model} at {item.hook_point.name}; use an SAE trained on this model"
        )
    if item.hook_point.tokens == "cls" and not vm.layout.has_cls:
        raise SaeAuditError(f"{vm.name} ({vm.family}) has no CLS token; use --tokens patch or mean")


@torch.no_grad()
def audit_image_set(
    vm: VisionModel,
    saes: list[AuditedSAE],
    image_set: ImageSet,
    config: AuditConfig,
    progress: bool = True,
    suites: list = (),
    judge: VisionModel | None = None,
    suite_accs: list[dict] | None = None,
) -> tuple[list[CoverageAccumulator], dict]:
    """Stream one image set through the model and every SAE.

    Returns one coverage accumulator per SAE and a dict describing the set as
    read (size, images used, skipped images with reasons). With ``suites``
    (:class:`sae_audit.suites.SuiteInfo` s), ``suite_accs`` (a list) receives one
    ``{suite name: accumulator}`` dict per SAE; judge embeddings come from
    ``judge.pooled`` (default: ``vm`` itself) when a suite needs them.
    """
    from sae_audit.suites import SuiteContext

    accs = [
        CoverageAccumulator(s.sae.d_sae, s.sae.d_in, s.sae.k, config.dense_threshold) for s in saes
    ]
    judge_vm = judge or vm
    want_emb = any(info.needs_embeddings for info in suites)
    extra = [
        {info.name: info.factory(SuiteContext(s.sae, judge_vm.name, judge_vm.d_model if want_emb else None,
                                              config.seed)) for info in suites}
        for s in saes
    ]
    if suite_accs is not None:
        suite_accs.extend(extra)
    hook_points = sorted({s.hook_point.name for s in saes})
    preprocess = vm.preprocess
    if want_emb and judge is not None and judge is not vm:
        preprocess = _PairedPreprocess(vm, judge)
    it = iter_batches(
        image_set,
        preprocess,
        config.batch_size,
        strict=config.strict,
        progress=image_set.name if progress else None,
    )
    n_images = 0
    hps = [HookPoint.parse(h) for h in hook_points]
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
            sb = SuiteBatch(x.cpu(), codes.to("cpu"), x_hat.cpu(), image_index, labels, n_nonfinite=n_bad,
                            images=batch.indices, image_labels=batch.labels, embeddings=embeddings)
            acc.accumulate(sb)
            for suite_acc in more.values():
                suite_acc.accumulate(sb)
    from sae_audit.report.results import dataset_fingerprint

    description = dict(image_set.describe())
    description.update(dataset_fingerprint(image_set))
    description.update(
        {
            "n_images": n_images,
            "n_skipped": len(it.skipped),
            "skipped": [{"item": str(a), "reason": str(b)} for a, b in it.skipped[:20]],
        }
    )
    if n_images == 0:
        raise SaeAuditError(f"no readable image in image set {image_set.name!r}")
    return accs, description


def _weights_hash(item: AuditedSAE, resolve, digest) -> str | None:
    """``sha256:`` of the SAE's safetensors files, or ``None`` if its folder is not on disk."""
    try:
        return digest(resolve(item.spec))
    except (SaeAuditError, OSError):
        return None


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


def run_audit(
    vm: VisionModel,
    saes: list[AuditedSAE],
    id_set: ImageSet,
    ood_sets: list[ImageSet],
    config: AuditConfig = AuditConfig(),
    progress: bool = True,
    suites: list[str] | None = None,
    judge: VisionModel | None = None,
) -> dict:
    """Run the coverage suite, and the named ``suites``, of every SAE on the ID set and each OOD set.

    Args:
        suites: names from :data:`sae_audit.suites.SUITES` (or ``"all"``); coverage always runs.
        judge: the model whose pooled output gives the monosemanticity suite's
            judge embeddings (default: ``vm`` itself).

    Returns the results document (``schema_version``, ``model``, ``datasets``,
    ``saes`` with per-dataset metrics and per-ID/OOD-pair comparisons; with
    suites, each SAE entry also has ``suites: {name: {"datasets": {set: dict},
    "pairs": [{"id", "ood", ...}]}}``; a suite skipped on a set has
    ``{"skipped": reason}`` there), ``plugins`` that took part, and
    ``extensions`` when a plugin's ``sae_audit_run_finished`` returned data.

    Raises:
        SaeAuditError: no SAE, an SAE incompatible with the model, duplicate set
            names, an empty or unreadable image set, an unknown suite, or (under
            ``config.strict``) a suite that needs labels on an unlabelled set.
        sae_audit.plugins.PluginError: a plugin raised in a lifecycle hook (the
            message names the plugin and the hook).
    """
    from sae_audit.plugins import get_plugin_manager
    from sae_audit.report.results import build_results, files_sha256
    from sae_audit.sae.io import resolve_sae_folder
    from sae_audit.suites import PairContext, resolve_suites

    infos = resolve_suites(suites)

    plugins = get_plugin_manager()
    if not saes:
        raise SaeAuditError("no SAE to audit: pass at least one --sae")
    if not ood_sets:
        raise SaeAuditError("no OOD image set: pass at least one --ood")
    for item in saes:
        check_compatible(vm, item)
    names = [id_set.name] + [s.name for s in ood_sets]
    if len(set(names)) != len(names):
        raise SaeAuditError(f"image set names must differ, got {names}")
    plugins.call("sae_audit_run_configured", model=vm, saes=saes, id_set=id_set, ood_sets=ood_sets, config=config)

    all_sets = [id_set] + list(ood_sets)
    unlabelled = {s.name for s in all_sets if not _has_labels(s)}
    for info in infos:
        if info.needs_labels and unlabelled and config.strict:
            raise SaeAuditError(
                f"suite {info.name!r} needs class labels but image set(s) {sorted(unlabelled)} have none; "
                "drop --strict to skip it there, or use labelled sets (class subfolders or IDX labels)"
            )

    per_sae: list[dict] = [{} for _ in saes]
    suite_store: list[dict] = [{info.name: {} for info in infos} for _ in saes]
    datasets = []
    for role, image_set in [("id", id_set)] + [("ood", s) for s in ood_sets]:
        run_here = [i for i in infos if not (i.needs_labels and image_set.name in unlabelled)]
        found: list[dict] = []
        accs, desc = plugins.call("sae_audit_audit_image_set", model=vm, saes=saes, image_set=image_set,
                                  role=role, config=config, progress=progress, suites=run_here, judge=judge,
                                  suite_accs=found)
        desc["role"] = role
        datasets.append(desc)
        for store, acc in zip(per_sae, accs):
            store[image_set.name] = acc.finish()
        for store, got in zip(suite_store, found):
            for name, suite_acc in got.items():
                store[name][image_set.name] = suite_acc

    sae_entries = []
    for item, stats in zip(saes, per_sae):
        pairs = [
            {"id": id_set.name, "ood": s.name, **compare(stats[id_set.name], stats[s.name])} for s in ood_sets
        ]
        sae_entries.append(
            {
                "spec": item.spec,
                "label": item.label,
                "hook_point": str(item.hook_point),
                "weights_sha256": _weights_hash(item, resolve_sae_folder, files_sha256),
                "config": item.sae.config.to_dict(),
                "datasets": stats,
                "pairs": pairs,
            }
        )
        if infos:
            sae_entries[-1]["suites"] = _finish_suites(infos, suite_store[len(sae_entries) - 1], all_sets,
                                                       pairs, PairContext)
    settings = asdict(config)
    if infos:
        settings["suites"] = [i.name for i in infos]
        if any(i.needs_embeddings for i in infos):
            settings["judge"] = (judge or vm).name
    results = build_results(vm, datasets, sae_entries, settings=settings, plugins=plugins.provenance())
    extensions = plugins.run_finished(results)
    if extensions:
        results["extensions"] = extensions
    return results


def _has_labels(image_set: ImageSet) -> bool:
    """Whether the set carries class labels (class folders, IDX labels, a named labelled set)."""
    if image_set.classes:
        return True
    try:
        return len(image_set) > 0 and image_set.label(0) >= 0
    except Exception:
        return False


def _finish_suites(infos, accs: dict, all_sets: list, coverage_pairs: list[dict], PairContext) -> dict:
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
