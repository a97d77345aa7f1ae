"""Small models with closed forms for the tests."""
import torch
from torch import nn


class Linear(nn.Module):
    """z = W·flatten(x) + b on the normalised x, W = 0.1·N(0, 1) and b = N(0, 1) drawn from
    ``seed``: every gradient method has a closed form on it. ``shape``: the input (C, H, W)."""

    def __init__(self, shape=(3, 8, 8), classes=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.shape = tuple(shape)
        d = int(torch.tensor(shape).prod())
        self.fc = nn.Linear(d, classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(classes, d, generator=g) * 0.1)
            self.fc.bias.copy_(torch.randn(classes, generator=g))

    def forward(self, x):
        return self.fc(x.flatten(1))
