"""Collect the four headline ratios of benchmarks/results/*.json into summary.json and print them against the targets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, table, write_json  # noqa: E402

TARGETS = {"audit_speedup_vs_handwritten": 4.0, "audit_fraction_of_roofline": 0.5,
           "train_speedup_vs_best_peer": 1.5, "ms_speedup_vs_pairwise": 100.0}
SOURCES = {"audit_speedup_vs_handwritten": "audit_speed", "audit_fraction_of_roofline": "audit_speed",
           "train_speedup_vs_best_peer": "train_speed", "ms_speedup_vs_pairwise": "ms_speed"}


def main() -> int:
    doc, rows = {"targets": TARGETS}, []
    for key, source in SOURCES.items():
        path = RESULTS / f"{source}.json"
        value = json.loads(path.read_text()).get(key) if path.is_file() else None
        doc[key] = value
        met = None if value is None else value >= TARGETS[key]
        doc[f"{key}_target_met"] = met
        rows.append([key, "-" if value is None else value, TARGETS[key], {True: "yes", False: "NO", None: "-"}[met],
                     f"{source}.json"])
    doc["tables"] = [table(["ratio", "measured", "target", "met", "from"], rows, title="Summary against the targets")]
    write_json("summary", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
