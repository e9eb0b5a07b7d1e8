"""The models: ``mlp``, ``cnn`` (small), ``cnn_bn`` (the small CNN with BatchNorm), ``resnet18``
(the paper's CIFAR-10 ResNet18 for 32x32 images).

``build_model(name, in_shape, n_classes, width, seed)`` returns a seeded ``torch.nn.Module``;
every rank building with the same arguments gets the same initial weights.
"""
from __future__ import annotations

from typing import Any

MODELS = ("mlp", "cnn", "cnn_bn", "resnet18")


def _torch():
    import torch
    return torch


def mlp(in_shape: tuple[int, ...], n_classes: int, width: int = 128) -> Any:
    """Two hidden layers (width, width // 2) with ReLU."""
    nn = _torch().nn
    d = 1
    for s in in_shape:
        d *= int(s)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, width), nn.ReLU(), nn.Linear(width, max(1, width // 2)),
                         nn.ReLU(), nn.Linear(max(1, width // 2), n_classes))


def cnn(in_shape: tuple[int, ...], n_classes: int, width: int = 16) -> Any:
    """Two conv3x3+ReLU+maxpool stages (width, 2*width channels) and a 64-unit hidden layer."""
    nn = _torch().nn
    c, h, w = in_shape
    h2, w2 = h // 4, w // 4
    if h2 < 1 or w2 < 1:
        raise ValueError(f"cnn needs images of at least 4x4, got {h}x{w}")
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * h2 * w2, 64), nn.ReLU(), nn.Linear(64, n_classes))


def cnn_bn(in_shape: tuple[int, ...], n_classes: int, width: int = 16) -> Any:
    """:func:`cnn` with a BatchNorm2d after each convolution (a small model with running statistics)."""
    nn = _torch().nn
    c, h, w = in_shape
    h2, w2 = h // 4, w // 4
    if h2 < 1 or w2 < 1:
        raise ValueError(f"cnn_bn needs images of at least 4x4, got {h}x{w}")
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * width * h2 * w2, 64), nn.ReLU(), nn.Linear(64, n_classes))


def resnet18(in_shape: tuple[int, ...], n_classes: int, width: int = 64) -> Any:
    """ResNet18 for 32x32 inputs as in the paper's code (3x3 stem, no max-pool, [2, 2, 2, 2] basic
    blocks of width, 2w, 4w, 8w channels, BatchNorm, global average pool). width=64: 11.17M parameters."""
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            w = width
            self.conv1 = nn.Conv2d(in_shape[0], w, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(w)
            layers, cin = [], w
            for i, (mult, stride) in enumerate([(1, 1), (2, 2), (4, 2), (8, 2)]):
                blocks = [BasicBlock(cin, w * mult, stride), BasicBlock(w * mult, w * mult, 1)]
                cin = w * mult
                layers.append(nn.Sequential(*blocks))
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.linear = nn.Linear(8 * w, n_classes)

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
            out = F.adaptive_avg_pool2d(out, 1).flatten(1)
            return self.linear(out)

    return ResNet()


def build_model(name: str, in_shape: tuple[int, ...], n_classes: int, width: int | None = None,
                seed: int = 0) -> Any:
    """A freshly initialised model; the same ``seed`` gives the same weights on every rank."""
    torch = _torch()
    builders = {"mlp": (mlp, 128), "cnn": (cnn, 16), "cnn_bn": (cnn_bn, 16), "resnet18": (resnet18, 64)}
    if name not in builders:
        raise ValueError(f"unknown model {name!r} (one of {', '.join(MODELS)})")
    fn, default_width = builders[name]
    state = torch.random.get_rng_state()
    torch.manual_seed(int(seed))
    try:
        model = fn(tuple(in_shape), int(n_classes), int(width or default_width))
    finally:
        torch.random.set_rng_state(state)
    return model


def batchnorm_layers(model: Any) -> list[Any]:
    """The BatchNorm modules of ``model`` (any dimension), in ``modules()`` order."""
    torch = _torch()
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def has_batchnorm(model: Any) -> bool:
    return bool(batchnorm_layers(model))
