"""Sparse autoencoders: the Top-k SAE, its losses, sparse codes and file formats."""

from sae_audit.sae.codes import SparseCodes
from sae_audit.sae.config import SAEConfig
from sae_audit.sae.io import load_sae, save_sae
from sae_audit.sae.topk import LossOutput, TopKSAE
from sae_audit.sae.variants import JumpReLUSAE, ReLUSAE, build_sae

__all__ = [
    "JumpReLUSAE", "LossOutput", "ReLUSAE", "SAEConfig", "SparseCodes", "TopKSAE",
    "build_sae", "load_sae", "save_sae",
]
