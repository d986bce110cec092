"""Shared, named, seeded test cases for the curvature operators and solvers.

Every case builds a small float64 model and data set split into two batches of unequal size, so exact sample
weighting across batches is always exercised. Importable from notebooks and from pytest.
"""

from dataclasses import dataclass
from typing import Callable
import pytest
import torch
from torch import nn

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# the same, as pytest parameters: CUDA ones carry the `cuda` mark (`pytest -m cuda` runs only them)
DEVICE_PARAMS = [pytest.param(d, marks=pytest.mark.cuda) if d == "cuda" else d for d in DEVICES]


@dataclass
class Case:
    id: str  # readable id, e.g. 'mlp-tanh-mse-2batches-unequal'
    model: Callable[[], nn.Module]  # builds the (float64, CPU) model
    loss: str  # 'mse' or 'ce'
    input_shape: tuple  # shape of one input sample
    n: int = 17  # samples, split 11 + 6
    n_classes: int = 3
    float_targets: bool = False  # MSE against given float targets instead of labels
    seed: int = 0

    def build(self, device="cpu", dtype=torch.float64):
        "(model, data) on `device` in `dtype`, data as two batches of unequal size."
        g = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = self.model().to(device=device, dtype=dtype)
        X = torch.randn(self.n, *self.input_shape, generator=g, dtype=torch.float64).to(device, dtype)
        y = (
            torch.randn(self.n, self.n_classes, generator=g, dtype=torch.float64).to(dtype)
            if self.float_targets
            else torch.randint(0, self.n_classes, (self.n,), generator=g)
        ).to(device)
        return model, [(X[:11], y[:11]), (X[11:], y[11:])]


def _mlp(act, d_in=4, hidden=5, d_out=3):
    return lambda: nn.Sequential(
        nn.Linear(d_in, hidden), act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, d_out)
    )


def _cnn():
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, 3),
    )


def _frozen_first_layer():
    m = _mlp(nn.Tanh)()
    m[0].weight.requires_grad_(False)  # frozen parameters are constants, not part of θ
    return m


def _bn_eval():
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)).eval()


CASES = [
    Case("mlp-tanh-mse-2batches-unequal", _mlp(nn.Tanh), "mse", (4,)),
    Case("mlp-relu-ce-2batches-unequal", _mlp(nn.ReLU), "ce", (4,), seed=1),
    Case("mlp-gelu-mse-2batches-unequal", _mlp(nn.GELU), "mse", (4,), seed=2),
    Case("mlp-gelu-ce-2batches-unequal", _mlp(nn.GELU), "ce", (4,), seed=3),
    Case("mlp-tanh-mse-float-targets", _mlp(nn.Tanh), "mse", (4,), float_targets=True, seed=4),
    Case("cnn-ce-2batches-unequal", _cnn, "ce", (1, 8, 8), seed=5),
    Case("cnn-mse-2batches-unequal", _cnn, "mse", (1, 8, 8), seed=6),
    Case("mlp-frozen-layer-ce", _frozen_first_layer, "ce", (4,), seed=7),
    Case("mlp-batchnorm-eval-mse", _bn_eval, "mse", (4,), seed=8),
]
