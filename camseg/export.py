"""`camseg export`: a model file's network traced to one self-contained .onnx file (the file
camseg.model.onnx_file reads and camseg.infer.onnx_runtime runs), checked against PyTorch, never
written over a file. Needs fastai, which builds the network, and the `export` extra (onnx,
onnxscript, onnxruntime).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from camseg.core import __version__
from camseg.core.atomic import atomic_write_new, require_writable
from camseg.core.runs import model_file, run_of, weights_of
from camseg.errors import CamsegError, first_line, require_extra
from camseg.model.files import ModelFile, read_model_file
from camseg.model.onnx_file import DOC, INPUT, OUTPUT, graph_sha256, is_onnx, metadata

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


def default_onnx_path(source: Path) -> Path:
    """Where `camseg export` writes without --out: RUN/model.onnx for a run (or a model file in
    one; RUN/best.onnx for its best epoch's weights), else <stem>.onnx beside a lone model
    file."""
    run = run_of(source)
    if run is not None and not run.finished:
        raise CamsegError(
            f"{run.dir} has not finished training: a model.onnx in it would be stale once the "
            f"run is resumed; export it when it has finished, or give --out FILE to export "
            f"{source.name} now"
        )
    if run is not None:
        return run.dir / ("best.onnx" if weights_of(source) == "best" else "model.onnx")
    return source.with_suffix(".onnx")


def export_onnx(source: Path | ModelFile, out: Path | None = None) -> Export:
    """Export the model at `source` (run folder, model.pth or checkpoint, or one read already)
    to ONNX.

    The graph is traced at the model's own size with a dynamic batch axis: fastai's U-Net picks
    its resize steps from the input size when traced, so the file runs at that size only (which
    is the size camseg resizes every image to anyway). Before anything is written the graph is
    checked (onnx.checker) and run by ONNX Runtime on a batch at that size against PyTorch.

    `out` None: `default_onnx_path`, or its -2, -3, ... when that exists; an `out` that exists
    is refused. Either way an existing file is never overwritten.
    """
    where = source.path if isinstance(source, ModelFile) else source
    if is_onnx(where):
        raise CamsegError(f"{where}: already an ONNX model; export a run folder or model.pth")
    require_extra("onnx", "onnxscript", "onnxruntime", extra="export", what="camseg export")
    if out is not None and out.exists():
        raise CamsegError(f"--out {out} exists; camseg export never overwrites a file")
    if out is not None and not out.parent.is_dir():
        raise CamsegError(f"--out {out}: folder {out.parent} does not exist")
    target = out or default_onnx_path(where)
    require_writable(target.parent, "--out" if out is not None else "export writes to")
    start = time.perf_counter()
    mf = source if isinstance(source, ModelFile) else read_model_file(model_file(source))
    model = _exportable(mf)
    data = _serialise(model, mf)
    diff = _check(data, model, mf)
    path = atomic_write_new(target, lambda f: f.write(data), number=out is None)
    if path is None:
        raise CamsegError(f"--out {target} exists; camseg export never overwrites a file")
    return Export(path, mf.size, len(mf.codes), diff, time.perf_counter() - start)


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
def _quiet(*loggers: str) -> Iterator[None]:
    """The exporter's graph passes log each step at INFO; they say nothing a user can act on."""
    before = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
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
