#!/usr/bin/env python
"""Benchmarks that write their numbers to bench/results.json (merged by section).

    python scripts/bench.py predict [--device cpu] [--n 50] [--size 360x480] [--repeats 3]
                                    [--model RUN]
    python scripts/bench.py train [--device cpu] [--size 96x128] [--batch-size 8] [--repeats 3]
    python scripts/bench.py data [--n 100] [--size 360x480]
    python scripts/bench.py bigphoto [--device cpu] [--size 360x480]
    python scripts/bench.py precision|cudnn|compile [--device cuda] [--size 360x480] [--repeats 1]
    python scripts/bench.py bf16 [--repeats 1]
    python scripts/bench.py video [--device cpu] [--n 300] [--size 360x480] [--rounds 3]
    python scripts/bench.py backends --model RUN [--size 360x480] [--n 20] [--repeats 3]
                                     [--skip BACKEND,...]
    python scripts/bench.py checksum [--arch resnet34] [--repeats 5]
    python scripts/bench.py env [--device cuda]
    python scripts/bench.py --quick            # `all` at tiny sizes (CI runs this)

predict: camseg's batched predict against a plain per-image `learn.predict` loop over the same
images (camvid_tiny frames upscaled), alternating A/B, both writing index masks to disk; a U-Net
with random weights, or with --model a trained run's weights at --size, which camseg runs as
`camseg predict` does by default once the run has its int8 file (`camseg export --int8`, made
at --size first): on a CPU without AMX that file, on OpenVINO when installed.
train: one epoch of `camseg train` against one epoch of scripts/plain_fastai.py (the lesson-3
recipe) on camvid_tiny, same size, batch size, seed, workers and device, alternating A/B in
subprocesses.
data: DataLoader images/s at the training size from 960x720 sources, with and without data.cache.
bigphoto: peak RSS and seconds of one `camseg predict` process writing all three outputs for one
JPEG photo (a camvid_tiny frame upscaled) of 3000x2000 and of 10000x10000 (100 megapixels), and
for a frame at the model's size (what the process needs before any big image); the model is a
ResNet34 U-Net at --size with random weights.
accuracy: configs/tiny.yaml (the lesson-3 recipe, `notebook`) against configs/tiny-scratch.yaml
(`scratch`), or the --recipes given (`rare`: configs/tiny-rare.yaml), on the real camvid_tiny
without ImageNet weights, 2 seeds each; acc_camvid and mIoU of the final epoch (no picking the
best epoch on the validation frames), and minutes per run.
precision, cudnn, compile: `camseg train` against itself with one setting changed, alternating:
fp16 (fastai's mixed precision, loss scaling) vs bf16 autocast (fp32 vs bf16 on a CPU);
train.deterministic false (cudnn.benchmark on) vs true; train.compile false vs true. Two epochs
a run: images/s of the second, after compiling and cuDNN's kernel search, and the first's seconds.
bf16: configs/tiny-scratch.yaml as shipped (train.bf16 auto) against train.bf16 true and false on
the CPU, two epochs a run: the last epoch's seconds and the device line saying what auto chose
(every row also names the CPU, its vector flags, and ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA
when set, which make an AVX512 machine run AVX2 kernels).
video (needs PyAV): an H.264 clip of --n camvid_tiny frames upscaled to --size at 30 frames/s and
a U-Net at --size with random weights; frames/s, seconds and peak RSS of `camseg predict CLIP.mp4`
writing the overlay, the same with --stride 5, and a clip of n/5 frames (memory that does not
grow with the video's length is the same); then the video path against the network alone on the
same frames decoded beforehand, alternating for --rounds rounds of n/10 frames (the cost ratio
is near 1 when decoding and encoding hide behind the network).
backends (on the CPU; needs the `export` extra): the trained model at --model run at --size as
PyTorch fp32 and bf16, ONNX Runtime fp32 (the `camseg export` file), ONNX Runtime int8 with
dynamic and with static quantization (QDQ, per-channel weights, MinMax calibration on training
frames), and fastai's per-image `learn.predict`: images/s of `Segmenter.predict(path)` one image
at a time over --n frames (median of --repeats rounds, the backends alternating), mask pixels
equal to PyTorch fp32's, and acc_camvid on the validation frames at --size. int8 dynamic runs
5-6x slower than fp32 on a CPU: --skip onnxruntime-int8-dynamic saves minutes.
checksum: the cost of the weights' SHA-256 that model.pth, checkpoints and model.onnx record:
hashing a --arch U-Net's state dict, and reading model.pth (and, with the export extra, an exported
model.onnx's metadata) with and without the check; median of --repeats rounds, page cache warm.
env: what runs (Python, torch, CUDA, cuDNN, GPU, fastai, camseg and where each is imported from),
after one matrix product on the device.
`all` (the default) runs predict, data, train, bigphoto and accuracy.

The benchmarks themselves are in scripts/benchlib/; this file reads the command line.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from benchlib.backends import OPTIONAL, bench_backends
from benchlib.common import DEFAULT_DATA, REPO, BenchError, Results, bench_env, parse_size
from benchlib.inference import bench_bigphoto, bench_checksum, bench_predict
from benchlib.training import (
    RECIPES,
    SETTINGS,
    bench_accuracy,
    bench_bf16,
    bench_data,
    bench_setting,
    bench_train,
)
from benchlib.video import bench_video


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=[
            "all",
            "predict",
            "train",
            "data",
            "bigphoto",
            "accuracy",
            *SETTINGS,
            "bf16",
            "video",
            "backends",
            "checksum",
            "env",
        ],
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help="images or frames (predict 50, data 100, video 300, backends 20)",
    )
    parser.add_argument("--size", default=None, help="default: 360x480 (train: 96x128)")
    parser.add_argument("--arch", default="resnet34")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="predict: default camseg's auto; train, precision, cudnn, compile: default 8",
    )
    parser.add_argument("--precision", default="auto", help="predict's --precision")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (settings: 1)")
    parser.add_argument("--rounds", type=int, default=3, help="video: alternations of `overlap`")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="backends: run folder or model.pth; predict (and all): a finished run, else random "
        "weights",
    )
    parser.add_argument(
        "--recipes",
        default="notebook,scratch",
        help=f"accuracy: comma list of {', '.join(RECIPES)}; later ones are compared to the first",
    )
    parser.add_argument(
        "--skip", default="", help=f"backends: comma list to leave out of {', '.join(OPTIONAL)}"
    )
    args = parser.parse_args(argv)
    skip = {name for name in args.skip.split(",") if name}
    if skip - set(OPTIONAL):
        parser.error(f"--skip: unknown {sorted(skip - set(OPTIONAL))}; choose from {OPTIONAL}")
    recipes = [name for name in args.recipes.split(",") if name]
    if not recipes or set(recipes) - set(RECIPES):
        parser.error(f"--recipes: choose from {', '.join(RECIPES)}")
    if args.what == "backends" and args.model is None:
        parser.error("backends needs --model RUN_OR_MODEL (a trained run folder or model.pth)")
    what, data, device, arch, n = args.what, args.data, args.device, args.arch, args.n
    size, repeats, rounds, out = args.size, args.repeats, args.rounds, args.out
    if args.quick:
        n, size, repeats, arch, rounds = 6, "64x96", 1, "resnet18", 1
        if out == REPO / "bench" / "results.json":
            out = REPO / "bench" / "quick.json"
    results = Results(out, shlex.join(["python", "scripts/bench.py", *sys.argv[1:]]), args.quick)
    big = parse_size(size or "360x480")  # every benchmark's default size but train's
    bs = args.batch_size
    try:
        if what == "env":
            bench_env(results, device)
        if what in SETTINGS:
            bench_setting(results, what, data, big, device, arch, bs or 8, repeats or 1)
        if what in ("all", "predict"):
            bench_predict(
                results,
                data,
                big,
                n or 50,
                device,
                arch,
                bs,
                args.precision,
                repeats or 3,
                args.model,
            )
        if what in ("all", "data"):
            source = (144, 192) if args.quick else (720, 960)
            bench_data(results, data, big, 12 if args.quick else n or 100, device, source)
        if what in ("all", "train"):
            small = parse_size(size or "96x128")
            bench_train(results, data, small, device, arch, bs or 8, repeats or 3, args.quick)
        if what in ("all", "bigphoto"):
            photos = [(1000, 1500)] if args.quick else [(2000, 3000), (10000, 10000)]
            bench_bigphoto(results, data, big, photos, device, arch)
        if what in ("all", "accuracy"):
            bench_accuracy(results, data, device, args.quick, recipes)
        if what == "bf16":
            bench_bf16(results, data, repeats or 1)
        if what == "video":
            bench_video(results, data, big, n or 300, device, arch, rounds)
        if what == "checksum":
            bench_checksum(results, data, arch, repeats or 5, has_module("onnxscript"))
        if what == "backends":
            bench_backends(results, args.model, data, big, n or 20, repeats or 3, skip)
    except BenchError as e:
        sys.exit(f"bench.py {what}: {e}")


if __name__ == "__main__":
    main()
