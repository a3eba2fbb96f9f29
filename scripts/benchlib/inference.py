"""Inference benchmarks on images: camseg's batched predict against fastai's per-image
`learn.predict` (`predict`), and the peak memory of one predict process on big photos
(`bigphoto`). Inference backends side by side are in benchlib.backends."""

from __future__ import annotations

import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

if __name__ == "__main__":  # run as a script (one side of bench_predict): find benchlib
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib.common import (
    BenchError,
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
    trained: Path | None = None,
) -> None:
    """camseg's predict against the plain per-image `learn.predict` loop, each timed run in a
    fresh process of its own (alternating), so that neither inherits the other's process
    settings (camseg.core.heap) or warm caches. Each process first segments one image untimed
    (thread pools, first-call kernel choices), then times the whole call on the n images: for camseg
    that includes loading the model, as `camseg predict` does.

    The model: a U-Net of `arch` with random weights at `size`, or with `trained` (a finished
    run) that run's weights at `size` in a run folder of their own, with the int8 file `camseg
    export --int8` makes of them; camseg then runs what `camseg predict` runs by default there
    (camseg.infer.predict.fastest_model: the int8 file on a CPU without AMX)."""
    from camseg.core.device import resolve_device
    from camseg.data.files import read_codes

    device = resolve_device(device_name)
    codes = read_codes(data / "codes.txt")
    int8 = None
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        images = upscaled_frames(sorted((data / "images").glob("*.png")), tmp / "in", n, size)
        if trained is None:
            model_path = untrained_model_file(tmp / "model.pth", arch, size, codes)
        else:
            model_path, int8, arch = _run_at_size(trained, tmp / "run", size)
        job = {
            "images": [str(p) for p in images],
            "model": str(model_path),
            "data": str(data),
            "size": list(size),
            "device": str(device),
            "batch_size": batch_size,
            "precision": precision,
        }

        def side(name: str) -> dict:
            out = tmp / name
            shutil.rmtree(out, ignore_errors=True)
            proc = run([sys.executable, __file__, name, json.dumps(job | {"out": str(out)})])
            return last_json(proc.stdout)

        a, b = [], []
        for _ in range(repeats):  # alternate so drift hits both equally
            a.append(side("camseg"))
            b.append(side("learn_predict"))
    chosen = {r["ran"] for r in a}
    a_ips = n / statistics.median(r["seconds"] for r in a)
    b_ips = n / statistics.median(r["seconds"] for r in b)

    def per_image(runs: list[dict], key: str) -> float:
        return round(statistics.median(r[key] for r in runs) / n, 3)

    results.save(
        results.section(f"predict_{device.type}", size, (360, 480)),
        {
            "images": n,
            "size": list(size),
            "arch": arch,
            "batch_size": batch_size or "auto",
            "precision": precision,
            "device": str(device),
            "model": str(trained) if trained else "random weights",
            # what camseg ran: the model.pth, or the run's int8 file (`camseg predict`'s note)
            "camseg_ran": sorted(chosen),
            "int8_export": int8,
            "camseg_images_per_s": round(a_ips, 2),
            "learn_predict_images_per_s": round(b_ips, 2),
            "speedup": round(a_ips / b_ips, 2),
            "camseg_seconds": [round(r["seconds"], 2) for r in a],
            "learn_predict_seconds": [round(r["seconds"], 2) for r in b],
            # what each timed call cost the process, per image (medians over the repeats)
            "camseg_page_faults_per_image": per_image(a, "page_faults"),
            "learn_predict_page_faults_per_image": per_image(b, "page_faults"),
            "camseg_kernel_cpu_s_per_image": per_image(a, "kernel_cpu_s"),
            "learn_predict_kernel_cpu_s_per_image": per_image(b, "kernel_cpu_s"),
            "camseg_user_cpu_s_per_image": per_image(a, "user_cpu_s"),
            "learn_predict_user_cpu_s_per_image": per_image(b, "user_cpu_s"),
        },
    )


def _timed_side(name: str, job: dict) -> dict:
    """One side of bench_predict in this (fresh) process: warm up on one image, then time the
    n images -> seconds, and the page faults and user / kernel CPU time of the timed part."""
    images = [Path(p) for p in job["images"]]
    out = Path(job["out"])
    ran = job["model"]
    if name == "camseg":
        from camseg.infer.predict import fastest_model, predict

        # as the CLI does: the run's int8 file where that is the fastest (one line saying so)
        source, note = fastest_model(Path(job["model"]), job["device"], job["precision"])
        ran = note or str(source)

        def call(paths: list[Path], dst: Path) -> None:
            predict(
                [str(p) for p in paths],
                source,
                dst,
                batch_size=job["batch_size"],
                device=job["device"],
                precision=job["precision"],
                formats=("index",),
                tune_process=True,  # as `camseg predict` does
            )
    else:
        from camseg.model.files import read_model_file

        baseline = learn_predict(
            read_model_file(Path(job["model"])),
            Path(job["data"]),
            tuple(job["size"]),
            job["device"],
        )

        def call(paths: list[Path], dst: Path) -> None:
            dst.mkdir(parents=True, exist_ok=True)
            for p in paths:
                Image.fromarray(baseline(p)).save(dst / f"{p.stem}_mask.png")

    call(images[:1], out / "warmup")
    before = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    call(images, out)
    seconds = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": seconds,
        "page_faults": after.ru_minflt - before.ru_minflt + after.ru_majflt - before.ru_majflt,
        "kernel_cpu_s": after.ru_stime - before.ru_stime,
        "user_cpu_s": after.ru_utime - before.ru_utime,
        "ran": ran,
    }


def _run_at_size(trained: Path, folder: Path, size: Size) -> tuple[Path, dict, str]:
    """A finished run folder holding `trained`'s weights at `size` (a U-Net's weights fit any
    size; model.pth records the size it runs at) and their int8 export, made as `camseg export
    --int8` makes it: calibrated on the run's training frames, checked on its validation frames
    -> (its model.pth, what the export measured, the arch)."""
    import dataclasses

    import torch

    from camseg.core.runs import Run, model_file
    from camseg.export import export_onnx, int8_frames

    run = Run(trained.resolve() if trained.is_dir() else trained.resolve().parent)
    if not run.finished:
        raise BenchError(f"--model {trained}: not a finished run folder (model.pth, summary.json)")
    folder.mkdir(parents=True)
    for name in ("config.yaml", "history.csv"):
        shutil.copy2(run.dir / name, folder / name)
    saved = torch.load(model_file(run.dir), map_location="cpu", weights_only=True)
    saved["meta"]["size"] = list(size)
    torch.save(saved, folder / "model.pth")
    shutil.copy2(run.summary, folder / "summary.json")  # written last: the run is finished
    pth = folder / "model.pth"
    exported = export_onnx(pth, int8=int8_frames(pth))
    assert exported.int8 is not None
    measured = dataclasses.asdict(exported.int8) | {"seconds": round(exported.seconds, 1)}
    return pth, measured, saved["meta"]["arch"]


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


if __name__ == "__main__":  # one timed side of bench_predict, in a process of its own
    print(json.dumps(_timed_side(sys.argv[1], json.loads(sys.argv[2]))), flush=True)


def bench_checksum(results: Results, data: Path, arch: str, repeats: int, onnx: bool) -> None:
    """What the weights' checksum costs: SHA-256 of a U-Net's state dict (written into model.pth
    and checkpoints, checked on every load) and reading model.pth with and without the check;
    with `onnx`, reading an exported model.onnx's metadata with and without hashing its graph.
    Median seconds of `repeats` rounds (the page cache warm: the disk is not what is measured)."""
    import statistics

    import torch

    from camseg.data.files import read_codes
    from camseg.model.files import read_model_file, weights_sha256

    codes = read_codes(data / "codes.txt")
    size = (64, 96)  # the weights do not depend on the size
    row: dict = {"arch": arch}

    def median(fn) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return round(statistics.median(times), 4)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        path = untrained_model_file(tmp / "model.pth", arch, size, codes)
        obj = torch.load(path, weights_only=True)
        row["weights_mb"] = round(
            sum(t.numel() * t.element_size() for t in obj["model"].values()) / 1e6, 1
        )
        row["sha256_s"] = median(lambda: weights_sha256(obj["model"]))
        del obj["weights_sha256"]
        torch.save(obj, tmp / "unchecked.pth")
        row["read_model_pth_s"] = median(lambda: read_model_file(path))
        row["read_model_pth_without_checksum_s"] = median(
            lambda: read_model_file(tmp / "unchecked.pth")
        )
        if onnx:
            from camseg.export import export_onnx
            from camseg.model.onnx_file import _scan

            exported = export_onnx(path, tmp / "model.onnx").path
            row["onnx_mb"] = round(exported.stat().st_size / 1e6, 1)
            row["onnx_metadata_and_graph_sha256_s"] = median(
                lambda: _scan(exported, hash_graph=True)
            )
            row["onnx_metadata_only_s"] = median(lambda: _scan(exported, hash_graph=False))
    results.save("checksum", row)
