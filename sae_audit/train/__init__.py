"""Training SAEs on activations streamed from a vision model or read from an on-disk cache."""

from sae_audit.train.cache import ActivationCache, write_activation_cache
from sae_audit.train.card import sae_card
from sae_audit.train.objective import LossOutput, TopKObjective
from sae_audit.train.stream import image_activations, shuffled_batches
from sae_audit.train.trainer import TrainConfig, TrainSummary, evaluate, train_saes

__all__ = [
    "ActivationCache", "LossOutput", "TopKObjective", "TrainConfig", "TrainSummary", "evaluate",
    "image_activations", "sae_card", "shuffled_batches", "train_saes", "write_activation_cache",
]
