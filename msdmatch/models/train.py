"""Training of the DHS and PSE model pairs (f for audio, g for MIDI).

Conventions
-----------
* Loss (both models), with positives ``(x, y)`` matched and negatives
  ``(a, b)`` random swaps::

      mean ||f(x) - g(y)||^2 + alpha * mean max(0, m - ||f(a) - g(b)||)^2
                             + beta * mean(||f(x)||^2 + ||g(y)||^2)

  DHS applies it per output step (one 32-d hash per 8 frames) on aligned
  crops.  PSE is trained contrastively (``loss='nce'``): each MIDI sequence
  of a batch must pick its own preview among the batch's previews by
  ``softmax(-||g(y) - f(x)||^2 / temperature)``, and symmetrically; every
  other preview of the batch is a negative.  The PSE loss adds the DHS loss
  on aligned crops through the net's auxiliary hash head (``aux``), which
  teaches its front end what sounds alike across timbres.
* Augmentation (both): a random transposition of up to ``transpose``
  semitones, the same for both sides of a pair, so every pair is seen in
  several keys and the nets cannot key on absolute pitch alone; and, with
  probability ``augment``, the audio side as if recorded with loud drums,
  noise, another timbre or equalisation
  (:func:`msdmatch.models.augment.augment_audio`): DHS on its aligned
  crops, the pooled-hash PSE on one augmented copy of each training
  preview (its closed-form head is fitted on clean and augmented previews
  together, and fine-tuning draws either).
* Validation: the Bhattacharyya coefficient (BC) between the histograms of
  matched and unmatched distances on the validation split; lower is better.
  DHS uses Hamming distances between the bits of aligned steps; PSE uses
  Euclidean distances between embeddings of whole validation sequences.
* Schedule: Adam, with the learning rate decayed along a cosine to 5% over
  the step or time budget, whichever runs out first.
* Reproducibility: the nets are seeded from ``seed`` and batches drawn from
  ``numpy.random.default_rng(seed)``; with a step limit (``max_steps``) a
  rerun on the same machine gives identical weights.  The wall-clock limit
  (``max_minutes``) is a safety cap and is not reproducible when it binds.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msdmatch.errors import ParameterError
from msdmatch.models.augment import augment_audio
from msdmatch.models.nets import NetConfig, build_net, default_config, share_weights
from msdmatch.models.pairs import (
    Pair,
    align_pairs,
    aligned_batch,
    as_store,
    collect_pairs,
    pad_batch,
    sequence_batch,
    zscore_stats,
)

__all__ = [
    "HParams",
    "FitResult",
    "pair_loss",
    "nce_loss",
    "bhattacharyya",
    "validate",
    "fit",
    "random_search",
    "train_models",
]

log = logging.getLogger(__name__)

SHARE = {"dhs": 3.0, "pse": 1.0}  # split of the wall-clock budget when training both kinds


@dataclass(frozen=True)
class HParams:
    """Optimisation and loss settings of one training run.

    Defaults per kind come from :func:`default_hparams` (thesis loss values).
    ``alpha``/``margin``/``beta`` are the hinge loss's (DHS, and PSE's
    auxiliary hash loss); ``loss`` is PSE's sequence loss, ``'nce'`` (with
    ``temperature``) or the thesis's ``'hinge'``; ``aux`` weighs PSE's
    auxiliary loss on aligned crops of ``aux_crop`` frames; ``transpose`` is
    the largest random transposition in semitones (0: none); ``negatives``
    adds that many previews of other pairs to every PSE batch as extra
    negatives for the MIDI side (see :func:`nce_loss`); ``augment`` is the
    probability that a training preview is augmented.  ``pca_dims`` and
    ``shrink`` set the closed-form fit of a pooled-hash PSE's output layer
    (see :func:`fit_pooled`).
    """

    lr: float = 1e-3
    alpha: float = 5.33
    margin: float = 4.0
    beta: float = 0.05
    batch: int = 50
    crop: int = 100
    audio_frames: int = 646
    midi_frames: int = 1500
    optimizer: str = "adam"
    grad_clip: float = 10.0
    loss: str = "hinge"
    temperature: float = 0.1
    aux: float = 0.0
    aux_crop: int = 200
    transpose: int = 0
    negatives: int = 0
    pca_dims: int = 384
    shrink: float = 1.0
    augment: float = 0.0

    def __post_init__(self) -> None:
        if self.loss not in ("hinge", "nce"):
            raise ParameterError(f"loss={self.loss!r} must be 'hinge' or 'nce'")
        if not 0.0 <= self.augment <= 1.0:
            raise ParameterError(f"augment={self.augment!r} must be a probability in [0, 1]")
        if self.batch < 2:
            raise ParameterError(f"batch={self.batch} must be >= 2 (negatives come from the batch)")


def default_hparams(kind: str, midi_modality: str | None = None, **overrides: Any) -> HParams:
    """Thesis loss constants for ``kind`` with practical batch/crop sizes.

    PSE settings serve the pooled-hash PSE (the shipped one): a fine-tuning
    learning rate of 1e-4 for its attention and output layer, 48 extra
    previews as negatives in every batch of 16, and the closed-form fit's
    384 PCA dimensions and shrinkage 1.  Both kinds augment half of the
    training previews (``augment=0.5``, :mod:`msdmatch.models.augment`).
    The conv PSE (``lags=()``) also uses ``aux``, ``aux_crop``,
    ``transpose`` and the crop lengths; it trained with ``lr=1e-3``.
    ``midi_modality`` is accepted for symmetry
    with :func:`~msdmatch.models.nets.default_config`; no setting depends
    on it now.
    """
    if kind == "dhs":
        hp = HParams(alpha=5.33, margin=4.0, beta=0.05, batch=32, crop=100, lr=1e-3, augment=0.5)
    elif kind == "pse":
        hp = HParams(alpha=5.33, margin=4.0, beta=0.05, batch=16, lr=1e-4, loss="nce",
                     temperature=0.1, aux=1.0, aux_crop=200, transpose=5,
                     audio_frames=646, midi_frames=2000, negatives=48, augment=0.5)
    else:
        raise ParameterError(f"kind={kind!r} must be 'dhs' or 'pse'")
    return dataclasses.replace(hp, **overrides)


def pair_loss(
    fx: torch.Tensor,
    gy: torch.Tensor,
    fa: torch.Tensor,
    gb: torch.Tensor,
    *,
    alpha: float,
    margin: float,
    beta: float = 0.0,
    weight: torch.Tensor | None = None,
    neg_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Siamese hinge loss of the DHS/PSE papers.

    Parameters
    ----------
    fx, gy : torch.Tensor [shape=(..., d)]
        Outputs for matched pairs.
    fa, gb : torch.Tensor [shape=(..., d)]
        Outputs for unmatched pairs.
    alpha, margin, beta : float
        Negative weight, hinge margin and output-norm penalty.
    weight, neg_weight : torch.Tensor [shape=(...)], optional
        0/1 validity of each positive / negative (padding); means are taken
        over valid entries only.
    """
    pos = ((fx - gy) ** 2).sum(-1)
    neg = torch.relu(margin - torch.sqrt(((fa - gb) ** 2).sum(-1) + 1e-12)) ** 2
    reg = (fx ** 2).sum(-1) + (gy ** 2).sum(-1)
    if weight is None:
        weight = torch.ones_like(pos)
    if neg_weight is None:
        neg_weight = torch.ones_like(neg)
    w = weight.sum().clamp_min(1.0)
    nw = neg_weight.sum().clamp_min(1.0)
    loss = (pos * weight).sum() / w + alpha * (neg * neg_weight).sum() / nw
    if beta:
        loss = loss + beta * (reg * weight).sum() / w
    return loss


def nce_loss(fx: torch.Tensor, gy: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """Symmetric contrastive loss of matched rows.

    Parameters
    ----------
    fx : torch.Tensor [shape=(B + E, d)]
        Audio embeddings; rows past ``B`` are extra negatives for the MIDI
        side (each MIDI sequence must pick its own preview among all
        ``B + E``; each of the first ``B`` previews its MIDI among ``B``).
    gy : torch.Tensor [shape=(B, d)]
        MIDI embeddings; row ``i`` matches ``fx[i]``.
    temperature : float
        Scale of the logits ``-||gy_i - fx_j||^2 / temperature``.
    """
    b = len(gy)
    logits = -((gy[:, None, :] - fx[None, :, :]) ** 2).sum(-1) / temperature
    labels = torch.arange(b, device=fx.device)
    ce = torch.nn.functional.cross_entropy
    return 0.5 * (ce(logits, labels) + ce(logits[:, :b].T, labels))


def bhattacharyya(
    matched: np.ndarray, unmatched: np.ndarray, *, bins: int | np.ndarray = 100
) -> float:
    """Bhattacharyya coefficient between two distance distributions.

    Parameters
    ----------
    matched, unmatched : np.ndarray [shape=(n,), (m,)]
        Distances of matched and unmatched pairs.
    bins : int or np.ndarray
        Number of equal-width bins over the joint range, or bin edges
        (e.g. ``np.arange(-0.5, 33)`` for 32-bit Hamming distances).

    Returns
    -------
    bc : float in [0, 1]
        ``sum_i sqrt(p_i q_i)`` of the normalised histograms: 1 for identical
        histograms, 0 for disjoint ones.  Lower is better.
    """
    a = np.asarray(matched, dtype=np.float64).ravel()
    b = np.asarray(unmatched, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ParameterError(
            f"bhattacharyya needs non-empty inputs, got {a.size} matched and {b.size} "
            "unmatched distances; is the validation split empty?"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ParameterError("bhattacharyya got non-finite distances; did training diverge?")
    if np.ndim(bins) == 0:
        lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
        if hi <= lo:
            return 1.0
        edges = np.linspace(lo, hi, int(bins) + 1)
    else:
        edges = np.asarray(bins, dtype=np.float64)
    p = np.histogram(a, bins=edges)[0].astype(np.float64)
    q = np.histogram(b, bins=edges)[0].astype(np.float64)
    p /= max(p.sum(), 1.0)
    q /= max(q.sum(), 1.0)
    return float(np.sqrt(p * q).sum())


def _run(net: torch.nn.Module, seqs: Sequence[np.ndarray], *, device: str, chunk: int = 8) -> list[np.ndarray]:
    """Outputs of ``net`` for each sequence (DHS: unpadded ``(ceil(T/8), bits)``)."""
    out = []
    net.eval()
    with torch.no_grad():
        for s in range(0, len(seqs), chunk):
            part = list(seqs[s : s + chunk])
            x, m = pad_batch(part, n_bins=part[0].shape[1])
            y = net(torch.from_numpy(x).to(device), torch.from_numpy(m).to(device)).cpu().numpy()
            for k, seq in enumerate(part):
                out.append(y[k, : -(-len(seq) // net.cfg.downsample)] if y.ndim == 3 else y[k])
    net.train()
    return out


def validate(
    kind: str, f: torch.nn.Module, g: torch.nn.Module, pairs: Sequence[Pair], *,
    device: str = "cpu", seed: int = 0, n_unmatched: int = 20000,
) -> dict[str, Any]:
    """Validation metrics of a model on ``pairs`` (validation split).

    Returns
    -------
    metrics : dict
        ``bc`` (Bhattacharyya coefficient, lower is better), ``matched`` and
        ``unmatched`` distance arrays, and for PSE ``top1``/``mrr`` of
        ranking each query's true track among the validation tracks.
    """
    rng = np.random.default_rng(seed)
    if kind == "pse":
        return _embedding_metrics(np.stack(_run(f, [p.audio for p in pairs], device=device)),
                                  np.stack(_run(g, [p.midi for p in pairs], device=device)))
    ha = _run(f, [p.audio_w for p in pairs], device=device)
    hm = _run(g, [p.midi_w for p in pairs], device=device)
    ba = [h > 0 for h in ha]
    bm = [h > 0 for h in hm]
    matched = np.concatenate([(x != y).sum(1) for x, y in zip(ba, bm, strict=False)])
    lens = np.array([len(x) for x in ba])
    i = rng.integers(0, len(pairs), n_unmatched)
    j = (i + rng.integers(1, max(len(pairs), 2), n_unmatched)) % len(pairs)
    ti = (rng.random(n_unmatched) * lens[i]).astype(int)
    tj = (rng.random(n_unmatched) * lens[j]).astype(int)
    unmatched = np.array([(ba[a][s] != bm[b][t]).sum() for a, b, s, t in zip(i, j, ti, tj, strict=False)])
    return dict(bc=bhattacharyya(matched, unmatched, bins=np.arange(-0.5, 33.0)),
                matched=matched, unmatched=unmatched,
                bit_balance=float(np.concatenate(ba).mean()), n_pairs=len(pairs))


def _embedding_metrics(ea: np.ndarray, em: np.ndarray) -> dict[str, Any]:
    """PSE validation metrics of audio and MIDI embeddings ``(n, dim)``, row i matching row i."""
    d = np.sqrt(((em[:, None, :] - ea[None, :, :]) ** 2).sum(-1))
    n = len(ea)
    matched = np.diag(d).copy()
    unmatched = d[~np.eye(n, dtype=bool)]
    ranks = (d < matched[:, None]).sum(1) + 1
    return dict(bc=bhattacharyya(matched, unmatched, bins=100), matched=matched,
                unmatched=unmatched, top1=float(np.mean(ranks == 1)),
                mrr=float(np.mean(1.0 / ranks)), n_pairs=n)


def _aligned_loss(f: torch.nn.Module, g: torch.nn.Module, pairs: Sequence[Pair], *,
                  rng: np.random.Generator, hp: HParams, batch: int, crop: int, device: str) -> torch.Tensor:
    """DHS hinge loss per output step on a batch of aligned crops.

    ``f``/``g`` are DHS nets, or PSE nets with an auxiliary hash head; both
    have ``step_hashes(features, mask) -> (hashes (B, T', bits), mask (B, T'))``.
    Negatives pair each audio step with the MIDI step of another crop.
    """
    xa, xm, mask = aligned_batch(pairs, rng=rng, batch=batch, crop=crop, transpose=hp.transpose,
                                 augment=hp.augment)
    ta, tm, tk = (torch.from_numpy(v).to(device) for v in (xa, xm, mask))
    (fa, w), (gm, _) = f.step_hashes(ta, tk), g.step_hashes(tm, tk)
    perm = torch.roll(torch.arange(batch), int(rng.integers(1, batch)))
    return pair_loss(fa, gm, fa[perm], gm, alpha=hp.alpha, margin=hp.margin, beta=hp.beta,
                     weight=w, neg_weight=w[perm] * w)


def _lr_scale(step: int, max_steps: int, elapsed: float, max_seconds: float) -> float:
    """Cosine decay of the learning rate to 5% over the run's step or time budget.

    Progress is the larger of the step and wall-clock fractions, so a run
    limited by time still ends with a small learning rate.
    """
    p = min(1.0, max(step / max_steps, elapsed / max_seconds))
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * p))


def _optimise(opt: torch.optim.Optimizer, params: list, loss: torch.Tensor, *, lr: float,
              grad_clip: float) -> float:
    """One optimiser step on ``loss`` at learning rate ``lr``, gradients clipped; returns the loss."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    return float(loss.item())


@dataclass
class FitResult:
    """Outcome of :func:`fit`: best nets (by validation BC) and the history."""

    f: torch.nn.Module
    g: torch.nn.Module
    config: NetConfig
    hparams: HParams
    metrics: dict[str, Any]
    history: dict[str, list[float]] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0


def _device(device: str | None) -> str:
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def fit(
    kind: str,
    train_pairs: Sequence[Pair],
    valid_pairs: Sequence[Pair],
    *,
    config: NetConfig | None = None,
    hparams: HParams | None = None,
    stats: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    seed: int = 0,
    max_steps: int = 3000,
    max_seconds: float = 300.0,
    eval_every: int = 100,
    patience: int = 5,
    device: str | None = None,
    dhs: tuple[torch.nn.Module, torch.nn.Module] | None = None,
) -> FitResult:
    """Train one model pair with early stopping on validation BC.

    Parameters
    ----------
    kind : {'dhs', 'pse'}
    train_pairs, valid_pairs : sequence of Pair
        Aligned pairs (``midi_w``/``audio_w`` set) for DHS; any for PSE.
    config, hparams : optional
        Architecture and optimisation settings; defaults per kind.
    stats : dict, optional
        ``{'audio': (mean, std), 'midi': (mean, std)}`` z-score statistics;
        computed from ``train_pairs`` when omitted.
    seed : int
    max_steps, max_seconds : int, float
        Stop after this many minibatches or seconds, whichever comes first.
    eval_every, patience : int
        Validate every ``eval_every`` steps; stop after ``patience``
        validations without a lower BC.  The best nets are returned.
    device : str, optional
        Torch device; CUDA when available.
    dhs : (DHSNet, DHSNet), optional
        Trained DHS nets (f, g): the front end of a pooled-hash PSE
        (``config.lags``), which :func:`fit_pooled` trains.
    """
    config = config or default_config(kind)
    hp = hparams or default_hparams(kind)
    if config.kind != kind:
        raise ParameterError(f"config.kind={config.kind!r} does not match kind={kind!r}")
    if not train_pairs or not valid_pairs:
        raise ParameterError(
            f"fit needs training and validation pairs, got {len(train_pairs)} and "
            f"{len(valid_pairs)}; check the split column of the truth file"
        )
    dev = _device(device)
    if config.lags:
        if dhs is None:
            raise ParameterError(
                "a pooled-hash PSE (config.lags) is built on trained DHS nets; train DHS first "
                "(kind='both') or pass the DHS model's directory"
            )
        return fit_pooled(train_pairs, valid_pairs, dhs=dhs, config=config, hparams=hp, seed=seed,
                          max_steps=max_steps, max_seconds=max_seconds, eval_every=eval_every,
                          patience=patience, device=dev)
    if stats is None:
        stats = dict(audio=zscore_stats(p.audio for p in train_pairs),
                     midi=zscore_stats(p.midi for p in train_pairs))
    torch.manual_seed(seed)
    f, g = build_net(config), build_net(config)
    if config.shared:
        share_weights(g, f)
    f.front.set_stats(*stats["audio"])
    g.front.set_stats(*stats["midi"])
    f.to(dev)
    g.to(dev)
    params = list({id(p): p for p in (*f.parameters(), *g.parameters())}.values())
    if hp.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=hp.lr)
    elif hp.optimizer == "rmsprop":
        opt = torch.optim.RMSprop(params, lr=hp.lr)
    else:
        raise ParameterError(f"optimizer={hp.optimizer!r} must be 'adam' or 'rmsprop'")
    rng = np.random.default_rng(seed)
    t0 = time.monotonic()
    hist: dict[str, list[float]] = dict(step=[], loss=[], val_step=[], val_bc=[])
    best_bc, best_state, best_metrics, bad, running = math.inf, None, None, 0, []
    step = 0
    aligned = [p for p in train_pairs if p.audio_w is not None]
    use_aux = kind == "pse" and hp.aux > 0 and config.aux_bits > 0
    if use_aux and not aligned:
        log.warning("no aligned training pairs: PSE trains without its auxiliary hash loss")
        use_aux = False
    for step in range(1, max_steps + 1):
        if kind == "dhs":
            loss = _aligned_loss(f, g, aligned, rng=rng, hp=hp, batch=hp.batch, crop=hp.crop, device=dev)
        else:
            xa, ma, xm, mm = sequence_batch(train_pairs, rng=rng, batch=hp.batch, audio_frames=hp.audio_frames,
                                            midi_frames=hp.midi_frames, transpose=hp.transpose,
                                            extra_audio=hp.negatives if hp.loss == "nce" else 0)
            fa = f(torch.from_numpy(xa).to(dev), torch.from_numpy(ma).to(dev))
            gm = g(torch.from_numpy(xm).to(dev), torch.from_numpy(mm).to(dev))
            if hp.loss == "nce":
                loss = nce_loss(fa, gm, temperature=hp.temperature)
            else:  # every swap within the batch is a negative: B(B-1) of them per step
                i, j = torch.meshgrid(torch.arange(hp.batch), torch.arange(hp.batch), indexing="ij")
                off = i != j
                loss = pair_loss(fa, gm, fa[i[off]], gm[j[off]], alpha=hp.alpha, margin=hp.margin)
            if use_aux:
                loss = loss + hp.aux * _aligned_loss(f, g, aligned, rng=rng, hp=hp, batch=32,
                                                     crop=hp.aux_crop, device=dev)
        lr = hp.lr * _lr_scale(step, max_steps, time.monotonic() - t0, max_seconds)
        running.append(_optimise(opt, params, loss, lr=lr, grad_clip=hp.grad_clip))
        out_of_time = time.monotonic() - t0 > max_seconds
        if step % eval_every == 0 or step == max_steps or out_of_time:
            hist["step"].append(step)
            hist["loss"].append(float(np.mean(running)))
            running = []
            m = validate(kind, f, g, valid_pairs, device=dev, seed=seed)
            hist["val_step"].append(step)
            hist["val_bc"].append(m["bc"])
            log.info("%s step %d loss %.4f val BC %.4f", kind, step, hist["loss"][-1], m["bc"])
            if m["bc"] < best_bc - 1e-6:
                best_bc, best_metrics, bad = m["bc"], m, 0
                best_state = (copy.deepcopy(f.state_dict()), copy.deepcopy(g.state_dict()))
            else:
                bad += 1
            if bad >= patience or out_of_time:
                break
    assert best_state is not None and best_metrics is not None
    f.load_state_dict(best_state[0])
    g.load_state_dict(best_state[1])
    f.eval()
    g.eval()
    return FitResult(f.cpu(), g.cpu(), config, hp, best_metrics, hist, step, time.monotonic() - t0)


def _pad_steps(hs: Sequence[np.ndarray], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, m = pad_batch(hs, n_bins=hs[0].shape[1])
    return torch.from_numpy(x).to(device), torch.from_numpy(m).to(device)


def _by_chunks(fn: Callable, hs: Sequence[np.ndarray], device: str, chunk: int = 64) -> np.ndarray:
    """``fn(steps, mask)`` over padded chunks of step-hash sequences, rows concatenated."""
    with torch.no_grad():
        return np.concatenate([fn(*_pad_steps(hs[i:i + chunk], device)).cpu().numpy()
                               for i in range(0, len(hs), chunk)])


def _embed_steps(net: torch.nn.Module, hs: Sequence[np.ndarray], device: str) -> np.ndarray:
    """Embeddings ``(n, dim)`` of step-hash sequences by a pooled-hash PSE's head."""
    return _by_chunks(net.embed_steps, hs, device)


def fit_head(net: torch.nn.Module, audio_steps: Sequence[np.ndarray], midi_steps: Sequence[np.ndarray],
             *, dims: int, shrink: float, device: str = "cpu") -> None:
    """Set a pooled-hash PSE's output layer in closed form from matched pairs.

    With the current attention, the pooled statistics of the audio steps
    are z-scored and whitened by PCA (``dims`` components); in that space,
    the output keeps the directions along which matched MIDI and audio
    differ least relative to how previews differ from each other: the
    eigenvectors of ``S_w + shrink * I`` with the smallest eigenvalues, where
    ``S_w`` is the covariance of the matched differences (linear
    discriminant analysis with one class per pair; the preview covariance
    is the identity after whitening).  Each is scaled by
    ``1 / sqrt(eigenvalue)``.

    Parameters
    ----------
    net : PooledHashPSENet
    audio_steps, midi_steps : sequence of np.ndarray [shape=(T_i, step_dim)]
        Step hashes of matched previews and MIDI sequences, pair i in row i.
    dims : int
        PCA dimensions kept before the discriminant step (capped by the
        number of pairs).
    shrink : float
        Added to the whitened matched-difference covariance's diagonal.
    """
    pa = _by_chunks(net.pooled, audio_steps, device).astype(np.float64)
    pm = _by_chunks(net.pooled, midi_steps, device).astype(np.float64)
    mu, sd = pa.mean(0), pa.std(0) + 1e-6
    za, zm = (pa - mu) / sd, (pm - mu) / sd
    k = max(1, min(dims, len(za) - 1, za.shape[1]))
    _, sv, vt = np.linalg.svd(za, full_matrices=False)
    white = vt[:k].T / np.maximum(sv[:k] / np.sqrt(len(za)), 1e-6)[None]  # (pooled_dim, k)
    diff = (zm - za) @ white
    lam, vec = np.linalg.eigh(diff.T @ diff / len(diff) + shrink * np.eye(k))  # ascending
    n_out = min(net.cfg.out_dim, k)
    proj = np.zeros((za.shape[1], net.cfg.out_dim))
    proj[:, :n_out] = white @ (vec[:, :n_out] / np.sqrt(lam[:n_out])[None])
    weight = proj / sd[:, None]
    with torch.no_grad():
        net.out.weight.copy_(torch.from_numpy(weight.T.astype(np.float32)))
        net.out.bias.copy_(torch.from_numpy((-(mu / sd) @ proj).astype(np.float32)))


def fit_pooled(
    train_pairs: Sequence[Pair],
    valid_pairs: Sequence[Pair],
    *,
    dhs: tuple[torch.nn.Module, torch.nn.Module],
    config: NetConfig,
    hparams: HParams,
    seed: int = 0,
    max_steps: int = 3000,
    max_seconds: float = 300.0,
    eval_every: int = 100,
    patience: int = 5,
    device: str = "cpu",
) -> FitResult:
    """Train a pooled-hash PSE pair on trained DHS nets.

    The DHS nets ``dhs = (f, g)`` become the front ends (frozen; with their
    z-score statistics).  Their step hashes of every pair are computed once.
    The attention starts uniform and the output layer is fitted in closed
    form (:func:`fit_head`); then the attention and output layer, one set
    for both modalities, are fine-tuned with the contrastive loss
    (``hparams.loss`` must be 'nce'), ``hparams.negatives`` extra previews per
    batch, and early stopping on validation BC, which is also measured
    before the first step: the closed-form nets are kept unless fine-tuning
    beats them.  Arguments are as for :func:`fit`.
    """
    if hparams.loss != "nce":
        raise ParameterError(f"a pooled-hash PSE trains with loss='nce', got {hparams.loss!r}")
    if dhs[0].cfg != config.dhs_config():
        raise ParameterError(
            f"the PSE's front end {config.dhs_config()} differs from the DHS nets' {dhs[0].cfg}; "
            "give the PSE config the DHS model's filters, convs_per_group, pool_freq, dense, "
            "step_dim = its bits, and shared"
        )
    torch.manual_seed(seed)
    f, g = build_net(config), build_net(config)
    f.dhs.load_state_dict(dhs[0].state_dict())
    g.dhs.load_state_dict(dhs[1].state_dict())
    for name in ("att_w", "att_v", "out"):  # one head: both modalities embed into one space
        setattr(g, name, getattr(f, name))
    for p in (*f.dhs.parameters(), *g.dhs.parameters()):
        p.requires_grad_(False)
    f.to(device)
    g.to(device)
    t0 = time.monotonic()
    ha = _run(f.dhs, [p.audio for p in train_pairs], device=device)
    hm = _run(g.dhs, [p.midi for p in train_pairs], device=device)
    va = _run(f.dhs, [p.audio for p in valid_pairs], device=device)
    vm = _run(g.dhs, [p.midi for p in valid_pairs], device=device)
    aug: list[np.ndarray] = []
    if hparams.augment:  # one augmented copy of each training preview, for the head and fine-tuning
        aug_rng = np.random.default_rng([seed, 1])
        aug = _run(f.dhs, [augment_audio(p.audio, aug_rng) for p in train_pairs], device=device)
    fit_head(f, ha + aug, hm + (hm if aug else []), dims=hparams.pca_dims, shrink=hparams.shrink,
             device=device)
    head = [*f.att_w.parameters(), *f.att_v.parameters(), *f.out.parameters()]
    opt = torch.optim.Adam(head, lr=hparams.lr)
    rng = np.random.default_rng(seed)
    hist: dict[str, list[float]] = dict(step=[], loss=[], val_step=[], val_bc=[])
    best_bc, best_state, best_metrics, bad, running = math.inf, None, None, 0, []
    n, b = len(train_pairs), min(hparams.batch, len(train_pairs))
    step = 0
    while True:
        out_of_time = time.monotonic() - t0 > max_seconds
        if step % eval_every == 0 or step == max_steps or out_of_time:
            if running:
                hist["step"].append(step)
                hist["loss"].append(float(np.mean(running)))
                running = []
            m = _embedding_metrics(_embed_steps(f, va, device), _embed_steps(g, vm, device))
            hist["val_step"].append(step)
            hist["val_bc"].append(m["bc"])
            log.info("pse step %d val BC %.4f top-1 %.3f", step, m["bc"], m["top1"])
            if m["bc"] < best_bc - 1e-6:
                best_bc, best_metrics, bad = m["bc"], m, 0
                best_state = copy.deepcopy(f.state_dict())
            else:
                bad += 1
            if bad >= patience or out_of_time or step >= max_steps:
                break
        step += 1
        idx = rng.choice(n, size=b, replace=False)
        others = np.setdiff1d(np.arange(n), idx)
        extra = rng.choice(others, size=hparams.negatives, replace=others.size < hparams.negatives) \
            if hparams.negatives and others.size else np.zeros(0, int)
        fa = f.embed_steps(*_pad_steps([aug[i] if aug and rng.random() < hparams.augment else ha[i]
                                        for i in (*idx, *extra)], device))
        gm = g.embed_steps(*_pad_steps([hm[i] for i in idx], device))
        loss = nce_loss(fa, gm, temperature=hparams.temperature)
        lr = hparams.lr * _lr_scale(step, max_steps, time.monotonic() - t0, max_seconds)
        running.append(_optimise(opt, head, loss, lr=lr, grad_clip=hparams.grad_clip))
    assert best_state is not None and best_metrics is not None
    f.load_state_dict(best_state)  # g shares f's head and keeps its own DHS front end
    f.eval()
    g.eval()
    return FitResult(f.cpu(), g.cpu(), config, hparams, best_metrics, hist, step, time.monotonic() - t0)


def _sample_trial(
    kind: str, rng: np.random.Generator, base_cfg: NetConfig, base_hp: HParams
) -> tuple[NetConfig, HParams]:
    """A random variation of the base settings (lr, alpha, m, depth, width).

    For a pooled-hash PSE, whose depth and width are its DHS front end's:
    the fine-tuning lr, the attention width, and the closed-form fit's PCA
    dimensions and shrinkage.
    """
    if base_cfg.lags:
        cfg = dataclasses.replace(base_cfg, attention_dim=int(rng.choice([16, 32, 64])))
        return cfg, dataclasses.replace(base_hp, lr=float(10 ** rng.uniform(-4.5, -3.0)),
                                        pca_dims=int(rng.choice([256, 384, 512])),
                                        shrink=float(rng.choice([0.3, 1.0, 3.0])))
    lr = float(10 ** rng.uniform(-3.7, -2.5))
    width = int(rng.choice([256, 512, 768]))
    if kind == "dhs":
        alpha = float(rng.uniform(2.0, 8.0))
        margin = float(rng.uniform(2.5, 5.5))
        depth = int(rng.choice([1, 2]))
        cfg = dataclasses.replace(base_cfg, dense=(width // 2,) * depth)
    else:
        alpha = float(rng.uniform(1.0, 5.0))
        margin = float(rng.uniform(0.6, 1.6))
        depth = int(rng.choice([1, 2, 3]))
        filters = tuple(int(base_cfg.filters[0]) * 2 ** k for k in range(depth))
        cfg = dataclasses.replace(base_cfg, filters=filters, dense=(width, width))
    return cfg, dataclasses.replace(base_hp, lr=lr, alpha=alpha, margin=margin)


def random_search(
    kind: str, train_pairs: Sequence[Pair], valid_pairs: Sequence[Pair], *,
    n_trials: int, csv_path: str | Path, seed: int = 0, config: NetConfig | None = None,
    hparams: HParams | None = None, **fit_kwargs: Any,
) -> FitResult:
    """Random search over lr, alpha, margin, depth and width, scored by BC.

    Trial 0 is the base configuration (``config``/``hparams``, defaults per
    kind); the others vary it.  Every trial is written to
    ``csv_path`` (one row per trial); the best trial's result is returned.
    """
    rng = np.random.default_rng(seed + 1000)
    rows, best = [], None
    base_cfg, base_hp = config or default_config(kind), hparams or default_hparams(kind)
    for t in range(n_trials):
        cfg, hp = (base_cfg, base_hp) if t == 0 else _sample_trial(kind, rng, base_cfg, base_hp)
        res = fit(kind, train_pairs, valid_pairs, config=cfg, hparams=hp, seed=seed, **fit_kwargs)
        rows.append(dict(trial=t, bc=res.metrics["bc"], lr=hp.lr, alpha=hp.alpha,
                         margin=hp.margin, filters=" ".join(map(str, cfg.filters)),
                         dense=" ".join(map(str, cfg.dense)), attention=cfg.attention_dim,
                         pca_dims=hp.pca_dims, shrink=hp.shrink, steps=res.steps,
                         seconds=round(res.seconds, 1)))
        if best is None or res.metrics["bc"] < best.metrics["bc"]:
            best = res
    Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert best is not None
    return best


def train_models(
    query_store: Any,
    db_store: Any,
    truth: Any,
    *,
    out_dir: str | Path,
    kind: str = "both",
    seed: int = 0,
    max_minutes: float = 10.0,
    search: int = 0,
    max_steps: int | None = None,
    eval_every: int = 100,
    patience: int = 10,
    min_confidence: float = 0.5,
    configs: dict[str, NetConfig] | None = None,
    hparams: dict[str, HParams] | None = None,
    device: str | None = None,
    report: bool = True,
    progress: Callable[[str], None] | None = None,
    align_store: Any = None,
    dhs_dir: str | Path | None = None,
    known: dict | None = None,
) -> dict[str, Path]:
    """Train, validate and export DHS and/or PSE models for one MIDI modality.

    Parameters
    ----------
    query_store, db_store : store or URL
        MIDI query store (``midi-synth`` or ``midi-pianoroll``) and audio
        database store, featurized with the same parameters.
    truth : path or rows
        ``split.csv`` / ``truth.csv`` (see :func:`msdmatch.models.pairs.read_truth`).
    out_dir : path
        Models are written to ``<out_dir>/<kind>-<midi modality>/``
        (``audio.onnx``, ``midi.onnx``, ``model.json``, ``training.png`` and,
        with ``search``, ``trials.csv``).
    kind : {'both', 'dhs', 'pse'}
    seed : int
    max_minutes : float
        Wall-clock budget for all training, split 3:1 between DHS and PSE
        (a pooled-hash PSE trains only its head on the DHS nets' step
        hashes) and evenly between trials.
    search : int
        Number of random-search trials per kind (0: train the defaults once).
    max_steps : int, optional
        Step limit per training run (default: by time only, capped at 20000).
    eval_every, patience : int
        Early stopping on validation BC.
    min_confidence : float
        DTW confidence threshold for DHS training pairs.
    configs, hparams : dict, optional
        Per-kind overrides of the architecture and training settings.
    device : str, optional
    report : bool
        Write the training report PNG.
    progress : callable, optional
        Called with one-line status messages.
    align_store : store or URL, optional
        Another featurization of the same MIDI files (e.g. ``midi-synth``)
        used to align the DHS training pairs; for piano-roll models.
    dhs_dir : path, optional
        A trained DHS model of the same modality (its ``weights.npz``), the
        front end of a pooled-hash PSE when ``kind='pse'``; default
        ``<out_dir>/dhs-<midi modality>``.  With ``kind='both'`` the DHS
        trained in the same call is used.
    known : dict, optional
        Track id -> known time map of a generated preview
        (:func:`msdmatch.demo.corpus.time_maps`); those pairs are aligned by
        it instead of DTW (:func:`msdmatch.models.pairs.align_pairs`).

    Returns
    -------
    dirs : dict
        ``{'dhs': Path, 'pse': Path}`` for the kinds trained.
    """
    from msdmatch.models.export import export_model, load_nets

    kinds = {"both": ["dhs", "pse"], "pse": ["pse"], "dhs": ["dhs"]}.get(kind)
    if kinds is None:
        raise ParameterError(f"kind={kind!r} must be 'both', 'dhs' or 'pse'")
    say = progress or (lambda msg: log.info(msg))
    from msdmatch.io.outputs import check_out_dir, mark_out_dir

    check_out_dir(str(out_dir), kind="models")  # a foreign folder is refused before any work
    qs, ds = as_store(query_store), as_store(db_store)
    mark_out_dir(str(out_dir), kind="models")
    pairs = collect_pairs(qs, ds, truth, splits=("train", "valid"))
    train = [p for p in pairs if p.split == "train"]
    valid = [p for p in pairs if p.split == "valid"]
    say(f"{len(train)} training and {len(valid)} validation pairs")
    stats = dict(audio=zscore_stats(p.audio for p in train), midi=zscore_stats(p.midi for p in train))
    desc: dict[str, Any] = dict(query_store=str(getattr(qs, "url", "in-memory")),
                                db_store=str(getattr(ds, "url", "in-memory")),
                                query_modality=qs.modality, n_train_pairs=len(train),
                                n_valid_pairs=len(valid), seed=seed)
    # aligned pairs train DHS and the PSE auxiliary head, and place PSE's MIDI crops
    t0 = time.monotonic()
    guides = None
    if align_store is not None:
        gs = as_store(align_store)
        gidx = {k: i for i, k in enumerate(gs.ids)}
        guides = {p.query_id: gs.sequence(gidx[p.query_id]) for p in pairs if p.query_id in gidx}
    kept, rejected = align_pairs(pairs, min_confidence=min_confidence, guides=guides, known=known,
                                 frame_rate=qs.params.frame_rate)
    n_known = sum(p.track_id in (known or {}) for p in kept)
    say(f"aligned {len(pairs)} pairs in {time.monotonic() - t0:.1f}s: kept {len(kept)} ({n_known} by their "
        f"known time map), rejected {len(rejected)} with confidence < {min_confidence}")
    desc.update(n_aligned=len(kept), n_known_alignment=n_known, n_rejected=len(rejected),
                min_confidence=min_confidence)
    out = Path(out_dir)
    share = {k: SHARE[k] / sum(SHARE[j] for j in kinds) for k in kinds}
    result = {}
    dhs_nets = None
    for k in kinds:
        if k == "dhs":
            tr = [p for p in kept if p.split == "train"]
            va = [p for p in kept if p.split == "valid"]
        else:
            tr, va = train, valid
        mdir = out / f"{k}-{qs.modality}"
        budget = max_minutes * 60.0 * share[k] / max(search, 1)
        cfg = (configs or {}).get(k) or default_config(k, midi_modality=qs.modality)
        hp = (hparams or {}).get(k) or default_hparams(k, midi_modality=qs.modality)
        if cfg.lags and dhs_nets is None:
            dhs_nets = load_nets(Path(dhs_dir) if dhs_dir else out / f"dhs-{qs.modality}",
                                 modality=qs.modality, params=qs.params)
        fit_kw = dict(stats=stats, max_steps=max_steps or 20000, max_seconds=budget,
                      eval_every=eval_every, patience=patience, device=device, dhs=dhs_nets)
        say(f"training {k} on {len(tr)} pairs (validation {len(va)}), budget {budget:.0f}s per run")
        if search:
            res = random_search(k, tr, va, n_trials=search, csv_path=mdir / "trials.csv",
                                seed=seed, config=cfg, hparams=hp, **fit_kw)
        else:
            res = fit(k, tr, va, config=cfg, hparams=hp, seed=seed, **fit_kw)
        say(f"{k}: {res.steps} steps in {res.seconds:.0f}s, validation BC {res.metrics['bc']:.3f}")
        if k == "dhs":
            dhs_nets = (res.f, res.g)
        real = dict(audio=[p.audio for p in va[:3]], midi=[p.midi[:2000] for p in va[:3]])
        metrics = {key: v for key, v in res.metrics.items() if np.isscalar(v)}
        export_model(res.f, res.g, out_dir=mdir, name=f"{k}-{qs.modality}",
                     midi_modality=qs.modality, params=qs.params, stats=stats,
                     metrics=metrics, config=res.config,
                     training=dict(desc, hparams=dataclasses.asdict(res.hparams),
                                   steps=res.steps, seconds=round(res.seconds, 1)),
                     real_inputs=real)
        # the hub corrections of the prune and the rerank are measured against the training queries
        from msdmatch.models.reference import write_dhs_reference, write_hub_reference

        (write_hub_reference if k == "pse" else write_dhs_reference)(
            mdir, list({p.query_id: p.midi for p in train}.values()))
        if report:
            from msdmatch.models.report import training_report

            training_report(res.history, res.metrics["matched"], res.metrics["unmatched"],
                            path=mdir / "training.png", title=f"{k}-{qs.modality}",
                            bc=res.metrics["bc"], hamming=(k == "dhs"))
        result[k] = mdir
    return result
