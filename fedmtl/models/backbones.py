"""Shared backbones: map an input batch to a representation of size ``out_dim``."""

from __future__ import annotations

import math

import torch
from torch import nn

from fedmtl.registry import Registry

BACKBONES: Registry[type[nn.Module]] = Registry("backbone")


@BACKBONES.register("lenet")
class LeNetBackbone(nn.Module):
    """LeNet-style convolutional trunk (the MultiMNIST trunk of Sener & Koltun, 2018).

    conv(5x5, 10) -> max-pool -> ReLU -> conv(5x5, 20) -> max-pool -> ReLU -> fc(out_dim) -> ReLU.

    Parameters
    ----------
    input_shape : tuple[int, ...]
        ``(channels, height, width)``.
    out_dim : int
        Size of the representation.
    """

    input_rank: int | None = 3
    """Rank of the inputs it takes, ``(channels, height, width)`` (checked by the config)."""

    def __init__(self, input_shape: tuple[int, ...], out_dim: int = 50) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"lenet needs (channels, height, width) inputs, got {input_shape}")
        channels, height, width = input_shape
        self.conv1 = nn.Conv2d(channels, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        h = ((height - 4) // 2 - 4) // 2
        w = ((width - 4) // 2 - 4) // 2
        self.fc = nn.Linear(20 * h * w, out_dim)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(torch.max_pool2d(self.conv1(x), 2))
        x = torch.relu(torch.max_pool2d(self.conv2(x), 2))
        return torch.relu(self.fc(x.flatten(1)))


@BACKBONES.register("mlp")
class MLPBackbone(nn.Module):
    """Fully connected trunk: flatten -> [Linear -> ReLU] x depth.

    Parameters
    ----------
    input_shape : tuple[int, ...]
        Any shape; inputs are flattened.
    out_dim : int
        Width of every hidden layer and of the representation.
    depth : int
        Number of hidden layers.
    """

    input_rank: int | None = None
    """Any input rank (inputs are flattened)."""

    def __init__(self, input_shape: tuple[int, ...], out_dim: int = 50, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for _ in range(depth):
            layers += [nn.Linear(width, out_dim), nn.ReLU()]
            width = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@BACKBONES.register("identity")
class IdentityBackbone(nn.Module):
    """No hidden layer: the representation is the flattened input, and it has no parameters.

    With ``model.head-hidden = 0`` each task head is one linear layer on the input, so each
    task is multinomial logistic regression (a linear map and a softmax in the loss), the model
    of q-FFL's Synthetic experiments (Li et al., ICLR 2020). ``model.width`` is ignored: the
    representation size is the input's number of features. Nothing is federated but the heads:
    use it with ``model.heads = "global"``.

    Parameters
    ----------
    input_shape : tuple[int, ...]
        Any shape; inputs are flattened.
    out_dim : int
        Ignored (the representation size is ``prod(input_shape)``); accepted as every backbone's.
    """

    input_rank: int | None = None
    """Any input rank (inputs are flattened)."""

    def __init__(self, input_shape: tuple[int, ...], out_dim: int = 0) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.out_dim = math.prod(input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(x)
