"""The benchmark script runs (at toy sizes) and writes its numbers; timings are not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_quick_runs_and_writes_results(tmp_path, camvid_tiny):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            "--quick",
            "--out",
            str(out),
            "--data",
            str(camvid_tiny),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    predict = results["predict_cpu"]
    assert predict["camseg_images_per_s"] > 0 and predict["learn_predict_images_per_s"] > 0
    ratio = predict["camseg_images_per_s"] / predict["learn_predict_images_per_s"]
    assert abs(predict["speedup"] - ratio) < 0.02
    assert "machine" in predict and predict["images"] == 6
    assert results["data"]["cache_images_per_s"] > 0 and results["data"]["frames"] == 12
    train = results["train_cpu"]
    assert train["camseg_images_per_s"] > 0 and train["plain_fastai_images_per_s"] > 0
    assert train["camseg_peak_rss_mb"] > 100
    accuracy = results["accuracy"]
    assert {r["recipe"] for r in accuracy["runs"]} == {"notebook", "scratch"}
    assert all(0 <= r["acc_camvid"] <= 1 and r["minutes"] > 0 for r in accuracy["runs"])


def test_tuning_folds_hold_no_valid_frame(tmp_path, camvid_tiny):
    """The from-scratch recipe is tuned on these folds: they must come from the train split."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from holdout import make_folds
    finally:
        sys.path.pop(0)
    valid = set((camvid_tiny / "valid.txt").read_text().split())
    folds = make_folds(camvid_tiny, tmp_path)
    assert {k: len(v) for k, v in folds.items()} == {"A": 12, "B": 14}
    for name, held in folds.items():
        fold = tmp_path / name
        images = {p.name for p in (fold / "images").iterdir()}
        assert len(images) == 85 and not images & valid
        assert (fold / "valid.txt").read_text().split() == held and set(held) <= images
        assert all((fold / "labels" / f"{Path(n).stem}_P.png").exists() for n in images)
