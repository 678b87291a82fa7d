"""Long-term-memory toy tasks of the feed-forward attention paper.

Raffel & Ellis (2015), "Feed-forward networks with attention can solve some
long-term memory problems": each sequence has ``T`` steps of
``(value, marker)`` pairs; values are uniform in [-1, 1], exactly two steps
are marked (one in the first half, one in the second), and the target is the
sum (``'addition'``) or product (``'multiplication'``) of the two marked
values.  A net that sees every step with the same weight (an unweighted
mean) cannot pick out the marked steps; attention can.

This is a demonstration of the attention mechanism used by the PSE model;
it needs torch (the ``train`` extra).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from msdmatch.errors import ParameterError

__all__ = ["make_task", "train_toy"]

TASKS = ("addition", "multiplication")


def make_task(task: str, *, n: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` sequences of the toy task.

    Returns
    -------
    x : np.ndarray [shape=(n, length, 2), dtype=float32]
        ``x[..., 0]`` values, ``x[..., 1]`` markers (0/1).
    y : np.ndarray [shape=(n,), dtype=float32]
        Sum or product of the two marked values.
    """
    if task not in TASKS:
        raise ParameterError(f"task={task!r} must be one of {TASKS}")
    if length < 2:
        raise ParameterError(f"length={length} must be >= 2 (two marked steps)")
    vals = rng.uniform(-1.0, 1.0, size=(n, length)).astype(np.float32)
    half = length // 2
    i = rng.integers(0, half, size=n)
    j = rng.integers(half, length, size=n)
    marks = np.zeros((n, length), np.float32)
    marks[np.arange(n), i] = 1.0
    marks[np.arange(n), j] = 1.0
    a, b = vals[np.arange(n), i], vals[np.arange(n), j]
    y = (a + b) if task == "addition" else (a * b)
    return np.stack([vals, marks], axis=-1), y.astype(np.float32)


def train_toy(
    task: str = "addition",
    *,
    length: int = 1000,
    attention: bool = True,
    hidden: int = 64,
    steps: int = 400,
    batch: int = 50,
    lr: float = 3e-3,
    seed: int = 0,
    n_test: int = 500,
) -> dict[str, Any]:
    """Train the attention (or unweighted-mean) model on a toy task.

    The model is ``h_t = relu(W x_t + b)``, then either the attention
    average ``sum_t softmax_t(v^T tanh(U h_t + c)) h_t`` or the plain mean
    of ``h_t``, then a ReLU layer and a linear output, trained with Adam on
    the squared error.

    Returns
    -------
    result : dict
        ``test_mse`` on ``n_test`` fresh sequences, ``baseline_mse`` of
        always predicting the mean target, and the ``losses`` curve.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(2, hidden)
            self.att_u = nn.Linear(hidden, hidden)
            self.att_v = nn.Linear(hidden, 1, bias=False)
            self.mid = nn.Linear(hidden, hidden)
            self.out = nn.Linear(hidden, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.inp(x))
            if attention:
                a = torch.softmax(self.att_v(torch.tanh(self.att_u(h))), dim=1)
                c = (a * h).sum(1)
            else:
                c = h.mean(1)
            return self.out(torch.relu(self.mid(c))).squeeze(-1)

    net = Toy()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        x, y = make_task(task, n=batch, length=length, rng=rng)
        loss = ((net(torch.from_numpy(x)) - torch.from_numpy(y)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    x, y = make_task(task, n=n_test, length=length, rng=rng)
    with torch.no_grad():
        pred = net(torch.from_numpy(x)).numpy()
    return dict(test_mse=float(np.mean((pred - y) ** 2)),
                baseline_mse=float(np.var(y)), losses=losses)
