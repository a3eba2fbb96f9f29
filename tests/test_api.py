"""The Python API: `from camseg import Segmenter` segments paths, PIL images and arrays at their
own size, with the masks `camseg predict` writes."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from camseg import CamsegError, Segmenter

pytestmark = pytest.mark.slow  # trained_run trains

FRAME = "0016E5_07973.png"


@pytest.fixture(scope="module")
def seg(trained_run) -> Segmenter:
    return Segmenter(trained_run, device="cpu")


def test_path_pil_and_array_give_the_masks_predict_writes(
    seg, trained_run, camseq01_sample, tmp_path, cli
):
    path = camseq01_sample / "CamSeq01_Raw" / FRAME
    pil = Image.open(path).convert("RGB")
    by_path = seg.predict(path)
    assert by_path.shape == (720, 960) and by_path.dtype == np.uint8
    assert np.array_equal(seg.predict(str(path)), by_path)
    assert np.array_equal(seg.predict(pil), by_path)
    assert np.array_equal(seg.predict(np.asarray(pil)), by_path)
    assert by_path.max() < len(seg.classes) == 32

    written = cli("predict", path, "--run", trained_run, "--out", tmp_path, "--format", "index")
    assert written.exit_code == 0, written.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / f"{path.stem}_mask.png")), by_path)


def test_color_and_scores_outputs(seg, camseq01_sample):
    frame = Image.open(camseq01_sample / "CamSeq01_Raw" / FRAME).convert("RGB").resize((200, 150))
    mask = seg.predict(frame)
    assert mask.shape == (150, 200)
    color = seg.predict(frame, output="color")
    assert color.shape == (150, 200, 3) and np.array_equal(color, seg.colors[mask])
    scores = seg.predict(frame, output="scores")
    assert scores.shape == (32, 150, 200) and scores.dtype == np.float32
    assert np.allclose(scores.sum(axis=0), 1, atol=1e-4)
    assert (scores.argmax(axis=0) == mask).mean() > 0.9999  # ties may fall either way


def test_overlay_output_is_what_predict_writes(seg, trained_run, camseq01_sample, tmp_path, cli):
    path = camseq01_sample / "CamSeq01_Raw" / FRAME
    got = seg.predict(path, output="overlay")
    assert got.shape == (720, 960, 3) and got.dtype == np.uint8
    written = cli("predict", path, "--run", trained_run, "--out", tmp_path, "--format", "overlay")
    assert written.exit_code == 0, written.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / f"{path.stem}_overlay.png")), got)


def test_batch_of_images_of_different_sizes(seg, camseq01_sample):
    frame = Image.open(camseq01_sample / "CamSeq01_Raw" / FRAME).convert("RGB")
    small, big = frame.resize((128, 96)), frame.resize((640, 480))
    masks = seg.predict_batch([small, big])
    assert [m.shape for m in masks] == [(96, 128), (480, 640)]
    assert np.array_equal(masks[0], seg.predict(small))
    assert seg.predict_batch([]) == []


def test_what_the_model_is(seg, trained_run):
    from camseg.model.files import read_model_file

    mf = read_model_file(trained_run / "model.pth")
    assert seg.classes == mf.codes and seg.size == mf.size
    assert seg.colors.shape == (32, 3) and str(seg.device) == "cpu"
    assert seg.precision in ("fp32", "bf16")
    assert seg.model_path == trained_run / "model.pth" and seg.arch == "resnet18"
    h, w = mf.size
    assert repr(seg) == (
        f"Segmenter(model_path='{trained_run / 'model.pth'}', arch='resnet18', classes=32, "
        f"size={h}x{w}, device='cpu', precision='{seg.precision}', runtime='pytorch')"
    )


def test_loading_a_model_prints_no_third_party_warning(trained_run):
    code = f"from camseg import Segmenter; Segmenter({str(trained_run)!r}, device='cpu')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("image", "needle"),
    [
        (np.zeros((8, 8, 2), np.uint8), r"\(H, W\) grey or \(H, W, 3\) RGB"),
        (np.zeros((8, 8, 3), np.float32), r"must be uint8 \(or uint16 grey\), got \(8, 8, 3\)"),
        (np.zeros((0, 0, 3), np.uint8), r"shape \(0, 0, 3\) has nothing to segment"),
        (Image.new("RGB", (0, 5)), "0x5 pixels has nothing to segment"),
        ("no/such/frame.png", "no such image file"),
        (42, "cannot segment a int"),
    ],
)
def test_bad_images_are_one_clear_error(seg, image, needle):
    with pytest.raises(CamsegError, match=needle):
        seg.predict(image)
    with pytest.raises(CamsegError, match="output 'mask'"):
        seg.predict(np.zeros((8, 8, 3), np.uint8), output="mask")  # type: ignore[arg-type]


def test_predict_batch_of_one_path_is_refused(seg):
    with pytest.raises(CamsegError, match="takes a list of images; for one image use predict"):
        seg.predict_batch("frame.png")  # type: ignore[arg-type]


def test_pil_images_and_arrays_are_read_as_files_are(seg, trained_run, tmp_path):
    """A 16-bit grey PNG and an EXIF-rotated JPEG give the same mask whether the API is given
    the path, the opened PIL image or (16-bit) the array: one reader for all three."""
    src = Image.open(next(iter(sorted(_frames(trained_run))))).convert("RGB")
    grey16 = np.asarray(src.convert("L")).astype(np.uint16) * 257
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    by_path = seg.predict(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    assert np.array_equal(seg.predict(Image.open(tmp_path / "g16.png")), by_path)
    assert np.array_equal(seg.predict(grey16), by_path)
    # 8-bit grey of the same picture: what the 16-bit one scales to
    assert np.array_equal(seg.predict(np.asarray(src.convert("L"))), by_path)

    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown turned 90 degrees
    src.save(tmp_path / "turned.jpg", exif=exif)
    by_path = seg.predict(tmp_path / "turned.jpg")
    assert by_path.shape == (src.width, src.height)
    opened = Image.open(tmp_path / "turned.jpg")
    assert np.array_equal(seg.predict(opened), by_path)
    assert opened.size == (src.width, src.height)  # the caller's image is left as it was

    rgba = np.dstack([np.asarray(src), np.full((src.height, src.width), 7, np.uint8)])
    assert np.array_equal(seg.predict(rgba), seg.predict(src))


def _frames(run):
    from camseg.config.load import load_config

    return sorted((load_config(run / "config.yaml").data.root / "images").iterdir())[:40]


def test_one_segmenter_shared_by_two_threads_gives_the_single_thread_scores(seg, trained_run):
    """fastai's U-Net keeps each call's skip features in hooks shared by every call; without
    the network's lock two threads mix their images (the probe: 93.6% mask agreement)."""
    import threading

    frames = _frames(trained_run)
    alone = [seg.predict(f, output="scores") for f in frames]
    shared: list = [None] * len(frames)
    start = threading.Barrier(2)

    def work(k: int) -> None:
        start.wait()
        for i in range(k, len(frames), 2):
            shared[i] = seg.predict(frames[i], output="scores")

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    differ = [
        f.name for f, a, b in zip(frames, alone, shared, strict=True) if not np.array_equal(a, b)
    ]
    assert differ == []


def test_no_model_and_no_runs_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CamsegError, match="no finished run under runs"):
        Segmenter()


def test_import_camseg_does_not_load_torch():
    code = "import sys, camseg; assert 'torch' not in sys.modules; camseg.Segmenter; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# What a notebook that uses camseg can see of the process: the settings camseg's commands change
# (cuDNN's kernel search, the matplotlib backend, Pillow's pixel limit, glibc's heap policy).
PROCESS_STATE = """
import json, sys
import matplotlib, torch
from PIL import Image
import camseg.core.heap


def state():
    return {
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
        "cudnn.deterministic": torch.backends.cudnn.deterministic,
        # the backend as set, without resolving it (get_backend() would choose one)
        "matplotlib backend": str(dict.__getitem__(matplotlib.rcParams, "backend")),
        "MAX_IMAGE_PIXELS": Image.MAX_IMAGE_PIXELS,
        "heap tuned": camseg.core.heap._applied,
    }


before = state()
from camseg import Segmenter
import camseg.report.plots, camseg.report.page, camseg.infer.evaluate, camseg.infer.predict

seg = Segmenter(sys.argv[1], device="cpu", tune_process=sys.argv[2] == "tune")
seg.masks([Image.open(sys.argv[3]).convert("RGB")])
seg.predict(sys.argv[3], output="overlay")
print(json.dumps({"before": before, "after": state()}))
"""


def _process_state(run, image, mode):
    proc = subprocess.run(
        [sys.executable, "-c", PROCESS_STATE, str(run), mode, str(image)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_the_library_leaves_the_process_alone(trained_run, camvid_tiny):
    image = next((camvid_tiny / "images").glob("*.png"))
    seen = _process_state(trained_run, image, "plain")
    assert seen["after"] == seen["before"]
    assert seen["before"]["heap tuned"] is False
    # the opt-in is what the CLI's commands use: here it changes the heap policy
    tuned = _process_state(trained_run, image, "tune")
    changed = {k for k in tuned["after"] if tuned["after"][k] != tuned["before"][k]}
    assert changed == ({"heap tuned"} if platform.libc_ver()[0] == "glibc" else set())
