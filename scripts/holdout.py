#!/usr/bin/env python
"""Tuning folds made from camvid_tiny's train split only, so a recipe can be tuned without ever
looking at the 15 validation frames (which stay for measuring, in scripts/bench.py accuracy).

    python scripts/holdout.py OUT [--data ../shared/data/camvid_tiny]

writes OUT/A and OUT/B, camvid-layout folders of symlinks to the 85 train frames, each with its
own valid.txt:
  A: the 12 frames 0016E5_05190 .. 0016E5_07290, one stretch of one drive (as the real valid
     split is one stretch of 0016E5);
  B: every 6th train frame by name (14 frames from all four drives).
Tune with e.g. `camseg train --config configs/tiny-scratch.yaml --set data.root=OUT/A`.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_folds(data: Path, out: Path) -> dict[str, list[str]]:
    valid = set((data / "valid.txt").read_text().split())
    train = sorted(p.name for p in (data / "images").iterdir() if p.name not in valid)
    folds = {
        "A": [n for n in train if n.startswith("0016E5_0") and "05190" <= n[7:12] <= "07290"],
        "B": train[2::6],
    }
    for name, held in folds.items():
        fold = out / name
        if fold.exists():
            shutil.rmtree(fold)
        (fold / "images").mkdir(parents=True)
        (fold / "labels").mkdir()
        for n in train:
            stem = Path(n).stem
            (fold / "images" / n).symlink_to((data / "images" / n).resolve())
            label = f"{stem}_P.png"
            (fold / "labels" / label).symlink_to((data / "labels" / label).resolve())
        shutil.copy(data / "codes.txt", fold / "codes.txt")
        (fold / "valid.txt").write_text("".join(f"{n}\n" for n in held))
    return folds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "camvid_tiny")
    a = p.parse_args()
    for name, held in make_folds(a.data, a.out).items():
        n_train = len(list((a.out / name / "images").iterdir())) - len(held)
        print(f"{a.out / name}: {n_train} train, {len(held)} held out")


if __name__ == "__main__":
    main()
