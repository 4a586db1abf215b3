"""One image set through the model and every SAE: the streaming pass and what it produces."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sae_audit import distributed
from sae_audit.audit.request import AuditSettings
from sae_audit.data import ImageSet, Subset, iter_batches
from sae_audit.errors import SaeAuditError
from sae_audit.models import FamilyAdapter, HookPoint, VisionModel, capture, capture_and_pool, select_tokens
from sae_audit.models.splice import forward_with_outputs
from sae_audit.plugin_manager import BUILTIN, PluginError, get_plugin_manager
from sae_audit.results import dataset_fingerprint
from sae_audit.results.document import json_ready_problem
from sae_audit.suites import PairContext, SuiteBatch, SuiteContext, SuiteInfo
from sae_audit.suites.bootstrap import MIN_HALF_IMAGES, Bootstrap, floor_unavailable_reason, id_halves
from sae_audit.suites.coverage import CoverageAccumulator
from sae_audit.suites.coverage import compare as coverage_compare

if TYPE_CHECKING:
    from sae_audit.sae import SAE


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
        ablation: per SAE, the ``[d_in]`` ID mean its tokens are replaced by in the
            fidelity suite's mean ablation (``None`` when no suite needs spliced outputs).
    """

    model: VisionModel
    saes: tuple[AuditedSAE, ...]
    settings: AuditSettings
    suites: tuple[SuiteInfo, ...] = ()
    judge: VisionModel | None = None
    progress: bool = True
    ablation: tuple | None = None


@dataclass(frozen=True)
class ImageSetAudit:
    """What streaming one image set produced (see the ``sae_audit_audit_image_set`` hook).

    Attributes:
        coverage: one coverage accumulator per SAE, in order.
        suites: one ``{suite name: accumulator}`` dict per SAE, in order.
        description: the JSON-ready description of the set as read
            (``name``, ``n_images``, ``n_skipped``, ``skipped``, provenance).
        floor: for the ID set, one noise-floor dict per SAE: ``{"id", "n_images": [A, B],
            "coverage": pair dict, "suites": {name: pair dict}}`` (the pair metrics
            between two disjoint halves of the set, SPEC section 5) or
            ``{"unavailable": reason}``; ``None`` for an OOD set.
    """

    coverage: tuple
    suites: tuple
    description: dict
    floor: tuple | None = None


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
def audit_image_set(run: AuditContext, image_set: ImageSet, role: str = "ood") -> ImageSetAudit:
    """Stream one image set through the model and every SAE (the built-in image-set pass).

    Judge embeddings come from ``run.judge`` (default: the audited model
    itself, from the same forward pass) when a suite needs them; spliced
    outputs (:mod:`sae_audit.audit.splicing`) when a suite needs them. Batches
    carry the set's Poisson bootstrap when ``settings.bootstrap > 0``. For the
    ID set (``role="id"``), coverage and every suite with a noise floor stream
    into two accumulators, one per half of the set (:func:`~sae_audit.suites.bootstrap.id_halves`);
    the floor is computed from them, then they are merged into the set's
    accumulators.

    Under torchrun each rank streams its own contiguous share of the set
    (:func:`sae_audit.distributed.share`); the shares' accumulators are
    all-gathered and merged in rank order (:func:`_merge_shares`), so every rank
    holds the one-process state (bootstrap weights and the ID halves are
    functions of the image's index in the whole set).

    Raises:
        SaeAuditError: no image of the set could be read (or one could not under
            strict mode, on any rank), or the model's output cannot be computed after a hook.
    """
    shares = distributed.gather_outcome(lambda: _stream_share(run, image_set, role))
    covs, extra, n_images, n_half, skipped, floor_reason = _merge_shares(run.suites, shares)
    if n_images == 0:
        raise SaeAuditError(f"no readable image in image set {image_set.name!r}")
    floor = None
    if role == "id":
        if floor_reason is None and len(covs[0]) == 2:
            floor_reason = floor_unavailable_reason(n_half[0], n_half[1], image_set.name)
        floor = tuple(_floor(run.suites, cov, more, image_set, n_half, floor_reason) for cov, more in zip(covs, extra))
    description = dict(image_set.describe())
    description.update(dataset_fingerprint(image_set))
    description.update({
        "n_images": n_images,
        "n_skipped": len(skipped),
        "skipped": [{"item": str(a), "reason": str(b)} for a, b in skipped[:20]],
    })
    return ImageSetAudit(tuple(cov[0] for cov in covs), tuple({k: v[0] for k, v in more.items()} for more in extra),
                         description, floor)


@dataclass
class _Share:
    """What one rank's share of an image set produced (before the ranks' shares are merged)."""

    covs: list
    extra: list
    n_images: int
    n_half: list
    skipped: list
    floor_reason: str | None


def _merge_shares(infos, shares: list[_Share]) -> tuple:
    """Merge the ranks' shares in rank order into the first: ``(covs, extra, n_images, n_half, skipped,
    floor_reason)``. One share (one process) is returned as it is."""
    first = shares[0]
    for other in shares[1:]:
        for cov, cov_o, more, more_o in zip(first.covs, other.covs, first.extra, other.extra):
            for acc, acc_o in zip(cov, cov_o):
                acc.merge(acc_o)
            for info in infos:
                for acc, acc_o in zip(more[info.name], more_o[info.name]):
                    _suite_call(info, "merge", acc.merge, acc_o)
        first.n_images += other.n_images
        first.n_half = [a + b for a, b in zip(first.n_half, other.n_half)]
        first.skipped = first.skipped + other.skipped
    return first.covs, first.extra, first.n_images, first.n_half, first.skipped, first.floor_reason


def _rank_batches(image_set: ImageSet, preprocess, settings: AuditSettings, progress: bool):
    """``(batches, skipped)``: this rank's share of ``image_set`` in batches whose ``indices`` are the
    whole set's, and a function giving its unreadable images once iterated. One process reads the whole set."""
    world = distributed.world()
    label = image_set.name if progress and distributed.is_main() else None
    if not world.active:
        it = iter_batches(image_set, preprocess, settings.images.batch_size, strict=settings.images.strict,
                          progress=label)
        return it, lambda: it.skipped
    part = distributed.share(len(image_set))
    skipped: list = []
    if len(part) == 0:
        return iter(()), lambda: skipped
    it = iter_batches(Subset(image_set, part), preprocess, settings.images.batch_size,
                      strict=settings.images.strict, progress=label)

    def batches():
        try:
            for batch in it:
                yield dataclasses.replace(batch, indices=batch.indices + part.start)
        except SaeAuditError:
            if settings.images.strict or it.n_ok:  # a share with no readable image is fine if others have some
                raise
        finally:
            skipped.extend(it.skipped)

    return batches(), lambda: skipped


def _stream_share(run: AuditContext, image_set: ImageSet, role: str) -> _Share:
    """Stream this rank's share of ``image_set`` (all of it for one process) into fresh accumulators."""
    vm, saes, settings = run.model, run.saes, run.settings
    judge = run.judge
    seed = settings.images.seed
    bootstrap = Bootstrap.for_set(settings.bootstrap, seed, image_set.name)
    n_set = len(image_set)
    split = None
    floor_reason = None
    if role == "id":
        if n_set >= 2 * MIN_HALF_IMAGES:
            split = id_halves(n_set, seed)
        else:
            floor_reason = (f"the ID set {image_set.name!r} has {n_set} image(s); the noise floor needs at least "
                            f"{2 * MIN_HALF_IMAGES} ({MIN_HALF_IMAGES} in each half)")
    halves = 2 if split is not None else 1
    judge_vm = judge or vm
    want_emb = any(info.needs_embeddings for info in run.suites)
    want_out = any(info.needs_outputs for info in run.suites)

    def ctx(item):
        return SuiteContext(item.sae, judge_vm.name, judge_vm.d_model if want_emb else None, seed, image_set.name,
                            settings.bootstrap)

    covs = [[CoverageAccumulator(s.sae.d_sae, s.sae.d_in, s.sae.k, settings.dense_threshold) for _ in range(halves)]
            for s in saes]
    extra = [{info.name: [info.factory(ctx(s)) for _ in range(halves if info.floor else 1)] for info in run.suites}
             for s in saes]
    preprocess = vm.preprocess
    if want_emb and judge is not None and judge is not vm:
        preprocess = _PairedPreprocess(vm, judge)
    it, skipped = _rank_batches(image_set, preprocess, settings, run.progress)
    n_images, checked, n_half = 0, False, [0, 0]
    hps = [HookPoint.parse(h) for h in sorted({s.hook_point.name for s in saes})]
    # The audited model as its own judge: one full forward gives both the block
    # outputs and the pooled embedding (unless a plugin's adapter pools its own way).
    one_pass = want_emb and not isinstance(preprocess, _PairedPreprocess) and \
        type(vm.adapter).pooled is FamilyAdapter.pooled
    for batch in it:
        pixel_values, embeddings, base = batch.pixel_values, None, None
        if isinstance(preprocess, _PairedPreprocess):
            pixel_values, judge_pv = preprocess.split(pixel_values)
            embeddings = judge.pooled(judge_pv).float().cpu()
        elif want_emb and not one_pass and not want_out:
            embeddings = vm.pooled(pixel_values).float().cpu()
        if want_out:
            acts, base = forward_with_outputs(vm, pixel_values, hps)
            if want_emb and embeddings is None:
                embeddings = base.pooled.float().cpu() if one_pass else vm.pooled(pixel_values).float().cpu()
        elif one_pass:
            acts, pooled = capture_and_pool(vm, pixel_values, hps)
            embeddings = pooled.float().cpu()
        else:
            acts = capture(vm, pixel_values, hps)
        n_images += pixel_values.shape[0]
        weights = bootstrap.weights(batch.indices) if bootstrap is not None else None
        sbs, reps, selected = [], [], {}
        for item in saes:
            sb, rep = _suite_batch(item, acts, vm, batch, embeddings, bootstrap, weights, want_out, selected)
            sbs.append(sb)
            reps.append(rep)
        if want_out:
            from sae_audit.audit.splicing import spliced_outputs

            outs = spliced_outputs(vm, pixel_values, acts, base, saes, reps, list(run.ablation),
                                   check=not checked and role == "id")  # once per audit: the ID set comes first
            sbs = [dataclasses.replace(sb, outputs=o) for sb, o in zip(sbs, outs)]
        keep = split[batch.indices] if split is not None else None
        if keep is not None:
            n_half[0] += int(keep.sum())
            n_half[1] += int((~keep).sum())
        first_parts: dict = {}  # per hook point and token set: the first SAE's parts, whose x statistics the rest adopt
        for item, sb, cov, more in zip(saes, sbs, covs, extra):
            parts = [sb] if keep is None else [sb.subset(keep), sb.subset(~keep)]
            shared = first_parts.setdefault((item.hook_point.name, item.hook_point.tokens), parts)
            if shared is not parts:
                for part, other in zip(parts, shared):
                    part.share_x_statistics(other)
            for acc, part in zip(cov, parts):
                acc.accumulate(part)
            for info in run.suites:
                accs = more[info.name]
                for acc, part in zip(accs, parts if len(accs) == 2 else [sb]):
                    _suite_call(info, "accumulate", acc.accumulate, part)
            if not checked:  # a plugin suite's output is checked on the first batch, before the long part
                for info in run.suites:
                    if info.plugin != BUILTIN:
                        check_first_finish(info, more[info.name][0])
        checked = True
    return _Share(covs, extra, n_images, n_half, list(skipped()), floor_reason)


def _floor(infos, cov: list, more: dict, image_set: ImageSet, n_half: list[int], reason: str | None) -> dict:
    """The noise floor of one SAE from its half accumulators, which are then merged (half B into half A)."""
    if len(cov) == 1:
        return {"unavailable": reason or "no split of the ID set"}
    if reason is None:
        floor = {"id": image_set.name, "n_images": list(n_half), "coverage": coverage_compare(cov[0], cov[1]),
                 "suites": {}}
        for info in infos:
            if info.floor:
                a, b = more[info.name]
                pair = _suite_call(info, "compare", info.compare, a, b,
                                   PairContext(image_set, image_set, floor["coverage"]))
                floor["suites"][info.name] = check_suite_output(info, pair, "compare")
    else:
        floor = {"unavailable": reason}
    cov[0].merge(cov[1])
    del cov[1]
    for info in infos:
        accs = more[info.name]
        if len(accs) == 2:
            _suite_call(info, "merge", accs[0].merge, accs[1])
            del accs[1]
    return floor


def _selected_tokens(acts: dict, hp: HookPoint, vm: VisionModel, batch) -> tuple:
    """One batch's rows at hook point ``hp``: ``(sel [B, T, d], x [N, d] float32 finite rows, image_index [N],
    labels [N], finite [B*T] bool, n_bad, bad_index)``."""
    sel = select_tokens(acts[hp.name], hp.tokens, vm.layout)
    n_tok = sel.shape[1]
    x = sel.reshape(-1, sel.shape[-1]).float()
    image_index = batch.indices.repeat_interleave(n_tok)
    labels = batch.labels.repeat_interleave(n_tok)
    finite = torch.isfinite(x).all(dim=1)
    n_bad = int((~finite).sum())
    bad_index = image_index[~finite.cpu()] if n_bad else torch.zeros(0, dtype=torch.long)
    if n_bad:
        x, image_index, labels = x[finite], image_index[finite.cpu()], labels[finite.cpu()]
    return sel, x, image_index, labels, finite, n_bad, bad_index


def _suite_batch(item: AuditedSAE, acts: dict, vm: VisionModel, batch, embeddings, bootstrap=None, weights=None,
                 want_replacement: bool = False, selected: dict | None = None):
    """Encode one batch's tokens at ``item``'s hook point: ``(SuiteBatch, splice)``, what every suite of that
    SAE reads; ``splice`` is ``(replacement, valid)`` for the fidelity suite when asked for, else ``None``.
    ``selected`` (per hook point and token set, filled here) shares the token selection between SAEs."""
    hp = item.hook_point
    key = (hp.name, hp.tokens, str(item.sae.W_enc.device))
    selected = {} if selected is None else selected
    if key not in selected:
        sel, x, *rest = _selected_tokens(acts, hp, vm, batch)
        selected[key] = (sel, x.to(item.sae.W_enc.device), *rest)
    sel, x, image_index, labels, finite, n_bad, bad_index = selected[key]
    codes = item.sae.encode(x)
    x_hat = item.sae.decode(codes)
    splice = None
    if want_replacement:
        from sae_audit.audit.splicing import replacement

        splice = replacement(sel, finite, x_hat.to(sel.device))
    sb = SuiteBatch(x.cpu(), codes.to("cpu"), x_hat.cpu(), image_index, labels, n_nonfinite=n_bad,
                    images=batch.indices, image_labels=batch.labels, embeddings=embeddings, bootstrap=bootstrap,
                    weights=weights, nonfinite_index=bad_index)
    return sb, splice


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


def _suite_call(info: SuiteInfo, what: str, fn, *args):
    """Call a suite's ``accumulate``/``finish``/``compare``; a plugin's failure names the plugin and the suite."""
    return get_plugin_manager().guarded(info.plugin, f"the {what} of suite {info.name!r} (sae_audit_register_suites)",
                                        fn, *args)


def check_first_finish(info: SuiteInfo, acc) -> None:
    """Call a plugin suite's ``finish`` twice after its first batch: JSON-ready, and the same both times.

    Raises:
        PluginError: ``finish`` raised, returned something that cannot go into results.json,
            or changed the accumulator (a second call returned something else); names the plugin and suite.
    """
    first = check_suite_output(info, _suite_call(info, "finish", acc.finish))
    if _suite_call(info, "finish", acc.finish) != first:
        raise PluginError(f"{get_plugin_manager().who(info.plugin)}: suite {info.name!r}: finish() returned "
                          "something else when called a second time; finish must not change the accumulator "
                          "(sae-audit calls it after the first batch to check its output)")


def check_suite_output(info: SuiteInfo, value, what: str = "finish"):
    """``value`` if it is a JSON-ready dict (see :func:`sae_audit.results.document.json_ready_problem`).

    Raises:
        PluginError: a plugin suite's output is not (names the plugin, the suite and the key).
        TypeError: a built-in suite's is not (a bug in sae-audit).
    """
    problem = "it is not a dict" if not isinstance(value, dict) else json_ready_problem(value)
    if problem is None:
        return value
    manager = get_plugin_manager()
    msg = f"suite {info.name!r}: {what}() returned a value that cannot go into results.json: {problem}"
    if info.plugin == BUILTIN:
        raise TypeError(msg)
    raise PluginError(f"{manager.who(info.plugin)}: {msg}")
