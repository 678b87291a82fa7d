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
  with zeros.  PSE's input averaging is a masked mean, for the same reason.
* DHS output ``hashes`` : ``(batch, ceil(time / 8), n_bits)`` in (-1, 1);
  bits are ``hashes > 0``.  PSE output ``embedding`` : ``(batch, dim)``.

A model is a *pair* of such nets, f for audio and g for MIDI, with the same
architecture and separate weights.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from msdmatch.errors import ParameterError

__all__ = ["NetConfig", "DHSNet", "PSENet", "PooledHashPSENet", "build_net", "default_config", "n_parameters"]


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
    time_pool : int
        PSE: average this many input frames (masked mean) before the convs;
        a song-level embedding needs no 46 ms resolution, and 4x fewer
        frames make training and embedding 4x cheaper.  DHS: must be 1.
    step_dim : int
        PSE: width of a per-step dense (ReLU) layer between the front end and
        the attention, so that attention pools non-linear step features
        ("a bag of local patterns"); 0 for none.
    aux_bits : int
        PSE: width of an auxiliary per-step hash head used only in training
        (aligned frames of both modalities are pulled together as in DHS,
        which teaches the front end timbre-invariant pitch content); 0 for
        none.  It is not exported.
    pool_std : bool
        PSE: also pool the attention-weighted standard deviation of the step
        features, ``sqrt(sum_t a_t h_t^2 - (sum_t a_t h_t)^2)``, concatenated
        to the weighted mean (so the dense layers see how the song varies,
        not only its average).
    normalize : bool
        PSE: L2-normalise the embedding (unit sphere) instead of ``tanh``.
    lags : tuple of int
        PSE: non-empty makes a *pooled-hash PSE* (:class:`PooledHashPSENet`):
        its front end is a DHS net (``filters``, ``convs_per_group``,
        ``pool_freq``, ``dense``, ``step_dim`` tanh outputs per 8 frames),
        the attention pools its steps ``h_t`` and their lagged products
        ``h_t h_{t+L}^T`` for each lag ``L`` (in steps), and one linear layer
        maps the pooled statistics to ``out_dim``.  Empty: the conv PSE.
    shared : bool
        The audio and MIDI nets share every weight (a siamese pair); only
        their z-score statistics differ.  For MIDI features that are
        themselves a CQT of audio (``midi-synth``): the same function must
        then serve both sides, which halves the weights to learn and
        generalises better (validation BC on the same budget: PSE 0.25
        against 0.40 with two nets, DHS 0.29 against 0.32).  Export is
        unchanged: two ONNX files with equal weights.
    """

    kind: str = "dhs"
    n_bins: int = 48
    filters: tuple[int, ...] = (16, 32, 64)
    convs_per_group: int = 2
    pool_freq: bool = True
    dense: tuple[int, ...] = (512,)
    out_dim: int = 32
    attention_dim: int = 128
    time_pool: int = 1
    step_dim: int = 0
    aux_bits: int = 0
    pool_std: bool = False
    normalize: bool = False
    lags: tuple[int, ...] = ()
    shared: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("dhs", "pse"):
            raise ParameterError(f"kind={self.kind!r} must be 'dhs' or 'pse'")
        if self.lags and (self.kind != "pse" or len(self.filters) != 3 or self.step_dim < 1
                          or (self.time_pool, self.aux_bits, self.pool_std) != (1, 0, False)
                          or min(self.lags) < 1):
            raise ParameterError(
                f"lags={self.lags!r}: a pooled-hash PSE needs kind='pse', 3 conv groups (its front "
                "end is a DHS net), step_dim >= 1 hash units, time_pool=1, aux_bits=0, pool_std=False "
                "and positive lags"
            )
        if (self.kind == "dhs" or self.lags) and len(self.filters) != 3:
            raise ParameterError(
                f"filters={self.filters!r}: a DHS net needs exactly 3 conv groups "
                "(hash sequences are 8x shorter than the input)"
            )
        if not self.filters or any(int(f) < 1 for f in self.filters):
            raise ParameterError(f"filters={self.filters!r} must be positive widths")
        if self.kind == "dhs" and (self.time_pool, self.step_dim, self.aux_bits, self.pool_std, self.normalize) != (
            1, 0, 0, False, False
        ):
            raise ParameterError(
                "time_pool, step_dim, aux_bits, pool_std and normalize are PSE options; a DHS net needs "
                "time_pool=1, step_dim=0, aux_bits=0, pool_std=False, normalize=False"
            )
        if self.time_pool < 1 or self.step_dim < 0 or self.aux_bits < 0:
            raise ParameterError(
                f"time_pool={self.time_pool}, step_dim={self.step_dim}, aux_bits={self.aux_bits}: "
                "expected time_pool >= 1 and non-negative widths"
            )
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
        return self.time_pool * 2 ** len(self.filters)

    @property
    def frame_dim(self) -> int:
        """Width of a front-end output frame (channels x remaining bins)."""
        bins = self.n_bins // 2 ** len(self.filters) if self.pool_freq else self.n_bins
        return int(self.filters[-1]) * bins

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (tuples become lists)."""
        d = asdict(self)
        d["filters"] = list(self.filters)
        d["dense"] = list(self.dense)
        d["lags"] = list(self.lags)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetConfig:
        """Inverse of :meth:`to_dict`."""
        d = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        d["filters"] = tuple(int(x) for x in d["filters"])
        d["dense"] = tuple(int(x) for x in d["dense"])
        d["lags"] = tuple(int(x) for x in d.get("lags", ()))
        return cls(**d)

    def dhs_config(self) -> NetConfig:
        """The DHS net that is a pooled-hash PSE's front end (``step_dim`` bits)."""
        return NetConfig(kind="dhs", n_bins=self.n_bins, filters=self.filters,
                         convs_per_group=self.convs_per_group, pool_freq=self.pool_freq,
                         dense=self.dense, out_dim=self.step_dim, shared=self.shared)

    @property
    def pooled_dim(self) -> int:
        """Width of a pooled-hash PSE's pooled statistics: mean plus one upper triangle per lag."""
        d = self.step_dim
        return d + len(self.lags) * d * (d + 1) // 2


def _pool_mask(mask: torch.Tensor, k: int = 2) -> torch.Tensor:
    """Shorten a ``(batch, time)`` mask k times with ceil mode (valid if any is valid)."""
    return nn.functional.max_pool1d(mask.unsqueeze(1), k, k, ceil_mode=True).squeeze(1)


def _time_pool(x: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked mean of every ``k`` frames: ``(B, T, F), (B, T) -> (B, ceil(T/k), F), (B, ceil(T/k))``.

    A ratio of two average pools, so the result is the mean over valid frames
    whatever divisor the pool uses at the ragged end: a sequence's pooled
    frames do not depend on how much padding its batch added.
    """
    m = mask.unsqueeze(1)
    num = nn.functional.avg_pool1d(x.transpose(1, 2) * m, k, k, ceil_mode=True)
    den = nn.functional.avg_pool1d(m, k, k, ceil_mode=True)
    pooled = (num / den.clamp_min(1e-6)).transpose(1, 2)
    return pooled, _pool_mask(mask, k)


class _Front(nn.Module):
    """Masked time averaging (PSE), z-score, conv groups and pools; returns step vectors and the mask."""

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
        m = mask
        if self.cfg.time_pool > 1:
            features, m = _time_pool(features, m, self.cfg.time_pool)
        x = (features - self.mean) / self.std
        x = (x * m.unsqueeze(-1)).unsqueeze(1)  # (B, 1, T, F)
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

    def step_hashes(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hashes ``(B, ceil(T/8), n_bits)`` and their step mask ``(B, ceil(T/8))``."""
        h, m = self.front(features, mask)
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return torch.tanh(self.out(h)) * m.unsqueeze(-1), m

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Hash outputs in (-1, 1), shape (batch, steps, n_bits)."""
        return self.step_hashes(features, mask)[0]


class PSENet(nn.Module):
    """Embedding net: conv front end, per-step dense, feed-forward attention, dense.

    Attention weights are ``softmax_t(v^T tanh(W h_t + b))`` over valid steps
    only; the attended vector is ``sum_t a_t h_t`` (with ``cfg.pool_std``,
    followed by the weighted standard deviation).  The output is
    L2-normalised (``cfg.normalize``) or ``tanh``.
    ``forward(features, mask) -> embedding``: ``(B, T, 48), (B, T) -> (B, dim)``.
    """

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        if cfg.kind != "pse":
            raise ParameterError(f"PSENet needs kind='pse', got {cfg.kind!r}")
        self.cfg = cfg
        self.front = _Front(cfg)
        width = cfg.step_dim or cfg.frame_dim
        self.step = _dense(cfg.frame_dim, cfg.step_dim, relu=True) if cfg.step_dim else None
        self.aux = _dense(width, cfg.aux_bits, relu=False) if cfg.aux_bits else None
        self.att_w = _dense(width, cfg.attention_dim, relu=False)
        self.att_v = nn.Linear(cfg.attention_dim, 1, bias=False)
        nn.init.normal_(self.att_v.weight, std=1.0 / math.sqrt(cfg.attention_dim))
        widths = [width * (2 if cfg.pool_std else 1), *cfg.dense]
        self.hidden = nn.ModuleList(
            _dense(a, b, relu=True) for a, b in zip(widths[:-1], widths[1:], strict=False)
        )
        self.out = _dense(widths[-1], cfg.out_dim, relu=False)

    def steps(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step features ``(B, T', D)`` (zero at padding) and their mask ``(B, T')``."""
        h, m = self.front(features, mask)
        if self.step is not None:
            h = torch.relu(self.step(h)) * m.unsqueeze(-1)
        return h, m

    def step_hashes(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-only auxiliary hashes ``(B, T', aux_bits)`` in (-1, 1) and the step mask."""
        if self.aux is None:
            raise ParameterError("this PSE net has no auxiliary head (aux_bits=0)")
        h, m = self.steps(features, mask)
        return torch.tanh(self.aux(h)) * m.unsqueeze(-1), m

    def attention(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step features ``(B, T', D)`` and attention weights ``(B, T')``."""
        h, m = self.steps(features, mask)
        e = self.att_v(torch.tanh(self.att_w(h))).squeeze(-1)
        e = e.masked_fill(m < 0.5, -1e9)
        return h, torch.softmax(e, dim=1) * m

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Embeddings, shape (batch, n_out)."""
        h, a = self.attention(features, mask)
        x = torch.bmm(a.unsqueeze(1), h).squeeze(1)
        if self.cfg.pool_std:
            x2 = torch.bmm(a.unsqueeze(1), h * h).squeeze(1)
            x = torch.cat([x, torch.sqrt((x2 - x * x).clamp_min(0.0) + 1e-6)], dim=-1)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        y = self.out(x)
        if self.cfg.normalize:
            return y / torch.sqrt((y * y).sum(-1, keepdim=True) + 1e-12)
        return torch.tanh(y)


class PooledHashPSENet(nn.Module):
    """Embedding net over a DHS front end: attention-pooled hash statistics, one dense layer.

    The step features are a DHS net's outputs ``h_t`` in (-1, 1), one per 8
    frames (:meth:`DHSNet.step_hashes`).  Attention weights are
    ``a = softmax_t(v^T tanh(W h_t + b))`` over valid steps; the pooled vector
    is the weighted mean ``sum_t a_t h_t`` followed, for each lag ``L``, by the
    upper triangle of the symmetrised weighted lagged product
    ``sum_t a_t h_t h_{t+L}^T / sum_t a_t`` (over steps whose partner
    ``t + L`` is valid): which hash units co-occur a few steps apart, an
    order-aware "bag of transitions" that a time mean lacks.  A linear layer
    maps it to ``out_dim`` and the output is L2-normalised.
    ``forward(features, mask) -> embedding``: ``(B, T, 48), (B, T) -> (B, dim)``.

    ``v`` starts at zero (uniform attention), and the training fits the
    linear layer in closed form before fine-tuning
    (:func:`msdmatch.models.train.fit_pooled`).
    """

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        if cfg.kind != "pse" or not cfg.lags:
            raise ParameterError("PooledHashPSENet needs kind='pse' and non-empty lags")
        self.cfg = cfg
        self.dhs = DHSNet(cfg.dhs_config())
        self.att_w = _dense(cfg.step_dim, cfg.attention_dim, relu=False)
        self.att_v = nn.Linear(cfg.attention_dim, 1, bias=False)
        nn.init.zeros_(self.att_v.weight)
        self.out = _dense(cfg.pooled_dim, cfg.out_dim, relu=False)
        d = cfg.step_dim
        iu = torch.triu_indices(d, d)
        self.register_buffer("triu", iu[0] * d + iu[1], persistent=False)

    @property
    def front(self) -> nn.Module:
        """The DHS front end (holds the z-score statistics)."""
        return self.dhs.front

    def pooled(self, h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Pooled statistics ``(B, pooled_dim)`` of step hashes ``h`` ``(B, T', d)`` (zero at padding)."""
        e = self.att_v(torch.tanh(self.att_w(h))).squeeze(-1)
        a = torch.softmax(e.masked_fill(m < 0.5, -1e9), dim=1) * m
        parts = [torch.bmm(a.unsqueeze(1), h).squeeze(1)]
        b = h.shape[0]
        for lag in self.cfg.lags:
            w = a[:, :-lag] * m[:, lag:]
            c = torch.bmm((h[:, :-lag] * w.unsqueeze(-1)).transpose(1, 2), h[:, lag:])
            c = (c + c.transpose(1, 2)) / (2.0 * w.sum(1).clamp_min(1e-6)[:, None, None])
            parts.append(c.reshape(b, -1)[:, self.triu])
        return torch.cat(parts, dim=1)

    def embed_steps(self, h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Unit embeddings ``(B, out_dim)`` of step hashes ``(B, T', d)`` and their mask ``(B, T')``."""
        y = self.out(self.pooled(h, m))
        return y / torch.sqrt((y * y).sum(-1, keepdim=True) + 1e-12)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Embeddings, shape (batch, n_out), L2-normalised."""
        return self.embed_steps(*self.dhs.step_hashes(features, mask))


def share_weights(g: nn.Module, f: nn.Module) -> None:
    """Make ``g`` use ``f``'s parameters (its buffers, the z-score statistics, stay its own)."""
    for name, param in f.named_parameters():
        owner, _, leaf = name.rpartition(".")
        setattr(g.get_submodule(owner) if owner else g, leaf, param)


def build_net(cfg: NetConfig) -> nn.Module:
    """Construct the net named by ``cfg.kind`` (a pooled-hash PSE when ``cfg.lags``)."""
    if cfg.kind == "dhs":
        return DHSNet(cfg)
    return PooledHashPSENet(cfg) if cfg.lags else PSENet(cfg)


def n_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return int(sum(p.numel() for p in net.parameters()))


def default_config(kind: str, midi_modality: str | None = None, **overrides: Any) -> NetConfig:
    """The shipped architecture of ``kind`` ('dhs' or 'pse'), with overrides.

    With ``midi_modality='midi-synth'`` the two nets are one (``shared``):
    both sides are CQTs of audio.  That shared DHS net is twice as wide
    (filters 16/32/64, dense 512) as the piano-roll pair's (8/16/32, 256):
    on the same training budget it reached validation BC 0.25 against 0.30
    and kept the true preview in the DHS top 10 for 0.970 of validation
    queries against 0.954, while the wider piano-roll pair did not gain
    (0.959 against 0.964); the README's width table has the measurements.

    Smaller than the thesis nets (DHS: 3 groups of two 3x3 convs with 16, 32
    and 64 filters, dense 2048; PSE: dense 2048 x 2) so that both models of
    one MIDI modality train in under 20 minutes on 2 CPU cores and embed a
    30 s preview in a few ms through onnxruntime; pass ``filters``,
    ``convs_per_group`` and ``dense`` to get the thesis sizes.

    The PSE is a pooled-hash PSE (:class:`PooledHashPSENet`) over the DHS
    architecture of the same modality, with lags of 1, 2, 4, 8 and 16 steps
    (0.37-6 s) and 32-d attention.  Its DHS front end is the trained DHS
    model's, so the PSE learns only the attention and its output layer.  The
    shipped ones keep the validation queries' true preview in the top 1% of
    1,500 for 0.944 (synthesized CQT) and 0.888 (piano roll), against 0.777
    for both with the conv PSE shipped before, which remains available
    (``lags=()``; it used filters (16, 32), ``time_pool=4``,
    ``step_dim=256``, ``aux_bits=32`` and, for synthesized CQT, ``pool_std``).
    """
    if kind not in ("dhs", "pse"):
        raise ParameterError(f"kind={kind!r} must be 'dhs' or 'pse'")
    shared = midi_modality == "midi-synth"
    base: dict[str, Any] = dict(filters=(16, 32, 64) if shared else (8, 16, 32), convs_per_group=1,
                                pool_freq=True, dense=(512,) if shared else (256,))
    if kind == "dhs":
        base.update(kind="dhs", out_dim=32)
    else:
        base.update(kind="pse", out_dim=128, step_dim=32, attention_dim=32, lags=(1, 2, 4, 8, 16),
                    normalize=True)
    base["shared"] = shared
    base.update(overrides)
    return NetConfig(**base)
