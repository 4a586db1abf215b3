"""Training SAEs on activations streamed from a vision model or read from an on-disk cache.

Jobs (what the CLI runs): :class:`TrainRequest` -> :func:`train_saes`,
:class:`CacheRequest` -> :func:`write_activation_cache`. Their parts:
:func:`fit_saes` (the training loop), :func:`cache_activations` (the cache
writer), :class:`ActivationCache` (the cache reader).
"""

from sae_audit.train.cache import ActivationCache, cache_activations
from sae_audit.train.card import sae_card
from sae_audit.train.jobs import CacheRequest, TrainedSAE, TrainRequest, sae_name, train_saes, write_activation_cache
from sae_audit.train.objective import LossOutput, TopKObjective
from sae_audit.train.stream import image_activations, shuffled_batches
from sae_audit.train.trainer import TrainConfig, TrainSummary, evaluate, fit_saes

__all__ = [
    "ActivationCache", "CacheRequest", "LossOutput", "TopKObjective", "TrainConfig", "TrainRequest", "TrainSummary", "TrainedSAE",
    "cache_activations", "evaluate", "fit_saes", "image_activations", "sae_card", "sae_name", "shuffled_batches",
    "train_saes", "write_activation_cache",
]
