"""Training SAEs on activations streamed from a vision model."""

from sae_audit.train.card import sae_card
from sae_audit.train.stream import image_activations, shuffled_batches
from sae_audit.train.trainer import TrainConfig, TrainSummary, evaluate, train_saes

__all__ = ["TrainConfig", "TrainSummary", "evaluate", "image_activations", "sae_card", "shuffled_batches", "train_saes"]
