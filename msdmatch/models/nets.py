"""Torch networks for the DHS (hashing) and PSE (embedding) models.

Conventions
-----------
* Input ``features`` : float32 ``(batch, time, n_bins)`` raw store features
  (log-CQT, L2-normalised per frame).  ``mask`` : float32 ``(batch, time)``,
  1 for valid frames and 0 for padding.
* Each net z-scores every bin with training-split statistics held as buffers,
  so exported ONNX files take raw store features.
* Activations are multiplied by the (downsampled) mask after every layer, so a
  sequence's output does not depend on how much padding its batch added:
  zero-padded convolutions see the same zeros as for the unbatched sequence,
  and the max-pools only ever combine a valid (non-negative, post-ReLU) frame
  with zeros.
* DHS output ``hashes`` : ``(batch, ceil(time / 8), n_bits)`` in (-1, 1);
  bits are ``hashes > 0``.  PSE output ``embedding`` : ``(batch, dim)``.

A model is a *pair* of such nets, f for audio and g for MIDI, with the same
architecture and separate weights.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ParameterError

__all__ = ["NetConfig", "DHSNet", "PSENet", "build_net", "default_config", "n_parameters"]


@dataclass(frozen=True)
class NetConfig:
    """Architecture of one net (both nets of a model share it).

    Parameters
    ----------
    kind : {'dhs', 'pse'}
        Hashing net (per-frame hashes, 8x downsampled) or embedding net.
    n_bins : int
        Feature bins per frame (48).
    filters : tuple of int
        Filters of each conv group; each group is ``convs_per_group`` 3x3
        convs with ReLU followed by a max-pool of 2 over time.  DHS needs
        exactly 3 groups (the 8x downsampling of the hash sequence).
    convs_per_group : int
        Number of 3x3 convs per group.
    pool_freq : bool
        Also halve the frequency axis in each pool (2x2 instead of 2x1):
        4-16x cheaper dense layers and convs at a small accuracy cost.
    dense : tuple of int
        Widths of the hidden dense (ReLU) layers after the front end (DHS:
        per frame; PSE: after attention).
    out_dim : int
        Output width: number of hash bits (DHS) or embedding size (PSE).
    attention_dim : int
        Hidden width of the PSE attention scorer ``v^T tanh(W h + b)``.
    """

    kind: str = "dhs"
    n_bins: int = 48
    filters: tuple[int, ...] = (16, 32, 64)
    convs_per_group: int = 2
    pool_freq: bool = True
    dense: tuple[int, ...] = (512,)
    out_dim: int = 32
    attention_dim: int = 128

    def __post_init__(self) -> None:
        if self.kind not in ("dhs", "pse"):
            raise ParameterError(f"kind={self.kind!r} must be 'dhs' or 'pse'")
        if self.kind == "dhs" and len(self.filters) != 3:
            raise ParameterError(
                f"filters={self.filters!r}: a DHS net needs exactly 3 conv groups "
                "(hash sequences are 8x shorter than the input)"
            )
        if not self.filters or any(int(f) < 1 for f in self.filters):
            raise ParameterError(f"filters={self.filters!r} must be positive widths")
        if self.convs_per_group < 1:
            raise ParameterError(f"convs_per_group={self.convs_per_group} must be >= 1")
        if self.pool_freq and self.n_bins % (2 ** len(self.filters)):
            raise ParameterError(
                f"pool_freq=True halves n_bins={self.n_bins} {len(self.filters)} times; "
                "it must stay an integer (use pool_freq=False)"
            )

    @property
    def downsample(self) -> int:
        """Time downsampling factor of the front end (8 for DHS)."""
        return 2 ** len(self.filters)

    @property
    def frame_dim(self) -> int:
        """Width of a front-end output frame (channels x remaining bins)."""
        bins = self.n_bins // self.downsample if self.pool_freq else self.n_bins
        return int(self.filters[-1]) * bins

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (tuples become lists)."""
        d = asdict(self)
        d["filters"] = list(self.filters)
        d["dense"] = list(self.dense)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["filters"] = tuple(int(x) for x in d["filters"])
        d["dense"] = tuple(int(x) for x in d["dense"])
        return cls(**d)


def _pool_mask(mask: torch.Tensor) -> torch.Tensor:
    """Halve a ``(batch, time)`` mask with ceil mode (valid if any is valid)."""
    return nn.functional.max_pool1d(mask.unsqueeze(1), 2, 2, ceil_mode=True).squeeze(1)


class _Front(nn.Module):
    """Z-score, conv groups and pools; returns per-frame vectors and the mask."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mean", torch.zeros(cfg.n_bins))
        self.register_buffer("std", torch.ones(cfg.n_bins))
        groups = []
        c_in = 1
        for width in cfg.filters:
            convs = nn.ModuleList()
            for _ in range(cfg.convs_per_group):
                conv = nn.Conv2d(c_in, int(width), kernel_size=3, padding=1)
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)
                convs.append(conv)
                c_in = int(width)
            groups.append(convs)
        self.groups = nn.ModuleList(groups)
        self.pool = nn.MaxPool2d((2, 2) if cfg.pool_freq else (2, 1), ceil_mode=True)

    def set_stats(self, mean: Any, std: Any) -> None:
        """Install z-score statistics, arrays of shape ``(n_bins,)``."""
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (features - self.mean) / self.std
        x = (x * mask.unsqueeze(-1)).unsqueeze(1)  # (B, 1, T, F)
        m = mask
        for convs in self.groups:
            m4 = m[:, None, :, None]
            for conv in convs:
                x = torch.relu(conv(x)) * m4
            x = self.pool(x)
            m = _pool_mask(m)
        b, c, t, f = x.shape
        h = x.permute(0, 2, 1, 3).reshape(b, t, c * f)  # (B, T', C*F')
        return h * m.unsqueeze(-1), m


def _dense(n_in: int, n_out: int, *, relu: bool) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    if relu:
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    else:
        nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class DHSNet(nn.Module):
    """Hashing net: conv front end, per-frame dense layers, ``n_bits`` tanh.

    ``forward(features, mask) -> hashes`` with shapes ``(B, T, 48), (B, T)
    -> (B, ceil(T/8), n_bits)``; padded output steps are exactly 0.
    """

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        if cfg.kind != "dhs":
            raise ParameterError(f"DHSNet needs kind='dhs', got {cfg.kind!r}")
        self.cfg = cfg
        self.front = _Front(cfg)
        widths = [cfg.frame_dim, *cfg.dense]
        self.hidden = nn.ModuleList(
            _dense(a, b, relu=True) for a, b in zip(widths[:-1], widths[1:], strict=False)
        )
        self.out = _dense(widths[-1], cfg.out_dim, relu=False)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, m = self.front(features, mask)
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return torch.tanh(self.out(h)) * m.unsqueeze(-1)


class PSENet(nn.Module):
    """Embedding net: conv front end, feed-forward attention, dense, tanh.

    Attention weights are ``softmax_t(v^T tanh(W h_t + b))`` over valid steps
    only; the attended vector is ``sum_t a_t h_t``.
    ``forward(features, mask) -> embedding``: ``(B, T, 48), (B, T) -> (B, dim)``.
    """

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        if cfg.kind != "pse":
            raise ParameterError(f"PSENet needs kind='pse', got {cfg.kind!r}")
        self.cfg = cfg
        self.front = _Front(cfg)
        self.att_w = _dense(cfg.frame_dim, cfg.attention_dim, relu=False)
        self.att_v = nn.Linear(cfg.attention_dim, 1, bias=False)
        nn.init.normal_(self.att_v.weight, std=1.0 / math.sqrt(cfg.attention_dim))
        widths = [cfg.frame_dim, *cfg.dense]
        self.hidden = nn.ModuleList(
            _dense(a, b, relu=True) for a, b in zip(widths[:-1], widths[1:], strict=False)
        )
        self.out = _dense(widths[-1], cfg.out_dim, relu=False)

    def attention(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Front-end frames ``(B, T', D)`` and attention weights ``(B, T')``."""
        h, m = self.front(features, mask)
        e = self.att_v(torch.tanh(self.att_w(h))).squeeze(-1)
        e = e.masked_fill(m < 0.5, -1e9)
        return h, torch.softmax(e, dim=1) * m

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, a = self.attention(features, mask)
        x = torch.bmm(a.unsqueeze(1), h).squeeze(1)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return torch.tanh(self.out(x))


def build_net(cfg: NetConfig) -> nn.Module:
    """Construct the net named by ``cfg.kind``."""
    return DHSNet(cfg) if cfg.kind == "dhs" else PSENet(cfg)


def n_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return int(sum(p.numel() for p in net.parameters()))


def default_config(kind: str, **overrides: Any) -> NetConfig:
    """The shipped architecture of ``kind`` ('dhs' or 'pse'), with overrides.

    Smaller than the thesis nets (DHS: 3 groups of two 3x3 convs with 16, 32
    and 64 filters, dense 2048; PSE: dense 2048 x 2) so that both models of
    one MIDI modality train in about 10 minutes on 2 CPU cores and embed a
    30 s preview in a few ms through onnxruntime; pass ``filters``,
    ``convs_per_group`` and ``dense`` to get the thesis sizes.
    """
    if kind not in ("dhs", "pse"):
        raise ParameterError(f"kind={kind!r} must be 'dhs' or 'pse'")
    base: dict[str, Any] = (
        dict(kind="dhs", filters=(8, 16, 32), convs_per_group=1, pool_freq=True,
             dense=(256,), out_dim=32)
        if kind == "dhs"
        else dict(kind="pse", filters=(16,), convs_per_group=1, pool_freq=True,
                  dense=(512, 512), out_dim=128, attention_dim=128)
    )
    base.update(overrides)
    return NetConfig(**base)

