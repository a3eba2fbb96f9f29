"""`backends`: one trained model run at a size (a U-Net's weights fit any size) as PyTorch fp32,
PyTorch bf16, ONNX Runtime fp32 (the `camseg export` file), ONNX Runtime int8 (`camseg export
--int8`, and dynamic quantization for comparison), the fp32 and int8 files on OpenVINO, and
fastai's per-image `learn.predict`, on the CPU: images/s, agreement, accuracy."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from benchlib.common import Results, Size, learn_predict, upscaled_frames

if TYPE_CHECKING:
    from camseg import Segmenter

# Every backend but PyTorch fp32, the reference. int8 dynamic runs its convolutions as
# ConvInteger, which has no fast kernel in ONNX Runtime's CPU provider: measured 5-6x slower than
# fp32 here, so --skip onnxruntime-int8-dynamic saves minutes.
OPTIONAL = (
    "pytorch-bf16",
    "onnxruntime-fp32",
    "onnxruntime-int8",
    "onnxruntime-int8-dynamic",
    "openvino-fp32",
    "openvino-int8",
    "fastai-learn.predict",
)


def dynamic_int8(fp32: Path, out: Path) -> Path:
    """ONNX Runtime's dynamic quantization of the exported model (int8 weights, activations
    quantized per batch), with the camseg metadata of the original so that camseg reads it."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from camseg.model.onnx_file import graph_sha256

    pre = out.with_name("pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8)
    props = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    model = onnx.load(str(out))
    props["graph_sha256"] = graph_sha256(model.SerializeToString())
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(out))
    return out


def bench_backends(
    results: Results,
    model: Path,
    data: Path,
    size: Size,
    n: int,
    repeats: int,
    skip: set[str],
) -> None:
    """Each row: images/s of `Segmenter.predict(path)` one image at a time (decode, resize,
    normalise, network, argmax) over n camvid_tiny frames upscaled to size, the median of
    `repeats` rounds with the backends alternating within a round so load drift hits all; the
    share of mask pixels equal to PyTorch fp32's; acc_camvid and its change against PyTorch fp32
    on the validation frames at size, scored as evaluate scores them (labels resized nearest).
    Timings on a shared machine move with its load: the load average goes with the numbers.
    All rows share one process, which keeps freed memory from the first PyTorch load on
    (camseg.core.heap), the learn.predict row too; `bench.py predict` times that loop in a process
    of its own."""
    import onnxruntime

    from camseg import Segmenter
    from camseg.config.load import load_config
    from camseg.core.metrics import acc_camvid, confusion_matrix
    from camseg.core.runs import model_file
    from camseg.data import find_files
    from camseg.data.files import load_rgb, resize_rgb
    from camseg.data.layouts import label_reader
    from camseg.data.splits import split_items
    from camseg.export import Int8Frames, export_onnx, spread
    from camseg.model.files import read_model_file
    from camseg.model.onnx_file import installed

    h, w = size
    trained = read_model_file(model_file(model))
    info = dataclasses.replace(trained, size=size)
    files = find_files(load_config(None, [f"data.root={data}"]).data)
    valid = split_items(files, "valid")
    train = split_items(files, "train")
    load_before = os.getloadavg()
    has_openvino = installed("openvino")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        frames = upscaled_frames(valid + train, tmp / "frames", n, size)
        exported = export_onnx(info, tmp / "model.onnx").path
        # each with the process settings `camseg predict` runs with (tune_process)
        tuned = {"device": "cpu", "tune_process": True}
        backends: dict[str, Callable[[], Segmenter]] = {
            "pytorch-fp32": lambda: Segmenter(info, precision="fp32", **tuned),
            "pytorch-bf16": lambda: Segmenter(info, precision="bf16", **tuned),
            "onnxruntime-fp32": lambda: Segmenter(exported, runtime="onnxruntime", **tuned),
        }
        if has_openvino:
            backends["openvino-fp32"] = lambda: Segmenter(exported, runtime="openvino", **tuned)
        int8_check = None
        if {"onnxruntime-int8", "openvino-int8"} - skip:  # as `camseg export --int8` makes it
            frames_for_int8 = Int8Frames(spread(train, 32), spread(valid, 20))
            int8 = export_onnx(info, tmp / "int8.onnx", int8=frames_for_int8)
            int8_check = int8.int8
            backends["onnxruntime-int8"] = lambda: Segmenter(
                int8.path, runtime="onnxruntime", **tuned
            )
            if has_openvino:
                backends["openvino-int8"] = lambda: Segmenter(
                    int8.path, runtime="openvino", **tuned
                )
        if "onnxruntime-int8-dynamic" not in skip:
            dynamic = dynamic_int8(exported, tmp / "int8-dynamic.onnx")
            backends["onnxruntime-int8-dynamic"] = lambda: Segmenter(dynamic, **tuned)
        segs = {name: make() for name, make in backends.items() if name not in skip}
        runners: dict[str, Callable[[Path], np.ndarray]] = {
            name: seg.predict for name, seg in segs.items()
        }
        if "fastai-learn.predict" not in skip:
            runners["fastai-learn.predict"] = learn_predict(info, data, size, "cpu")

        masks = {name: [run(p) for p in frames] for name, run in runners.items()}  # warm-up too
        seconds: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(repeats):
            for name, run in runners.items():
                t = time.perf_counter()
                for p in frames:
                    run(p)
                seconds[name].append(time.perf_counter() - t)

        # the validation frames as evaluate scores them at size: frames squished (bilinear),
        # labels resized (nearest)
        read_label = label_reader(files)
        scored = [
            (
                resize_rgb(Image.fromarray(load_rgb(p)), size),
                torch.from_numpy(
                    np.array(Image.fromarray(read_label(p)).resize((w, h), Image.NEAREST))
                ),
            )
            for p in valid
        ]

        def acc(seg: Segmenter) -> float:
            cm = sum(
                confusion_matrix(torch.from_numpy(seg.masks([im])[0]), y, len(files.codes))
                for im, y in scored
            )
            return acc_camvid(cm, files.void_index)

        accs = {name: acc(seg) for name, seg in segs.items()}

    reference = masks["pytorch-fp32"]
    ips = {name: n / statistics.median(s) for name, s in seconds.items()}
    base = ips.get("fastai-learn.predict")
    rows = []
    for name in runners:
        agree = np.mean([np.mean(a == b) for a, b in zip(masks[name], reference, strict=True)])
        row = {
            "backend": name,
            "images_per_s": round(ips[name], 3),
            "seconds": [round(x, 2) for x in seconds[name]],
            "pixel_agreement_vs_pytorch_fp32": round(float(agree), 6),
        }
        if base:
            row["speedup_vs_learn_predict"] = round(ips[name] / base, 2)
        if name in accs:
            row["acc_camvid"] = round(accs[name], 6)
            row["acc_camvid_change"] = round(accs[name] - accs["pytorch-fp32"], 6)
        rows.append(row)
    print(
        f"{'backend':<28}{'images/s':>10}{'x learn.predict':>17}{'agree':>10}{'acc':>9}{'d acc':>9}"
    )
    for r in rows:
        print(
            f"{r['backend']:<28}{r['images_per_s']:>10.2f}"
            f"{r.get('speedup_vs_learn_predict', float('nan')):>17.2f}"
            f"{r['pixel_agreement_vs_pytorch_fp32']:>10.4f}"
            f"{r.get('acc_camvid', float('nan')):>9.4f}"
            f"{r.get('acc_camvid_change', float('nan')):>+9.4f}"
        )
    results.save(
        results.section("backends", size, (360, 480)),
        {
            "model": {
                "path": str(trained.path),
                "arch": trained.arch,
                "trained_at": list(trained.size),
                "run_at": list(size),
            },
            "frames": n,
            "repeats": repeats,
            "acc_frames": len(valid),
            "rows": rows,
            "int8_export": dataclasses.asdict(int8_check) if int8_check else None,
            "onnxruntime": onnxruntime.__version__,
            "openvino": importlib.metadata.version("openvino") if has_openvino else None,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
    )
