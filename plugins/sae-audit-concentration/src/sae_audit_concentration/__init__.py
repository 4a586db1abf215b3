"""sae-audit-concentration: how concentrated an SAE's firings are, on rotated and other OOD sets.

- :mod:`.rotated`: the ``rotate:DEG:SET`` image-set family;
- :mod:`.suite`: the ``concentration`` audit suite (firing entropy, share of
  firings in the top 1% of latents, with Poisson-bootstrap intervals and an
  ID-vs-ID noise floor);
- :mod:`.section`: the "Firing concentration" report section;
- :mod:`.plugin`: the hooks that register them with sae-audit.
"""

from sae_audit_concentration.rotated import RotatedSet, open_rotated
from sae_audit_concentration.suite import ConcentrationAccumulator, compare, concentration, poisson_weights

__version__ = "0.1.0"
__all__ = ["ConcentrationAccumulator", "RotatedSet", "compare", "concentration", "open_rotated", "poisson_weights"]
