"""Sparse autoencoders: the SAE base and its architectures, losses, sparse codes, file formats and cards.

- :class:`SAE` (:mod:`~sae_audit.sae.base`): parameters, encode/decode, normalisation, saving;
- :class:`TopKSAE`, :class:`JumpReLUSAE`, :class:`ReLUSAE`: the architectures
  (:func:`build_sae` picks one by ``config.architecture``);
- :mod:`~sae_audit.sae.losses`: the training losses as plain functions (the Top-k
  objective that combines them is :mod:`sae_audit.train.objective`);
- :func:`load_sae` / :func:`save_sae`: files; :mod:`~sae_audit.sae.card`: model cards;
  :mod:`~sae_audit.sae.hub`: the Hugging Face hub.
"""

from sae_audit.sae.architectures import build_sae
from sae_audit.sae.base import SAE
from sae_audit.sae.card import model_card
from sae_audit.sae.codes import SparseCodes
from sae_audit.sae.config import SAEConfig
from sae_audit.sae.io import load_sae, save_sae
from sae_audit.sae.jumprelu import JumpReLUSAE
from sae_audit.sae.relu import ReLUSAE
from sae_audit.sae.topk import TopKSAE

__all__ = [
    "JumpReLUSAE", "ReLUSAE", "SAE", "SAEConfig", "SparseCodes", "TopKSAE",
    "build_sae", "load_sae", "model_card", "save_sae",
]
