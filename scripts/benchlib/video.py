"""`video`: frames/s and peak memory of `camseg predict CLIP.mp4` on an H.264 clip of upscaled
camvid_tiny frames, and how much of the video path's cost is the network's. Needs PyAV."""

from __future__ import annotations

import os
import re
import tempfile
import time
from fractions import Fraction
from pathlib import Path

from benchlib.common import Results, Size, camseg_command, last_json, run, untrained_model_file

RATE = Fraction(30)
# predict's summary line: "SOURCE: N frames (M segmented) in T s, F frames/s; wrote ..."
SUMMARY = re.compile(r": (\d+) frames \((\d+) segmented\) in [\d.]+ s, ([\d.]+) frames/s")


def write_clip(path: Path, data: Path, n: int, size: Size) -> Path:
    """n camvid_tiny frames, cycling, resized to size (H, W), as H.264 at RATE."""
    import av
    from PIL import Image

    from camseg.infer.video_io import h264_encoder

    frames = sorted((data / "images").glob("*.png"))
    with av.open(str(path), "w") as container:
        stream = container.add_stream(h264_encoder(), rate=RATE)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            im = Image.open(frames[i % len(frames)]).convert("RGB").resize(size[::-1])
            container.mux(stream.encode(av.VideoFrame.from_image(im)))
        container.mux(stream.encode(None))
    return path


def predict_clip(clip: Path, model: Path, out: Path, device: str, *extra: str) -> dict:
    """One `camseg predict` process on a clip: what it reports, its seconds and peak memory."""
    args = [str(clip), "--model", str(model), "--out", str(out), "--device", device, *extra]
    start = time.perf_counter()
    proc = run(camseg_command("predict", *args, rss=True))
    seconds = time.perf_counter() - start
    frames, segmented, fps = SUMMARY.search(proc.stdout).groups()  # type: ignore[union-attr]
    measured = last_json(proc.stdout)
    return {
        "frames": int(frames),
        "segmented": int(segmented),
        "frames_per_s": float(fps),
        "process_seconds": round(seconds, 1),
        "peak_rss_mb": round(measured["peak_rss_mb"]),
        **({"peak_gpu_mb": round(measured["peak_gpu_mb"])} if "peak_gpu_mb" in measured else {}),
    }


def overlap(clip: Path, model: Path, device: str, out: Path, rounds: int) -> dict:
    """The video path (predict_video: decoding in its thread, network, painting, encoding)
    against Segmenter.masks alone on the same frames decoded beforehand, one frame at a time,
    alternating: the ratio is near 1 when decoding and encoding hide behind the network."""
    import av

    from camseg import Segmenter
    from camseg.infer.video import predict_video
    from camseg.infer.video_io import h264_encoder, probe

    seg = Segmenter(model, device=device, tune_process=True)  # as `camseg predict` does
    with av.open(str(clip)) as container:
        images = [f.to_image() for f in container.decode(video=0)]
    seg.masks(images[:1])  # first-call allocations
    out.mkdir()
    video, network = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        result = predict_video(
            seg,
            probe(str(clip)),
            out,
            formats=("overlay",),
            stride=1,
            batch_size=1,
            codec=h264_encoder(),
        )
        video.append(result.frames / (time.perf_counter() - start))
        start = time.perf_counter()
        for im in images:
            seg.masks([im])
        network.append(len(images) / (time.perf_counter() - start))
    ratios = sorted(n / v for v, n in zip(video, network, strict=True))
    return {
        "frames": len(images),
        "video_path_frames_per_s": [round(v, 2) for v in video],
        "network_alone_frames_per_s": [round(n, 2) for n in network],
        "cost_ratio_median": round(ratios[len(ratios) // 2], 3),
    }


def bench_video(
    results: Results, data: Path, size: Size, n: int, device: str, arch: str, rounds: int
) -> None:
    """Each `camseg predict` in its own process, a U-Net at size with random weights:
    overlay: the clip -> CLIP_overlay.mp4, every frame segmented (frames/s as predict reports
    it, after the model is loaded); stride5: --stride 5; short: the first n/5 frames, whose peak
    RSS equals overlay's when memory does not grow with the video's length. Then, in this
    process, `overlap` on n/10 frames for `rounds` rounds."""
    from camseg.data.files import read_codes

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        clip = write_clip(tmp / "clip.mp4", data, n, size)
        short = write_clip(tmp / "short.mp4", data, max(2, n // 5), size)
        part = write_clip(tmp / "part.mp4", data, max(2, n // 10), size)
        codes = read_codes(data / "codes.txt")
        model = untrained_model_file(tmp / "model.pth", arch, size, codes)
        runs = {
            "overlay": predict_clip(clip, model, tmp / "o1", device, "--format", "overlay"),
            "stride5": predict_clip(clip, model, tmp / "o2", device, "--stride", "5"),
            "short": predict_clip(short, model, tmp / "o3", device, "--format", "overlay"),
            "overlap": overlap(part, model, device, tmp / "o4", rounds),
        }
    results.save(
        results.section(f"video_{device.split(':')[0]}", size, (360, 480)),
        {
            "clip": {"frames": n, "size": list(size), "rate": float(RATE), "codec": "h264"},
            "arch": arch,
            "device": device,
            **runs,
            "load_average_before_after": [round(load_before[0], 1), round(os.getloadavg()[0], 1)],
        },
    )
