"""The short model card (README.md) written beside a trained SAE."""

from __future__ import annotations


from sae_audit.sae import SAEConfig


def sae_card(config: SAEConfig, summary, train_cfg, dataset: dict, n_skipped: int = 0, seconds: float | None = None) -> str:
    """Markdown card: what the SAE reads, what it was trained on, and its held-out quality.

    ``summary`` is a :class:`~sae_audit.train.trainer.TrainSummary`; ``dataset``
    the training set's ``describe()`` dict. The YAML front matter is the
    metadata every plugin's ``sae_audit_card_metadata`` returns, merged.

    Raises:
        sae_audit.plugin_manager.PluginError: a plugin's metadata hook failed or conflicts.
    """
    from huggingface_hub import ModelCardData

    # library_name, tags and base_model come from the built-in plugin; others add theirs.
    meta = plugin_card_metadata(config, dataset)
    # The whole config and the held-out numbers, so the card's metadata alone describes the SAE.
    meta["sae_config"] = config.to_dict()
    meta["metrics"] = {
        "heldout_fvu": summary.eval_fvu, "heldout_l0": summary.eval_l0,
        "heldout_effective_units": summary.eval_effective_units, "dead_fraction": summary.dead_fraction,
        "heldout_vectors": summary.eval_vectors, "training_vectors": summary.vectors, "steps": summary.steps,
    }
    front = ModelCardData(**{k: v for k, v in meta.items() if v is not None}).to_yaml()
    reg = []
    if config.lambda_off:
        reg.append(f"off-support L1 (lambda_off = {config.lambda_off:g})")
    if config.lambda_ratio:
        reg.append(f"L1/L2 ratio (lambda_ratio = {config.lambda_ratio:g})")
    reg_text = " and ".join(reg) if reg else "none (plain fixed-k Top-k)"
    lines = [
        "---",
        front,
        "---",
        "",
        f"# Top-k SAE for `{config.model}` at `{config.hook_point}:{config.tokens}`",
        "",
        "Trained with sae-audit (`sae-audit train`).",
        "",
        "| | |",
        "|---|---|",
        f"| model | `{config.model}` (revision `{config.model_revision or 'n/a'}`) |",
        f"| hook point | `{config.hook_point}` (the output of that block), token set `{config.tokens}` |",
        f"| input resolution | {config.image_size} px |",
        f"| d_in / d_sae / k | {config.d_in} / {config.d_sae} / {config.k} (expansion {config.expansion:g}) |",
        f"| regularisers (arXiv 2606.27321) | {reg_text} |",
        f"| normalisation | {config.normalisation} (scale {config.norm_scale:.6g}) |",
        f"| training data | `{dataset.get('name')}` ({dataset.get('size')} images; {n_skipped} unreadable skipped) |",
        f"| training vectors / steps | {summary.vectors} / {summary.steps} (batch {train_cfg.batch_size}, Adam lr {train_cfg.lr:g}) |",
        "",
        "## Held-out evaluation",
        "",
        f"On {summary.eval_vectors} activation vectors never trained on:",
        "",
        "| metric | value |",
        "|---|---|",
        f"| FVU (variance about the mean) | {summary.eval_fvu:.4f} |",
        f"| explained variance | {1 - summary.eval_fvu:.4f} |",
        f"| L0 (mean) | {summary.eval_l0:.2f} |",
        f"| effective units (mean) | {summary.eval_effective_units:.2f} |",
        f"| dead latents (no fire in the last {config.dead_after} training vectors) | {summary.dead_fraction:.2%} |",
    ]
    if seconds is not None:
        lines += ["", f"Training took {seconds:.0f} s."]
    lines += ["", "Load it with `sae_audit.load_sae(PATH)`; the config is in `config.json`.", ""]
    return "\n".join(lines)


def plugin_card_metadata(config, dataset: dict) -> dict:
    """Merged model-card metadata from every ``sae_audit_card_metadata`` implementation.

    Raises:
        PluginError: an implementation raised, returned something other than a
            dict or ``None``, or set a key another plugin set (names both).
    """
    from sae_audit.plugin_manager import PluginError, get_plugin_manager

    manager = get_plugin_manager()
    meta: dict = {}
    owner: dict[str, str] = {}
    for plugin, result in manager.call_each("sae_audit_card_metadata", config=config, dataset=dataset):
        if result is None:
            continue
        if not isinstance(result, dict):
            raise PluginError(f"{manager.who(plugin)}: sae_audit_card_metadata returned "
                              f"{type(result).__name__}, expected a dict or None")
        for key, value in result.items():
            if key == "tags":
                if not isinstance(value, list):
                    raise PluginError(f"{manager.who(plugin)}: card metadata 'tags' must be a list")
                meta.setdefault("tags", []).extend(t for t in value if t not in meta.get("tags", []))
                continue
            if key in meta:
                raise PluginError(f"model-card metadata key {key!r} is set by both {manager.who(owner[key])} "
                                  f"and {manager.who(plugin)}")
            meta[key], owner[key] = value, plugin
    return meta
