"""Video in, video out for `camseg predict`: a video file, an image-sequence pattern
(`frames/f_%05d.png`) or a stream URL, read with PyAV (the optional `video` extra) -> H.264
overlay (and colour) videos at the source's size and frame rate, and index-mask PNGs of the
segmented frames. Frames are decoded in a thread ahead of the network and written as soon as
their mask is known: memory does not grow with the length of the video.

Segments through `Segmenter.masks`, as `camseg predict` does for image files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import queue
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from camseg.api import Segmenter
from camseg.atomic import atomic_write
from camseg.errors import CamsegError
from camseg.model import resolve_device
from camseg.precision import PREDICT_DEFAULT, predict_precision
from camseg.predict import FORMATS, SOFTWARE, auto_batch_size
from camseg.schema import PredictPrecision

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v")
INSTALL = "pip install 'camseg[video]'"
# In order of preference. PyAV's PyPI wheels (av 18.1) bundle libx264; a build without it
# may have Cisco's libopenh264; `h264` is whatever H.264 encoder the build calls its default.
H264_ENCODERS = ("libx264", "libopenh264", "h264")
# FFmpeg ends a truncated file without an error; a video that stops this much before the
# duration its container gives is reported as cut short (an audio track that runs on a little
# longer than the picture stays under it).
SHORT_BY_SECONDS = 0.5
# Frames decoded ahead of the network, at least; more with bigger batches.
AHEAD_FRAMES = 8
# Frames waiting for their batch's masks (with --stride, the frames in between wait for the
# mask before them): a batch goes to the network early rather than hold more pixels than this.
HOLD_PIXELS = 50_000_000

_FRAME_NUMBER = re.compile(r"%0?\d*d")
_GLOB = re.compile(r"[*?[]")


def is_video_source(item: str) -> bool:
    """A video file by its suffix (also a glob pattern of them), or, where no file of that name
    exists, a stream URL (`rtsp://...`) or an image-sequence pattern (`frames/f_%05d.png`)."""
    path = Path(item)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return True
    if path.exists():
        return False
    return "://" in item or _FRAME_NUMBER.search(path.name) is not None


def output_name(source: str) -> str:
    """The stem of a source's outputs: drive.mp4 -> drive, frames/f_%05d.png -> f (or the
    folder's name), rtsp://cam/live -> live."""
    if "://" in source:
        url = urllib.parse.urlsplit(source)
        stem = Path(url.path).stem or url.hostname or ""
    else:
        path = Path(source)
        stem = _FRAME_NUMBER.sub("", path.stem).strip("_-. ") or path.absolute().parent.name
    return re.sub(r"[^\w.-]", "_", stem) or "video"


def require_av(source: str) -> ModuleType:
    try:
        import av
    except ImportError:
        raise CamsegError(f"{source}: reading video needs PyAV, not installed: {INSTALL}") from None
    return av


@dataclass(frozen=True)
class VideoInfo:
    source: str
    name: str  # output stem
    rate: Fraction  # frames per second, written unchanged
    frames: int | None  # as the container lists them; None when it does not say
    duration: float | None  # seconds, from the container


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


def expand_videos(inputs: list[str]) -> list[str]:
    """Sources as given; a glob pattern of video files -> its matches (sorted). Every input must
    be a video source: images and videos go to separate predict calls."""
    found = []
    for item in inputs:
        if not is_video_source(item):
            raise CamsegError(
                f"{item} is not a video ({', '.join(VIDEO_SUFFIXES)}, an image-sequence "
                "pattern or a stream URL); give images and videos to separate predict calls"
            )
        if Path(item).exists() or "://" in item or _FRAME_NUMBER.search(Path(item).name):
            found.append(item)
        elif _GLOB.search(item):
            matches = sorted(p for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matches:
                raise CamsegError(f"{item}: pattern matches no files")
            found += matches
        else:
            raise CamsegError(f"{item}: no such file")
    return found


def probe(source: str) -> VideoInfo:
    """Open a source and read what its container says about the first video stream."""
    av = require_av(source)
    try:
        with av.open(source) as container:
            if not container.streams.video:
                raise CamsegError(f"{source}: has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if stream.duration is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = None
            return VideoInfo(
                source,
                output_name(source),
                Fraction(rate) if rate else Fraction(25),  # FFmpeg's own default
                stream.frames or None,
                duration,
            )
    except av.error.FFmpegError as e:
        raise CamsegError(f"{source}: not a video PyAV can read ({_reason(e)})") from None


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def h264_encoder() -> str:
    """The first of H264_ENCODERS this PyAV build has."""
    import av

    for name in H264_ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except ValueError:  # UnknownCodecError: not in this build
            continue
        return name
    raise CamsegError(
        f"this PyAV build has no H.264 encoder ({', '.join(H264_ENCODERS)}); install PyAV's "
        "own wheel from PyPI (it bundles libx264), or write --format index"
    )


@dataclass
class _Frame:
    index: int
    time: float | None  # seconds from the source's timestamps
    image: Image.Image | None  # None: nothing needs this frame's pixels


class _Reader:
    """Decodes a source in a thread, a bounded queue ahead of the consumer. Frames are RGB at the
    first frame's size; `keep(i)` False: frame i is decoded (H.264 needs every frame) but its
    pixels are not converted or queued."""

    def __init__(self, info: VideoInfo, keep: Callable[[int], bool], ahead: int) -> None:
        self.frames = 0
        self.error: str | None = None
        self._info = info
        self._keep = keep
        self._queue: queue.Queue[_Frame | BaseException | None] = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camseg-video-decode", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[_Frame]:
        while (item := self._queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _put(self, item: _Frame | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        import av

        end: BaseException | None = None
        try:
            with av.open(self._info.source) as container:
                stream = container.streams.video[0]
                stream.codec_context.thread_type = "AUTO"
                size: tuple[int, int] | None = None
                last: float | None = None
                for frame in self._decode(av, container, stream):
                    size = size or (frame.width, frame.height)
                    image = None
                    if self._keep(self.frames):  # a size change mid-stream: scale to the first
                        same = (frame.width, frame.height) == size
                        image = (
                            frame.to_image()
                            if same
                            else frame.to_image(width=size[0], height=size[1])
                        )
                    last = frame.time
                    if not self._put(_Frame(self.frames, frame.time, image)):
                        return
                    self.frames += 1
                if self.error is None:
                    self.error = self._cut_short(stream, last)
        except av.error.FFmpegError as e:  # opening again (a stream) or converting a frame
            self.error = f"cannot read past frame {self.frames} ({_reason(e)})"
        except BaseException as e:  # not a read error: raised again in the consumer's thread
            end = e
        self._put(end)

    def _decode(self, av: ModuleType, container: Any, stream: Any) -> Iterator[Any]:
        """Every frame up to the first read error (kept in self.error), then the frames the
        decoder still holds."""
        try:
            for packet in container.demux(stream):
                yield from packet.decode()
            return
        except av.error.FFmpegError as e:
            self.error = f"cannot read past frame {self.frames} ({_reason(e)})"
        with contextlib.suppress(av.error.FFmpegError):
            yield from stream.codec_context.decode(None)

    def _cut_short(self, stream: Any, last: float | None) -> str | None:
        duration = self._info.duration
        if duration is None or last is None:
            return None
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        reached = last - start + 1 / self._info.rate
        if reached < duration - SHORT_BY_SECONDS:
            return (
                f"the video ends at {reached:.2f} s of the {duration:.2f} s its container gives "
                "(truncated or corrupt)"
            )
        return None


class _VideoWriter:
    """An H.264 .mp4 written under a temporary name beside `path` and renamed by `finish`: an
    interrupted run leaves no half-written file under the final name."""

    def __init__(self, path: Path, size: tuple[int, int], rate: Fraction, codec: str) -> None:
        import av

        self.path = path
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._n = 0
        try:  # FFmpeg opens the file only at the first packet: find out now if it can
            self._tmp.touch()
            self._container = av.open(str(self._tmp), "w", format="mp4")
        except (OSError, av.error.FFmpegError) as e:
            self._tmp.unlink(missing_ok=True)
            raise CamsegError(f"cannot write {path} ({_reason(e)})") from None
        stream = self._container.add_stream(codec, rate=rate)
        stream.width, stream.height = size
        # 4:2:0 chroma (what every player takes) needs an even width and height
        even = size[0] % 2 == 0 and size[1] % 2 == 0
        stream.pix_fmt = "yuv420p" if even else "yuv444p"
        stream.codec_context.time_base = 1 / rate
        self._stream = stream

    def write(self, rgb: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = self._n
        self._n += 1
        self._container.mux(self._stream.encode(frame))

    def finish(self) -> None:
        self._container.mux(self._stream.encode(None))
        self._container.close()
        with self._tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(self._tmp, self.path)

    def discard(self) -> None:
        try:
            self._container.close()
        finally:
            self._tmp.unlink(missing_ok=True)


def _save_mask(path: Path, mask: np.ndarray) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", SOFTWARE)  # so a later folder expansion leaves it out
    atomic_write(path, lambda f: Image.fromarray(mask, "L").save(f, format="PNG", pnginfo=info))


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
    reader = _Reader(
        info,
        keep=(lambda i: True) if painted else (lambda i: i % stride == 0),
        ahead=max(AHEAD_FRAMES, 2 * batch_size),
    )
    writers: dict[str, _VideoWriter] = {}
    waiting: list[_Frame] = []
    mask: np.ndarray | None = None

    def paint(fmt: str, image: Image.Image, mask: np.ndarray) -> np.ndarray:
        if fmt == "color":
            return palette[mask]
        return ((np.asarray(image, dtype=np.uint16) + palette[mask]) // 2).astype(np.uint8)

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
                    _save_mask(path, mask)
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
                size = frame.image.size  # type: ignore[union-attr]
                for fmt in painted:
                    path = out / f"{info.name}_{fmt}.mp4"
                    writers[fmt] = _VideoWriter(path, size, info.rate, codec)
            waiting.append(frame)
            in_batch = sum(f.index % stride == 0 for f in waiting)
            held = sum(f.image.width * f.image.height for f in waiting if f.image is not None)
            if in_batch in (0, batch_size) or held > HOLD_PIXELS:
                flush()
        flush()
    except KeyboardInterrupt:  # keep what was written, as after a read error
        for writer in writers.values():
            writer.finish()
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


def _record(frame: _Frame, mask: np.ndarray, info: VideoInfo, codes: list[str]) -> dict:
    counts = np.bincount(mask.ravel(), minlength=len(codes))
    return {
        "video": info.source,
        "frame": frame.index,
        "time": None if frame.time is None else round(frame.time, 3),
        "size": [int(mask.shape[0]), int(mask.shape[1])],
        "outputs": {},
        "shares": {
            c: round(int(n) / mask.size, 6) for c, n in zip(codes, counts, strict=True) if n
        },
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
) -> list[VideoResult]:
    """Segment video sources; write `formats` under `out` as <name>_overlay.mp4,
    <name>_color.mp4 and <name>_frames/<name>_<frame>_mask.png. Every source is opened before
    anything is written; a read error part-way is in its result, not raised."""
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise CamsegError(f"--format {','.join(formats)}: choose from {', '.join(FORMATS)}")
    if stride < 1:
        raise CamsegError(f"--stride must be at least 1, got {stride}")
    if batch_size is not None and batch_size < 1:
        raise CamsegError(f"--batch-size must be at least 1, got {batch_size}")
    dev = resolve_device(device, "--device")
    predict_precision(precision, dev)  # a precision this device cannot run: before any work
    infos = [probe(source) for source in expand_videos(inputs)]
    infos = _unique_names(infos)
    codec = h264_encoder() if {"overlay", "color"} & set(formats) else ""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CamsegError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    seg = Segmenter(model_path, device=device, precision=precision, tta=tta)
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
            )
        )
    return results


def _unique_names(infos: list[VideoInfo]) -> list[VideoInfo]:
    """A source whose output stem an earlier one took gets <stem>-2, -3, ... (as images do)."""
    taken: set[str] = set()
    unique = []
    for info in infos:
        name, k = info.name, 1
        while name.casefold() in taken:
            k += 1
            name = f"{info.name}-{k}"
        taken.add(name.casefold())
        unique.append(dataclasses.replace(info, name=name))
    return unique
