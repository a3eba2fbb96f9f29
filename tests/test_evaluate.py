"""`camseg evaluate` on a model trained briefly on the real camvid_tiny."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from helpers import history, written_dir

from camseg.data.prepare import prepare_camseq01
from camseg.model.files import read_model_file, weights_sha256

pytestmark = pytest.mark.slow  # every test here reads trained_run, which trains


def test_evaluate_equals_the_training_metric(run_copy, cli):
    result = cli("evaluate", "--run", run_copy)
    assert result.exit_code == 0, result.output
    out = written_dir(result.stdout)
    assert out.parent == run_copy / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    last = history(run_copy)[-1]
    # model.pth holds the last epoch's weights: same model, same data, same pixels
    assert metrics["acc_camvid"] == pytest.approx(float(last["acc_camvid"]), abs=1e-5)
    assert metrics["miou"] == pytest.approx(float(last["miou"]), abs=1e-5)
    assert {"acc_camvid", "pixel_acc", "miou", "per_class", "evaluated", "references"} <= set(
        metrics
    )
    assert [r["acc_camvid"] for r in metrics["references"]] == [0.9307, 0.9333, 0.9367]
    assert metrics["evaluated"]["n_images"] == 15 and metrics["evaluated"]["split"] == "valid"
    # by default in the precision training validated in, which model.pth records
    assert metrics["evaluated"]["precision"] == read_model_file(run_copy / "model.pth").precision
    assert metrics["evaluated"]["precision_note"] is None
    assert f"acc_camvid {metrics['acc_camvid']:.4f}" in result.stdout
    assert "0.9307" in result.stdout and "not comparable" in result.stdout

    rows = list(csv.DictReader((out / "per_class.csv").open()))
    assert len(rows) == 32 and rows[30]["class"] == "Void"
    # per-class IoU averaged over present non-Void classes is the reported mIoU
    present = [r for r in metrics["per_class"] if r["present"] and r["scored"]]
    assert sum(r["iou"] for r in present) / len(present) == pytest.approx(metrics["miou"])
    assert (out / "confusion.png").stat().st_size > 1000
    assert (run_copy / "report.html").is_file()

    again = cli("evaluate", "--run", run_copy)
    assert again.exit_code == 0
    again_out = written_dir(again.stdout)
    assert again_out != out and (again_out / "metrics.json").is_file()
    assert json.loads((out / "metrics.json").read_text()) == metrics  # earlier one untouched


def test_evaluate_train_split_and_tta(run_copy, cli):
    result = cli("evaluate", "--run", run_copy, "--split", "train", "--tta")
    assert result.exit_code == 0, result.output
    metrics = json.loads((written_dir(result.stdout) / "metrics.json").read_text())
    assert metrics["evaluated"]["n_images"] == 85 and metrics["evaluated"]["tta"]
    change = metrics["tta_change"]["acc_camvid"]
    assert change == pytest.approx(metrics["acc_camvid"] - metrics["without_tta"]["acc_camvid"])
    assert "TTA (flip) changed acc_camvid by" in result.stdout


def test_evaluate_native_size_on_prepared_camseq01(run_copy, camseq01_sample, tmp_path, cli):
    data = tmp_path / "camseq"
    prepare_camseq01(camseq01_sample, data, valid_fraction=0.5, gap=0)
    model = run_copy / "model.pth"
    result = cli("evaluate", "--model", model, "--data", data, "--size", "native", "--split", "all")
    assert result.exit_code == 0, result.output
    metrics = json.loads((written_dir(result.stdout) / "metrics.json").read_text())
    assert metrics["evaluated"]["size"] == "native" and metrics["evaluated"]["n_images"] == 4
    assert "bilinear" in metrics["evaluated"]["scoring"]
    assert 0 <= metrics["acc_camvid"] <= 1 and not math.isnan(metrics["miou"])


def test_evaluate_split_all_needs_no_validation_list(run_copy, camseq01_sample, cli):
    # a CamSeq01 download as it comes: labelled frames, no valid.txt
    model = run_copy / "model.pth"
    args = ("evaluate", "--model", model, "--data", camseq01_sample, "--layout", "camseq01")
    result = cli(*args, "--split", "all")
    assert result.exit_code == 0, result.output
    metrics = json.loads((written_dir(result.stdout) / "metrics.json").read_text())
    assert metrics["evaluated"]["n_images"] == 4 and 0 <= metrics["acc_camvid"] <= 1
    result = cli(*args)  # the valid split still needs its list
    assert result.exit_code == 2 and "validation list missing" in result.output


def _with_best(run: Path) -> Path:
    """The run as one whose best epoch was not the last: best.pth holds other weights."""
    weights = torch.load(run / "model.pth", weights_only=True)
    weights["model"] = {
        k: v * 0.5 if v.is_floating_point() else v for k, v in weights["model"].items()
    }
    weights["weights_sha256"] = weights_sha256(weights["model"])
    (run / "checkpoints").mkdir(exist_ok=True)
    torch.save(weights, run / "checkpoints" / "best.pth")
    return run / "checkpoints" / "best.pth"


def test_weights_best_or_last(run_copy, camvid_tiny, cli):
    best = _with_best(run_copy)
    last = cli("evaluate", "--run", run_copy, "--split", "train", "--batch-size", "32")
    assert last.exit_code == 0, last.output
    chosen = cli(
        "evaluate", "--run", run_copy, "--weights", "best", "--split", "train", "--batch-size", "32"
    )
    assert chosen.exit_code == 0, chosen.output
    evaluated = [
        json.loads((written_dir(r.stdout) / "metrics.json").read_text()) for r in (last, chosen)
    ]
    assert evaluated[0]["evaluated"]["model"] == str(run_copy / "model.pth")
    assert evaluated[0]["evaluated"]["weights"] == "last"
    assert evaluated[1]["evaluated"]["model"] == str(best)
    assert evaluated[1]["evaluated"]["weights"] == "best" and "best weights" in chosen.stdout
    assert evaluated[0]["acc_camvid"] != evaluated[1]["acc_camvid"]
    frame = camvid_tiny / "images" / "0001TP_006750.png"
    shares = [
        json.loads(cli("predict", frame, "--run", run_copy, *w, "--json").stdout)["shares"]
        for w in ([], ["--weights", "best"])
    ]
    assert shares[0] != shares[1]
    as_json = cli("evaluate", "--run", run_copy, "--split", "train", "--batch-size", "32", "--json")
    assert json.loads(as_json.stdout) == evaluated[0] | {
        "evaluated": json.loads(as_json.stdout)["evaluated"]
    }
    quiet = cli("evaluate", "--run", run_copy, "--split", "train", "--batch-size", "32", "--quiet")
    assert quiet.exit_code == 0 and quiet.stdout == ""
    refused = cli("evaluate", "--model", run_copy / "model.pth", "--weights", "best")
    assert refused.exit_code == 2
    assert "--weights best picks a file in a run folder" in refused.stderr


def test_evaluate_errors(trained_run, tiny_copy, cli):
    codes = tiny_copy / "codes.txt"
    codes.write_text(codes.read_text().replace("Animal", "Beast"))
    result = cli("evaluate", "--run", trained_run, "--data", tiny_copy)
    assert result.exit_code == 2 and "Beast" in result.stderr and "Animal" in result.stderr
    alone = cli("evaluate", "--model", trained_run / "model.pth", "--split", "nope")
    assert alone.exit_code == 2 and "--split" in alone.stderr
    nothing = cli("evaluate", "--run", tiny_copy)
    assert nothing.exit_code == 2 and "no model.pth" in nothing.stderr


def _written(stdout: str) -> dict:
    """metrics.json of the evaluation whose folder the CLI reported."""
    return json.loads((written_dir(stdout) / "metrics.json").read_text())


def test_evaluate_batch_size_size_precision_and_device(run_copy, cli, network_spy):
    options = ["--batch-size", "4", "--size", "32x64", "--precision", "bf16", "--device", "cpu"]
    result = cli("evaluate", "--run", run_copy, *options)
    assert result.exit_code == 0, result.output
    # 15 valid frames in batches of 4, at 32x64, through bf16 weights on the CPU
    assert [shape for _, _, shape in network_spy] == [(4, 3, 32, 64)] * 3 + [(3, 3, 32, 64)]
    assert {(dtype, dev) for dtype, dev, _ in network_spy} == {(torch.bfloat16, "cpu")}
    ev = _written(result.stdout)["evaluated"]
    assert ev["size"] == [32, 64] and ev["device"] == "cpu"
    assert ev["precision"] == "bf16" and ev["precision_note"] is None

    fp16 = cli("evaluate", "--run", run_copy, "--device", "cpu", "--precision", "fp16")
    assert fp16.exit_code == 2
    assert fp16.stderr.strip().splitlines() == [
        "camseg: error: --precision fp16: fp16 (autocast) needs a CUDA device, not cpu; "
        "choose train, fp32, bf16"
    ]
    zero = cli("evaluate", "--run", run_copy, "--batch-size", "0")
    assert zero.exit_code == 2 and "--batch-size must be at least 1" in zero.stderr

    cuda = cli("evaluate", "--run", run_copy, "--device", "cuda")
    if torch.cuda.is_available():
        assert cuda.exit_code == 0 and _written(cuda.stdout)["evaluated"]["device"] == "cuda:0"
    else:
        assert cuda.exit_code == 2 and "CUDA is not available" in cuda.stderr


def test_evaluate_precision_follows_the_model_file(trained_run, camvid_tiny, tmp_path, cli):
    """A model whose training validated in fp16 (fastai to_fp16) is scored in fp16 on CUDA; a
    CPU has no fp16 autocast, so there it is scored in fp32, and metrics.json says so."""
    saved = torch.load(trained_run / "model.pth", weights_only=True)
    saved["meta"]["precision"] = "fp16"
    torch.save(saved, tmp_path / "model.pth")
    result = cli("evaluate", "--model", tmp_path / "model.pth", "--data", camvid_tiny)
    assert result.exit_code == 0, result.output
    metrics = _written(result.stdout)
    ev = metrics["evaluated"]
    if torch.cuda.is_available():
        assert ev["precision"] == "fp16" and ev["precision_note"] is None
    else:
        assert ev["precision"] == "fp32" and "fp16" in ev["precision_note"]
        assert f"camseg: note: {ev['precision_note']}" in result.stderr
        # the same weights scored in fp32: the training table's number (trained on this CPU)
        last = history(trained_run)[-1]
        assert metrics["acc_camvid"] == pytest.approx(float(last["acc_camvid"]), abs=1e-5)


def test_evaluate_layout_reads_a_camseq01_folder(run_copy, camseq01_sample, tmp_path, cli):
    data = tmp_path / "camseq01"
    shutil.copytree(camseq01_sample, data)
    (data / "valid.txt").write_text("0016E5_07979.png\n")
    model = run_copy / "model.pth"
    result = cli("evaluate", "--model", model, "--data", data, "--layout", "camseq01")
    assert result.exit_code == 0, result.output
    ev = _written(result.stdout)["evaluated"]
    assert ev["data"] == str(data) and ev["n_images"] == 1
    as_camvid = cli("evaluate", "--model", model, "--data", data)  # the default layout: camvid
    assert as_camvid.exit_code == 2
