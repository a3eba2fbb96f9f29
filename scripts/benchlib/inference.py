"""Inference benchmarks on images: camseg's batched predict against fastai's per-image
`learn.predict` (`predict`), and the peak memory of one predict process on big photos
(`bigphoto`). Inference backends side by side are in benchlib.backends."""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from benchlib.common import (
    Results,
    Size,
    camseg_command,
    last_json,
    learn_predict,
    run,
    untrained_model_file,
    upscaled_frames,
)


def bench_predict(
    results: Results,
    data: Path,
    size: Size,
    n: int,
    device_name: str,
    arch: str,
    batch_size: int | None,
    precision: str,
    repeats: int,
) -> None:
    from camseg.data.files import read_codes
    from camseg.model import read_model_file, resolve_device
    from camseg.predict import predict

    device = resolve_device(device_name)
    codes = read_codes(data / "codes.txt")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        images = upscaled_frames(sorted((data / "images").glob("*.png")), tmp / "in", n, size)
        model_path = untrained_model_file(tmp / "model.pth", arch, size, codes)
        # B: the plain fastai way, one learn.predict per image
        baseline = learn_predict(read_model_file(model_path), data, size, device)

        def run_camseg() -> float:
            out = tmp / "a"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            predict(
                [str(p) for p in images],
                model_path,
                out,
                batch_size=batch_size,
                device=str(device),
                precision=precision,  # type: ignore[arg-type]
                formats=("index",),
            )
            return time.perf_counter() - t

        def run_loop() -> float:
            out = tmp / "b"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            t = time.perf_counter()
            for p in images:
                Image.fromarray(baseline(p)).save(out / f"{p.stem}_mask.png")
            return time.perf_counter() - t

        run_camseg()  # warm-up: first-call allocations, thread pools
        a, b = [], []
        for _ in range(repeats):  # alternate so drift hits both equally
            a.append(run_camseg())
            b.append(run_loop())
    a_ips, b_ips = n / statistics.median(a), n / statistics.median(b)
    results.save(
        results.section(f"predict_{device.type}", size, (360, 480)),
        {
            "images": n,
            "size": list(size),
            "arch": arch,
            "batch_size": batch_size or "auto",
            "precision": precision,
            "device": str(device),
            "camseg_images_per_s": round(a_ips, 2),
            "learn_predict_images_per_s": round(b_ips, 2),
            "speedup": round(a_ips / b_ips, 2),
            "camseg_seconds": [round(x, 2) for x in a],
            "learn_predict_seconds": [round(x, 2) for x in b],
        },
    )


def bench_bigphoto(
    results: Results, data: Path, size: Size, photos: list[Size], device: str, arch: str
) -> None:
    from camseg.data.files import read_codes

    frame = sorted((data / "images").glob("*.png"))[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        codes = read_codes(data / "codes.txt")
        model_path = untrained_model_file(tmp / "model.pth", arch, size, codes)
        for h, w in [size, *photos]:
            photo = tmp / f"photo_{h}x{w}.jpg"
            Image.open(frame).convert("RGB").resize((w, h), Image.BILINEAR).save(photo, quality=90)
            t = time.perf_counter()
            proc = run(
                camseg_command(
                    "predict",
                    str(photo),
                    "--model",
                    str(model_path),
                    "--out",
                    str(tmp / "out"),
                    "--device",
                    device,
                    rss=True,
                )
            )
            seconds = time.perf_counter() - t
            measured = last_json(proc.stdout)
            rows.append(
                {
                    "size": [h, w],
                    "megapixels": round(h * w / 1e6, 2),
                    "jpeg_mb": round(photo.stat().st_size / 2**20, 1),
                    "peak_rss_mb": round(measured["peak_rss_mb"]),
                    "process_seconds": round(seconds, 1),
                    **(
                        {"peak_gpu_mb": round(measured["peak_gpu_mb"])}
                        if "peak_gpu_mb" in measured
                        else {}
                    ),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    results.save(
        results.section(f"bigphoto_{device.split(':')[0]}", size, (360, 480)),
        {
            "model_size": list(size),
            "arch": arch,
            "device": device,
            "formats": "index,color,overlay",
            "photos": rows,
        },
    )
