"""camseg.infer.fold: BatchNorm folded into convolutions and in-place ReLUs for inference, the same
network function."""

from __future__ import annotations

import copy

import pytest
import torch
from fastai.vision.learner import create_unet_model
from torch import nn
from torchvision.models import resnet18, resnet50

from camseg.infer.fold import fold_for_inference
from camseg.infer.network import load_network


def _unet(arch, size=(64, 96)) -> nn.Module:
    torch.manual_seed(0)
    model = create_unet_model(arch, 32, size, pretrained=False).eval()
    with torch.no_grad():  # BatchNorms that do something, as trained ones do
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)
    return model


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


# BasicBlock and Bottleneck; the ResNet50 U-Net takes seconds in float64, so the quick loop
# leaves it to the whole suite
@pytest.mark.parametrize("arch", [resnet18, pytest.param(resnet50, marks=pytest.mark.slow)])
def test_folded_unet_computes_the_same(arch):
    model = _unet(arch)
    x = torch.randn(1, 3, 64, 96)  # one image: the ResNet50 in float64 is most of the time
    # The same function, checked in float64 (folded in float64 too): fp32 rounding through 50
    # layers moves the scores by an amount that depends on the CPU's kernels (AVX2 or AVX512).
    exact = copy.deepcopy(model).double()
    folded = copy.deepcopy(exact)
    n = fold_for_inference(folded)
    assert n > 0 and _count(folded, nn.BatchNorm2d) == _count(model, nn.BatchNorm2d) - n
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in folded.modules())
    with torch.no_grad():
        expected, got = exact(x.double()), folded(x.double())
    assert (got - expected).abs().max() <= 1e-9 * expected.abs().max()
    assert torch.equal(got.argmax(1), expected.argmax(1))
    # In fp32, as predict runs it: the same masks but for a rare near-tie.
    folded = copy.deepcopy(model)
    fold_for_inference(folded)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    assert (got.argmax(1) == expected.argmax(1)).float().mean() > 0.999


def test_hooked_modules_are_left_alone():
    seq = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
    seq[1].register_forward_hook(lambda *a: None)
    assert fold_for_inference(seq) == 0
    assert isinstance(seq[1], nn.BatchNorm2d) and not seq[2].inplace


def test_a_model_in_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        fold_for_inference(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)))


def test_inference_folds_and_evaluate_keeps_the_layers(trained_run):
    fast = load_network(trained_run, device="cpu", precision="fp32")
    exact = load_network(trained_run, device="cpu", precision="fp32", exact=True)
    assert _count(fast.model, nn.BatchNorm2d) < _count(exact.model, nn.BatchNorm2d)
    assert fast.channels_last and not exact.channels_last
    x = torch.randn(1, 3, *fast.info.size)
    same = fast.scores(x).argmax(1) == exact.scores(x).argmax(1)
    assert same.float().mean() > 0.999  # float rounding may move a near-tie
