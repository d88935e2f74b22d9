"""Shared CNN models and data for the int8 convolution benchmarks, tests and demo (issue 12).

Not public API: the benchmark (``benchmarks/bench_conv.py``), the accuracy tests
(``tests/python/test_cnn_accuracy.py``) and ``q8-demo`` build their models here so that
they measure the same networks.

* :func:`resnet_style`: a ResNet-style network of conv3x3-BN-ReLU blocks (BasicBlocks with an
  identity or 1x1-conv-BN shortcut, ReLU after the add), 32 -> 64 -> 128 -> 256 channels.
* :func:`mobilenetv2_style`: a MobileNetV2-style network of inverted residual blocks
  (1x1 expand-BN-ReLU6, depthwise 3x3-BN-ReLU6, 1x1 project-BN, residual add when the
  stride is 1 and the channel counts match), then a 1x1 conv to a wider head.
* :func:`digits_loaders`: scikit-learn's digits (1797 8x8 images, bundled, no download)
  upscaled to 3 x S x S, with the q8-demo's fixed stratified split and standardization.

Every model is a plain ``nn.Module`` of ``Conv2d`` / ``BatchNorm2d`` / ``ReLU`` / ``ReLU6`` /
``Linear`` modules with one module instance per use (no shared activations), and a
``forward`` that ``torch.fx`` traces (residual adds are ``out + identity``). torch.ao's FX
quantization (``prepare_fx`` / ``convert_fx`` with the x86 or fbgemm qconfig mapping) and
q8's workflow (``prepare`` / ``convert`` / ``prepare_qat``, conv-BN fusion, ``q8.lower``)
both accept them.

At the default widths, float32 batch 16 x 3 x 64 x 64 takes some tens of milliseconds on
two threads of the 2-core dev machine (about 1 GFLOP for the ResNet-style network,
about 0.5 GFLOP for the MobileNetV2-style network; counts at the bottom of the file).
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "BasicBlock",
    "InvertedResidual",
    "ResNetStyle",
    "MobileNetV2Style",
    "resnet_style",
    "mobilenetv2_style",
    "digits_data",
    "digits_loaders",
    "conv_flops",
]


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> List[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the identity (or a 1x1 conv-BN when the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: Optional[nn.Sequential] = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(*_conv_bn(cin, cout, 1, stride))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return self.relu2(out)


class ResNetStyle(nn.Module):
    """stem conv3x3 (stride 2)-BN-ReLU, four stages of BasicBlocks (width, 2x, 4x, 8x channels;
    stride 2 from the second stage on), global average pool, linear head."""

    def __init__(self, num_classes: int = 10, width: int = 32, blocks: Sequence[int] = (1, 1, 1, 1),
                 in_channels: int = 3, stem_stride: int = 2):
        super().__init__()
        if len(blocks) != 4:
            raise ValueError(f"ResNetStyle: blocks must hold 4 stage depths, got {tuple(blocks)}")
        self.stem = nn.Sequential(*_conv_bn(in_channels, width, 3, stem_stride), nn.ReLU())
        stages = []
        cin = width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            layers = []
            for j in range(n):
                layers.append(BasicBlock(cin, cout, stride=2 if (i > 0 and j == 0) else 1))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.pool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU6 (skipped when expand_ratio == 1), depthwise 3x3-BN-ReLU6, 1x1 project-BN,
    plus the input when stride == 1 and cin == cout (no activation after the add, as in MobileNetV2)."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = cin * expand_ratio
        self.use_residual = stride == 1 and cin == cout
        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers += _conv_bn(cin, hidden, 1) + [nn.ReLU6()]
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden) + [nn.ReLU6()]
        layers += _conv_bn(hidden, cout, 1)
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


# (expand ratio t, output channels c, repeats n, first stride s), as in MobileNetV2's table,
# shortened for 64x64 inputs.
_MBV2_SETTINGS: Tuple[Tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 2, 2),
    (6, 64, 2, 2),
    (6, 96, 1, 1),
    (6, 160, 1, 2),
)


class MobileNetV2Style(nn.Module):
    """stem conv3x3 (stride 2)-BN-ReLU6, inverted residual blocks, 1x1 conv-BN-ReLU6 to ``head``
    channels, global average pool, linear head."""

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, head: int = 640,
                 settings: Sequence[Tuple[int, int, int, int]] = _MBV2_SETTINGS, in_channels: int = 3,
                 stem: int = 32, stem_stride: int = 2):
        super().__init__()

        def ch(c):
            return max(8, int(round(c * width_mult / 8)) * 8)

        cin = ch(stem)
        self.stem = nn.Sequential(*_conv_bn(in_channels, cin, 3, stem_stride), nn.ReLU6())
        blocks = []
        for t, c, n, s in settings:
            cout = ch(c)
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        self.features = nn.Sequential(*blocks)
        head = ch(head)
        self.head = nn.Sequential(*_conv_bn(cin, head, 1), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.features(x)
        x = self.head(x)
        x = self.pool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def resnet_style(num_classes: int = 10, width: int = 32, blocks: Sequence[int] = (1, 1, 1, 1),
                 in_channels: int = 3, stem_stride: int = 2) -> ResNetStyle:
    """The ResNet-style benchmark network (``width`` -> 8 x ``width`` channels). Seed torch first for
    reproducible weights. ``width=8`` is a quick variant for tests."""
    return ResNetStyle(num_classes=num_classes, width=width, blocks=blocks, in_channels=in_channels,
                       stem_stride=stem_stride)


def mobilenetv2_style(num_classes: int = 10, width_mult: float = 1.0, head: int = 640,
                      in_channels: int = 3, stem_stride: int = 2) -> MobileNetV2Style:
    """The MobileNetV2-style benchmark network. ``width_mult=0.25, head=128, stem_stride=1`` is a quick
    variant for tests on small (16x16) images."""
    return MobileNetV2Style(num_classes=num_classes, width_mult=width_mult, head=head, in_channels=in_channels,
                            stem_stride=stem_stride)


# ---------------------------------------------------------------------------- data


def digits_data(size: int = 32, channels: int = 3, test_fraction: float = 0.3, split_seed: int = 0):
    """scikit-learn's digits as float32 ``[N, channels, size, size]`` tensors.

    The split and the standardization are the q8-demo's (:func:`q8.demo.load_data`: fixed,
    stratified, the training set's mean and standard deviation); the 8x8 images are then
    upscaled bilinearly (``align_corners=False``) and repeated over ``channels``. Deterministic.
    Returns ``(x_train, y_train, x_test, y_test)``; 1257 training and 540 test images.
    """
    from .demo import load_data  # needs scikit-learn (the `demo` extra)

    if size < 8:
        raise ValueError(f"digits_data: size must be >= 8, got {size}")
    x_train, y_train, x_test, y_test, _ = load_data(test_fraction=test_fraction, split_seed=split_seed)

    def up(x):
        if size != 8:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x.expand(-1, channels, -1, -1).contiguous()

    return up(x_train), y_train, up(x_test), y_test


def digits_loaders(size: int = 32, batch_size: int = 64, seed: int = 0, channels: int = 3,
                   test_batch_size: int = 256):
    """``(train_loader, test_loader)`` over :func:`digits_data` (seeded shuffling of the training
    set, test set in order). The tensors are ``loader.dataset.tensors``."""
    x_train, y_train, x_test, y_test = digits_data(size=size, channels=channels)
    g = torch.Generator().manual_seed(seed)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_train, y_train), batch_size=batch_size,
                                        shuffle=True, generator=g, num_workers=0)
    test = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_test, y_test), batch_size=test_batch_size,
                                       shuffle=False, num_workers=0)
    return train, test


# ---------------------------------------------------------------------------- counting


def conv_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds x 2 of the model's Conv2d and Linear layers for one forward pass of ``input_shape``."""
    total = [0]
    hooks = []

    def conv_hook(m, inp, out):
        kh, kw = m.kernel_size
        total[0] += 2 * out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m, inp, out):
        total[0] += 2 * out.numel() * m.in_features

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(*input_shape))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return total[0]
