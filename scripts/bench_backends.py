#!/usr/bin/env python
"""Inference backends side by side, written to bench/backends.json:

    python scripts/bench_backends.py --model RUN_OR_MODEL [--size 360x480] [--n 20] [--repeats 3]
                                     [--skip BACKEND,...] [--out FILE]

One trained model run at --size (a U-Net's weights fit any size) as: PyTorch fp32, PyTorch bf16
(what `camseg predict --precision auto` runs on a CPU with native bf16), ONNX Runtime fp32 (the
`camseg export` file), ONNX Runtime int8 with dynamic and with static quantization (QDQ,
per-channel weights, MinMax calibration on training frames), and fastai's per-image
`learn.predict` loop as the baseline. Each row:

- images/s: `Segmenter.predict(path)` one image at a time (predict's batch size on a CPU: decode,
  resize, normalise, network, argmax), over --n camvid_tiny frames upscaled to --size; the
  median of --repeats rounds, the backends alternating within a round so load drift hits all;
- pixel agreement: the share of those frames' mask pixels equal to PyTorch fp32's;
- acc_camvid and its change against PyTorch fp32 on the validation frames at --size, scored with
  evaluate's reader (labels resized nearest).

Timings on a shared machine move with its load: the load average is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "camvid_tiny"
OUT = REPO / "bench" / "backends.json"
# Every backend but PyTorch fp32, the reference. int8 dynamic runs its convolutions as
# ConvInteger, which has no fast kernel in ONNX Runtime's CPU provider: measured 5-6x slower than
# fp32 here, so --skip onnxruntime-int8-dynamic saves minutes.
OPTIONAL = (
    "pytorch-bf16",
    "onnxruntime-fp32",
    "onnxruntime-int8-dynamic",
    "onnxruntime-int8-static",
    "fastai-learn.predict",
)


def upscaled(frames: list[Path], dst: Path, n: int, size: tuple[int, int]) -> list[Path]:
    """n frames resized (bilinear) to size (H, W) as PNGs, cycling through `frames`."""
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        src = frames[i % len(frames)]
        p = dst / f"f{i:04d}_{src.name}"
        Image.open(src).convert("RGB").resize(size[::-1], Image.BILINEAR).save(p)
        out.append(p)
    return out


def quantized(fp32: Path, tmp: Path, calibration: list[Path], info) -> dict[str, Path]:
    """int8 copies of the exported model (dynamic; static QDQ calibrated on `calibration`),
    with the camseg metadata of the original so that camseg reads them."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from camseg.infer import to_model_input

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self.todo = list(calibration)

        def get_next(self) -> dict | None:
            if not self.todo:
                return None
            im = Image.open(self.todo.pop()).convert("RGB")
            return {"image": to_model_input(im, info)[None].numpy()}

    pre = tmp / "pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    out = {"dynamic": tmp / "int8-dynamic.onnx", "static": tmp / "int8-static.onnx"}
    quantize_dynamic(str(pre), str(out["dynamic"]), weight_type=QuantType.QInt8)
    quantize_static(
        str(pre),
        str(out["static"]),
        Frames(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    props = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    for path in out.values():
        model = onnx.load(str(path))
        onnx.helper.set_model_props(model, props)
        onnx.save(model, str(path))
    return out


def learn_predict_loop(info, data: Path, size: tuple[int, int]) -> Callable[[Path], np.ndarray]:
    """fastai's own way: a Learner around the same network, one learn.predict per image."""
    from fastai.callback.progress import ProgressCallback
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat

    from camseg.config import load_config
    from camseg.data import build_dataloaders, find_files

    sets = [f"data.root={data}", f"data.size=[{size[0]},{size[1]}]", "data.num_workers=0"]
    cfg = load_config(None, [*sets, "data.augment.enabled=false"])
    dls = build_dataloaders(cfg.data, find_files(cfg.data), device="cpu")
    learn = Learner(dls, info.build().eval(), loss_func=CrossEntropyLossFlat(axis=1))
    learn.remove_cb(ProgressCallback)
    return lambda p: np.asarray(learn.predict(p)[0], dtype=np.uint8)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="run folder or model.pth")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="camvid_tiny")
    parser.add_argument("--size", default="360x480")
    parser.add_argument("--n", type=int, default=20, help="frames timed per round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--skip", default="", help=f"comma list of backends to leave out: {', '.join(OPTIONAL)}"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    skip = {name for name in args.skip.split(",") if name}
    if skip - set(OPTIONAL):
        parser.error(f"--skip: unknown {sorted(skip - set(OPTIONAL))}; choose from {OPTIONAL}")

    from camseg import Segmenter
    from camseg.config import load_config
    from camseg.data import find_files
    from camseg.data.files import load_rgb, resize_rgb
    from camseg.data.layouts import label_reader
    from camseg.evaluate import split_items
    from camseg.metrics import acc_camvid, confusion_matrix
    from camseg.model import read_model_file
    from camseg.onnx import export_onnx

    h, w = (int(v) for v in args.size.lower().split("x"))
    size = (h, w)
    trained = read_model_file(args.model)
    info = dataclasses.replace(trained, size=size)
    files = find_files(load_config(None, [f"data.root={args.data}"]).data)
    valid = split_items(files, "valid")
    train = split_items(files, "train")
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        frames = upscaled(valid + train, tmp / "frames", args.n, size)
        exported = export_onnx(info, tmp / "model.onnx").path
        backends: dict[str, Callable[[], Segmenter]] = {
            "pytorch-fp32": lambda: Segmenter(info, device="cpu", precision="fp32"),
            "pytorch-bf16": lambda: Segmenter(info, device="cpu", precision="bf16"),
            "onnxruntime-fp32": lambda: Segmenter(exported),
        }
        if {"onnxruntime-int8-dynamic", "onnxruntime-int8-static"} - skip:
            calibration = upscaled(train[-8:], tmp / "calibration", 8, size)
            for kind, path in quantized(exported, tmp, calibration, info).items():
                backends[f"onnxruntime-int8-{kind}"] = lambda path=path: Segmenter(path)
        segs = {name: make() for name, make in backends.items() if name not in skip}
        runners: dict[str, Callable[[Path], np.ndarray]] = {
            name: seg.predict for name, seg in segs.items()
        }
        if "fastai-learn.predict" not in skip:
            runners["fastai-learn.predict"] = learn_predict_loop(info, args.data, size)

        masks = {name: [run(p) for p in frames] for name, run in runners.items()}  # warm-up too
        seconds: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.repeats):
            for name, run in runners.items():
                t = time.perf_counter()
                for p in frames:
                    run(p)
                seconds[name].append(time.perf_counter() - t)

        # the validation frames as evaluate scores them at --size: frames squished (bilinear),
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
            n = len(files.codes)
            cm = sum(
                confusion_matrix(torch.from_numpy(seg.masks([im])[0]), y, n) for im, y in scored
            )
            return acc_camvid(cm, files.void_index)

        accs = {name: acc(seg) for name, seg in segs.items()}

    reference = masks["pytorch-fp32"]
    ips = {name: args.n / statistics.median(s) for name, s in seconds.items()}
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
    result = {
        "command": " ".join(["python", "scripts/bench_backends.py", *(argv or sys.argv[1:])]),
        "model": {
            "path": str(trained.path),
            "arch": trained.arch,
            "trained_at": list(trained.size),
            "run_at": list(size),
        },
        "frames": args.n,
        "repeats": args.repeats,
        "acc_frames": len(valid),
        "rows": rows,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
            "torch_threads": torch.get_num_threads(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
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
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
