"""The SAE configuration: a frozen dataclass that round-trips through JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from sae_audit.errors import SaeAuditError

SAE_SCHEMA_VERSION = 1

ARCHITECTURES = ("topk", "jumprelu", "relu")
NORMALISATIONS = ("none", "scalar")


@dataclass(frozen=True)
class SAEConfig:
    """Everything needed to rebuild and interpret a Top-k SAE.

    Attributes:
        d_in: width of the activation vectors the SAE reads.
        d_sae: number of latents (dictionary size).
        k: training-time Top-k budget (latents kept per input).
        architecture: ``"topk"`` (Gao et al. 2024, arXiv 2406.04093); ``"jumprelu"``
            (Rajamanoharan et al. 2024, arXiv 2407.14435: ``z = relu(h) * (h > threshold)``,
            also how SAELens saves BatchTopK SAEs) and ``"relu"`` (standard ReLU SAE) are
            read from other libraries' files for auditing; only ``topk`` is trained here.
            For ``jumprelu``/``relu``, ``k`` caps the latents kept per input (``d_sae``: no cap).
        apply_b_dec_to_input: subtract ``b_dec`` before encoding (SPEC section 1; SAELens'
            option of the same name; saev does not).
        topk_relu: apply ReLU to the selected Top-k values (SPEC section 1); ``False``
            keeps raw values, as saev's TopK activation does.
        lambda_off: weight of the off-support L1 regulariser (arXiv 2606.27321); 0 disables it.
        lambda_ratio: weight of the L1/L2-ratio regulariser (arXiv 2606.27321); 0 disables it.
        aux_alpha: weight of the AuxK dead-latent loss (Gao et al.: 1/32).
        k_aux: AuxK budget; ``None`` means ``min(512, d_in // 2)``.
        dead_after: a latent is dead once it has not fired for this many training tokens.
        normalisation: ``"none"`` or ``"scalar"``: inputs are multiplied by
            ``norm_scale`` before encoding, chosen so that E||x|| = sqrt(d_in) on
            the training data; outputs are divided by it again.
        norm_scale: the scalar for ``"scalar"`` normalisation (1.0 otherwise).
        init_seed: the seed the weights were initialised from (``None``: not recorded, e.g. a file
            written before it was, or an SAE from another library). Training seeds every SAE of a
            sweep with the run's seed, so SAEs of one ``d_in``/``d_sae`` differing only in ``k`` or
            the regularisers start from identical ``W_enc``, ``W_dec``, ``b_enc`` (paired sweeps,
            SPEC section 6).
        model: the vision model the SAE was trained on (hub id or path).
        model_revision: its revision (commit hash where known).
        hook_point: where it reads the model, e.g. ``"block.6"``.
        tokens: token set, one of ``cls``, ``patch``, ``mean``, ``all``.
        image_size: the input resolution used in training (pixels), if fixed; at most 4096.
            ``norm_scale`` must lie in [1e-12, 1e12].
        schema_version: version of this on-disk format.
    """

    d_in: int
    d_sae: int
    k: int
    architecture: str = "topk"
    apply_b_dec_to_input: bool = True
    topk_relu: bool = True
    lambda_off: float = 0.0
    lambda_ratio: float = 0.0
    aux_alpha: float = 1.0 / 32.0
    k_aux: int | None = None
    dead_after: int = 10_000_000
    normalisation: str = "none"
    norm_scale: float = 1.0
    init_seed: int | None = None
    model: str | None = None
    model_revision: str | None = None
    hook_point: str | None = None
    tokens: str | None = None
    image_size: int | None = None
    schema_version: int = SAE_SCHEMA_VERSION

    def __post_init__(self) -> None:
        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for name in ("d_in", "d_sae", "k", "dead_after"):
            value = getattr(self, name)
            if not is_int(value) or value <= 0:
                raise SaeAuditError(f"SAE config: {name} must be a positive integer, got {value!r}")
        if self.init_seed is not None and not is_int(self.init_seed):
            raise SaeAuditError(f"SAE config: init_seed must be an integer or null, got {self.init_seed!r}")
        for name in ("k_aux", "image_size"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value <= 0):
                raise SaeAuditError(f"SAE config: {name} must be a positive integer or null, got {value!r}")
        if not is_int(self.schema_version):
            raise SaeAuditError(f"SAE config: schema_version must be an integer, got {self.schema_version!r}")
        for name in ("lambda_off", "lambda_ratio", "aux_alpha", "norm_scale"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise SaeAuditError(f"SAE config: {name} must be a finite number, got {value!r}")
        for name in ("architecture", "normalisation"):
            if not isinstance(getattr(self, name), str):
                raise SaeAuditError(f"SAE config: {name} must be a string, got {getattr(self, name)!r}")
        for name in ("model", "model_revision", "hook_point", "tokens"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise SaeAuditError(f"SAE config: {name} must be a string or null, got {value!r}")
        if self.k > self.d_sae:
            raise SaeAuditError(f"SAE config: k={self.k} is larger than d_sae={self.d_sae}")
        if self.architecture not in ARCHITECTURES:
            raise SaeAuditError(
                f"SAE config: architecture {self.architecture!r} is not supported "
                f"(supported: {', '.join(ARCHITECTURES)})"
            )
        if self.normalisation not in NORMALISATIONS:
            raise SaeAuditError(
                f"SAE config: normalisation {self.normalisation!r} must be one of {NORMALISATIONS}"
            )
        for name in ("lambda_off", "lambda_ratio", "aux_alpha"):
            if getattr(self, name) < 0:
                raise SaeAuditError(f"SAE config: {name} must be >= 0")
        if not self.norm_scale > 0:
            raise SaeAuditError("SAE config: norm_scale must be > 0")
        # Bounds (documented in the messages): inputs are multiplied by norm_scale and outputs divided by it in
        # float32, and FVU sums squares of both; within [1e-12, 1e12] neither (scale * x)^2 nor 1/scale leaves
        # float32's range for activations up to 1e4, while real scales (sqrt(d_in) / E||x||) are within 1e-6..1e6.
        if not 1e-12 <= self.norm_scale <= 1e12:
            raise SaeAuditError(
                f"SAE config: norm_scale={self.norm_scale!r} is outside [1e-12, 1e12]; inputs scaled by it (and "
                "its square in the FVU) overflow or underflow float32, so every metric would be null. Fix the "
                "scale in config.json (it should be sqrt(d_in) / E||x|| of the training activations)"
            )
        # image_size: no vision model reads more than 4096 px a side (4096^2 is also the image decoder's default
        # pixel cap, sae_audit.data.base.DEFAULT_MAX_PIXELS); a larger value would resize every image to it.
        if self.image_size is not None and self.image_size > 4096:
            raise SaeAuditError(
                f"SAE config: image_size={self.image_size} is larger than 4096 pixels, the most sae-audit "
                "accepts; fix image_size in the SAE's config (the training input resolution, e.g. 224)"
            )
        if self.schema_version > SAE_SCHEMA_VERSION:
            raise SaeAuditError(
                f"SAE config has schema_version {self.schema_version}, newer than this "
                f"sae-audit understands ({SAE_SCHEMA_VERSION}); upgrade sae-audit"
            )

    @property
    def expansion(self) -> float:
        return self.d_sae / self.d_in

    @property
    def k_aux_effective(self) -> int:
        return self.k_aux if self.k_aux is not None else min(512, max(1, self.d_in // 2))

    @property
    def variant(self) -> str:
        """Short human label: ``fixed-k``, ``off-L1``, ``L1/L2`` or ``off-L1+L1/L2``."""
        parts = []
        if self.lambda_off > 0:
            parts.append("off-L1")
        if self.lambda_ratio > 0:
            parts.append("L1/L2")
        return "+".join(parts) if parts else "fixed-k"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SAEConfig":
        """Build a config from a dict, refusing unknown or missing keys."""
        if not isinstance(data, dict):
            raise SaeAuditError("SAE config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SaeAuditError(f"SAE config has unknown keys: {', '.join(unknown)}")
        missing = [n for n in ("d_in", "d_sae", "k") if n not in data]
        if missing:
            raise SaeAuditError(f"SAE config is missing required keys: {', '.join(missing)}")
        return cls(**data)
