"""Video through PyAV (the optional `video` extra): which inputs are video sources, what their
containers say, frames decoded in a thread ahead of the consumer, and H.264 .mp4 files written
whole or not at all. No model here: camseg.infer.video segments the frames.
"""

from __future__ import annotations

import contextlib
import glob
import os
import queue
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

from camseg.core.atomic import remove_stale_temporaries
from camseg.errors import CamsegError, require_extra
from camseg.infer.outputs import SOFTWARE

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v")
# In order of preference. PyAV's PyPI wheels (av 18.1) bundle libx264; a build without it
# may have Cisco's libopenh264; `h264` is whatever H.264 encoder the build calls its default.
H264_ENCODERS = ("libx264", "libopenh264", "h264")
# FFmpeg ends a truncated file without an error; a video that stops this much before the
# duration its container gives is reported as cut short (an audio track that runs on a little
# longer than the picture stays under it).
SHORT_BY_SECONDS = 0.5

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


@dataclass(frozen=True)
class VideoInfo:
    source: str
    name: str  # output stem
    rate: Fraction  # frames per second, written unchanged
    frames: int | None  # as the container lists them; None when it does not say
    duration: float | None  # seconds, from the container


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
            kept = [p for p in matches if not is_own_video(Path(p))]
            found += kept
            if not kept:
                raise CamsegError(
                    f"{item}: matches only camseg's own earlier outputs; name one to segment it"
                )
        else:
            raise CamsegError(f"{item}: no such file")
    return found


def probe(source: str) -> VideoInfo:
    """Open a source and read what its container says about the first video stream."""
    av = require_extra("av", extra="video", what=f"{source}: reading video")
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


# A display matrix's rotation (degrees counterclockwise, as PyAV's VideoFrame.rotation gives
# it) -> the PIL transpose that shows the frame as players do.
_TURN = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}


def upright(image: Image.Image, rotation: float) -> Image.Image:
    """A decoded frame turned as its container's display matrix says (a phone's portrait video
    is stored sideways with "rotate 90"), as EXIF-rotated photos are read upright."""
    turn = _TURN.get(round(rotation / 90) * 90 % 360) if rotation else None
    return image.transpose(turn) if turn is not None else image


@dataclass
class Frame:
    index: int
    time: float | None  # seconds from the source's timestamps
    image: Image.Image | None  # None: nothing needs this frame's pixels


class FrameReader:
    """Decodes a source in a thread, a bounded queue ahead of the consumer. Frames are RGB at the
    first frame's size; `keep(i)` False: frame i is decoded (H.264 needs every frame) but its
    pixels are not converted or queued."""

    def __init__(self, info: VideoInfo, keep: Callable[[int], bool], ahead: int) -> None:
        self.frames = 0
        self.error: str | None = None
        self._info = info
        self._keep = keep
        self._queue: queue.Queue[Frame | BaseException | None] = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camseg-video-decode", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[Frame]:
        while (item := self._queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _put(self, item: Frame | BaseException | None) -> bool:
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
                        image = upright(
                            frame.to_image()
                            if same
                            else frame.to_image(width=size[0], height=size[1]),
                            frame.rotation,
                        )
                    last = frame.time
                    if not self._put(Frame(self.frames, frame.time, image)):
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


class VideoWriter:
    """An H.264 .mp4 written under a temporary name beside `path` and renamed by `finish`: an
    interrupted run leaves no half-written file under the final name."""

    def __init__(self, path: Path, size: tuple[int, int], rate: Fraction, codec: str) -> None:
        import av

        self.path = path
        remove_stale_temporaries(path)
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._n = 0
        try:  # FFmpeg opens the file only at the first packet: find out now if it can
            self._tmp.touch()
            self._container = av.open(str(self._tmp), "w", format="mp4")
        except (OSError, av.error.FFmpegError) as e:
            self._tmp.unlink(missing_ok=True)
            raise CamsegError(f"cannot write {path} ({_reason(e)})") from None
        self._container.metadata["comment"] = SOFTWARE  # a later folder expansion leaves it out
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

    def finish(self, partial: bool = False) -> Path:
        """Close the file and give it its name; `partial` (the run was stopped): the name of
        `partial_name`, so that an earlier complete output is never replaced by part of one."""
        self._container.mux(self._stream.encode(None))
        self._container.close()
        with self._tmp.open("rb") as f:
            os.fsync(f.fileno())
        target = partial_name(self.path) if partial else self.path
        os.replace(self._tmp, target)
        return target

    def discard(self) -> None:
        """Drop the file (after an error): a failing close (the disk that failed the write) is
        not reported over the error that brought us here."""
        try:
            self._container.close()
        except Exception:
            pass
        finally:
            self._tmp.unlink(missing_ok=True)


def partial_name(path: Path) -> Path:
    """x_overlay.mp4 -> x_overlay.partial.mp4: where a stopped run keeps its frames so far."""
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def is_own_video(path: Path) -> bool:
    """A `<name>_overlay|_color[.partial].mp4` that predict wrote (its container's comment
    says camseg): a later folder expansion leaves it out."""
    stem = path.stem.removesuffix(".partial")
    if path.suffix.lower() != ".mp4" or not stem.endswith(("_overlay", "_color")):
        return False
    try:
        import av

        with av.open(str(path)) as container:
            return container.metadata.get("comment") == SOFTWARE
    except Exception:  # unreadable: an input, reported as unreadable later
        return False
