"""`camseg predict`: full-resolution masks, every kind of input image, bad files skipped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from camseg.data.files import camvid_palette as palette

# trained_run trains; the network rebuilt at two sizes takes 8 s each
pytestmark = pytest.mark.slow


def _palette_set(codes: list[str]) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in c) for c in palette(codes)}


def test_predict_camseq01_frames_at_full_resolution(trained_run, camseq01_sample, tmp_path, cli):
    from camseg.model.files import read_model_file

    out = tmp_path / "pred"
    frames = camseq01_sample / "CamSeq01_Raw"
    result = cli("predict", frames, "--run", trained_run, "--out", out, "--batch-size", "3")
    assert result.exit_code == 0, result.output
    codes = read_model_file(trained_run / "model.pth").codes
    allowed = _palette_set(codes)
    for frame in sorted(frames.iterdir()):
        mask = Image.open(out / f"{frame.stem}_mask.png")
        assert mask.mode == "L" and mask.size == (960, 720)
        assert np.asarray(mask).max() < 32
        colour = np.asarray(Image.open(out / f"{frame.stem}_color.png").convert("RGB"))
        assert colour.shape == (720, 960, 3)
        assert {tuple(c) for c in np.unique(colour.reshape(-1, 3), axis=0)} <= allowed
        assert Image.open(out / f"{frame.stem}_overlay.png").size == (960, 720)
        # the colour image is the index mask through the CamVid palette
        assert (palette(codes)[np.asarray(mask)] == colour).all()


def test_predict_odd_inputs_and_a_broken_file(trained_run, camvid_tiny, tmp_path, cli):
    src = np.asarray(Image.open(camvid_tiny / "images" / "0001TP_006750.png").convert("RGB"))
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(src).convert("RGBA").save(inputs / "rgba.png")
    Image.fromarray(src).convert("L").save(inputs / "grey.png")
    grey16 = np.asarray(Image.fromarray(src).convert("L")).astype(np.uint16) * 257
    Image.fromarray(grey16).save(inputs / "sixteen.png")
    Image.fromarray(src).save(inputs / "photo.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(src).save(inputs / "rotated.jpg", exif=exif.tobytes())
    Image.fromarray(src).convert("CMYK").save(inputs / "print.jpg")
    Image.fromarray(src).save(inputs / "scan.tif")
    Image.fromarray(src).save(inputs / "web.webp")
    Image.fromarray(src).save(inputs / "anim.gif")  # not an image suffix predict takes
    good = (inputs / "rgba.png").read_bytes()
    (inputs / "broken.png").write_bytes(good[: len(good) // 3])

    out = tmp_path / "out"
    result = cli("predict", inputs, "--run", trained_run, "--out", out, "--json")
    assert result.exit_code == 1  # something was skipped
    assert "broken.png" in result.stderr and "1 of 9 input(s) could not be read" in result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["image"].rsplit("/", 1)[-1] for r in records) == [
        "grey.png",
        "photo.jpg",
        "print.jpg",
        "rgba.png",
        "rotated.jpg",
        "scan.tif",
        "sixteen.png",
        "web.webp",
    ]
    for r in records:
        assert abs(sum(r["shares"].values()) - 1) < 1e-3
    for stem in ("rgba", "grey", "sixteen", "photo", "print", "scan", "web"):
        assert Image.open(out / f"{stem}_mask.png").size == (128, 96)
    assert Image.open(out / "rotated_mask.png").size == (96, 128)  # EXIF rotation applied
    assert not (out / "broken_mask.png").exists()


def test_predict_never_writes_over_an_input(trained_run, camvid_tiny, tmp_path, cli):
    folder = tmp_path / "frames"
    folder.mkdir()
    frame = camvid_tiny / "images" / "0001TP_006750.png"
    (folder / "a.png").write_bytes(frame.read_bytes())
    (folder / "a_mask.png").write_bytes(frame.read_bytes())
    before = (folder / "a_mask.png").read_bytes()
    result = cli("predict", folder, "--run", trained_run, "--out", folder)
    assert result.exit_code == 2 and "would overwrite an input" in result.stderr
    assert (folder / "a_mask.png").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "a_mask.png"]


def test_predict_default_out_and_glob(run_copy, camvid_tiny, cli):
    pattern = str(camvid_tiny / "images" / "0006R0_f0*.png")
    result = cli("predict", pattern, "--run", run_copy, "--format", "index")
    assert result.exit_code == 0, result.output
    written = sorted((run_copy / "predictions").glob("*_mask.png"))
    assert len(written) == 13 and not list((run_copy / "predictions").glob("*_color.png"))


def test_predict_never_replaces_earlier_outputs_unasked(run_copy, camvid_tiny, tmp_path, cli):
    frame = camvid_tiny / "images" / "0001TP_006750.png"
    first = cli("predict", frame, "--run", run_copy, "--format", "index")
    assert first.exit_code == 0, first.output
    mask = run_copy / "predictions" / "0001TP_006750_mask.png"
    before = mask.stat().st_mtime_ns
    second = cli("predict", frame, "--run", run_copy, "--format", "index")
    assert second.exit_code == 0, second.output
    assert f"to {run_copy / 'predictions-2'}" in second.stdout  # a new folder for each call
    assert (run_copy / "predictions-2" / mask.name).is_file()
    assert mask.stat().st_mtime_ns == before
    # into a folder of one's own: the same names again need --exist-ok
    out = tmp_path / "out"
    assert cli("predict", frame, "--run", run_copy, "--out", out).exit_code == 0
    again = cli("predict", frame, "--run", run_copy, "--out", out)
    assert again.exit_code == 2 and again.stderr.count("\n") == 1, again.output
    assert f"{out / '0001TP_006750_mask.png'} exists" in again.stderr
    assert "--exist-ok" in again.stderr
    replaced = cli("predict", frame, "--run", run_copy, "--out", out, "--exist-ok")
    assert replaced.exit_code == 0, replaced.output
    # an unreadable input alone writes nothing: no empty default folder is left
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert cli("predict", bad, "--run", run_copy).exit_code == 1
    assert not (run_copy / "predictions-3").exists()


def test_predict_errors(trained_run, camvid_tiny, tmp_path, cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("predict", empty, "--run", trained_run)
    assert r.exit_code == 2 and "folder has no images" in r.stderr
    r = cli("predict", str(tmp_path / "*.png"), "--run", trained_run)
    assert r.exit_code == 2 and "pattern matches no files" in r.stderr
    r = cli("predict", camvid_tiny / "images" / "0001TP_006750.png", "--run", tmp_path)
    assert r.exit_code == 2 and "no model.pth" in r.stderr


def test_fast_precision_agrees_with_fp32(trained_run, camvid_tiny, tmp_path):
    """bf16 (auto's choice on CPUs that have it: the whole network in bf16) labels nearly
    every pixel as fp32 does."""
    from camseg.infer.predict import predict

    frames = sorted((camvid_tiny / "images").glob("0016E5_0*.png"))[:6]
    a = predict([str(p) for p in frames], trained_run, tmp_path / "a", precision="fp32")
    b = predict(
        [str(p) for p in frames], trained_run, tmp_path / "b", precision="bf16", batch_size=3
    )
    assert len(a.written) == len(b.written) == 6
    same = [
        (
            np.asarray(Image.open(tmp_path / "a" / f"{p.stem}_mask.png"))
            == np.asarray(Image.open(tmp_path / "b" / f"{p.stem}_mask.png"))
        ).mean()
        for p in frames
    ]
    assert min(same) >= 0.99, same


@pytest.mark.parametrize("size", [(64, 96), (50, 70)])
def test_rebuilt_network_equals_one_built_at_the_training_size(size, tmp_path, camvid_tiny):
    """model.pth is rebuilt with a small stand-in size for fastai's layout pass: same network."""
    from fastai.vision.learner import create_unet_model
    from torchvision.models import resnet18

    from camseg.config.schema import ModelConfig
    from camseg.model.files import model_meta, read_model_file, write_model_file

    codes = (camvid_tiny / "codes.txt").read_text().split()
    torch.manual_seed(0)
    original = create_unet_model(resnet18, 32, size, pretrained=False).eval()
    meta = model_meta(ModelConfig(arch="resnet18", pretrained=False), codes, size)
    write_model_file(tmp_path / "model.pth", original, meta)
    rebuilt = read_model_file(tmp_path / "model.pth").build().eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), original(x))


def test_model_file_is_rebuilt_around_its_own_tensors(trained_run):
    """Built on the meta device and given the file's tensors: nothing randomly initialised and
    then overwritten, and nothing left without a value."""
    from camseg.model.files import read_model_file

    mf = read_model_file(trained_run / "model.pth")
    model = mf.build()
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    ours = model.state_dict()
    assert all(ours[k].data_ptr() == v.data_ptr() for k, v in mf.state_dict.items())


def test_predict_precision_option_sets_the_network_dtype(
    trained_run, camvid_tiny, tmp_path, cli, network_spy
):
    from camseg.core.device import cpu_has_bf16

    frame = camvid_tiny / "images" / "0001TP_006750.png"

    def run(name: str):
        network_spy.clear()
        on_cpu = ["--run", trained_run, "--device", "cpu"]
        return cli("predict", frame, *on_cpu, "--precision", name, "--out", tmp_path / name)

    auto = torch.bfloat16 if cpu_has_bf16() else torch.float32
    for name, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16), ("auto", auto)]:
        r = run(name)
        assert r.exit_code == 0, r.output
        assert {dt for dt, _, _ in network_spy} == {dtype}, name
        assert (tmp_path / name / "0001TP_006750_mask.png").is_file()
    r = run("fp16")
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [
        "camseg: error: --precision fp16: fp16 (autocast) needs a CUDA device, not cpu; "
        "choose auto, fp32, bf16"
    ]
    assert not (tmp_path / "fp16").exists()


def test_predict_batch_size_tta_and_device(trained_run, camvid_tiny, tmp_path, cli, network_spy):
    frames = [str(p) for p in sorted((camvid_tiny / "images").glob("0006R0_f0*.png"))[:3]]

    def run(out: str, *extra: str):
        network_spy.clear()
        return cli("predict", *frames, "--run", trained_run, "--out", tmp_path / out, *extra)

    r = run("a", "--device", "cpu", "--batch-size", "2", "--format", "index")
    assert r.exit_code == 0, r.output
    assert [(dev, shape[0]) for _, dev, shape in network_spy] == [("cpu", 2), ("cpu", 1)]

    r = run("b", "--device", "cpu", "--batch-size", "2", "--format", "index", "--tta")
    assert r.exit_code == 0, r.output
    # each batch runs twice: as it is and mirrored
    assert [shape[0] for _, _, shape in network_spy] == [2, 2, 1, 1]
    assert len(list((tmp_path / "b").glob("*_mask.png"))) == 3

    r = run("c", "--batch-size", "0")
    assert r.exit_code == 2 and "--batch-size must be at least 1" in r.stderr

    r = run("d", "--device", "cuda", "--format", "index")
    if torch.cuda.is_available():
        assert r.exit_code == 0 and {dev for _, dev, _ in network_spy} == {"cuda"}
    else:
        assert r.exit_code == 2 and "CUDA is not available" in r.stderr


def test_predict_with_a_model_file(trained_run, camvid_tiny, tmp_path, cli):
    """--model works without the run folder; the default --out is beside the file."""
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "net.pth").write_bytes((trained_run / "model.pth").read_bytes())
    frame = camvid_tiny / "images" / "0001TP_006750.png"
    r = cli("predict", frame, "--model", folder / "net.pth", "--format", "color")
    assert r.exit_code == 0, r.output
    written = sorted(p.name for p in (folder / "predictions").iterdir())
    assert written == ["0001TP_006750_color.png", "legend.png"]
    both = cli("predict", frame, "--model", folder / "net.pth", "--run", trained_run)
    assert both.exit_code == 2 and "--run" in both.stderr and "--model" in both.stderr
