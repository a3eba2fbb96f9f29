"""`camseg export`: a model file's network traced to one self-contained .onnx file (the file
camseg.model.onnx_file reads and camseg.infer.onnx_runtime runs), checked against PyTorch, never
written over a file. Needs fastai, which builds the network, and the `export` extra (onnx,
onnxscript, onnxruntime).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from camseg.core import __version__
from camseg.core.atomic import atomic_write_new, require_writable
from camseg.core.runs import model_file, run_of
from camseg.data import find_files
from camseg.data.files import load_rgb
from camseg.data.layouts import EVALUATE_OPTIONS
from camseg.data.splits import reading_data_config, split_items
from camseg.errors import CamsegError, first_line, require_extra
from camseg.model.files import ModelFile, read_model_file, to_model_input
from camseg.model.onnx_file import (
    AGREEMENT_KEYS,
    DOC,
    INPUT,
    OUTPUT,
    RUNTIMES,
    graph_sha256,
    installed,
    is_onnx,
    load_graph,
    metadata,
    run_export_name,
)

# The exported graph's scores may differ from PyTorch's by float rounding only (ONNX Runtime fuses
# and reorders the arithmetic); anything past this, relative to the largest score, is a bad export.
EXPORT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Export:
    """What `export_onnx` wrote, and how closely the written graph reproduces PyTorch."""

    path: Path
    size: tuple[int, int]
    n_classes: int
    max_abs_diff: float  # ONNX Runtime vs PyTorch class scores on the check batch
    seconds: float
    int8: Int8Check | None = None  # --int8: how the quantized graph was made and how it agrees


@dataclass(frozen=True)
class Int8Frames:
    """The frames an int8 export calibrates on (training frames) and checks on (validation)."""

    calibration: list[Path]
    check: list[Path]


@dataclass(frozen=True)
class Int8Check:
    calibration_frames: int
    check_frames: int
    agreement: float  # share of mask pixels (at the model's size) equal to the fp32 graph's
    agreement_openvino: float | None = None  # the same run by OpenVINO, when it is installed


def default_onnx_path(source: Path, int8: bool = False) -> Path:
    """Where `camseg export` writes without --out: RUN/model.onnx for a run (or a model file in
    one; RUN/best.onnx for its best epoch's weights), else <stem>.onnx beside a lone model
    file; with int8, model-int8.onnx, best-int8.onnx, <stem>-int8.onnx."""
    run = run_of(source)
    if run is not None and not run.finished:
        raise CamsegError(
            f"{run.dir} has not finished training: a model.onnx in it would be stale once the "
            f"run is resumed; export it when it has finished, or give --out FILE to export "
            f"{source.name} now"
        )
    if run is not None:
        return run.dir / run_export_name(source, int8)
    return source.with_name(source.stem + ("-int8.onnx" if int8 else ".onnx"))


def int8_frames(source: Path, calibration: int = 32, check: int = 20) -> Int8Frames:
    """Up to `calibration` of the run's own training frames and `check` of its validation
    frames, evenly spread over each split, for an int8 export of a run's model."""
    run = run_of(source)
    if run is None:
        raise CamsegError(
            f"{source}: --int8 calibrates on the training frames of the model's run; give a run "
            "folder or a model file inside one"
        )
    files = find_files(reading_data_config(run, None, None), EVALUATE_OPTIONS)
    return Int8Frames(
        spread(split_items(files, "train"), calibration), spread(split_items(files, "valid"), check)
    )


def spread(items: list[Path], n: int) -> list[Path]:
    """n of the items, evenly spaced (all of them when there are no more than n)."""
    return [items[k * len(items) // n] for k in range(n)] if len(items) > n else items


def export_onnx(
    source: Path | ModelFile, out: Path | None = None, int8: Int8Frames | None = None
) -> Export:
    """Export the model at `source` (run folder, model.pth or checkpoint, or one read already)
    to ONNX.

    The graph is traced at the model's own size with a dynamic batch axis: fastai's U-Net picks
    its resize steps from the input size when traced, so the file runs at that size only (which
    is the size camseg resizes every image to anyway). Before anything is written the graph is
    checked (onnx.checker) and run by ONNX Runtime on a batch at that size against PyTorch.

    `out` None: `default_onnx_path`, or its -2, -3, ... when that exists; an `out` that exists
    is refused. Either way an existing file is never overwritten.

    `int8`: write the graph quantized to int8 instead (`_quantize`), calibrated on
    `int8.calibration` and its masks compared with the fp32 graph's on `int8.check`.
    """
    where = source.path if isinstance(source, ModelFile) else source
    if is_onnx(where):
        raise CamsegError(f"{where}: already an ONNX model; export a run folder or model.pth")
    require_extra("onnx", "onnxscript", "onnxruntime", extra="export", what="camseg export")
    if out is not None and out.exists():
        raise CamsegError(f"--out {out} exists; camseg export never overwrites a file")
    if out is not None and not out.parent.is_dir():
        raise CamsegError(f"--out {out}: folder {out.parent} does not exist")
    target = out or default_onnx_path(where, int8=int8 is not None)
    require_writable(target.parent, "--out" if out is not None else "export writes to")
    start = time.perf_counter()
    mf = source if isinstance(source, ModelFile) else read_model_file(model_file(source))
    model = _exportable(mf)
    data = _serialise(model, mf)
    diff = _check(data, model, mf)
    check = None
    if int8 is not None:
        data, check = _quantize(data, mf, int8)
    path = atomic_write_new(target, lambda f: f.write(data), number=out is None)
    if path is None:
        raise CamsegError(f"--out {target} exists; camseg export never overwrites a file")
    return Export(path, mf.size, len(mf.codes), diff, time.perf_counter() - start, check)


def _quantize(data: bytes, mf: ModelFile, frames: Int8Frames) -> tuple[bytes, Int8Check]:
    """The fp32 graph quantized to int8 by ONNX Runtime's static quantization: QDQ format,
    int8 weights per output channel with 7-bit range (reduce_range: ONNX Runtime's advice for
    CPUs without VNNI, whose u8 x s8 products can saturate), uint8 activations whose ranges are
    the MinMax over the calibration frames. The head, the last convolution, whose outputs are
    the class scores the argmax compares, stays fp32: on camvid_tiny's validation frames,
    quantizing it too changed 1.6% of a ResNet34 U-Net's mask pixels instead of 0.75%
    (docs/benchmarks.md). Then both graphs segment the check frames and the share of equal mask
    pixels goes into the file's metadata, for each runtime installed (`_agreement`)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not frames.calibration or not frames.check:
        raise CamsegError("--int8 needs training frames to calibrate on and validation frames")

    def batch(path: Path) -> np.ndarray:
        return to_model_input(Image.fromarray(load_rgb(path)), mf)[None].numpy()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.todo = list(frames.calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return {INPUT: batch(self.todo.pop())} if self.todo else None

    with tempfile.TemporaryDirectory(prefix="camseg-int8-") as tmp:
        fp32, pre, q = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        fp32.write_bytes(data)
        with _quiet("root", level=logging.ERROR):
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            head = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"][-1:]
            quantize_static(
                str(pre),
                str(q),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=head,  # the nodes are in topological order
            )
        proto = onnx.load(str(q))
        agreement = _agreement(fp32, q, frames.check, batch)
    check = Int8Check(
        len(frames.calibration),
        len(frames.check),
        agreement["onnxruntime"],
        agreement.get("openvino"),
    )
    props = metadata(mf) | {
        "quantization": "int8",
        "int8_calibration_frames": str(check.calibration_frames),
        **{AGREEMENT_KEYS[name]: f"{share:.6f}" for name, share in agreement.items()},
    }
    onnx.helper.set_model_props(proto, props)
    checksum = graph_sha256(proto.SerializeToString())
    onnx.helper.set_model_props(proto, props | {"graph_sha256": checksum})
    return proto.SerializeToString(), check


def _agreement(
    fp32: Path, int8: Path, frames: list[Path], batch: Callable[[Path], np.ndarray]
) -> dict[str, float]:
    """The share of mask pixels on `frames` that the int8 graph gives as the fp32 graph does
    (on ONNX Runtime), by each runtime installed to run it (RUNTIMES). They differ a little:
    OpenVINO fuses the quantized layers its own way."""
    reference = load_graph(fp32, "onnxruntime")[0]
    runs = {name: load_graph(int8, name)[0] for name in RUNTIMES if installed(name)}
    equal, total = dict.fromkeys(runs, 0), 0
    for path in frames:
        x = batch(path)
        expected = reference(x).argmax(1)
        total += expected.size
        for name, run in runs.items():
            equal[name] += int((run(x).argmax(1) == expected).sum())
    return {name: n / total for name, n in equal.items()}


def _exportable(mf: ModelFile) -> torch.nn.Module:
    """The network in fp32, without fastai's last layer, which only re-types the output tensor
    (as a fastai TensorBase, which torch.export cannot trace)."""
    from fastai.layers import ToTensorBase

    model = mf.build().eval()
    model.layers = torch.nn.ModuleList(
        torch.nn.Identity() if isinstance(layer, ToTensorBase) else layer for layer in model.layers
    )
    return model


def _serialise(model: torch.nn.Module, mf: ModelFile) -> bytes:
    import onnx

    example = torch.zeros(2, 3, *mf.size)
    try:
        with _quiet("onnxscript", "onnx_ir", "torch.onnx"):
            program = torch.onnx.export(
                model,
                (example,),
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                dynamo=True,
                verbose=False,
            )
    except Exception as e:
        raise CamsegError(
            f"{mf.path}: torch.onnx.export failed ({type(e).__name__}: "
            f"{first_line(e)}); torch {torch.__version__}"
        ) from None
    proto = program.model_proto
    proto.producer_name, proto.producer_version = "camseg", __version__
    proto.doc_string = DOC
    onnx.helper.set_model_props(proto, metadata(mf))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise CamsegError(
            f"{mf.path}: the exported graph fails onnx.checker: {first_line(e)}"
        ) from None
    checksum = graph_sha256(proto.SerializeToString())
    onnx.helper.set_model_props(proto, metadata(mf) | {"graph_sha256": checksum})
    data = proto.SerializeToString()
    if graph_sha256(data) != checksum:  # the graph's bytes must not move with the metadata
        raise CamsegError(f"{mf.path}: the graph serialised differently twice; nothing written")
    return data


@contextlib.contextmanager
def _quiet(*loggers: str, level: int = logging.WARNING) -> Iterator[None]:
    """The exporter's graph passes log each step at INFO, the quantizer (on the root logger) a
    warning for each BatchNorm-less 1-D weight; they say nothing a user can act on."""
    before = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)


def _check(data: bytes, model: torch.nn.Module, mf: ModelFile) -> float:
    """Run the serialised graph on a batch at the model's size; its largest difference from
    PyTorch's scores, or an error when that is more than rounding."""
    import onnxruntime as ort

    x = torch.randn(2, 3, *mf.size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(x).float().numpy()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT: x.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if got.shape != expected.shape or not diff <= EXPORT_TOLERANCE * max(
        1.0, float(np.abs(expected).max())
    ):
        raise CamsegError(
            f"{mf.path}: the exported graph does not reproduce PyTorch at {mf.size[0]}x"
            f"{mf.size[1]} (shape {got.shape} vs {expected.shape}, max difference {diff:.3g}); "
            "nothing written"
        )
    return diff
