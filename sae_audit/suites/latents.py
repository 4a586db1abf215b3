"""The per-latent table: one row per (SAE, latent), built from the results document alone.

Columns: ``sae`` (label), ``latent``; per image set ``freq:<set>`` (firing
frequency over inputs), ``mean_act:<set>`` (mean activation when firing),
``ms:<set>`` (monosemanticity score) and ``purity:<set>`` when those suites
ran; per ID/OOD pair ``log10_shift:<ood>`` =
``log10((f_OOD + e) / (f_ID + e))`` with ``e = 1 / N`` of the smaller set (as
in the coverage comparison). Exported with pandas as CSV or Parquet.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from sae_audit.errors import SaeAuditError
from sae_audit.outputs import atomic_write_bytes, check_target_file


def latent_table(results: dict) -> pd.DataFrame:
    """``pandas.DataFrame`` with one row per latent of every SAE in ``results`` (see the module docstring)."""
    datasets = results["datasets"]
    id_name = next(d["name"] for d in datasets if d["role"] == "id")
    ood_names = [d["name"] for d in datasets if d["role"] == "ood"]
    frames = []
    for s in results["saes"]:
        d_sae = s["config"]["d_sae"]
        cols: dict[str, object] = {"sae": [s["label"]] * d_sae, "latent": np.arange(d_sae)}
        suites = s.get("suites", {})
        for name in [id_name] + ood_names:
            stats = s["datasets"][name]
            cols[f"freq:{name}"] = np.asarray(stats["frequencies"], dtype=np.float64)
            cols[f"mean_act:{name}"] = np.asarray(stats["mean_activation"], dtype=np.float64)
            for suite, col in (("monosemanticity", "ms"), ("purity", "purity")):
                per = suites.get(suite, {}).get("datasets", {}).get(name, {}).get("per_latent")
                if per is not None:
                    cols[f"{col}:{name}"] = np.array([np.nan if v is None else v for v in per], dtype=np.float64)
        f_id = cols[f"freq:{id_name}"]
        n_id = s["datasets"][id_name]["n_inputs"]
        for name in ood_names:
            eps = 1.0 / max(1, min(n_id, s["datasets"][name]["n_inputs"]))
            cols[f"log10_shift:{name}"] = np.log10((cols[f"freq:{name}"] + eps) / (f_id + eps))
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def write_latent_table(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``table`` to ``path`` (``.csv`` or ``.parquet``) atomically (:func:`sae_audit.outputs.atomic_write_bytes`).

    Raises:
        SaeAuditError: another suffix, a path that is not a regular file, or Parquet without
            pyarrow/fastparquet installed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise SaeAuditError(f"latent table {path}: use a .csv or .parquet file name")
    check_target_file(path, field="latents")
    if suffix == ".csv":
        data = table.to_csv(index=False).encode("utf-8")
    else:
        try:
            data = table.to_parquet(index=False)
        except ImportError as exc:
            raise SaeAuditError(f"writing Parquet needs pyarrow (pip install 'sae-audit[parquet]'): {exc}") from None
    atomic_write_bytes(path, data, field="latents")
    return path
