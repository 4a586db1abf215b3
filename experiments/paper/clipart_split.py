"""The paper experiment's second ID set: Openclipart categories as ID, other categories as near-OOD.

Writes three folders of symbolic links (class = category subfolder, as
:class:`sae_audit.data.ImageFolderSet` reads them) under OUT:

- ``clipart-id-train`` / ``clipart-id-test``: the ID categories (``--id``), split
  80/20 by a hash of each file's name (stable across runs and machines);
- ``clipart-near-ood``: the held-out categories (``--near-ood``): clip art of
  the same style, but other subjects (semantic near-OOD).

Only a category's own files count (Debian's openclipart-png also links about
1,200 files into a second category; those links are skipped, so no image is in
two sets). Rerunning rewrites the same links.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
from pathlib import Path

ROOT = Path("/usr/share/openclipart/png")
ID = ["computer", "shapes", "signs_and_symbols", "recreation"]
NEAR_OOD = ["people", "food", "animals", "transportation", "tools", "office"]


def is_test(name: str) -> bool:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 5 == 0


def own_files(category: str) -> list[Path]:
    return sorted(p for p in (ROOT / category).rglob("*") if p.suffix.lower() == ".png" and p.is_file()
                  and not p.is_symlink())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--id", nargs="+", default=ID)
    p.add_argument("--near-ood", nargs="+", default=NEAR_OOD)
    args = p.parse_args()
    if not ROOT.is_dir():
        raise SystemExit(f"no folder {ROOT}: apt-get install openclipart-png (scripts/setup.sh does)")
    out = Path(args.out)
    for name in ("clipart-id-train", "clipart-id-test", "clipart-near-ood"):
        shutil.rmtree(out / name, ignore_errors=True)
    counts: dict[str, int] = {}
    for cats, split in ((args.id, True), (args.near_ood, False)):
        for cat in cats:
            for f in own_files(cat):
                rel = f.relative_to(ROOT / cat)
                target = ("clipart-id-test" if is_test(str(rel)) else "clipart-id-train") if split else "clipart-near-ood"
                link = out / target / cat / "__".join(rel.parts)
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(f, link)
                counts[target] = counts.get(target, 0) + 1
    print(" ".join(f"{k}: {v} images" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
