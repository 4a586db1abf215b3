"""Every hook a plugin can implement: the hook reference.

A plugin is a module (or any object) with functions named after these hooks
and marked with :data:`hookimpl` (``from sae_audit.hookspecs import hookimpl``);
it is found through the ``sae_audit`` entry-point group (see
:mod:`sae_audit.plugin_manager` and ``docs/plugins.md``). ``docs/hooks.md`` is
generated from the docstrings here (``python scripts/hook_reference.py``) and a
test checks that it is up to date.

Three kinds of hook:

- **register hooks** (``sae_audit_register_*``) receive a ``register``
  callback and call it once per thing they contribute; every plugin's
  contributions are merged, and two plugins registering the same name is a
  conflict error naming both. A register hook that raises, passes the wrong
  types or returns a value leaves its plugin out (reported by name);
- **first-result hooks** stop at the first implementation that returns
  something other than ``None``;
- **lifecycle hooks** are called around an audit run; implement them with
  ``@hookimpl(wrapper=True)`` (pluggy's new-style wrappers) to see both before
  and after the other implementations.

Implementations may accept any subset of a hook's arguments, by name.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

# Annotations name sae-audit's types by their full path, as strings: this module
# is the bottom of the package's import graph and imports none of the modules they live in.
if TYPE_CHECKING:
    import sae_audit

PROJECT_NAME = "sae_audit"

#: Marks a hook specification (used in this module only).
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marks a hook implementation in a plugin: ``@hookimpl`` or ``@hookimpl(wrapper=True)``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

_REGISTER_PREFIX = PROJECT_NAME + "_register_"


# --------------------------------------------------------------------------- registries
@hookspec
def sae_audit_register_model_adapters(register: Callable[..., None]) -> None:
    """Register model-family adapters: how to find the blocks and token layout of a family.

    Called once per plugin, when the plugin manager registers the plugin (at
    start-up); :func:`sae_audit.models.registry.adapter_for` then looks
    families up by name or ``config.model_type``.

    Args:
        register: ``register(adapter)``, where ``adapter`` is an instance of
            :class:`sae_audit.models.adapters.FamilyAdapter` (a subclass that
            sets ``family``, ``model_types`` and ``block_paths`` and implements
            ``model_class``; override ``layout`` for CLS/register tokens and
            ``pooled`` for the judge embedding).

    Returns:
        Nothing; the return value is ignored.

    A family name or a ``config.model_type`` registered by two plugins is a
    conflict error naming both. Built-in families: ``vit``, ``dinov2``,
    ``dinov2_with_registers``, ``clip``, ``siglip``.
    """


@hookspec
def sae_audit_register_sae_formats(register: Callable[..., None]) -> None:
    """Register SAE file-format readers.

    Called once per plugin, when the plugin manager registers the plugin (at
    start-up). :func:`sae_audit.sae.load_sae` tries the readers in load order
    (the built-ins ``native``, ``saelens``, ``saev`` and ``sparsify`` first,
    then plugins by entry-point name) and uses the first whose ``detect``
    accepts the folder.

    Args:
        register: ``register(name, detect, read)``: ``name`` a short format
            name (``"npz"``); ``detect(folder: pathlib.Path) -> bool``,
            cheap, must not raise; ``read(folder: pathlib.Path) -> TopKSAE``
            (:class:`sae_audit.sae.TopKSAE`), raising
            :class:`~sae_audit.errors.SaeAuditError` for a folder it cannot
            read.

    Returns:
        Nothing; the return value is ignored.
    """


@hookspec
def sae_audit_register_image_sets(register: Callable[..., None]) -> None:
    """Register named image sets and image-set families.

    Called once per plugin, when the plugin manager registers the plugin (at
    start-up). :func:`sae_audit.data.open_image_set` and ``sae-audit sets``
    then see the sets (exact names first, then family prefixes).

    Args:
        register: ``register(name, factory, description, family=False)``.
            For a named set (``family=False``) ``name`` is the exact spec
            users type (``"fashion-mnist:test"``) and ``factory()`` takes no
            argument. For a family (``family=True``) ``name`` is a prefix
            (``"corrupt"``) and ``factory(argument: str)`` receives what
            follows ``"<name>:"`` in the user's spec
            (``"gaussian_noise:3:fashion-mnist:test"``). Either factory returns
            a :class:`sae_audit.data.ImageSet` and raises
            :class:`~sae_audit.errors.SaeAuditError` for a bad spec or a
            missing dependency. ``description`` is one line for
            ``sae-audit sets``.

    Returns:
        Nothing; the return value is ignored.
    """


@hookspec
def sae_audit_register_suites(register: Callable[..., None]) -> None:
    """Register audit suites: streaming accumulators run on every SAE and image set, with the metrics they declare.

    Called once per plugin, when the plugin manager registers the plugin (at
    start-up); :func:`sae_audit.suites.registry.available_suites` lists them
    and ``sae-audit run --suite NAME`` (or ``--suite all``) runs them.

    Args:
        register: ``register(name, factory, description, compare=None,
            needs_labels=False, needs_embeddings=False, needs_outputs=False,
            floor=None, metrics=())``: ``name`` is what ``--suite`` takes;
            ``factory(context)`` takes a :class:`sae_audit.suites.SuiteContext`
            (``sae``, ``judge_name``, ``judge_width``, ``seed``, ``bootstrap``)
            and returns a new accumulator, one per SAE and image set;
            ``description`` is one line for ``sae-audit suites``;
            ``compare(id_acc, ood_acc, pair_context)`` optionally returns a dict
            per ID/OOD pair (``pair_context`` is a
            :class:`sae_audit.suites.PairContext`: ``id_set``, ``ood_set``,
            ``coverage``, the coverage suite's pair dict); ``needs_labels``
            skips the suite on unlabelled sets; ``needs_embeddings`` makes the
            audit compute judge embeddings for its batches; ``needs_outputs``
            makes it run the model to its output with the SAE spliced in
            (``batch.outputs``); ``floor`` (default: when there is a
            ``compare``) also runs ``compare`` on two halves of the ID set, the
            noise floor the pairs' ``shifted`` flags are judged against;
            ``metrics`` is a list of :class:`sae_audit.results.MetricInfo` (also
            ``sae_audit.suites.MetricInfo``) the suite declares (see below).
            Batches carry the image set's Poisson bootstrap
            (``batch.bootstrap``, ``batch.image_weights``) when intervals are on.

    Returns:
        Nothing; the return value is ignored.

    **The accumulator** (the shape of :class:`sae_audit.suites.base.Accumulator`):

    - ``accumulate(batch)`` is called once per batch of an image set with a
      :class:`sae_audit.suites.SuiteBatch`: ``x`` ``[N, d_in]`` float32
      activations at the SAE's hook point (finite rows only, on the CPU);
      ``codes``, the SAE's sparse codes of ``x`` (``codes.indices`` int64 and
      ``codes.values`` float32, both ``[N, k]``); ``x_hat`` ``[N, d_in]``
      float32, the reconstruction; ``image_index`` and ``labels`` ``[N]``
      int64, the dataset index and class (-1: unlabelled) of each row's image;
      ``n_nonfinite``, rows dropped for NaN/inf; ``images`` and
      ``image_labels`` ``[B]`` int64, the batch's images; ``embeddings``
      ``[B, d_e]`` float32 judge embeddings (``None`` unless a suite of the
      run needs them); ``image_codes`` (computed once, shared), the batch
      pooled per image (``max_acts`` ``[B, d_sae]``: each latent's maximum
      over the image's tokens; ``n_tokens``; ``row``). ``N`` is tokens
      (``B`` times the tokens per image of the SAE's token set); every token
      of an image is in the same batch.
    - **Selected but silent latents carry zero values**: a Top-k code has
      exactly ``k`` entries per row, and an entry whose pre-activation was
      not positive has ``values == 0`` (ReLU after selection). A latent
      *fires* where its value is ``> 0``: count ``(codes.values > 0)``, never
      the entries of ``codes.indices`` alone.
    - ``merge(other)`` adds another accumulator of the same suite that saw a
      disjoint part of the same image set (shards, processes). It must be
      exact: accumulating A then B, or A and B separately then merging, gives
      the same ``finish()`` (keep sums and counts, never running means of
      means). Anything random (bootstrap weights, splits) is a function of
      the image index and ``context.seed``, never of the batch.
    - ``finish() -> dict`` reduces to what goes into ``results.json`` under
      ``saes[i].suites[NAME].datasets[SET]``. It must be JSON-ready: ``None``,
      ``bool``, ``int``, finite ``float``, ``str``, lists and dicts with
      string keys; a missing value is ``None``, never NaN or infinity; no numpy
      scalars and no tensors (``float(x)``, ``x.tolist()``). ``finish`` may
      run more than once and must not change the accumulator: sae-audit calls
      it (twice) after the first batch of each image set to check its output
      before the long part of the audit, then once at the end.
    - ``compare(id_acc, ood_acc, pair_context)`` runs once per SAE and ID/OOD
      pair, after every image set has been streamed and finished, with the two
      (finished, unchanged) accumulators; its dict, JSON-ready like
      ``finish``'s, goes under ``saes[i].suites[NAME].pairs[j]`` next to
      ``id`` and ``ood``. It does not run for a pair whose set the suite skipped.

    A plugin suite that raises in any of these, or returns output that
    cannot go into ``results.json``, stops the run with exit status 2 and one
    line naming the plugin, the suite, the function and (for bad output) the
    JSON path of the first bad value (``$.entropy is nan``), before the long
    part of the audit when it shows on the first batch.

    **Metrics.** Each :class:`~sae_audit.results.MetricInfo` names one number
    in the suite's output: ``MetricInfo(key, label, higher_is_better, scope,
    description, pct=False, digits=3, path=None, interval=None, floor=None,
    shift=None)``.
    ``key`` is the metric's name for ``--fail-on`` (letters, digits, ``_``;
    unique across the run: a coverage metric's name, or another suite's, is
    refused naming both plugins); ``higher_is_better`` is ``True``, ``False``
    or ``None`` (descriptive); ``scope`` is ``"dataset"`` (the value is
    ``finish()[path...]`` per image set) or ``"pair"`` (``compare()[path...]``
    per ID/OOD pair, filed under the OOD set); ``path`` defaults to
    ``(key,)``; ``interval`` and ``floor`` are the paths of the value's 95%
    interval and (pair metrics) of the ID-vs-ID noise floor's interval,
    ``[low, high]`` lists in the same dict, when the suite computes them
    (the built-ins keep them under ``intervals`` and ``floor``);
    ``shift`` (pair metrics) is the direction in which a pair counts as
    shifted beyond the floor: ``1`` above it, ``-1`` below, ``0`` either way.
    Declared metrics join the results' ``metrics`` table (with ``suite``,
    ``path`` and ``plugin``), ``--fail-on`` (``entropy_gap[digits]>0.5``; the
    suite must run), ``sae-audit report diff``, the verdict in the report's
    summary and, when they have a direction, the model card's ``model-index``.

    Built-in: ``coverage`` (always run), ``monosemanticity`` (metric
    ``ms_mean``), ``purity`` (``purity_mean``), ``probing``,
    ``k-robustness``, ``ood-detection`` (``auroc_fvu``, ``auroc_l0``,
    ``auroc_effective_units``, ``auroc_rarity``), ``fidelity`` (``fidelity``,
    ``fidelity_gap``, ``fidelity_kl_gap``, ``auroc_output_distance``),
    ``pictures``.
    """


@hookspec
def sae_audit_register_report_sections(register: Callable[..., None]) -> None:
    """Register report sections: structured content added to every report, Markdown and HTML alike.

    Called once per plugin, when the plugin manager registers the plugin (at
    start-up). Every report written then calls each ``render``, in load
    order (the built-in "Plugins" section, registered through this hook too,
    comes first); the sections are placed after the built-in content
    (Summary, SAEs, ID vs OOD coverage, Reconstruction, "Audit suites",
    "Latent pictures" and "Shifted latents") and before the last section,
    "Method and provenance". Sections render from the results document
    alone, so ``sae-audit report render`` includes them too.

    Args:
        register: ``register(name, render)``: ``render(results: dict)``
            returns ``None`` (nothing to say for this audit) or a
            :class:`sae_audit.report.view.Section` (``Section(id, title,
            blocks)``; blocks are plain strings, ``Bullets``, ``Table`` (numeric
            columns are right-aligned), ``Figure`` (``draw() ->`` a matplotlib
            figure), ``Gallery`` of ``Image`` s and ``Details``, from
            :mod:`sae_audit.report.view`). The host escapes every text and
            sets the anchor to ``plugin-<plugin>-<name>``. Raw Markdown/HTML
            only through a ``Raw(markdown, html)`` block (or a
            :class:`sae_audit.report.plugin_sections.ReportSection`), which is
            sanitised: no script, no event handler, no external URL.

    Returns:
        Nothing; the return value is ignored.

    A section whose ``render`` raises or returns something else is replaced
    by a visible error note naming the plugin; the rest of the report is
    written.
    """


@hookspec
def sae_audit_register_commands(register: Callable[..., None]) -> None:
    """Register ``sae-audit`` sub-commands.

    Called once per plugin, when the plugin manager registers the plugin (at
    start-up); the CLI adds the commands to its parser (not with
    ``--no-plugins``).

    Args:
        register: ``register(name, configure, run, help)``:
            ``configure(parser: argparse.ArgumentParser)`` adds the command's
            arguments; ``run(args: argparse.Namespace) -> int | None`` does the
            work (``None`` means exit 0; raise
            :class:`~sae_audit.errors.SaeAuditError` for a user mistake);
            ``help`` is one line.

    Returns:
        Nothing; the return value is ignored.

    A name that is already a command (built-in or another plugin's) is a
    conflict error naming both.
    """


# --------------------------------------------------------------------------- metadata
@hookspec
def sae_audit_card_metadata(config: sae_audit.sae.SAEConfig, dataset: dict[str, Any]) -> dict[str, Any] | None:
    """Contribute metadata to the YAML front matter of an SAE's model card.

    Called every time an SAE's model card is written: once per trained SAE by
    ``sae-audit train``, and by ``SAE.save_pretrained`` / ``SAE.push_to_hub``.

    Args:
        config: the :class:`sae_audit.sae.SAEConfig` of the SAE.
        dataset: the training image set's ``describe()`` dict (``name``,
            ``size``, ...); empty (``{}``) when it is not known (``save_pretrained``).

    Returns:
        ``None`` or a dict of JSON-serialisable values. Dicts are merged in
        plugin order; a ``tags`` list is appended to the others' tags; any
        other key set by two plugins is a conflict error naming both.
    """


# --------------------------------------------------------------------------- lifecycle
@hookspec
def sae_audit_run_configured(model: sae_audit.models.VisionModel, saes: list[sae_audit.audit.AuditedSAE],
                             id_set: sae_audit.data.ImageSet, ood_sets: list[sae_audit.data.ImageSet],
                             config: sae_audit.audit.AuditSettings) -> None:
    """An audit run is fully configured and about to read images.

    Called once per :func:`sae_audit.audit.run_audit`, after the SAEs are
    checked against the model and before the first image is read. Raising
    stops the run: the error names the plugin and this hook.

    Args:
        model: the :class:`sae_audit.models.VisionModel`.
        saes: the list of :class:`sae_audit.audit.AuditedSAE`.
        id_set: the in-distribution :class:`sae_audit.data.ImageSet`.
        ood_sets: the out-of-distribution image sets (a list).
        config: the :class:`sae_audit.audit.AuditConfig`.

    Returns:
        Nothing; the return value is ignored.
    """


@hookspec(firstresult=True)
def sae_audit_audit_image_set(run: sae_audit.audit.AuditContext, image_set: sae_audit.data.ImageSet,
                              role: str) -> sae_audit.audit.ImageSetAudit:
    """Stream one image set through the model and every SAE (first result wins).

    Called once per image set of a run (the ID set first, then each OOD set).
    The built-in plugin implements it (``trylast``) with the streaming pass of
    :func:`sae_audit.audit.audit_image_set`; implement it with
    ``@hookimpl(wrapper=True)`` to see each set before and after it is audited
    (timing, memory, extra fields in the description), or return a result
    first to replace the built-in pass.

    Args:
        run: the :class:`sae_audit.audit.AuditContext` of the run: ``model``
            (the :class:`sae_audit.models.VisionModel`), ``saes`` (the
            :class:`sae_audit.audit.AuditedSAE` s), ``settings`` (the
            :class:`sae_audit.audit.AuditSettings`), ``suites`` (the
            :class:`sae_audit.suites.SuiteInfo` s to run besides coverage),
            ``judge`` (the model giving judge embeddings, or ``None``: the
            audited model), ``progress`` (show a progress bar) and ``ablation``
            (per SAE, the ID mean the fidelity suite ablates with, or ``None``).
        image_set: the :class:`sae_audit.data.ImageSet` to read.
        role: ``"id"`` or ``"ood"``.

    Returns:
        An :class:`sae_audit.audit.ImageSetAudit`: ``coverage`` (one coverage
        accumulator per SAE, in order), ``suites`` (one ``{suite name:
        accumulator}`` dict per SAE, in order) and ``description`` (the
        JSON-ready description of the set as read: ``name``, ``n_images``,
        ``n_skipped``, ...), and for the ID set ``floor`` (per SAE, the pair
        metrics between two halves of the set, or ``{"unavailable": reason}``;
        ``None`` leaves every noise floor unavailable). A wrapper receives it
        from ``yield`` and returns it, or a changed copy (``dataclasses.replace``).
    """


@hookspec
def sae_audit_run_finished(results: dict[str, Any]) -> dict[str, Any] | None:
    """An audit run finished; ``results`` is the complete results document.

    Called once per :func:`sae_audit.audit.run_audit`, before the document is
    returned (and so before any report is written).

    Args:
        results: the results dict (see :mod:`sae_audit.results.document`).

    Returns:
        ``None``, or a JSON-serialisable dict that is stored in the document
        under ``results["extensions"][<plugin name>]``. Raising fails the run
        with an error naming the plugin and this hook.
    """


def hook_names() -> list[str]:
    """The names of every hook specification, in the order of this module."""
    return [name for name, obj in vars(sys.modules[__name__]).items()
            if name.startswith(PROJECT_NAME + "_") and inspect.isfunction(obj)]


#: The register hooks by the kind of thing they register: ``{"image_sets": "sae_audit_register_image_sets", ...}``.
REGISTER_HOOKS: dict[str, str] = {
    name[len(_REGISTER_PREFIX):]: name for name in hook_names() if name.startswith(_REGISTER_PREFIX)
}
