#!/usr/bin/env python
"""Video predict: frames/s and peak memory of `camseg predict CLIP.mp4`; writes bench/video.json.

    python scripts/bench_video.py [--n 300] [--size 360x480] [--device cpu] [--arch resnet34]

Makes an H.264 clip of n camvid_tiny frames upscaled to --size at 30 frames/s, and a U-Net
model.pth at --size with random weights (speed does not depend on what the weights are). Then,
each `camseg predict` in its own process:
  overlay: the clip -> CLIP_overlay.mp4 (every frame segmented); frames/s as predict reports it
    (decoding, network, painting and encoding, after the model is loaded), the process's seconds
    and peak RSS;
  stride5: the same with --stride 5 (frames/s of the clip, a fifth of them segmented);
  short: the first n/5 frames, for its peak RSS: memory that does not grow with the video's
    length is the same as overlay's;
and, in this process, overlap: the video path (predict_video: decoding in its thread, network,
painting, encoding) against Segmenter.masks alone on the same frames decoded beforehand, one
frame at a time, alternating for --rounds rounds of n/10 frames. The ratio is the video path's
cost over the network's; near 1 when decoding and encoding hide behind the network. Alternating
keeps the ratio fair when other work shares the machine (the load average is recorded too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "camvid_tiny"
RATE = Fraction(30)

# `camseg predict` that prints its peak RSS as its last stdout line
CAMSEG_WITH_RSS = """
import json, resource, sys
from camseg.cli import main
sys.argv = ["camseg", *sys.argv[1:]]
code = 0
try:
    main()
except SystemExit as e:
    code = e.code or 0
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
sys.exit(code)
"""
# predict's summary line: "SOURCE: N frames (M segmented) in T s, F frames/s; wrote ..."
SUMMARY = re.compile(r": (\d+) frames \((\d+) segmented\) in [\d.]+ s, ([\d.]+) frames/s")


def write_clip(path: Path, data: Path, n: int, size: tuple[int, int]) -> Path:
    """n camvid_tiny frames, cycling, resized to size (H, W), as H.264 at RATE."""
    import av
    from PIL import Image

    from camseg.video import h264_encoder

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


def untrained_model_file(path: Path, arch: str, size: tuple[int, int], data: Path) -> Path:
    from fastai.vision.learner import create_unet_model

    from camseg.config import load_config
    from camseg.data.files import read_codes
    from camseg.model import arch_fn, model_meta, write_model_file

    codes = read_codes(data / "codes.txt")
    cfg = load_config(None, [f"model.arch={arch}", "model.pretrained=false"]).model
    model = create_unet_model(arch_fn(arch), len(codes), size, pretrained=False)
    write_model_file(path, model, model_meta(cfg, codes, size))
    return path


def predict(clip: Path, model: Path, out: Path, device: str, *extra: str) -> dict:
    """One `camseg predict` process on a clip: what it reports, its seconds and peak RSS."""
    cmd = [sys.executable, "-c", CAMSEG_WITH_RSS, "predict", str(clip), "--model", str(model)]
    cmd += ["--out", str(out), "--device", device, *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        sys.exit(f"exit code {proc.returncode}: {shlex.join(cmd)}")
    frames, segmented, fps = SUMMARY.search(proc.stdout).groups()  # type: ignore[union-attr]
    rss = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    return {
        "frames": int(frames),
        "segmented": int(segmented),
        "frames_per_s": float(fps),
        "process_seconds": round(seconds, 1),
        "peak_rss_mb": round(rss),
    }


def overlap(clip: Path, model: Path, device: str, out: Path, rounds: int) -> dict:
    import av

    from camseg import Segmenter
    from camseg.video import h264_encoder, predict_video, probe

    seg = Segmenter(model, device=device)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="frames in the clip")
    ap.add_argument("--size", default="360x480", help="HxW of the clip and the network")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="resnet34")
    ap.add_argument("--rounds", type=int, default=3, help="alternations in `overlap`")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "video.json")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    short_n = max(2, args.n // 5)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        clip = write_clip(tmp / "clip.mp4", args.data, args.n, size)  # type: ignore[arg-type]
        short = write_clip(tmp / "short.mp4", args.data, short_n, size)  # type: ignore[arg-type]
        part = write_clip(tmp / "part.mp4", args.data, max(2, args.n // 10), size)  # type: ignore[arg-type]
        model = untrained_model_file(tmp / "model.pth", args.arch, size, args.data)  # type: ignore[arg-type]
        results = {
            "overlay": predict(clip, model, tmp / "o1", args.device, "--format", "overlay"),
            "stride5": predict(clip, model, tmp / "o2", args.device, "--stride", "5"),
            "short": predict(short, model, tmp / "o3", args.device, "--format", "overlay"),
            "overlap": overlap(part, model, args.device, tmp / "o4", args.rounds),
        }
    import torch

    report = {
        "command": shlex.join(["python", "scripts/bench_video.py", *sys.argv[1:]]),
        "clip": {"frames": args.n, "size": list(size), "rate": float(RATE), "codec": "h264"},
        "arch": args.arch,
        "device": args.device,
        **results,
        "load_average_before_after": [round(load_before[0], 1), round(os.getloadavg()[0], 1)],
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
