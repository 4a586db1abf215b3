"""The model card (README.md) ``sae-audit train`` writes beside a trained SAE.

A thin call into :func:`sae_audit.sae.card.model_card`, the builder
``save_pretrained`` and ``push_to_hub`` use too: the metrics are the training
summary's, and :class:`~sae_audit.sae.card.TrainingInfo` adds the training table
and the held-out evaluation to the body.
"""

from __future__ import annotations

from typing import Any

from sae_audit.sae import SAEConfig
from sae_audit.sae.card import TrainingInfo, model_card


def card_metrics(summary) -> dict[str, Any]:
    """The card's ``metrics`` from a :class:`~sae_audit.train.trainer.TrainSummary`.

    Keys: ``heldout_fvu``, ``heldout_l0``, ``heldout_effective_units``,
    ``dead_fraction`` (floats) and ``heldout_vectors``, ``training_vectors``,
    ``steps`` (ints): :data:`sae_audit.sae.card.TRAINING_METRICS`.
    """
    return {
        "heldout_fvu": summary.eval_fvu, "heldout_l0": summary.eval_l0,
        "heldout_effective_units": summary.eval_effective_units, "dead_fraction": summary.dead_fraction,
        "heldout_vectors": summary.eval_vectors, "training_vectors": summary.vectors, "steps": summary.steps,
    }


def sae_card(config: SAEConfig, summary, train_cfg, dataset: dict, n_skipped: int = 0, seconds: float | None = None) -> str:
    """Markdown card: what the SAE reads, what it was trained on, and its held-out quality.

    Args:
        config: the trained SAE's config.
        summary: its :class:`~sae_audit.train.trainer.TrainSummary`.
        train_cfg: the :class:`~sae_audit.train.trainer.TrainConfig` (batch size, lr).
        dataset: the training set's ``describe()`` dict (``name``, ``size``).
        n_skipped: unreadable images skipped.
        seconds: training time.
    Returns:
        :func:`sae_audit.sae.card.model_card` with :func:`card_metrics` as ``metrics``.
    Raises:
        sae_audit.plugin_manager.PluginError: a plugin's metadata hook failed or conflicts.
    """
    training = TrainingInfo(batch_size=train_cfg.batch_size, lr=train_cfg.lr, n_skipped=n_skipped, seconds=seconds)
    return model_card(config, card_metrics(summary), dataset=dataset, training=training)
