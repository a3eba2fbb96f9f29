"""`camseg export --int8`: an int8 .onnx calibrated on the run's training frames, its agreement with
fp32 measured on the validation frames by each runtime and recorded; predict runs it by default on
a CPU without AMX, on the runtime whose agreement is at least INT8_AGREEMENT (OpenVINO first)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_or_link, written_dir
from PIL import Image

from camseg import Segmenter
from camseg.model.onnx_file import INT8_AGREEMENT

pytestmark = pytest.mark.slow  # trained_run trains

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def int8_run(trained_run: Path, tmp_path_factory) -> tuple[Path, dict]:
    """A copy of trained_run holding the int8 export `camseg export --int8 --json` wrote into
    it, and what that printed."""
    from typer.testing import CliRunner

    from camseg.cli import app

    run = shutil.copytree(
        trained_run, tmp_path_factory.mktemp("int8") / "tiny", copy_function=copy_or_link
    )
    result = CliRunner().invoke(app, ["export", "--run", str(run), "--int8", "--json"])
    assert result.exit_code == 0, result.output
    return run, json.loads(result.stdout)


def _valid_frames(camvid_tiny: Path) -> list[Path]:
    valid = (camvid_tiny / "valid.txt").read_text().split()
    return [camvid_tiny / "images" / name for name in valid]


def test_int8_export_is_quantized_calibrated_and_agrees_with_fp32(int8_run, camvid_tiny):
    run, printed = int8_run
    path = run / "model-int8.onnx"
    assert printed["path"] == str(path)
    # camvid_tiny: 85 training frames (32 spread over them calibrate), 15 validation frames
    assert printed["calibration_frames"] == 32 and printed["check_frames"] == 15
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 20  # every convolution's weights, not a few
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["quantization"] == "int8" and meta["format"] == "camseg-onnx"
    assert float(meta["int8_agreement"]) == pytest.approx(printed["int8_agreement"], abs=1e-6)
    on_openvino = printed["int8_agreement_openvino"]
    assert float(meta["int8_agreement_openvino"]) == pytest.approx(on_openvino, abs=1e-6)

    # measured again here, at the frames' own size, through the API predict uses, on each
    # runtime: the default path must keep to the threshold on the shared frames
    frames = _valid_frames(camvid_tiny)
    expected = Segmenter(run, device="cpu", precision="fp32").predict_batch(frames)
    for runtime in ("onnxruntime", "openvino"):
        int8 = Segmenter(path, runtime=runtime)
        assert (int8.precision, int8.runtime) == ("int8", runtime)
        got = int8.predict_batch(frames)
        agree = float(np.mean([np.mean(a == b) for a, b in zip(got, expected, strict=True)]))
        assert agree >= INT8_AGREEMENT, (runtime, agree)
    assert printed["int8_agreement"] >= INT8_AGREEMENT and on_openvino >= INT8_AGREEMENT


def test_int8_evaluate_reports_int8_and_stays_within_the_acc_budget(
    int8_run, camvid_tiny, tmp_path, cli
):
    run, _ = int8_run
    scored = {}
    for model, runtime in (
        (run / "model.pth", "auto"),
        (run / "model-int8.onnx", "onnxruntime"),
        (run / "model-int8.onnx", "openvino"),
    ):
        result = cli(
            "evaluate", "--model", model, "--data", camvid_tiny, "--precision", "fp32",
            "--out", tmp_path / runtime, "--runtime", runtime,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        scored[runtime] = json.loads((written_dir(result.stdout) / "metrics.json").read_text())
    assert "this file is quantized to int8" in result.stderr  # --precision fp32 was asked
    fp32 = scored.pop("auto")
    assert (fp32["evaluated"]["precision"], fp32["evaluated"]["runtime"]) == ("fp32", "pytorch")
    for runtime, int8 in scored.items():
        assert (int8["evaluated"]["precision"], int8["evaluated"]["runtime"]) == ("int8", runtime)
        assert abs(int8["acc_camvid"] - fp32["acc_camvid"]) <= 0.005


def test_predict_runs_the_int8_file_on_a_cpu_without_amx(
    int8_run, camvid_tiny, tmp_path, cli, monkeypatch
):
    import camseg.infer.predict as predict

    run, printed = int8_run
    frame = _valid_frames(camvid_tiny)[0]
    line = f"predicting with {run / 'model-int8.onnx'}: int8 on "

    def masks(*args: object, amx: bool) -> tuple[str, np.ndarray]:
        monkeypatch.setattr(predict, "cpu_has_amx", lambda: amx)
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        result = cli("predict", frame, "--run", run, "--out", out, "--format", "index", *args)
        assert result.exit_code == 0, result.output
        return result.stderr, np.asarray(Image.open(out / f"{frame.stem}_mask.png"))

    said, int8_mask = masks(amx=False)  # auto: OpenVINO, installed and agreeing
    assert said.count(line + "OpenVINO") == 1
    assert f"{printed['int8_agreement_openvino']:.2%}" in said
    int8 = run / "model-int8.onnx"
    assert np.array_equal(int8_mask, Segmenter(int8, runtime="openvino").predict(frame))
    said, int8_mask = masks("--runtime", "onnxruntime", amx=False)
    assert said.count(line + "ONNX Runtime") == 1 and f"{printed['int8_agreement']:.2%}" in said
    assert np.array_equal(int8_mask, Segmenter(int8, runtime="onnxruntime").predict(frame))
    for args, amx in (
        ((), True),
        (("--precision", "fp32"), False),
        (("--precision", "bf16"), False),
    ):
        said, _ = masks(*args, amx=amx)
        assert "predicting with" not in said  # bf16 PyTorch, or the precision asked for


def test_an_int8_file_below_the_agreement_is_not_picked(int8_run, tmp_path, cli, monkeypatch):
    import camseg.infer.predict as predict

    run, _ = int8_run
    monkeypatch.setattr(predict, "cpu_has_amx", lambda: False)

    def with_agreement(name: str, **agreement: str) -> Path:
        low = shutil.copytree(run, tmp_path / name, copy_function=copy_or_link)
        model = onnx.load(str(low / "model-int8.onnx"))
        onnx.helper.set_model_props(
            model, {p.key: p.value for p in model.metadata_props} | agreement
        )
        (low / "model-int8.onnx").unlink()
        onnx.save(model, str(low / "model-int8.onnx"))
        return low

    # below on OpenVINO, above on ONNX Runtime: ONNX Runtime runs it
    low_ov = with_agreement("low-ov", int8_agreement_openvino="0.950000")
    picked, said = predict.fastest_model(low_ov / "model.pth", "cpu", "auto")
    assert picked == low_ov / "model-int8.onnx" and "int8 on ONNX Runtime" in said
    assert Segmenter(picked).runtime == "onnxruntime"
    # asked for OpenVINO, which did not agree: the model.pth (which --runtime then refuses)
    asked = predict.fastest_model(low_ov / "model.pth", "cpu", "auto", "openvino")
    assert asked == (low_ov / "model.pth", None)
    low = with_agreement("low", int8_agreement="0.950000", int8_agreement_openvino="0.950000")
    assert predict.fastest_model(low / "model.pth", "cpu", "auto") == (low / "model.pth", None)
    assert predict.fastest_model(run / "model.pth", "cpu", "auto")[0] == run / "model-int8.onnx"
    # a file exported from the best epoch's weights pairs with those weights only
    assert predict.fastest_model(run / "checkpoints" / "best.pth", "cpu", "auto")[1] is None


def test_int8_export_of_a_lone_model_file_says_what_it_needs(trained_run, tmp_path, cli):
    lone = shutil.copy(trained_run / "model.pth", tmp_path / "model.pth")
    result = cli("export", "--model", lone, "--int8")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"camseg: error: {lone}: --int8 calibrates on the training frames of the model's run; "
        "give a run folder or a model file inside one"
    ]
    assert not list(tmp_path.glob("*.onnx"))


def test_int8_frames_of_a_synthetic_run_are_read_not_generated_again(trained_run, tmp_path):
    """As evaluate reads a run's data: a synthetic set whose folder is gone is an error, not a
    new set generated in its place to calibrate on."""
    from camseg import CamsegError
    from camseg.export import int8_frames

    run = shutil.copytree(trained_run, tmp_path / "run", copy_function=copy_or_link)
    gone = tmp_path / "synthetic"
    config = (run / "config.yaml").read_text().splitlines()
    config = [
        "  layout: synthetic" if line.startswith("  layout:") else
        f"  root: {gone}" if line.startswith("  root:") else line
        for line in config
    ]  # fmt: skip
    (run / "config.yaml").write_text("\n".join(config) + "\n")
    with pytest.raises(CamsegError, match=str(gone)):
        int8_frames(run / "model.pth")
    assert not gone.exists()
