"""`camseg predict` on videos: an H.264 overlay at the source's size and frame rate, index masks
equal to the image path's for the same decoded pixels, a cut-short video written up to where it
breaks (exit 1), bad inputs as one line (exit 2)."""

from __future__ import annotations

import functools
import http.server
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from camseg.infer.video_io import h264_encoder, is_video_source, output_name

RATE = Fraction(15)


def camvid_frames(camvid_tiny: Path, n: int) -> list[np.ndarray]:
    """n consecutive camvid_tiny frames (96x128 RGB)."""
    paths = sorted((camvid_tiny / "images").glob("*.png"))[:n]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def write_video(
    path: Path, frames: list[np.ndarray], rate: Fraction = RATE, **options: str
) -> Path:
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(h264_encoder(), rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def decoded(source: Path | str) -> tuple[list[np.ndarray], dict]:
    """Every frame of a video as (H, W, 3) RGB, and what its stream says about itself."""
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, {"codec": stream.codec_context.name, "rate": stream.average_rate}


def masks_in(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*_mask.png"))}


@pytest.fixture(scope="module")
def seg(trained_run):
    from camseg import Segmenter

    return Segmenter(trained_run, device="cpu")


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on localhost: (folder, its URL)."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.mark.slow  # trained_run trains
def test_overlay_keeps_size_rate_and_frames_and_masks_equal_the_image_path(
    trained_run, seg, camvid_tiny, tmp_path, cli
):
    video = write_video(tmp_path / "drive.mp4", camvid_frames(camvid_tiny, 12))
    out = tmp_path / "out"
    result = cli("predict", video, "--run", trained_run, "--out", out, "--format", "index,overlay")
    assert result.exit_code == 0, result.output
    assert "12 frames (12 segmented)" in result.stdout and "frames/s" in result.stdout

    frames, stream = decoded(out / "drive_overlay.mp4")
    assert len(frames) == 12 and frames[0].shape == (96, 128, 3)
    assert stream == {"codec": "h264", "rate": RATE}
    # the masks of the decoded frames are the masks Segmenter gives for the same pixels
    inputs, _ = decoded(video)
    masks = masks_in(out / "drive_frames")
    assert list(masks) == [f"drive_{i:06d}_mask.png" for i in range(12)]
    for rgb, mask in zip(inputs, masks.values(), strict=True):
        assert np.array_equal(mask, seg.predict(rgb))
    # the overlay is the frame and the mask's colours half and half (H.264 is lossy)
    expected = (inputs[5].astype(np.int16) + seg.colors[masks["drive_000005_mask.png"]]) // 2
    assert np.abs(frames[5].astype(np.int16) - expected).mean() < 6
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.slow
def test_stride_sources_and_json(trained_run, camvid_tiny, tmp_path, cli, http_folder):
    """--stride N segments frames 0, N, 2N, ...; every frame is still in the overlay. A file, an
    image-sequence pattern and an HTTP stream are read alike."""
    rgb = camvid_frames(camvid_tiny, 7)
    served, url = http_folder
    write_video(served / "clip.mkv", rgb)
    sequence = tmp_path / "seq"
    sequence.mkdir()
    for i, frame in enumerate(rgb):
        Image.fromarray(frame).save(sequence / f"f_{i:04d}.png")
    out = tmp_path / "out"
    sources = [f"{url}/clip.mkv", str(sequence / "f_%04d.png")]
    args = ("--run", trained_run, "--out", out, "--format", "index,overlay", "--stride", "3")
    result = cli("predict", *sources, *args, "--json")
    assert result.exit_code == 0, result.output

    records = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 6 and '"frame": 3' in records[1] and '"shares"' in records[0]
    for name, rate in (("clip", RATE), ("f", 25)):  # an image sequence is 25 frames/s (FFmpeg)
        frames, stream = decoded(out / f"{name}_overlay.mp4")
        assert len(frames) == 7 and frames[0].shape == (96, 128, 3) and stream["rate"] == rate
        assert list(masks_in(out / f"{name}_frames")) == [
            f"{name}_{i:06d}_mask.png" for i in (0, 3, 6)
        ]
    # the image sequence's pixels are the PNGs' own: its masks are predict's masks of them
    images = cli("predict", sequence / "f_0003.png", *args[:4], "--format", "index")
    assert images.exit_code == 0, images.output
    assert np.array_equal(
        np.asarray(Image.open(out / "f_0003_mask.png")),
        masks_in(out / "f_frames")["f_000003_mask.png"],
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("suffix", "options"), [(".mp4", {"movflags": "faststart"}), (".mkv", {})], ids=["mp4", "mkv"]
)
def test_a_cut_short_video_is_written_up_to_the_break(
    trained_run, camvid_tiny, tmp_path, cli, suffix, options
):
    """FFmpeg ends a truncated file quietly; predict writes the frames there are, says the video
    ends early, and exits 1."""
    # 16 frames at 5 frames/s: cut in half, it ends more than SHORT_BY_SECONDS early
    full = write_video(
        tmp_path / f"full{suffix}", camvid_frames(camvid_tiny, 16), Fraction(5), **options
    )
    cut = tmp_path / f"cut{suffix}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    result = cli("predict", cut, "--run", trained_run, "--out", out, "--format", "index,overlay")
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "truncated or corrupt" in errors[0], result.stderr
    frames, _ = decoded(out / "cut_overlay.mp4")
    assert 0 < len(frames) < 16
    assert f"wrote the {len(frames)} frame(s) before it" in errors[0]
    assert len(masks_in(out / "cut_frames")) == len(frames)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_sigterm_keeps_the_frames_written_and_leaves_no_temporary_file(
    trained_run, camvid_tiny, tmp_path, cli
):
    """A scheduler's or `kill`'s SIGTERM is handled as Ctrl-C: the overlay is closed with the
    frames segmented so far (each with its mask) under a name of its own, so that the complete
    overlay an earlier call wrote is not replaced by part of one; nothing half-written is left,
    exit 143."""
    out = tmp_path / "out"
    earlier = write_video(tmp_path / "long.mp4", camvid_frames(camvid_tiny, 4))
    assert cli("predict", earlier, "--run", trained_run, "--out", out).exit_code == 0
    complete = (out / "long_overlay.mp4").read_bytes()
    video = write_video(tmp_path / "long.mp4", camvid_frames(camvid_tiny, 16) * 40)  # 640 frames
    cmd = [sys.executable, "-m", "camseg", "predict", str(video), "--run", str(trained_run)]
    proc = subprocess.Popen(
        [*cmd, "--out", str(out), "--format", "index,overlay", "--exist-ok"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while len(list(out.glob("long_frames/*_mask.png"))) < 8 and proc.poll() is None:
        assert time.time() < deadline, "no mask written in 300 s"
        time.sleep(0.1)
    assert proc.poll() is None, "the video was done before it could be stopped; make it longer"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, (stdout[-2000:], stderr[-2000:])
    assert "camseg: terminated (SIGTERM)" in stderr and "Traceback" not in stderr, stderr
    assert (out / "long_overlay.mp4").read_bytes() == complete
    frames, _ = decoded(out / "long_overlay.partial.mp4")
    assert 8 <= len(frames) < 640
    # a frame's mask is written just before the frame: the signal may fall between the two
    assert len(frames) <= len(masks_in(out / "long_frames")) <= len(frames) + 1
    assert not [p for p in out.rglob(".*")]


def test_video_outputs_are_not_replaced_unasked(trained_run, camvid_tiny, tmp_path, cli):
    clip = write_video(tmp_path / "clip.mp4", camvid_frames(camvid_tiny, 4))
    out = tmp_path / "out"
    assert cli("predict", clip, "--run", trained_run, "--out", out).exit_code == 0
    before = (out / "clip_overlay.mp4").stat().st_mtime_ns
    again = cli("predict", clip, "--run", trained_run, "--out", out)
    assert again.exit_code == 2 and f"{out / 'clip_overlay.mp4'} exists" in again.stderr
    assert (out / "clip_overlay.mp4").stat().st_mtime_ns == before
    replaced = cli("predict", clip, "--run", trained_run, "--out", out, "--exist-ok")
    assert replaced.exit_code == 0, replaced.output


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """A stand-in for --model: these errors come before the model is read."""
    path = tmp_path / "model.pth"
    path.write_bytes(b"")
    return path


@pytest.mark.faults
@pytest.mark.parametrize(
    ("make", "extra", "needle"),
    [
        (lambda d: (d / "x.mp4").write_text("not a video\n"), (), "not a video PyAV can read"),
        (lambda d: None, (), "x.mp4: no such file"),
        (lambda d: (d / "x.mp4").write_text(""), ("--stride", "0"), "--stride must be at least 1"),
        (lambda d: (d / "x.mp4").write_text(""), ("--format", "mask"), "--format mask"),
    ],
    ids=["not-a-video", "missing", "stride-0", "format"],
)
def test_bad_video_inputs_give_one_line(tmp_path, cli, model_file, make, extra, needle):
    make(tmp_path)
    out = tmp_path / "out"
    result = cli("predict", tmp_path / "x.mp4", "--model", model_file, "--out", out, *extra)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and needle in result.stderr, result.stderr
    assert not out.exists()


@pytest.mark.faults
def test_video_without_pyav_says_what_to_install(tmp_path, cli, model_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` fails as if not installed
    (tmp_path / "drive.mp4").write_bytes(b"")
    result = cli("predict", tmp_path / "drive.mp4", "--model", model_file)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1
    assert "needs PyAV" in result.stderr and "pip install 'camseg[video]'" in result.stderr


@pytest.mark.faults
def test_images_and_videos_apart_and_stride_only_for_videos(camvid_tiny, tmp_path, cli, model_file):
    image = camvid_tiny / "images" / "0001TP_006750.png"
    (tmp_path / "drive.mp4").write_bytes(b"")
    mixed = cli("predict", tmp_path / "drive.mp4", image, "--model", model_file)
    assert mixed.exit_code == 2 and "separate predict calls" in mixed.stderr, mixed.output
    stride = cli("predict", image, "--model", model_file, "--stride", "2")
    assert stride.exit_code == 2 and "--stride is for video inputs" in stride.stderr


@pytest.mark.parametrize(
    ("source", "video", "name"),
    [
        ("runs/drive.MP4", True, "drive"),
        ("frames/f_%05d.png", True, "f"),
        ("seq01/%04d.jpg", True, "seq01"),
        ("rtsp://camera.local/live", True, "live"),
        ("frame.png", False, "frame"),
    ],
)
def test_what_counts_as_a_video_and_its_output_name(source, video, name):
    assert is_video_source(source) is video
    assert output_name(source) == name


def _rotated(path: Path, degrees_clockwise: int) -> Path:
    """The video with a display matrix in its track header that says "turn 90 degrees clockwise
    to show" (what a phone writes for a portrait video): the stored frames stay as they were."""
    import struct

    assert degrees_clockwise == 90
    data = bytearray(path.read_bytes())
    matrix = data.find(b"tkhd") + 4 + 40  # version 0 tkhd: the matrix after 40 bytes
    data[matrix : matrix + 36] = struct.pack(">9i", 0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.slow
def test_a_rotated_video_is_segmented_upright(seg, trained_run, camvid_tiny, tmp_path, cli):
    video = _rotated(write_video(tmp_path / "phone.mp4", camvid_frames(camvid_tiny, 3)), 90)
    with av.open(str(video)) as container:
        first = next(container.decode(video=0))
        assert first.rotation == -90  # PyAV: counterclockwise degrees of the display matrix
        stored = first.to_ndarray(format="rgb24")
    out = tmp_path / "out"
    result = cli("predict", video, "--run", trained_run, "--out", out, "--format", "index,overlay")
    assert result.exit_code == 0, result.output
    upright = np.rot90(stored, k=-1)  # turned clockwise, as a player shows it
    mask = masks_in(out / "phone_frames")["phone_000000_mask.png"]
    assert mask.shape == upright.shape[:2] == (128, 96)
    assert np.array_equal(mask, seg.predict(np.ascontiguousarray(upright)))
    frames, _ = decoded(out / "phone_overlay.mp4")
    assert frames[0].shape == (128, 96, 3)


def test_a_video_output_that_is_an_input_is_refused(trained_run, camvid_tiny, tmp_path, cli):
    """x.mp4's overlay is x_overlay.mp4: when the user's own x_overlay.mp4 is also an input in
    that folder, it would be replaced before it is read."""
    clip = write_video(tmp_path / "x.mp4", camvid_frames(camvid_tiny, 2))
    mine = write_video(tmp_path / "x_overlay.mp4", camvid_frames(camvid_tiny, 3))
    before = mine.read_bytes()
    result = cli("predict", clip, mine, "--run", trained_run, "--out", tmp_path, "--exist-ok")
    assert result.exit_code == 2, result.output
    assert f"output {mine.resolve()} would overwrite an input" in result.stderr
    assert result.stderr.count("\n") == 1
    assert mine.read_bytes() == before


@pytest.mark.slow
def test_earlier_video_outputs_are_not_inputs(trained_run, camvid_tiny, tmp_path, cli):
    """A pattern over a folder predict wrote into before leaves its overlays out (they carry
    camseg's comment); a user's own video named x_overlay.mp4 is still an input."""
    write_video(tmp_path / "clip.mp4", camvid_frames(camvid_tiny, 2))
    mine = write_video(tmp_path / "mine_overlay.mp4", camvid_frames(camvid_tiny, 2))
    pattern = str(tmp_path / "*.mp4")
    first = cli("predict", pattern, "--run", trained_run, "--out", tmp_path)
    assert first.exit_code == 0, first.output
    assert (tmp_path / "clip_overlay.mp4").is_file()
    assert (tmp_path / "mine_overlay_overlay.mp4").is_file()  # the user's video was segmented
    again = cli("predict", pattern, "--run", trained_run, "--out", tmp_path, "--exist-ok")
    assert again.exit_code == 0, again.output
    made = sorted(p.name for p in tmp_path.glob("*.mp4"))
    assert made == [
        "clip.mp4",
        "clip_overlay.mp4",
        "mine_overlay.mp4",
        "mine_overlay_overlay.mp4",
    ], made
    assert mine.is_file()


@pytest.mark.faults
def test_full_disk_while_a_video_is_written_is_one_line(trained_run, camvid_tiny, tmp_path, cli):
    """FFmpeg's ENOSPC: one line, the half-written video and its temporary file gone (before:
    av.error.OSError's traceback, a .tmp left, the cleanup's own traceback chained to it)."""
    import errno

    from camseg.infer.video_io import VideoWriter

    clip = write_video(tmp_path / "clip.mp4", camvid_frames(camvid_tiny, 4))
    real = VideoWriter.write
    calls = {"n": 0}

    def full(self, rgb):
        calls["n"] += 1
        if calls["n"] == 2:
            raise av.error.OSError(errno.ENOSPC, "No space left on device", str(self._tmp))
        return real(self, rgb)

    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(VideoWriter, "write", full)
        result = cli("predict", clip, "--run", trained_run, "--out", out)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "No space left on device" in result.stderr
    assert "Traceback" not in result.output
    assert [p.name for p in out.iterdir()] == ["legend.png"]  # the video itself is gone
