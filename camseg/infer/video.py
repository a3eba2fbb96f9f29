"""Video in, video out for `camseg predict`: each source's frames (camseg.infer.video_io reads and
writes them) segmented through `Segmenter.masks` as image files are, into H.264 overlay/colour
videos and index-mask PNGs, a frame written once its mask is known (memory stays bounded).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from camseg.config.values import PredictPrecision
from camseg.core.atomic import require_writable
from camseg.core.device import resolve_device
from camseg.core.precision import PREDICT_DEFAULT, predict_precision
from camseg.errors import CamsegError
from camseg.infer.api import Segmenter, overlay
from camseg.infer.network import read_model, runtime_for
from camseg.infer.outputs import (
    LEGEND,
    auto_batch_size,
    check_request,
    class_shares,
    legend_to_write,
    refuse_earlier_outputs,
    save_png,
    unique_names,
)
from camseg.infer.video_io import (
    Frame,
    FrameReader,
    VideoInfo,
    VideoWriter,
    expand_videos,
    h264_encoder,
    probe,
)

# Frames decoded ahead of the network, at least; more with bigger batches.
AHEAD_FRAMES = 8
# Frames waiting for their batch's masks (with --stride, the frames in between wait for the
# mask before them): a batch goes to the network early rather than hold more pixels than this.
HOLD_PIXELS = 50_000_000


@dataclass
class VideoResult:
    info: VideoInfo
    frames: int = 0  # read (and written to the videos)
    segmented: int = 0
    seconds: float = 0.0
    outputs: dict[str, Path] = field(default_factory=dict)
    error: str | None = None  # why reading stopped before the end; what was read is written

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def predict_video(
    seg: Segmenter,
    info: VideoInfo,
    out: Path,
    *,
    formats: tuple[str, ...],
    stride: int,
    batch_size: int,
    codec: str,
    on_frame: Callable[[int, dict | None], None] | None = None,
    before_write: Callable[[], None] | None = None,
) -> VideoResult:
    """Segment every `stride`-th frame of one source, in batches of `batch_size`. Every frame
    goes into the overlay/colour videos, the frames in between with the mask before them; index
    masks are written for the segmented frames. on_frame(index, record): after each frame, with
    a record for a segmented one."""
    palette = seg.colors
    codes = seg.classes
    painted = [f for f in ("overlay", "color") if f in formats]
    masks_dir = out / f"{info.name}_frames"
    result = VideoResult(info)
    reader = FrameReader(
        info,
        keep=(lambda i: True) if painted else (lambda i: i % stride == 0),
        ahead=max(AHEAD_FRAMES, 2 * batch_size),
    )
    writers: dict[str, VideoWriter] = {}
    waiting: list[Frame] = []
    mask: np.ndarray | None = None

    def paint(fmt: str, image: Image.Image, mask: np.ndarray) -> np.ndarray:
        if fmt == "color":
            return palette[mask]
        return overlay(np.asarray(image), palette[mask])

    def flush() -> None:
        nonlocal mask
        segmented = [f for f in waiting if f.index % stride == 0]
        masks = iter(seg.masks([f.image for f in segmented]) if segmented else [])  # type: ignore[misc]
        for f in waiting:
            record = None
            if f.index % stride == 0:
                mask = next(masks)
                record = _record(f, mask, info, codes)
                if "index" in formats:
                    path = masks_dir / f"{info.name}_{f.index:06d}_mask.png"
                    save_png(path, Image.fromarray(mask, "L"))
                    record["outputs"]["index"] = str(path)
                result.segmented += 1
            assert mask is not None  # frame 0 is always segmented
            for fmt, writer in writers.items():
                writer.write(paint(fmt, f.image, mask))  # type: ignore[arg-type]
            if on_frame is not None:
                on_frame(f.index, record)
        waiting.clear()

    start = time.perf_counter()
    try:
        for frame in reader:
            if painted and not writers:
                if before_write is not None:
                    before_write()
                size = frame.image.size  # type: ignore[union-attr]
                for fmt in painted:
                    path = out / f"{info.name}_{fmt}.mp4"
                    writers[fmt] = VideoWriter(path, size, info.rate, codec)
            waiting.append(frame)
            in_batch = sum(f.index % stride == 0 for f in waiting)
            held = sum(f.image.width * f.image.height for f in waiting if f.image is not None)
            if in_batch in (0, batch_size) or held > HOLD_PIXELS:
                flush()
        flush()
    except KeyboardInterrupt:  # keep what was written, under a name of its own (.partial.mp4):
        for writer in writers.values():  # a complete earlier output is never replaced by it
            writer.finish(partial=True)
        raise
    except BaseException:
        for writer in writers.values():
            writer.discard()
        raise
    finally:
        reader.close()
    for fmt, writer in writers.items():
        writer.finish()
        result.outputs[fmt] = writer.path
    if "index" in formats and result.segmented:
        result.outputs["index"] = masks_dir
    result.frames = reader.frames
    result.seconds = time.perf_counter() - start
    result.error = reader.error or (None if reader.frames else "no frame could be read")
    return result


def _record(frame: Frame, mask: np.ndarray, info: VideoInfo, codes: list[str]) -> dict:
    counts = np.bincount(mask.ravel(), minlength=len(codes))
    return {
        "video": info.source,
        "frame": frame.index,
        "time": None if frame.time is None else round(frame.time, 3),
        "size": [int(mask.shape[0]), int(mask.shape[1])],
        "outputs": {},
        "shares": class_shares(counts, codes),
    }


def predict_videos(
    inputs: list[str],
    model_path: Path,
    out: Path,
    *,
    formats: tuple[str, ...] = ("overlay",),
    stride: int = 1,
    batch_size: int | None = None,
    tta: bool = False,
    device: str = "auto",
    precision: PredictPrecision = PREDICT_DEFAULT,
    on_video: Callable[[VideoInfo], None] | None = None,
    on_frame: Callable[[int, dict | None], None] | None = None,
    exist_ok: bool = False,
    tune_process: bool = False,
    runtime: str = "auto",
) -> list[VideoResult]:
    """Segment video sources; write `formats` under `out` as <name>_overlay.mp4,
    <name>_color.mp4 and <name>_frames/<name>_<frame>_mask.png. Every source is opened before
    anything is written; a read error part-way is in its result, not raised. An output that
    exists already is an error unless exist_ok (then it is replaced)."""
    check_request(formats, batch_size)
    if stride < 1:
        raise CamsegError(f"--stride must be at least 1, got {stride}")
    dev = resolve_device(device, "--device")
    predict_precision(precision, dev)  # a precision this device cannot run: before any work
    infos = [probe(source) for source in expand_videos(inputs)]
    names = unique_names([info.name for info in infos])
    infos = [dataclasses.replace(i, name=n) for i, n in zip(infos, names, strict=True)]
    targets = [
        out / (f"{info.name}_frames" if fmt == "index" else f"{info.name}_{fmt}.mp4")
        for info in infos
        for fmt in formats
    ]
    sources = {Path(info.source).resolve() for info in infos if "://" not in info.source}
    for target in targets:
        if target.resolve() in sources:
            raise CamsegError(
                f"output {target.resolve()} would overwrite an input; choose another --out"
            )
    refuse_earlier_outputs(targets, exist_ok)
    mf = read_model(model_path)
    runtime_for(mf, runtime)  # a runtime that cannot run it: before any work
    legend = legend_to_write(out, mf, formats, exist_ok)
    codec = h264_encoder() if {"overlay", "color"} & set(formats) else ""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CamsegError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    require_writable(out, "--out")
    seg = Segmenter(
        mf,
        device=device,
        precision=precision,
        tta=tta,
        tune_process=tune_process,
        runtime=runtime,
    )

    def before_videos() -> None:  # with the first video file: a failed call writes nothing
        nonlocal legend
        if legend is not None:
            save_png(out / LEGEND, legend)
            legend = None

    results = []
    for info in infos:
        if on_video is not None:
            on_video(info)
        results.append(
            predict_video(
                seg,
                info,
                out,
                formats=formats,
                stride=stride,
                batch_size=batch_size or auto_batch_size(dev),
                codec=codec,
                on_frame=on_frame,
                before_write=before_videos,
            )
        )
    return results
