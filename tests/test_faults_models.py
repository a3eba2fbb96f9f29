"""Fault cases of damaged, inconsistent or foreign model files (model.pth and model.onnx): each
stops predict before an image is segmented, with one line naming the file and the fault, and
nothing written; a network that gives NaN scores stops the command instead of writing masks of
class 0.

Marked `faults`: ./scripts/faults.sh runs them with tests/test_faults.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import one_line_error

from camseg.model.files import read_model_file, weights_sha256

pytestmark = [pytest.mark.faults, pytest.mark.slow]  # every case starts from trained_run

FRAME = "0001TP_006750.png"


def _float_weight(obj: dict, k: int = 5) -> torch.Tensor:
    return [v for _, v in sorted(obj["model"].items()) if v.is_floating_point()][k]


def _damage(obj: dict) -> None:
    _float_weight(obj).view(-1)[:500] = float("nan")


def _nan_without_checksum(obj: dict) -> None:
    del obj["weights_sha256"]  # as a file of camseg < 0.3, which records none
    _damage(obj)


def _drop_tensor(obj: dict) -> None:
    obj["model"].pop(sorted(obj["model"])[3])
    obj["weights_sha256"] = weights_sha256(obj["model"])


def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda obj: obj["meta"].__setitem__(key, value)


def _codes31(obj: dict) -> None:
    obj["meta"]["codes"] = obj["meta"]["codes"][:31]
    obj["meta"]["colors"] = obj["meta"]["colors"][:31]  # the colours as consistent as the codes


def _flip_last_cross(obj: dict) -> None:
    obj["meta"]["last_cross"] = not obj["meta"].get("last_cross", True)


MODEL_FAULTS: list[tuple[str, Callable[[dict], None], str]] = [
    ("weights changed after writing", _damage, "do not match the checksum the file records"),
    ("NaN weights, no checksum", _nan_without_checksum, "gave NaN or infinite scores"),
    ("31 class names for 32 outputs", _codes31, "do not fit the resnet18 U-Net for 31 classes"),
    ("arch resnet34 with resnet18 weights", _set("arch", "resnet34"), "do not fit the resnet34"),
    ("an arch camseg does not build", _set("arch", "vgg16"), "meta.arch = 'vgg16' is not one of"),
    ("no meta", lambda obj: obj.pop("meta"), "no 'meta' (arch, classes, size)"),
    ("size 0x0", _set("size", [0, 0]), "meta.size = '[0, 0]' is not [H, W] with sides of 32"),
    ("size 100000x100000", _set("size", [100000, 100000]), "sides of 32 to 8192 pixels"),
    ("codes a string", _set("codes", "Animal"), "meta.codes = 'Animal' is not a list"),
    ("no mean", lambda obj: obj["meta"].pop("mean"), "meta.mean = 'missing' is not three"),
    ("std of 0", _set("std", [0, 0, 0]), "meta.std = '[0, 0, 0]' is not three finite"),
    ("a weight tensor missing", _drop_tensor, 'Missing key(s) in state_dict: "layers'),
    ("last_cross flipped", _flip_last_cross, "do not fit the resnet18 U-Net for 32 classes"),
    ("weights not tensors", lambda obj: obj.__setitem__("model", [1, 2]), "no weights"),
]


@pytest.mark.parametrize(
    ("name", "change", "needle"), MODEL_FAULTS, ids=[c[0] for c in MODEL_FAULTS]
)
def test_damaged_or_inconsistent_model_pth(
    name, change, needle, trained_run, camvid_tiny, tmp_path, cli
):
    obj = torch.load(trained_run / "model.pth", weights_only=True)
    assert obj["weights_sha256"] == weights_sha256(obj["model"])  # training recorded it
    change(obj)
    bad = tmp_path / "model.pth"
    torch.save(obj, bad)
    out = tmp_path / "out"
    result = cli("predict", camvid_tiny / "images" / FRAME, "--model", bad, "--out", out)
    one_line_error(result, str(bad), needle)
    assert not out.exists() or not any(out.iterdir())


def test_foreign_files_as_model_pth(camvid_tiny, tmp_path, cli):
    text = tmp_path / "notes.pth"
    text.write_text("hello\n")
    frame = camvid_tiny / "images" / FRAME
    one_line_error(cli("predict", frame, "--model", text), "not a torch file (model file)")
    plain = tmp_path / "plain.pth"
    torch.save({"format": "camseg-model", "version": 1, "when": "now"}, plain)
    one_line_error(cli("predict", frame, "--model", plain), "no weights")


def test_a_file_without_checksum_still_loads(trained_run, tmp_path):
    """Files written before checksums were recorded load as they did."""
    obj = torch.load(trained_run / "model.pth", weights_only=True)
    del obj["weights_sha256"]
    torch.save(obj, tmp_path / "old.pth")
    assert read_model_file(tmp_path / "old.pth").codes == obj["meta"]["codes"]


# ---- model.onnx ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory) -> Path:
    pytest.importorskip("onnx")
    from camseg.export import export_onnx

    return export_onnx(trained_run, tmp_path_factory.mktemp("onnx") / "model.onnx").path


def _graph_with_channels(exported: Path, channels: int, *, nan: bool = False) -> object:
    """A camseg-looking .onnx (the export's metadata, 32 classes) whose graph is one 1x1
    convolution to `channels` scores a pixel."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    real = onnx.load(str(exported))
    weight = np.full((channels, 3, 1, 1), np.nan if nan else 0.1, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["scores"])],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 64, 96])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", channels, 64, 96])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=real.opset_import)
    meta = {p.key: p.value for p in real.metadata_props if p.key != "graph_sha256"}
    helper.set_model_props(model, meta)
    return model


def test_damaged_or_foreign_onnx(exported, camvid_tiny, tmp_path, cli):
    import onnx

    frame = camvid_tiny / "images" / FRAME
    out = tmp_path / "out"

    def refused(model: Path, needle: str) -> None:
        one_line_error(cli("predict", frame, "--model", model, "--out", out), str(model), needle)
        assert not out.exists() or not any(out.iterdir())

    # 2000 bytes of a weight flipped: the graph no longer matches its recorded checksum
    data = bytearray(exported.read_bytes())
    raw = max(onnx.load(str(exported)).graph.initializer, key=lambda t: len(t.raw_data)).raw_data
    at = bytes(data).find(raw[:256]) + 1000
    data[at : at + 2000] = bytes(b ^ 0xFF for b in data[at : at + 2000])
    (tmp_path / "flipped.onnx").write_bytes(bytes(data))
    refused(tmp_path / "flipped.onnx", "do not match the checksum the file records")

    for channels in (5, 40):
        path = tmp_path / f"c{channels}.onnx"
        onnx.save(_graph_with_channels(exported, channels), str(path))
        refused(path, f"the graph gives {channels} class scores a pixel but its metadata lists 32")

    path = tmp_path / "nan.onnx"
    onnx.save(_graph_with_channels(exported, 32, nan=True), str(path))
    refused(path, "gave NaN or infinite scores")

    big = onnx.load(str(exported))
    next(p for p in big.metadata_props if p.key == "size").value = "[100000, 100000]"
    onnx.save(big, str(tmp_path / "big.onnx"))
    refused(tmp_path / "big.onnx", "metadata size 100000x100000 is not a network size")

    # an int8 export's own metadata: an unknown quantization, an agreement that is no share
    for key, value in (
        ("quantization", "int4"),
        ("int8_agreement", "1.5"),
        ("int8_agreement_openvino", "-0.2"),
    ):
        model = onnx.load(str(exported))
        props = {p.key: p.value for p in model.metadata_props}
        props |= {"quantization": "int8", "int8_agreement": "0.995"} | {key: value}
        onnx.helper.set_model_props(model, props)
        path = tmp_path / f"int8-{key}.onnx"
        onnx.save(model, str(path))
        refused(path, "camseg metadata incomplete or malformed")
