"""Big photos in `camseg predict`: class scores upsampled in row bands give the masks of one
whole-image upsampling, memory follows the model's size rather than the photo's, and a plain RGB
file read straight into PIL is the image load_rgb gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import camseg.infer.api
from camseg.data.files import load_rgb, open_rgb
from camseg.infer.network import mask_in_bands, to_model_input
from camseg.infer.predict import MAX_PIXELS, predict
from camseg.model.files import read_model_file

FRAME = "0016E5_07973.png"


def _whole_image_scores(logits: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """What predict did for every image before bands: one F.interpolate at full resolution."""
    return F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]


def _assert_same_mask(mask: np.ndarray, scores: torch.Tensor) -> None:
    """mask equals the argmax of the whole-image scores. Float rounding differs between one
    F.interpolate call and the bands (ATen's kernels sum in other orders), so a pixel whose two
    best classes score within 1e-5 may go either way; there has been none on these frames."""
    differ = mask != scores.argmax(dim=0).numpy()
    if differ.any():
        top2 = scores[:, torch.from_numpy(differ)].topk(2, dim=0).values
        assert (top2[0] - top2[1] < 1e-5).all(), "bands changed a pixel that is not a near-tie"
        assert differ.sum() <= 1e-5 * differ.size, int(differ.sum())


@pytest.fixture(scope="module")
def logits(trained_run, camseq01_sample) -> torch.Tensor:
    """Real class scores of one CamSeq01 frame, channels-last as predict's network returns them."""
    mf = read_model_file(trained_run / "model.pth")
    model = mf.build().eval().to(memory_format=torch.channels_last)
    x = to_model_input(Image.open(camseq01_sample / "CamSeq01_Raw" / FRAME).convert("RGB"), mf)
    with torch.inference_mode():
        return model(x[None].contiguous(memory_format=torch.channels_last))[0]


@pytest.mark.slow
@pytest.mark.parametrize("size", [(97, 131), (1001, 777), (720, 960)])
def test_bands_give_the_mask_of_the_whole_image(logits, size):
    h, w = size
    scores = _whole_image_scores(logits, h, w)
    masks = [mask_in_bands(logits, h, w, rows).numpy() for rows in (1, 7, h)]
    # every pixel's arithmetic is the same whatever the band: exactly equal
    assert all(np.array_equal(masks[0], m) for m in masks[1:])
    _assert_same_mask(masks[0], scores)


@pytest.mark.slow
def test_normal_frames_as_before(trained_run, camseq01_sample, tmp_path, monkeypatch):
    """960x720 frames fit in one piece: the very computation predict always did."""
    seen = _spy_on_masks(monkeypatch)
    predict([str(camseq01_sample / "CamSeq01_Raw")], trained_run, tmp_path, formats=("index",))
    assert len(seen) == 4
    for lg, h, w, mask in seen:
        assert np.array_equal(mask, _whole_image_scores(lg, h, w).argmax(dim=0).numpy())


@pytest.mark.slow
def test_big_photo_in_bands_with_bounded_memory(
    trained_run, camseq01_sample, tmp_path, monkeypatch
):
    """A 3000x2000 JPEG: its scores at full resolution are 768 MB, and predict's peak RSS
    grew by 1.7 GB before bands; now by the photo, its mask and a few 32 MB bands (180 MB
    measured). Masks as from one whole-image upsampling."""
    status = Path("/proc/self/status")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM), Linux >= 4.0
    except OSError:
        pytest.skip("needs Linux's /proc/self/clear_refs to measure the peak RSS")

    def rss_mb(key: str) -> float:
        line = next(x for x in status.read_text().splitlines() if x.startswith(key))
        return int(line.split()[1]) / 1024

    frame = Image.open(camseq01_sample / "CamSeq01_Raw" / FRAME).convert("RGB")
    photo = tmp_path / "photo.jpg"
    frame.resize((3000, 2000), Image.BILINEAR).save(photo, quality=90)
    warm = tmp_path / "warm.jpg"
    frame.save(warm)
    predict([str(warm)], trained_run, tmp_path / "warm")  # imports, allocator, model building

    seen = _spy_on_masks(monkeypatch)
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_mb("VmRSS")
    predict([str(photo)], trained_run, tmp_path / "out")
    growth = rss_mb("VmHWM") - before
    assert growth < 600, f"peak RSS grew by {growth:.0f} MB"  # less than the scores alone

    [(lg, h, w, mask)] = seen
    assert (h, w) == (2000, 3000)
    written = np.asarray(Image.open(tmp_path / "out" / "photo_mask.png"))
    assert np.array_equal(written, mask)
    _assert_same_mask(written, _whole_image_scores(lg, h, w))


def _spy_on_masks(monkeypatch) -> list:
    """(logits, h, w, mask) of every `class_mask` call predict makes."""
    seen = []
    real = camseg.infer.api.class_mask

    def spy(logits, h, w):
        mask = real(logits, h, w)
        seen.append((logits.clone(), h, w, mask.cpu().numpy()))
        return mask

    monkeypatch.setattr(camseg.infer.api, "class_mask", spy)
    return seen


def test_rgb_files_read_as_load_rgb_reads_them(camvid_tiny, tmp_path):
    """open_rgb decodes plain RGB files itself (no copies): same pixels as load_rgb, EXIF turns
    included."""
    src = Image.open(camvid_tiny / "images" / "0001TP_006750.png").convert("RGB")
    src.save(tmp_path / "plain.png")
    src.save(tmp_path / "photo.jpg", quality=90)
    for orientation in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        src.save(tmp_path / f"turned{orientation}.jpg", exif=exif.tobytes())
    src.convert("L").save(tmp_path / "grey.png")  # not RGB: through load_rgb itself
    for path in sorted(tmp_path.iterdir()):
        assert np.array_equal(np.asarray(open_rgb(path, MAX_PIXELS)), load_rgb(path)), path.name
    assert open_rgb(tmp_path / "turned6.jpg", MAX_PIXELS).size == (96, 128)


@pytest.mark.parametrize("size", [(6, 8), (12, 16)])  # the model's size, and upsampled
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_class_mask_takes_the_first_of_tied_classes(size, dtype):
    """bf16 scores tie often; the mask must take the first class, as argmax does."""
    from camseg.infer.network import class_mask

    scores = torch.zeros(1, 32, 6, 8, dtype=dtype)
    scores[:, [3, 7, 20]] = 1.0  # three classes tie everywhere
    scores = scores.contiguous(memory_format=torch.channels_last)  # as the network gives them
    mask = class_mask(scores.float()[0], *size)
    assert mask.shape == size and bool((mask == 3).all())
    assert torch.equal(
        class_mask(torch.zeros(32, 6, 8), *size), torch.zeros(size, dtype=torch.uint8)
    )
