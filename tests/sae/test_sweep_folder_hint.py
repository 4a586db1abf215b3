"""A folder of SAE folders (what ``train`` writes for a grid) is refused with what to pass instead."""

from __future__ import annotations

import pytest

from sae_audit.errors import SaeAuditError
from sae_audit.sae import load_sae
from sae_audit.testing import make_tiny_sae_dir


def test_a_sweep_folder_names_its_saes(tmp_path):
    make_tiny_sae_dir(tmp_path / "saes" / "k4-a")
    make_tiny_sae_dir(tmp_path / "saes" / "k4-b", seed=1)
    (tmp_path / "saes" / "notes").mkdir()  # not an SAE: never suggested
    with pytest.raises(SaeAuditError, match=r"holds SAE folders .*name each one, e\.g\. .*saes/k4-a"):
        load_sae(str(tmp_path / "saes"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SaeAuditError) as info:
        load_sae(str(empty))
    assert "holds SAE folders" not in str(info.value)
