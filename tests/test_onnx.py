"""`camseg export` to ONNX, and predict / evaluate / Segmenter running the .onnx on ONNX Runtime:
the same masks and scores as PyTorch on real frames, without fastai, and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import written_dir
from PIL import Image

from camseg import CamsegError, Segmenter
from camseg.data.files import camvid_palette

pytestmark = pytest.mark.slow  # every test here reads trained_run, which trains

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# Run in a subprocess: make the named top-level packages unimportable (a None in sys.modules: an
# import raises ModuleNotFoundError and importlib.util.find_spec finds nothing, as when it is not
# installed), report at exit whether fastai was imported, then run the CLI with the arguments.
BLOCKED_CLI = """
import atexit, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
atexit.register(lambda: print("fastai imported:", bool(sys.modules.get("fastai")), file=sys.stderr))
from camseg.cli import main
sys.argv = ["camseg", *sys.argv[2:]]
main()
"""


def _blocked_cli(blocked: str, *args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", BLOCKED_CLI, blocked, *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


def _frames(camvid_tiny: Path, n: int) -> list[Path]:
    return sorted((camvid_tiny / "images").iterdir())[:n]


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory) -> Path:
    """trained_run's model exported once to a folder of its own (trained_run stays untouched)."""
    from camseg.export import export_onnx

    return export_onnx(trained_run, tmp_path_factory.mktemp("onnx") / "model.onnx").path


def test_export_default_path_never_overwrites(trained_run, tmp_path, monkeypatch, cli):
    runs = tmp_path / "runs"
    run = shutil.copytree(trained_run, runs / "tiny")
    (run / "model.onnx").write_bytes(b"an earlier export")
    monkeypatch.chdir(tmp_path)
    result = cli("export")  # no --run: the newest finished run under ./runs
    assert result.exit_code == 0, result.output
    assert "using the newest finished run" in result.stderr
    assert (run / "model.onnx").read_bytes() == b"an earlier export"
    written = run / "model-2.onnx"
    assert f"wrote {Path('runs/tiny/model-2.onnx')}" in result.stdout
    assert onnx.load(str(written)).metadata_props  # a whole ONNX model, not a temp leftover
    assert sorted(p.name for p in run.glob("*.onnx*")) == ["model-2.onnx", "model.onnx"]

    again = cli("export", "--run", run, "--out", written)
    assert again.exit_code == 2
    assert again.stderr.strip().splitlines() == [
        f"camseg: error: --out {written} exists; camseg export never overwrites a file"
    ]
    of_onnx = cli("export", "--model", written)
    assert of_onnx.exit_code == 2 and "already an ONNX model" in of_onnx.stderr


def test_export_holds_what_segmenting_needs(exported, trained_run, camvid_tiny):
    """The .onnx alone segments a frame: onnxruntime, numpy and PIL, no camseg."""
    model = onnx.load(str(exported))
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    codes = (camvid_tiny / "codes.txt").read_text().split()
    assert meta["format"] == "camseg-onnx" and meta["format_version"] == "1"
    assert json.loads(meta["codes"]) == codes
    assert json.loads(meta["colors"]) == camvid_palette(codes).tolist()
    assert json.loads(meta["size"]) == [64, 96]
    assert json.loads(meta["mean"]) == pytest.approx([0.485, 0.456, 0.406])
    assert json.loads(meta["std"]) == pytest.approx([0.229, 0.224, 0.225])
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 64, 96]

    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    h, w = json.loads(props["size"])
    mean, std = (np.array(json.loads(props[k]), dtype=np.float32) for k in ("mean", "std"))
    frames = [
        Image.open(p).convert("RGB").resize((w, h), Image.BILINEAR) for p in _frames(camvid_tiny, 3)
    ]
    x = np.stack([(np.asarray(im, dtype=np.float32) / 255 - mean) / std for im in frames])
    by_hand = session.run(None, {"image": x.transpose(0, 3, 1, 2).copy()})[0].argmax(axis=1)
    assert by_hand.shape == (3, 64, 96)  # three images in one batch: the batch axis is dynamic
    reference = Segmenter(trained_run, precision="fp32").predict_batch(frames)
    assert np.mean(by_hand == np.stack(reference)) >= 0.999


def test_onnx_masks_agree_with_pytorch_fp32(exported, trained_run, camvid_tiny, tmp_path, cli):
    frames = _frames(camvid_tiny, 24)  # at 96x128: resized to 64x96, scores upsampled back
    torch_seg = Segmenter(trained_run, device="cpu", precision="fp32")
    expected = torch_seg.predict_batch(frames)
    for runtime in ("onnxruntime", "openvino"):  # each runtime that can run it
        onnx_seg = Segmenter(exported, runtime=runtime)
        assert onnx_seg.classes == torch_seg.classes and onnx_seg.size == (64, 96)
        assert (onnx_seg.precision, onnx_seg.device) == ("fp32", torch.device("cpu"))
        assert onnx_seg.runtime == runtime and torch_seg.runtime == "pytorch"
        got = onnx_seg.predict_batch(frames)
        agree = np.mean([np.mean(a == b) for a, b in zip(got, expected, strict=True)])
        assert agree >= 0.999, (runtime, agree)
    assert Segmenter(exported).runtime == "openvino"  # auto: OpenVINO, as it is installed
    tta = Segmenter(exported, tta=True).predict(frames[0])
    assert (
        np.mean(tta == Segmenter(trained_run, precision="fp32", tta=True).predict(frames[0]))
        >= 0.999
    )

    # camseg predict runs the same network
    out = tmp_path / "pred"
    result = cli("predict", *frames[:3], "--model", exported, "--out", out, "--format", "index")
    assert result.exit_code == 0, result.output
    for frame, mask in zip(frames[:3], got, strict=False):
        assert np.array_equal(np.asarray(Image.open(out / f"{frame.stem}_mask.png")), mask)


def test_evaluate_onnx_matches_pytorch(exported, trained_run, camvid_tiny, tmp_path, cli):
    pth = shutil.copy(trained_run / "model.pth", tmp_path / "model.pth")
    scored = {}
    for model, runtime in ((pth, "auto"), (exported, "onnxruntime"), (exported, "openvino")):
        result = cli(
            "evaluate", "--model", model, "--data", camvid_tiny, "--precision", "fp32",
            "--runtime", runtime,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        scored[runtime] = json.loads((written_dir(result.stdout) / "metrics.json").read_text())
    torch_m = scored.pop("auto")
    assert torch_m["evaluated"]["runtime"] == "pytorch"
    for runtime, onnx_m in scored.items():
        assert onnx_m["evaluated"]["runtime"] == runtime
        assert onnx_m["evaluated"]["n_images"] == torch_m["evaluated"]["n_images"] == 15
        assert abs(onnx_m["acc_camvid"] - torch_m["acc_camvid"]) <= 0.001
        assert abs(onnx_m["miou"] - torch_m["miou"]) <= 0.005


def test_onnx_predict_and_evaluate_without_fastai(exported, trained_run, camvid_tiny, tmp_path):
    frame = _frames(camvid_tiny, 1)[0]
    out = tmp_path / "pred"
    predicted = _blocked_cli(  # ONNX Runtime, as OpenVINO is blocked too
        "fastai,openvino",
        "predict",
        frame,
        "--model",
        exported,
        "--out",
        out,
        "--format",
        "index",
        cwd=tmp_path,
    )
    assert predicted.returncode == 0, predicted.stderr
    assert "fastai imported: False" in predicted.stderr
    mask = np.asarray(Image.open(out / f"{frame.stem}_mask.png"))
    expected = Segmenter(trained_run, precision="fp32").predict(frame)
    assert mask.shape == (96, 128) and np.mean(mask == expected) >= 0.999

    evaluated = _blocked_cli(  # OpenVINO, as ONNX Runtime is blocked too
        "fastai,onnxruntime",
        "evaluate", "--model", exported, "--data", camvid_tiny, "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    assert "fastai imported: False" in evaluated.stderr
    assert json.loads(evaluated.stdout)["evaluated"]["runtime"] == "openvino"

    # the PyTorch model needs fastai to rebuild its network: the blocker really blocks
    with_pth = _blocked_cli(
        "fastai",
        "predict",
        frame,
        "--model",
        trained_run / "model.pth",
        "--out",
        out,
        cwd=tmp_path,
    )
    assert with_pth.returncode != 0 and "fastai" in with_pth.stderr


@pytest.mark.faults
def test_bad_onnx_inputs_give_one_line(exported, trained_run, camvid_tiny, tmp_path, cli):
    from onnx import TensorProto, helper

    frame = _frames(camvid_tiny, 1)[0]

    def error_of(*args: object) -> str:
        result = cli(*args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("camseg: error: "), result.stderr
        return lines[0]

    def predict(model: Path, *extra: object) -> str:
        return error_of("predict", frame, "--model", model, "--out", tmp_path / "out", *extra)

    # a valid ONNX model that camseg did not export
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 64, 96]) for n in "xy"]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", io[:1], io[1:])
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(other))
    assert "without camseg's metadata" in predict(other)
    assert "without camseg's metadata" in error_of(
        "evaluate", "--model", other, "--data", camvid_tiny
    )
    # not ONNX at all: a torch file, a text file
    for name, data in (("pth.onnx", b"PK\x03\x04" + bytes(100)), ("text.onnx", b"hello\n")):
        (tmp_path / name).write_bytes(data)
        assert "not an ONNX model file" in predict(tmp_path / name)
    # camseg's metadata from a newer format
    newer = onnx.load(str(exported))
    next(p for p in newer.metadata_props if p.key == "format_version").value = "2"
    onnx.save(newer, str(tmp_path / "newer.onnx"))
    assert "format version 2" in predict(tmp_path / "newer.onnx")

    assert "runs in fp32" in predict(exported, "--precision", "bf16")
    assert "runs at the size it was exported at, 64x96" in error_of(
        "evaluate", "--model", exported, "--data", camvid_tiny, "--size", "32x64"
    )
    with pytest.raises(CamsegError, match="an ONNX model runs on the CPU here"):
        Segmenter(exported, device="cuda")
    # --runtime names what runs an .onnx; a PyTorch model file is refused before any work
    pth = tmp_path / "model.pth"
    pth.symlink_to(trained_run / "model.pth")
    out = tmp_path / "out-pth"
    said = error_of("predict", frame, "--model", pth, "--out", out, "--runtime", "openvino")
    assert said == (
        f"camseg: error: --runtime openvino: runs an exported .onnx model, and {pth} is a "
        "PyTorch model file; export one (camseg export, or --int8), give --model FILE.onnx, or "
        "leave --runtime at auto"
    )
    assert not out.exists()
    assert "--runtime onnxruntime: runs an exported .onnx" in error_of(
        "evaluate", "--model", pth, "--data", camvid_tiny, "--runtime", "onnxruntime"
    )


@pytest.mark.faults
def test_missing_extras_give_one_line(exported, trained_run, camvid_tiny, tmp_path, cli):
    frame = _frames(camvid_tiny, 1)[0]
    out = tmp_path / "out"
    no_runtime = _blocked_cli(
        "onnxruntime,openvino", "predict", frame, "--model", exported, "--out", out, cwd=tmp_path
    )
    assert no_runtime.returncode == 2 and not out.exists()
    assert no_runtime.stderr.splitlines()[0] == (
        "camseg: error: running an ONNX model needs onnxruntime, which is not installed: "
        "pip install 'camseg[onnx]' (or OpenVINO: pip install 'camseg[openvino]')"
    )
    with pytest.MonkeyPatch.context() as mp:  # in this process: an import of openvino fails
        mp.setitem(sys.modules, "openvino", None)
        asked = cli("predict", frame, "--model", exported, "--out", out, "--runtime", "openvino")
    assert asked.exit_code == 2 and not out.exists()
    assert asked.stderr.splitlines() == [
        "camseg: error: --runtime openvino needs openvino, which is not installed: "
        "pip install 'camseg[openvino]'"
    ]
    no_exporter = _blocked_cli(
        "onnxscript", "export", "--run", trained_run, "--out", tmp_path / "m.onnx", cwd=tmp_path
    )
    assert no_exporter.returncode == 2
    assert no_exporter.stderr.splitlines()[0] == (
        "camseg: error: camseg export needs onnxscript, which is not installed: "
        "pip install 'camseg[export]'"
    )
    assert not (tmp_path / "m.onnx").exists()


def test_evaluate_reads_data_as_fastai_validation_does(camvid_tiny, camseq01_sample, tmp_path):
    """evaluate's own reader (no fastai) gives the tensors of fastai's validation DataLoader, to
    the bit, so scores from either are equal; checked where both resize: another size than the
    frames', index labels (camvid) and colour labels (camseq01)."""
    from camseg.config.load import load_config
    from camseg.data import build_dataloaders, find_files
    from camseg.data.layouts import label_reader
    from camseg.data.splits import split_items
    from camseg.infer.evaluate import labelled_batches
    from camseg.model.files import ModelFile
    from camseg.model.network import IMAGENET_MEAN, IMAGENET_STD

    camseq01 = shutil.copytree(camseq01_sample, tmp_path / "camseq01")
    (camseq01 / "valid.txt").write_text("0016E5_07979.png\n")
    for root, layout, size in (
        (camvid_tiny, "camvid", (64, 96)),
        (camseq01, "camseq01", (72, 100)),
    ):
        sets = [f"data.root={root}", f"data.layout={layout}", f"data.size=[{size[0]},{size[1]}]"]
        cfg = load_config(None, [*sets, "data.augment.enabled=false", "data.num_workers=0"]).data
        files = find_files(cfg)
        items = split_items(files, "all")[:6]
        dl = build_dataloaders(cfg, files).test_dl(items, with_labels=True, bs=3)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        info = ModelFile(
            Path("m"), "resnet18", files.codes, size, mean, std, False, False, True, {}
        )
        ours = labelled_batches(items, label_reader(files), info, size, native=False, batch_size=3)
        for (xa, ya), (xb, labels) in zip(dl, ours, strict=True):
            assert torch.equal(xa.as_subclass(torch.Tensor), xb)
            assert torch.equal(
                ya.as_subclass(torch.Tensor).long(), torch.from_numpy(np.stack(labels)).long()
            )


def test_export_weights_best_writes_best_onnx(tmp_path, cli, monkeypatch):
    import camseg.export
    from camseg.export import default_onnx_path

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "history.csv", "summary.json", "model.pth", "checkpoints/best.pth"):
        (run / name).write_text("{}\n" if name == "summary.json" else "")  # a finished run
    assert default_onnx_path(run / "checkpoints" / "best.pth") == run / "best.onnx"
    assert default_onnx_path(run / "model.pth") == run / "model.onnx"
    assert default_onnx_path(run / "checkpoints" / "best.pth", int8=True) == run / "best-int8.onnx"
    assert default_onnx_path(run / "model.pth", int8=True) == run / "model-int8.onnx"
    given = []
    monkeypatch.setattr(
        camseg.export, "export_onnx", lambda source, out, int8: given.append(source) or 1 / 0
    )
    for args in ([], ["--weights", "best"]):
        with pytest.raises(ZeroDivisionError):
            cli("export", "--run", run, *args)
    assert given == [run / "model.pth", run / "checkpoints" / "best.pth"]
