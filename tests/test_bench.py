"""The benchmark script runs (at toy sizes) and writes its numbers; timings are not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import small_copy

REPO = Path(__file__).resolve().parents[1]


def bench(*args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


@pytest.mark.slow
def test_bench_quick_runs_and_writes_results(tmp_path, camvid_tiny, trained_run):
    from camseg.core.device import cpu_has_amx

    out = tmp_path / "results.json"
    model = ("--model", str(trained_run))  # predict: what `camseg predict` runs by default
    proc = bench("--quick", "--out", str(out), "--data", str(camvid_tiny), *model)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    predict = results["predict_cpu"]
    assert predict["camseg_images_per_s"] > 0 and predict["learn_predict_images_per_s"] > 0
    ratio = predict["camseg_images_per_s"] / predict["learn_predict_images_per_s"]
    assert abs(predict["speedup"] - ratio) < 0.02
    assert "machine" in predict and predict["images"] == 6
    # the run's weights at the bench's size, with the int8 file made of them: on a CPU without
    # AMX camseg predict runs that file, on OpenVINO (installed here)
    assert predict["model"] == str(trained_run) and predict["int8_export"]["agreement"] > 0.9
    (ran,) = predict["camseg_ran"]
    assert ran.endswith("model.pth") if cpu_has_amx() else "int8 on OpenVINO" in ran
    assert results["data"]["cache_images_per_s"] > 0 and results["data"]["frames"] == 12
    train = results["train_cpu"]
    assert train["camseg_images_per_s"] > 0 and train["plain_fastai_images_per_s"] > 0
    assert train["camseg_peak_rss_mb"] > 100
    assert train["train_images"] == 16 and train["batch_size"] == 8  # counted, not assumed
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


@pytest.mark.slow
def test_setting_benchmark_compares_two_training_runs(tmp_path, camvid_tiny):
    """`precision` on a CPU: fp32 against bf16 autocast, two epochs each, on 8 frames."""
    data = small_copy(camvid_tiny, tmp_path / "data", n_valid=2, n_train=8)
    out = tmp_path / "results.json"
    proc = bench("precision", "--quick", "--data", str(data), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())["precision_cpu"]
    assert result["train_images"] == 8 and result["size"] == [64, 96]
    fp32, bf16 = result["fp32_images_per_s"], result["bf16_images_per_s"]
    assert fp32 > 0 and bf16 > 0
    assert result["ratio"] == pytest.approx(bf16 / fp32, rel=0.05)
    variants = result["variants"]
    assert variants["bf16"]["set"] == ["train.fp16=false", "train.bf16=true"]
    assert all(len(v["second_epoch_seconds"]) == 1 for v in variants.values())


@pytest.mark.slow
def test_env_names_versions_and_where_camseg_comes_from(tmp_path):
    out = tmp_path / "env.json"
    proc = bench("env", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = json.loads(out.read_text())["environment"]
    assert env["torch"] == torch.__version__ and env["matmul_ok"] is True
    assert Path(env["camseg_path"]) == REPO / "camseg"
    if not torch.cuda.is_available():
        proc = bench("env", "--device", "cuda", "--out", str(out))
        assert proc.returncode == 1
        assert "sees no CUDA device" in proc.stderr


@pytest.mark.slow
def test_video_benchmark_times_predict_on_a_clip(tmp_path, camvid_tiny):
    pytest.importorskip("av")
    out = tmp_path / "results.json"
    proc = bench("video", "--quick", "--data", str(camvid_tiny), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    video = json.loads(out.read_text())["video_cpu"]
    assert video["clip"]["frames"] == 6 and video["clip"]["size"] == [64, 96]
    assert video["overlay"]["segmented"] == 6 and video["overlay"]["frames_per_s"] > 0
    assert video["stride5"]["frames"] == 6 and video["stride5"]["segmented"] == 2  # 0 and 5
    assert video["short"]["frames"] == 2 and video["overlay"]["peak_rss_mb"] > 100
    assert len(video["overlap"]["video_path_frames_per_s"]) == 1


@pytest.mark.slow
def test_backends_benchmark_compares_with_pytorch_fp32(tmp_path, camvid_tiny, trained_run):
    pytest.importorskip("onnxscript")
    out = tmp_path / "results.json"
    skip = "onnxruntime-int8-dynamic,onnxruntime-int8,openvino-int8,fastai-learn.predict"
    args = ("--model", str(trained_run), "--skip", skip, "--data", str(camvid_tiny))
    proc = bench("backends", "--quick", *args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())["backends"]
    rows = {r["backend"]: r for r in result["rows"]}
    assert set(rows) == {"pytorch-fp32", "pytorch-bf16", "onnxruntime-fp32", "openvino-fp32"}
    assert result["model"]["run_at"] == [64, 96] and result["frames"] == 6
    reference = rows["pytorch-fp32"]
    assert reference["pixel_agreement_vs_pytorch_fp32"] == 1 and reference["acc_camvid_change"] == 0
    for name in ("onnxruntime-fp32", "openvino-fp32"):
        assert rows[name]["pixel_agreement_vs_pytorch_fp32"] > 0.99
    assert all(r["images_per_s"] > 0 and 0 <= r["acc_camvid"] <= 1 for r in rows.values())
    assert bench("backends", "--skip", "nope").returncode == 2


@pytest.mark.slow
def test_checksum_benchmark_times_hashing_and_loading(tmp_path, camvid_tiny):
    out = tmp_path / "checksum.json"
    proc = bench("checksum", "--arch", "resnet18", "--repeats", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(out.read_text())["checksum"]
    assert row["arch"] == "resnet18" and row["weights_mb"] > 50
    assert row["sha256_s"] > 0 and row["read_model_pth_s"] > 0
    assert row["read_model_pth_without_checksum_s"] > 0
    assert row["onnx_metadata_and_graph_sha256_s"] > 0  # the test extras include export
