"""The model card (README.md) of an SAE: one builder for every place that writes one.

:meth:`SAE.save_pretrained <sae_audit.sae.base.SAE.save_pretrained>`,
:meth:`SAE.push_to_hub <sae_audit.sae.base.SAE.push_to_hub>` and ``sae-audit train``
(:func:`sae_audit.train.card.sae_card`) all write :func:`model_card`, so the same SAE
with the same metrics gets the same YAML front matter whichever way it was saved:

- the metadata every plugin's ``sae_audit_card_metadata`` hook returns, merged by
  the plugin manager (the built-in plugin gives ``library_name``, ``tags`` and
  ``base_model``);
- ``sae_config``: the whole :class:`~sae_audit.sae.SAEConfig`;
- ``metrics``: the measured numbers, when given.

The body names the SAE and how to load it; with :class:`TrainingInfo` (from
``sae-audit train``) it adds the training table and the held-out evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sae_audit.sae.config import SAEConfig

ARCHITECTURE_NAMES = {"topk": "Top-k", "jumprelu": "JumpReLU", "relu": "ReLU"}

#: Metrics the training section of the card reads (what ``sae-audit train`` measures).
TRAINING_METRICS = (
    "heldout_fvu", "heldout_l0", "heldout_effective_units", "dead_fraction",
    "heldout_vectors", "training_vectors", "steps",
)


@dataclass(frozen=True)
class TrainingInfo:
    """How an SAE was trained, for the card's training table.

    Attributes:
        batch_size: activation vectors per optimiser step.
        lr: peak Adam learning rate.
        n_skipped: unreadable images skipped while reading the training data.
        seconds: wall-clock training time, if measured.
    """

    batch_size: int
    lr: float
    n_skipped: int = 0
    seconds: float | None = None


def _plain(value: Any) -> Any:
    """A YAML-friendly scalar: 0-dim tensors and numpy scalars (even float subclasses) become Python numbers."""
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def card_metadata(config: SAEConfig, metrics: Mapping[str, Any] | None = None,
                  dataset: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The card's YAML metadata: every plugin's card metadata, ``sae_config`` and ``metrics``.

    Args:
        config: the SAE's config.
        metrics: measured numbers (``{"heldout_fvu": 0.21, ...}``); omitted when empty.
        dataset: the training image set's ``describe()`` dict, handed to the plugins'
            ``sae_audit_card_metadata`` hooks (``{}`` when unknown).
    Returns:
        A dict without ``None`` values; ``sae_config`` and ``metrics`` are always
        this function's (they describe the SAE itself).
    Raises:
        sae_audit.plugin_manager.PluginError: a plugin's hook raised, returned something
            other than a dict, or set a key another plugin set.
    """
    meta = plugin_card_metadata(config, dict(dataset or {}))
    meta["sae_config"] = config.to_dict()
    if metrics:
        meta["metrics"] = {str(k): _plain(v) for k, v in metrics.items()}
    return {k: v for k, v in meta.items() if v is not None}


def _regularisers(config: SAEConfig) -> str:
    reg = []
    if config.lambda_off:
        reg.append(f"off-support L1 (lambda_off = {config.lambda_off:g})")
    if config.lambda_ratio:
        reg.append(f"L1/L2 ratio (lambda_ratio = {config.lambda_ratio:g})")
    return " and ".join(reg) if reg else "none (plain fixed-k Top-k)"


def _training_section(config: SAEConfig, metrics: Mapping[str, Any], dataset: Mapping[str, Any],
                      training: TrainingInfo) -> list[str]:
    m = metrics
    lines = [
        "Trained with sae-audit (`sae-audit train`).",
        "",
        "| | |",
        "|---|---|",
        f"| model | `{config.model}` (revision `{config.model_revision or 'n/a'}`) |",
        f"| hook point | `{config.hook_point}` (the output of that block), token set `{config.tokens}` |",
        f"| input resolution | {config.image_size} px |",
        f"| d_in / d_sae / k | {config.d_in} / {config.d_sae} / {config.k} (expansion {config.expansion:g}) |",
    ]
    if config.architecture == "topk":
        lines.append(f"| regularisers (arXiv 2606.27321) | {_regularisers(config)} |")
    lines += [
        f"| normalisation | {config.normalisation} (scale {config.norm_scale:.6g}) |",
        f"| training data | `{dataset.get('name')}` ({dataset.get('size')} images; "
        f"{training.n_skipped} unreadable skipped) |",
        f"| training vectors / steps | {m['training_vectors']} / {m['steps']} (batch {training.batch_size}, "
        f"Adam lr {training.lr:g}) |",
        "",
        "## Held-out evaluation",
        "",
        f"On {m['heldout_vectors']} activation vectors never trained on:",
        "",
        "| metric | value |",
        "|---|---|",
        f"| FVU (variance about the mean) | {m['heldout_fvu']:.4f} |",
        f"| explained variance | {1 - m['heldout_fvu']:.4f} |",
        f"| L0 (mean) | {m['heldout_l0']:.2f} |",
        f"| effective units (mean) | {m['heldout_effective_units']:.2f} |",
        f"| dead latents (no fire in the last {config.dead_after} training vectors) | {m['dead_fraction']:.2%} |",
    ]
    if training.seconds is not None:
        lines += ["", f"Training took {training.seconds:.0f} s."]
    return lines


def model_card(
    config: SAEConfig,
    metrics: Mapping[str, Any] | None = None,
    *,
    dataset: Mapping[str, Any] | None = None,
    training: TrainingInfo | None = None,
) -> str:
    """The README.md text of an SAE: :func:`card_metadata` as YAML front matter, then Markdown.

    Args:
        config: the SAE's config.
        metrics: measured numbers for the metadata; with ``training`` they must hold
            every key of :data:`TRAINING_METRICS`.
        dataset: the training image set's ``describe()`` dict (``name``, ``size``).
        training: how the SAE was trained; adds the training table and the held-out
            evaluation to the body.
    Raises:
        ValueError: ``training`` is given but ``metrics`` lacks a key of
            :data:`TRAINING_METRICS`.
        sae_audit.plugin_manager.PluginError: as :func:`card_metadata`.
    """
    from huggingface_hub import ModelCardData

    if training is not None:
        missing = [k for k in TRAINING_METRICS if k not in (metrics or {})]
        if missing:
            raise ValueError(f"a training card needs the metrics {', '.join(missing)}")
    front = ModelCardData(**card_metadata(config, metrics, dataset)).to_yaml()
    name = ARCHITECTURE_NAMES.get(config.architecture, config.architecture)
    where = f"`{config.hook_point}:{config.tokens}`" if config.hook_point else "an unrecorded hook point"
    summary = f"d_in {config.d_in}, d_sae {config.d_sae}, k {config.k} (expansion {config.expansion:g})"
    if config.architecture == "topk":
        summary += f"; regularisers (arXiv 2606.27321): {_regularisers(config)}"
    lines = [
        "---",
        front,
        "---",
        "",
        f"# {name} SAE for `{config.model}` at {where}",
        "",
        f"{summary}. Load it with `sae_audit.load_sae(PATH_OR_REPO_ID)`; every setting is in "
        "`config.json` and in the `sae_config` metadata above.",
        "",
    ]
    if training is not None:
        lines += _training_section(config, metrics or {}, dataset or {}, training) + [""]
    return "\n".join(lines)


def plugin_card_metadata(config: SAEConfig, dataset: dict) -> dict:
    """Merged card metadata from every ``sae_audit_card_metadata`` implementation, in load order.

    Dicts are merged; ``tags`` lists are concatenated without repeats; any other
    key set by two plugins is a conflict.

    Raises:
        sae_audit.plugin_manager.PluginError: an implementation raised, returned
            something other than a dict or ``None``, or set a key another plugin set (names both).
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
