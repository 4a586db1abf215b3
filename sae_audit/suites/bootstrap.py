"""The streaming Poisson bootstrap and the ID-half split: functions of the image, never of the batch.

SPEC section 5 (Chamandy et al. 2012, "Estimating uncertainty for massive data
streams"): image ``n`` of an image set gets ``R`` weights ``w_nr ~ Poisson(1)``
from a counter-based generator keyed by ``(seed, image set, image id, r)``.
Every suite accumulates its sums once unweighted and ``R`` times weighted
(one ``[R, B] @ [B, ...]`` product per batch), computes its metric per
replicate and reports the 2.5th and 97.5th percentiles of the ``R`` values as
the 95% interval. Because a weight depends only on the image, batch size,
shard order and the number of processes do not change any interval, and
accumulators stay mergeable.

The generator is SplitMix64 (Steele, Lea and Flood 2014) applied to the key,
turned into a uniform double and then into a Poisson(1) count by inverting its
CDF. The image set enters the key through a hash of its name, so an ID and an
OOD image with the same index get independent weights (the two sets are
independent samples); SAEs audited on the same set share weights.

:func:`id_halves` splits the ID set into two disjoint halves for the noise
floor: the ``floor(N / 2)`` images with the smallest ``SplitMix64(seed, id)``
are half A, the others half B.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1
#: P(Poisson(1) <= k) for k = 0..20; beyond 20 the probability is below 1e-19.
_POISSON1_CDF = np.cumsum([math.exp(-1.0) / math.factorial(k) for k in range(21)])
#: Default number of replicates (``AuditSettings.bootstrap``).
DEFAULT_REPLICATES = 200
#: Fewest images per ID half for a noise floor.
MIN_HALF_IMAGES = 10
_SPLIT_KEY = 0x5EED_F1002


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a ``uint64`` array (wrapping arithmetic): a bijection with good avalanche."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def set_key(name: str) -> int:
    """A 64-bit key for an image set's name (the first 8 bytes of its SHA-256)."""
    return int.from_bytes(hashlib.sha256(str(name).encode("utf-8")).digest()[:8], "little")


@dataclass(frozen=True)
class Bootstrap:
    """Poisson(1) bootstrap weights of one image set: ``weights(ids)`` is ``[R, B]``.

    Attributes:
        replicates: ``R`` (at least 1).
        seed: the audit's seed.
        stream: the image set's key (:func:`set_key` of its name).
    """

    replicates: int
    seed: int = 0
    stream: int = 0

    @classmethod
    def for_set(cls, replicates: int, seed: int, name: str) -> "Bootstrap | None":
        """The bootstrap of image set ``name``; ``None`` when ``replicates`` is 0 (bootstrap off)."""
        return cls(int(replicates), int(seed), set_key(name)) if replicates else None

    def _key(self) -> np.uint64:
        k = splitmix64(np.array([int(self.seed) & _MASK64], dtype=np.uint64))[0]
        return splitmix64(np.array([int(k) ^ (self.stream & _MASK64)], dtype=np.uint64))[0]

    def uniforms(self, images: torch.Tensor) -> np.ndarray:
        """``[R, B]`` float64 uniforms in [0, 1) for image ids ``images`` (``[B]`` int)."""
        ids = np.asarray(torch.as_tensor(images).cpu().numpy(), dtype=np.int64).astype(np.uint64)
        per_image = splitmix64(ids ^ self._key())
        per_rep = splitmix64(np.arange(self.replicates, dtype=np.uint64) * GOLDEN + np.uint64(1))
        u = splitmix64(per_image[None, :] ^ per_rep[:, None])
        return (u >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))

    def weights(self, images: torch.Tensor) -> torch.Tensor:
        """``[R, B]`` float64 Poisson(1) counts for image ids ``images`` (``[B]`` int)."""
        u = self.uniforms(images)
        return torch.from_numpy(np.searchsorted(_POISSON1_CDF, u, side="right").astype(np.float64))


def id_halves(n_images: int, seed: int) -> torch.Tensor:
    """``[n_images]`` bool: ``True`` for half A of the ID set, ``False`` for half B.

    Half A is the ``n_images // 2`` images with the smallest ``SplitMix64`` hash
    of ``(seed, image id)``: a function of the image id and the seed only.
    """
    key = splitmix64(np.array([(int(seed) ^ _SPLIT_KEY) & _MASK64], dtype=np.uint64))[0]
    h = splitmix64(np.arange(n_images, dtype=np.uint64) ^ key)
    mask = np.zeros(n_images, dtype=bool)
    mask[np.argsort(h, kind="stable")[: n_images // 2]] = True
    return torch.from_numpy(mask)


def floor_unavailable_reason(n_a: int, n_b: int, name: str) -> str | None:
    """Why the noise floor cannot be computed from halves of ``n_a`` and ``n_b`` images, or ``None``."""
    if min(n_a, n_b) >= MIN_HALF_IMAGES:
        return None
    return (f"the ID set {name!r} gave {n_a + n_b} readable image(s) (halves of {n_a} and {n_b}); the noise floor "
            f"needs at least {MIN_HALF_IMAGES} images in each half, so an ID set of at least "
            f"{2 * MIN_HALF_IMAGES} readable images")
