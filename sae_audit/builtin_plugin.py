"""sae-audit's own plugin: the list of built-in families, formats, image sets, suites and sections.

The plugin manager loads it first (:data:`sae_audit.plugin_manager.BUILTIN_MODULE`;
it is also listed under the ``sae_audit`` entry-point group in
``pyproject.toml``), and it takes the same path as any third-party plugin:
this module *is* the list of built-ins (nothing else keeps a table of them).
"""

from __future__ import annotations

from sae_audit.hookspecs import hookimpl


@hookimpl
def sae_audit_register_model_adapters(register):
    from sae_audit.models.adapters import (
        ClipAdapter,
        Dinov2Adapter,
        Dinov2WithRegistersAdapter,
        SiglipAdapter,
        ViTAdapter,
    )

    for adapter in (ViTAdapter(), Dinov2Adapter(), Dinov2WithRegistersAdapter(), ClipAdapter(), SiglipAdapter()):
        register(adapter)


@hookimpl
def sae_audit_register_sae_formats(register):
    from sae_audit.sae import io
    from sae_audit.sae.formats import saelens, saev, sparsify

    register("native", io.detect_native, io.read_native)
    register("saelens", saelens.detect, saelens.read)
    register("saev", saev.detect, saev.read)
    register("sparsify", sparsify.detect, sparsify.read)


@hookimpl
def sae_audit_register_image_sets(register):
    from sae_audit.data import demo

    register("fashion-mnist:train", lambda: demo.fashion_mnist("train"),
             "Fashion-MNIST training split: 60,000 28x28 grey clothing images, 10 classes "
             "(apt dataset-fashion-mnist)")
    register("fashion-mnist:test", lambda: demo.fashion_mnist("test"),
             "Fashion-MNIST test split: 10,000 28x28 grey clothing images, 10 classes (apt dataset-fashion-mnist)")
    register("digits", demo.DigitsSet,
             "OpenCV digits.png: 5,000 20x20 handwritten digits, 500 per class 0-9 (apt opencv-doc)")
    register("clipart", demo.clipart,
             "Open Clip Art Library: ~6,900 clip-art PNGs, class = top-level category (apt openclipart-png)")
    register("sklearn-digits", demo.SklearnDigitsSet,
             "scikit-learn load_digits: 1,797 8x8 handwritten digits, 10 classes (pip scikit-learn)")


@hookimpl
def sae_audit_register_suites(register):
    from sae_audit.results.metric_info import MetricInfo
    from sae_audit.suites import coverage, fidelity, k_robustness, monosemanticity, ood, pictures, probing, purity

    def M(key, label, better, scope, description, shift=None, **kw):  # noqa: N802 - a MetricInfo with its intervals
        """A suite metric whose interval (and, for a shifted pair metric, noise floor) sit beside the value."""
        floor = ("floor", key) if scope == "pair" and shift is not None else None
        return MetricInfo(key, label, better, scope, description, interval=("intervals", key), floor=floor,
                          shift=shift, **kw)

    # Coverage always runs (the audit builds it itself); it is registered so
    # that listings and name conflicts see it. Its metrics are the results' own (results/metric_info.py).
    register("coverage", lambda c: coverage.CoverageAccumulator(c.sae.d_sae, c.sae.d_in, c.sae.k),
             "firing frequencies, alive/dead/dense latents, L0, effective units and reconstruction, ID vs OOD")
    register("monosemanticity",
             lambda c: monosemanticity.MonosemanticityAccumulator(c.sae.d_sae, c.judge_width, c.judge_name),
             "monosemanticity score per latent against judge embeddings (Pach et al. 2025)", needs_embeddings=True,
             metrics=[M("ms_mean", "monosemanticity (mean MS over alive latents)", True, "dataset",
                        "mean monosemanticity score of the latents that fire (Pach et al. 2025)")])
    register("purity", lambda c: purity.PurityAccumulator(c.sae.d_sae, replicates=c.bootstrap > 0),
             "share of each latent's top-16 images in its most common class (labelled sets)", needs_labels=True,
             metrics=[M("purity_mean", "class purity (mean over alive latents)", True, "dataset",
                        "mean share of a latent's top images in its most common class", pct=True)])
    register("probing", lambda c: probing.ProbingAccumulator(c.sae.d_sae, c.sae.k, seed=c.seed),
             "held-out accuracy of a logistic regression on each image's top-m latents, m in 1,2,4,8,k",
             needs_labels=True)
    register("k-robustness", lambda c: k_robustness.KRobustnessAccumulator(c.sae),
             "FVU and L0 with the inference budget swapped to k/4, k/2, k, 2k, 4k")
    register("ood-detection", lambda c: ood.OODAccumulator(c.sae.d_sae, c.sae.d_in),
             "AUROC of per-image FVU, L0, effective units and latent rarity for ID vs OOD",
             compare=lambda a, b, ctx: ood.compare(a, b),
             metrics=[M(f"auroc_{s}", f"AUROC ID vs OOD by per-image {what}", None, "pair",
                        f"how well per-image {what} tells OOD images from ID ones (0.5: chance)", shift=0)
                      for s, what in (("fvu", "FVU"), ("l0", "L0"), ("effective_units", "effective units"),
                                      ("rarity", "latent rarity, leave-one-out"))])
    register("fidelity", lambda c: fidelity.FidelityAccumulator(),
             "the model's output with the SAE's reconstruction spliced in vs mean ablation: fidelity score, "
             "cosine, KL and top-1 agreement with a classification head",
             compare=lambda a, b, ctx: fidelity.compare(a, b), needs_outputs=True,
             metrics=[M("fidelity", "downstream fidelity", True, "dataset",
                        "1 - E[d(y, y_sae)] / E[d(y, y_ablate)] with d = 1 - cos of the model's output"),
                      M("fidelity_gap", "fidelity gap (ID − OOD)", False, "pair",
                        "downstream fidelity on ID minus on OOD: what the dictionary fails to carry out of "
                        "distribution", shift=1),
                      M("fidelity_kl_gap", "fidelity gap, KL of logits (ID − OOD)", False, "pair",
                        "the KL-based fidelity on ID minus on OOD (models with a classification head)", shift=1),
                      M("auroc_output_distance", "AUROC ID vs OOD by output distance", None, "pair",
                        "OOD detection by the per-image distance d(y, y_sae) of the spliced output (0.5: chance)",
                        shift=0)])
    register("pictures", lambda c: pictures.PicturesAccumulator(c.sae.d_sae),
             "thumbnails of the top images of the most shifted and OOD-only latents",
             compare=lambda a, b, ctx: pictures.compare(a, b, ctx.coverage or {}, ctx.id_set, ctx.ood_set),
             floor=False)


def _plugins_section(results: dict):
    from sae_audit.report.view import Section, Table

    plugins = [p for p in results.get("plugins") or [] if p.get("name") != "builtin"]
    if not plugins:
        return None
    rows = [[p["name"], p.get("distribution") or "n/a", p.get("version") or "n/a"] for p in plugins]
    return Section("plugins", "Plugins", [Table("Plugins that took part in this audit",
                                                ["plugin", "distribution", "version"], rows)])


@hookimpl
def sae_audit_register_report_sections(register):
    register("plugins", _plugins_section)


@hookimpl
def sae_audit_card_metadata(config):
    """``library_name``, ``tags`` (with the architecture's tag) and ``base_model`` of every SAE card.

    ``base_model`` is ``config.model`` only when it reads as a hub id (``name`` or
    ``org/name``, as ``huggingface_hub.utils.validate_repo_id`` accepts them); a local
    path (``.cache/models/x``, ``/abs/path``) is left out, as the hub would reject it.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    arch_tag = {"topk": "top-k-sae"}.get(config.architecture, f"{config.architecture}-sae")
    meta = {"library_name": "sae-audit", "tags": ["sparse-autoencoder", "interpretability", arch_tag]}
    if config.model:
        try:
            validate_repo_id(config.model)
            meta["base_model"] = config.model
        except HFValidationError:
            pass
    return meta


@hookimpl(trylast=True)
def sae_audit_audit_image_set(run, image_set, role):
    from sae_audit.audit import audit_image_set

    return audit_image_set(run, image_set, role)
