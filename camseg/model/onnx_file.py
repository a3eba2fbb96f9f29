"""The .onnx file camseg exports (camseg.export writes it): its input, output and metadata,
read without loading the graph into a `ModelFile`, so a model.onnx goes wherever a model.pth
does (camseg.infer.onnx_runtime runs it). Never imports fastai."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, get_args

import numpy as np

from camseg.config.values import MAX_SIDE, Precision
from camseg.core import __version__
from camseg.core.runs import run_of, weights_of
from camseg.errors import CamsegError, require_extra
from camseg.model.files import ModelFile

ONNX_FORMAT = "camseg-onnx"
ONNX_FORMAT_VERSION = 1
INPUT, OUTPUT = "image", "scores"
# An int8 file (camseg export --int8) is used in fp32's place by default only when its export
# measured at least this share of mask pixels equal to the fp32 graph's (docs/benchmarks.md).
INT8_AGREEMENT = 0.99
RUNTIMES = ("openvino", "onnxruntime")  # what can run an .onnx, the faster first (auto's order)
# The metadata key of each runtime's measured int8 agreement (ONNX Runtime's is always there).
AGREEMENT_KEYS = {"onnxruntime": "int8_agreement", "openvino": "int8_agreement_openvino"}
# How camseg compiles an .onnx with OpenVINO: OpenVINO's CPU plugin runs an fp32 graph in bf16
# on a CPU with native bf16 unless told f32 (its default there); camseg runs an .onnx in fp32 on
# OpenVINO as on ONNX Runtime (an int8 file's quantized layers still run in int8).
OPENVINO_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}


def installed(runtime: str) -> bool:
    return importlib.util.find_spec(runtime) is not None


def require_runtime() -> None:
    """One error naming both extras when neither runtime that runs an .onnx is installed."""
    if not any(map(installed, RUNTIMES)):
        require_extra(
            "onnxruntime",
            extra="onnx",
            what="running an ONNX model",
            otherwise="OpenVINO: pip install 'camseg[openvino]'",
        )


# What `load_graph` gives: run ((N, 3, H, W) float32 -> (N, classes, H, W) scores), the graph's
# [(input name, shape)] and the class channels of its output (None when not fixed).
Loaded = tuple[Callable[[np.ndarray], np.ndarray], list[tuple[str, list]], int | None]


def load_graph(path: Path, runtime: str) -> Loaded:
    """An .onnx loaded on the CPU by `runtime`: an ONNX Runtime session (CPU provider) or an
    OpenVINO model compiled with OPENVINO_CONFIG. For camseg.infer.onnx_runtime, which checks
    the graph against the metadata, and for the int8 export's agreement check."""
    if runtime == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", OPENVINO_CONFIG)

        def dims(shape: Any) -> list:
            return [d.get_length() if d.is_static else "N" for d in shape]

        scores = dims(compiled.outputs[0].get_partial_shape())
        return (
            lambda xb: compiled(xb)[0],
            [(i.get_any_name(), dims(i.get_partial_shape())) for i in compiled.inputs],
            scores[1] if len(scores) == 4 and isinstance(scores[1], int) else None,
        )
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    channels = session.get_outputs()[0].shape[1:2]
    return (
        lambda xb: session.run(None, {INPUT: xb})[0],
        [(i.name, list(i.shape)) for i in session.get_inputs()],
        channels[0] if channels and isinstance(channels[0], int) else None,
    )


DOC = (
    f"camseg U-Net. Input '{INPUT}': float32 (N, 3, H, W), RGB squished to the metadata's size "
    f"(bilinear), scaled to [0, 1], minus mean, divided by std. Output '{OUTPUT}': float32 "
    "(N, classes, H, W) class scores; the argmax over dim 1 indexes the metadata's codes."
)


def is_onnx(path: Path) -> bool:
    return path.suffix.lower() == ".onnx"


def run_export_name(source: Path, int8: bool = False) -> str:
    """The name `camseg export` gives the export of a run's model file in the run folder:
    model.onnx (best.onnx for the best epoch's weights); model-int8.onnx, best-int8.onnx."""
    return (
        ("best" if weights_of(source) == "best" else "model") + ("-int8" if int8 else "") + ".onnx"
    )


def run_int8_file(source: Path) -> Path | None:
    """The int8 export of a finished run's model file (`camseg export --int8` wrote it), if the
    run folder holds one."""
    run = run_of(source)
    if run is None or not run.finished or is_onnx(source):
        return None
    path = run.dir / run_export_name(source, int8=True)
    return path if path.is_file() else None


def metadata(mf: ModelFile) -> dict[str, str]:
    """The ONNX metadata_props of an export: all a program needs to segment an image with the
    file alone (JSON values)."""
    return {
        "format": ONNX_FORMAT,
        "format_version": str(ONNX_FORMAT_VERSION),
        "codes": json.dumps(list(mf.codes)),
        "colors": json.dumps(mf.palette().tolist()),
        "size": json.dumps(list(mf.size)),
        "mean": json.dumps(list(mf.mean)),
        "std": json.dumps(list(mf.std)),
        "arch": mf.arch,
        "self_attention": json.dumps(mf.self_attention),
        "blur": json.dumps(mf.blur),
        "last_cross": json.dumps(mf.last_cross),
        "precision": mf.precision,  # what training validated in; the graph itself is fp32
        "ignore_index": json.dumps(mf.ignore_index),  # the label value training did not score
        "camseg_version": __version__,
    }


# --- reading and running -----------------------------------------------------------------------


def read_onnx_file(path: Path) -> ModelFile:
    """What an exported .onnx says about its network, as a ModelFile without weights (the graph
    holds them; camseg.infer.onnx_runtime runs it). Reads only the metadata, not the graph,
    then checks that a runtime (ONNX Runtime or OpenVINO) is there to run it, so predict refuses
    before writing anything."""
    if not path.is_file():
        raise CamsegError(f"{path}: no such file")
    try:
        props, graph_hash = _scan(path, hash_graph=True)
    except (ValueError, UnicodeDecodeError):
        raise CamsegError(f"{path}: not an ONNX model file") from None
    if props.get("format") != ONNX_FORMAT:
        raise CamsegError(
            f"{path}: an ONNX model without camseg's metadata (classes, input size, "
            "normalisation); make one with camseg export"
        )
    if props.get("format_version") != str(ONNX_FORMAT_VERSION):
        raise CamsegError(
            f"{path}: camseg ONNX format version {props.get('format_version')} but this camseg "
            f"({__version__}) reads version {ONNX_FORMAT_VERSION}; re-export it with a matching "
            "camseg"
        )
    recorded = props.get("graph_sha256")  # exports of camseg < 0.3 record none
    if recorded is not None and recorded != graph_hash:
        raise CamsegError(
            f"{path}: its graph and weights do not match the checksum the file records: the "
            "file is damaged; export it again (camseg export)"
        )
    info = _model_file(path, props)
    require_runtime()
    return info


def _model_file(path: Path, props: dict[str, str]) -> ModelFile:
    try:
        codes = [str(c) for c in json.loads(props["codes"])]
        h, w = (int(v) for v in json.loads(props["size"]))
        mean = tuple(float(v) for v in json.loads(props["mean"]))
        std = tuple(float(v) for v in json.loads(props["std"]))
        precision = props.get("precision", "fp32")
        if not codes or len(mean) != 3 or len(std) != 3 or precision not in get_args(Precision):
            raise ValueError
        if not (32 <= h <= MAX_SIDE and 32 <= w <= MAX_SIDE):
            raise CamsegError(
                f"{path}: metadata size {h}x{w} is not a network size (sides of 32 to "
                f"{MAX_SIDE} pixels); the file is damaged or not a camseg export"
            )
        return ModelFile(
            path=path,
            arch=props.get("arch", "unknown"),
            codes=codes,
            size=(h, w),
            mean=mean,  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
            self_attention=bool(json.loads(props.get("self_attention", "false"))),
            blur=bool(json.loads(props.get("blur", "false"))),
            last_cross=bool(json.loads(props.get("last_cross", "true"))),
            state_dict={},
            precision=precision,  # type: ignore[arg-type]
            ignore_index=_ignore_index(props),
            colors=_colors(props, len(codes)),
            int8_agreement=_int8_agreement(props),
        )
    except (KeyError, ValueError, TypeError):
        raise CamsegError(
            f"{path}: camseg metadata incomplete or malformed (needs codes, size, mean, std); "
            "re-export it with camseg export"
        ) from None


def _colors(props: dict[str, str], n: int) -> tuple[tuple[int, int, int], ...] | None:
    if "colors" not in props:
        return None
    colors = json.loads(props["colors"])
    if len(colors) != n or not all(
        len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in colors
    ):
        raise ValueError("colors")
    return tuple((int(c[0]), int(c[1]), int(c[2])) for c in colors)


def _int8_agreement(props: dict[str, str]) -> dict[str, float] | None:
    """An int8 file's measured agreement by runtime: int8_agreement (ONNX Runtime, always) and
    int8_agreement_openvino (when OpenVINO was installed at export)."""
    if props.get("quantization") is None:
        return None
    if props["quantization"] != "int8":
        raise ValueError("quantization")
    agreement = {}
    for runtime, key in AGREEMENT_KEYS.items():
        if runtime == "onnxruntime" or key in props:
            agreement[runtime] = float(json.loads(props[key]))
            if not 0 <= agreement[runtime] <= 1:
                raise ValueError(key)
    return agreement


def _ignore_index(props: dict[str, str]) -> int | None:
    value = json.loads(props.get("ignore_index", "null"))
    if value is not None and (not isinstance(value, int) or not 0 <= value <= 255):
        raise ValueError("ignore_index")
    return value


# --- metadata_props straight from the protobuf bytes -------------------------------------------
# ONNX Runtime shows a file's metadata only once it has loaded and optimised the whole graph
# (0.2-0.4 s for a ResNet34 U-Net), and the onnx package is not needed to run one; the metadata
# is one field of the file's top-level message, so it is read from the wire format, seeking
# past the graph and its weights.

_GRAPH, _METADATA_PROPS = 7, 14  # ModelProto field numbers (onnx.proto)


def _metadata_props(path: Path) -> dict[str, str]:
    """ModelProto.metadata_props of the file; ValueError when the file is not a ModelProto."""
    return _scan(path, hash_graph=False)[0]


def _scan(path: Path, *, hash_graph: bool) -> tuple[dict[str, str], str | None]:
    """metadata_props and (with hash_graph) the SHA-256 of the graph field's bytes: the graph
    and its weights, as the export wrote them (0.1 s for a ResNet34 U-Net's 165 MB)."""
    props: dict[str, str] = {}
    seen: set[int] = set()
    digest = hashlib.sha256() if hash_graph else None
    keep = {_METADATA_PROPS, _GRAPH} if hash_graph else {_METADATA_PROPS}
    with path.open("rb") as f:
        for field, value in _fields(f, os.fstat(f.fileno()).st_size, keep=keep):
            seen.add(field)
            if field == _METADATA_PROPS:
                entry = dict(_fields(io.BytesIO(value), len(value), keep=None))
                props[entry.get(1, b"").decode("utf-8")] = entry.get(2, b"").decode("utf-8")
            elif field == _GRAPH and digest is not None:
                digest.update(value)
    if _GRAPH not in seen:
        raise ValueError("no graph")
    return props, (digest.hexdigest() if digest is not None else None)


def graph_sha256(data: bytes) -> str:
    """The checksum `_scan` computes, of a serialised ModelProto in memory."""
    digest = hashlib.sha256()
    for field, value in _fields(io.BytesIO(data), len(data), keep={_GRAPH}):
        if field == _GRAPH:
            digest.update(value)
    return digest.hexdigest()


def _fields(f: IO[bytes], end: int, keep: set[int] | None) -> Iterator[tuple[int, bytes]]:
    """(field number, bytes) of each field of the message in f[tell:end]; the bytes are read for
    length-delimited fields numbered in `keep` (every one if None) and skipped for the others."""
    while f.tell() < end:
        field, wire = divmod(_varint(f), 8)
        if wire == 0:
            _varint(f)
            yield field, b""
        elif wire in (1, 5):
            f.seek(8 if wire == 1 else 4, os.SEEK_CUR)
            yield field, b""
        elif wire == 2:
            n = _varint(f)
            if f.tell() + n > end:
                raise ValueError("field past the end")
            if keep is None or field in keep:
                yield field, f.read(n)
            else:
                f.seek(n, os.SEEK_CUR)
                yield field, b""
        else:
            raise ValueError(f"wire type {wire}")
    if f.tell() != end:
        raise ValueError("truncated")


def _varint(f: IO[bytes]) -> int:
    value = 0
    for shift in range(0, 70, 7):
        byte = f.read(1)
        if not byte:
            raise ValueError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    raise ValueError("varint too long")
