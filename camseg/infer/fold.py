"""Inference-only rewrites of a network in eval mode that keep what it computes: each BatchNorm
that directly follows a convolution is folded into the convolution's weights and bias, and a ReLU
that directly follows a convolution or BatchNorm in a Sequential works in place. Together they
drop one pass over each such activation map and its allocation (`scripts/bench.py predict`).

Only pairs whose wiring is certain are touched: neighbours in an nn.Sequential (fastai's
ConvLayer, torchvision's downsample, the encoder's stem) and torchvision's BasicBlock and
Bottleneck (conv1/bn1, ...). A module with hooks (fastai's U-Net reads its skip connections
through forward hooks) is never replaced. A BatchNorm on its own (the U-Net's on the skip
connections) stays as it is.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.models.resnet import BasicBlock, Bottleneck


def fold_for_inference(model: nn.Module) -> int:
    """Fold BatchNorms into the convolutions before them and make safe ReLUs in place, in the
    model itself (which must be in eval mode). Returns the number of BatchNorms folded."""
    if model.training:
        raise ValueError("fold_for_inference needs a model in eval mode")
    folded = 0
    with torch.no_grad():
        for module in list(model.modules()):
            if isinstance(module, nn.Sequential):
                folded += _fold_sequential(module)
            elif type(module) in (BasicBlock, Bottleneck):
                for i in (1, 2, 3):
                    conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
                    if _foldable(conv, bn):
                        _fold(conv, bn)
                        setattr(module, f"bn{i}", nn.Identity())
                        folded += 1
    return folded


def _fold_sequential(seq: nn.Sequential) -> int:
    folded = 0
    names = list(seq._modules)
    for a, b in itertools.pairwise(names):
        if _foldable(seq._modules[a], seq._modules[b]):
            _fold(seq._modules[a], seq._modules[b])  # type: ignore[arg-type]
            seq._modules[b] = nn.Identity()
            folded += 1
    # a ReLU right after a convolution or BatchNorm (or what a fold left of them) gets a fresh
    # tensor that nothing else reads: it may overwrite it
    previous: nn.Module | None = None
    for name in names:
        m = seq._modules[name]
        if isinstance(m, nn.Identity):
            continue
        if (
            type(m) is nn.ReLU
            and isinstance(previous, nn.Conv2d | nn.BatchNorm2d)
            and not _hooked(previous)  # a hook may keep the tensor the ReLU would overwrite
            and not _hooked(m)
        ):
            m.inplace = True
        previous = m
    return folded


def _foldable(conv: object, bn: object) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(bn) is nn.BatchNorm2d
        and bn.running_mean is not None  # None without track_running_stats: batch statistics
        and bn.num_features == conv.out_channels
        and not _hooked(conv)
        and not _hooked(bn)
    )


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    assert bn.running_mean is not None and bn.running_var is not None
    weight, bias = fuse_conv_bn_weights(
        conv.weight,
        conv.bias,
        bn.running_mean,
        bn.running_var,
        bn.eps,
        bn.weight,
        bn.bias,
    )
    conv.weight, conv.bias = weight, bias
