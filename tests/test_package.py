"""The top-level API the README promises."""

import sae_audit


def test_top_level_entry_points():
    for name in ("load_vision_model", "capture", "load_sae", "open_image_set", "run_audit", "TopKSAE"):
        assert callable(getattr(sae_audit, name)), name
    assert sae_audit.capture is sae_audit.models.capture
