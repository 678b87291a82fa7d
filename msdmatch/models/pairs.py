"""Training data for the DHS and PSE models, read from two feature stores.

Conventions
-----------
* Sequences are float32 ``(frames, n_bins)`` store features at the store's
  frame rate (about 21.5 frames/s); the query store holds whole MIDI songs,
  the database store 30 s audio previews taken at a random offset, so a
  preview is (up to tempo drift) a subsequence of its query.
* ``truth`` rows are ``(query_id, track_id, split)`` with split in
  ``train``/``valid``/``test``; rows with an empty query id (distractors) are
  ignored.
* DHS pairs are *aligned*: :func:`align_pairs` runs cosine DTW on each matched
  pair, keeps pairs with confidence >= 0.5 and warps the MIDI sequence onto
  the audio frames, so row ``t`` of both warped arrays is one aligned frame
  pair; generated previews may be aligned by their known time maps instead.
  PSE pairs need no alignment (random crops).
* Negatives are random swaps: the audio of one pair against the MIDI of
  another.

This module is torch-free; it only prepares numpy arrays.
"""
from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from msdmatch.errors import ParameterError, StoreError
from msdmatch.models.augment import augment_audio
from msdmatch.params import DEFAULT_PARAMS, MODALITIES, FeatureParams

__all__ = [
    "MemoryStore",
    "Pair",
    "as_store",
    "read_truth",
    "collect_pairs",
    "align_pairs",
    "zscore_stats",
    "aligned_batch",
    "sequence_batch",
    "pad_batch",
    "transpose_bins",
    "generated_corpus",
]

SPLITS = ("train", "valid", "test")


@dataclass
class MemoryStore:
    """An in-memory feature store with the read interface of ``msdmatch.io.store``.

    Parameters
    ----------
    ids : list of str
        Item ids.
    sequences : list of np.ndarray [shape=(frames, n_bins)]
        Features of each item.
    modality : str
        One of :data:`msdmatch.params.MODALITIES`.
    params : FeatureParams
        Feature parameters the sequences were computed with.
    """

    ids: list[str]
    sequences: list[np.ndarray]
    modality: str = "audio"
    params: FeatureParams = DEFAULT_PARAMS

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ParameterError(f"modality={self.modality!r} must be one of {MODALITIES}")
        if len(self.ids) != len(self.sequences):
            raise ParameterError(
                f"{len(self.ids)} ids but {len(self.sequences)} sequences; they must match"
            )

    @property
    def n(self) -> int:
        """Number of items."""
        return len(self.ids)

    @property
    def offsets(self) -> np.ndarray:
        """``(n + 1,)`` int64 frame offsets of the concatenated features."""
        return np.concatenate([[0], np.cumsum([len(s) for s in self.sequences])]).astype(np.int64)

    def sequence(self, i: int) -> np.ndarray:
        """Features of item ``i`` as float32 ``(frames, n_bins)``."""
        return np.asarray(self.sequences[i], dtype=np.float32)


def as_store(store: Any, *, storage_options: dict | None = None) -> Any:
    """Open ``store`` if it is a path or URL; return store objects unchanged."""
    if isinstance(store, (str, os.PathLike)):
        from msdmatch.io import store as store_mod

        opener = getattr(store_mod, "open_store", None) or store_mod.Store
        return opener(os.fspath(store), storage_options=storage_options)
    for attr in ("ids", "sequence", "modality", "params"):
        if not hasattr(store, attr):
            raise ParameterError(
                f"store={type(store).__name__} has no {attr!r}; pass a store URL or an "
                "object from msdmatch.io.store.open_store"
            )
    return store


def _default_split(query_id: str) -> str:
    """Deterministic 80/10/10 split of a query id (used when none is given)."""
    h = int(hashlib.sha1(query_id.encode()).hexdigest()[:8], 16) % 10
    return "valid" if h == 8 else "test" if h == 9 else "train"


def read_truth(truth: Any) -> list[tuple[str, str, str]]:
    """Normalise ground truth to ``[(query_id, track_id, split), ...]``.

    Parameters
    ----------
    truth : path, or iterable of tuples or mappings
        A CSV with columns ``query_id, track_id`` and optionally ``split``
        (``split.csv`` of the demo corpus, or ``truth.csv``), or rows.
        Without a split, queries are split 80/10/10 by a hash of their id.

    Returns
    -------
    rows : list of (str, str, str)
        Distractor rows (empty query id) are dropped.
    """
    if isinstance(truth, (str, os.PathLike)):
        with open(truth, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"query_id", "track_id"} - set(reader.fieldnames or [])
            if missing:
                raise ParameterError(
                    f"truth={os.fspath(truth)!r} lacks columns {sorted(missing)}; expected "
                    "a CSV with header query_id,track_id[,split]"
                )
            raw: Iterable[Any] = list(reader)
    else:
        raw = truth
    rows = []
    for r in raw:
        if isinstance(r, dict):
            q, t, s = r.get("query_id") or "", r.get("track_id") or "", r.get("split") or ""
        else:
            q, t = r[0], r[1]
            s = r[2] if len(r) > 2 else ""
        q, t, s = str(q).strip(), str(t).strip(), str(s).strip()
        if not q:
            continue
        s = s or _default_split(q)
        if s not in SPLITS:
            raise ParameterError(f"split={s!r} for query {q!r} must be one of {SPLITS}")
        rows.append((q, t, s))
    return rows


@dataclass
class Pair:
    """One matched (MIDI query, audio track) pair.

    ``midi``/``audio`` are the raw sequences; after :func:`align_pairs`,
    ``midi_w``/``audio_w`` hold the aligned frames ``(L, n_bins)`` and
    ``confidence`` the DTW confidence.
    """

    query_id: str
    track_id: str
    split: str
    midi: np.ndarray
    audio: np.ndarray
    confidence: float = float("nan")
    midi_w: np.ndarray | None = field(default=None, repr=False)
    audio_w: np.ndarray | None = field(default=None, repr=False)
    midi_span: tuple[int, int] | None = None


def collect_pairs(
    query_store: Any, db_store: Any, truth: Any, *, splits: Sequence[str] = SPLITS
) -> list[Pair]:
    """Load the matched sequence pairs named by ``truth``.

    Parameters
    ----------
    query_store, db_store : store or URL
        MIDI query store and audio database store.
    truth : see :func:`read_truth`
    splits : sequence of str
        Splits to keep.

    Returns
    -------
    pairs : list of Pair
        Rows whose ids are missing from a store (e.g. failed featurization)
        are skipped.
    """
    qs, ds = as_store(query_store), as_store(db_store)
    if ds.modality != "audio" or qs.modality == "audio":
        raise StoreError(
            f"query store has modality {qs.modality!r} and db store {ds.modality!r}; "
            "train needs a MIDI query store and an audio database store (in that order)"
        )
    if qs.params.to_dict() != ds.params.to_dict():
        raise StoreError(
            "query and db stores were featurized with different parameters: "
            + ", ".join(qs.params.diff(ds.params))
        )
    qidx = {k: i for i, k in enumerate(qs.ids)}
    didx = {k: i for i, k in enumerate(ds.ids)}
    pairs = []
    for q, t, s in read_truth(truth):
        if s in splits and q in qidx and t in didx:
            pairs.append(Pair(q, t, s, qs.sequence(qidx[q]), ds.sequence(didx[t])))
    return pairs


def align_pairs(
    pairs: list[Pair], *, min_confidence: float = 0.5, min_frames: int = 16,
    guides: dict[str, np.ndarray] | None = None, known: dict | None = None,
    frame_rate: float = DEFAULT_PARAMS.frame_rate,
) -> tuple[list[Pair], list[Pair]]:
    """Align each pair with cosine DTW and keep the confident ones.

    Parameters
    ----------
    pairs : list of Pair
    min_confidence : float
        Keep pairs with ``dtw_confidence(score) >= min_confidence`` (thesis: 0.5).
    min_frames : int
        Also reject alignments covering fewer audio frames than this.
    guides : dict, optional
        Query id -> features of the same MIDI in another representation at the
        same frame rate, aligned in place of ``midi`` (piano rolls hold no
        harmonics, so their DTW against audio is unreliable: align the
        synthesized CQT and carry the path over).
    known : dict, optional
        Track id -> function from preview seconds ``(n,)`` to song seconds
        ``(n,)``: pairs whose alignment is known (generated previews,
        :func:`msdmatch.demo.corpus.time_maps`) are aligned by it and kept
        whatever their DTW confidence (``confidence`` 1), so hard renditions
        that DTW misaligns still train DHS.
    frame_rate : float
        Frames per second of both stores (for ``known``).

    Returns
    -------
    kept, rejected : list of Pair
        Both have ``confidence`` set; kept pairs have ``midi_w``/``audio_w``
        of shape ``(L, n_bins)``: for every audio frame ``j`` on the path,
        the audio frame and the first MIDI frame aligned to it.
    """
    from msdmatch.kernels.dtw import cosine_dtw, dtw_confidence

    kept, rejected = [], []
    for p in pairs:
        if len(p.midi) < 2 or len(p.audio) < 2:
            p.confidence = 0.0
            rejected.append(p)
            continue
        song = known[p.track_id](np.arange(len(p.audio)) / frame_rate) if p.track_id in (known or {}) else None
        if song is not None:  # audio frame js[k] lies at MIDI frame rows[k]
            p.confidence = 1.0
            pos = np.round(song * frame_rate).astype(np.int64)
            js = np.flatnonzero((pos >= 0) & (pos < len(p.midi)))
            rows = pos[js]
        else:
            guide = guides.get(p.query_id) if guides else None
            score, path = cosine_dtw(p.midi if guide is None else guide, p.audio, return_path=True)
            p.confidence = float(dtw_confidence(score))
            path = np.asarray(path)
            js, first = np.unique(path[:, 1], return_index=True)
            rows = np.minimum(path[first, 0], len(p.midi) - 1)
        if p.confidence < min_confidence or len(js) < min_frames:
            rejected.append(p)
            continue
        p.audio_w = p.audio[js]
        p.midi_w = p.midi[rows]
        p.midi_span = (int(rows.min()), int(rows.max()) + 1)
        kept.append(p)
    return kept, rejected


def zscore_stats(sequences: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin mean and standard deviation over all frames, ``(n_bins,)`` each.

    Call with training-split sequences only.
    """
    total, sq, n = 0.0, 0.0, 0
    for s in sequences:
        s64 = np.asarray(s, dtype=np.float64)
        total = total + s64.sum(axis=0)
        sq = sq + (s64 ** 2).sum(axis=0)
        n += len(s64)
    if n == 0:
        raise ParameterError("zscore_stats got no frames; is the training split empty?")
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean ** 2, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def pad_batch(seqs: Sequence[np.ndarray], *, n_bins: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad sequences to one ``(B, T_max, n_bins)`` array and a ``(B, T_max)`` mask."""
    t = max(1, max((len(s) for s in seqs), default=1))
    x = np.zeros((len(seqs), t, n_bins), np.float32)
    m = np.zeros((len(seqs), t), np.float32)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
        m[i, : len(s)] = 1.0
    return x, m


def _crop(n: int, length: int, rng: np.random.Generator) -> slice:
    if n <= length:
        return slice(0, n)
    start = int(rng.integers(0, n - length + 1))
    return slice(start, start + length)


def transpose_bins(x: np.ndarray, k: int) -> np.ndarray:
    """Shift ``(frames, n_bins)`` features ``k`` semitone bins up (down if negative), zero-filled."""
    if k == 0:
        return x
    y = np.zeros_like(x)
    if k > 0:
        y[:, k:] = x[:, :-k]
    else:
        y[:, :k] = x[:, -k:]
    return y


def _key(rng: np.random.Generator, transpose: int) -> int:
    return int(rng.integers(-transpose, transpose + 1)) if transpose else 0


def aligned_batch(
    pairs: Sequence[Pair], *, rng: np.random.Generator, batch: int = 50, crop: int = 100,
    transpose: int = 0, augment: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aligned crops for DHS: ``(audio, midi, mask)``, ``(B, crop, n_bins)`` x2 and ``(B, crop)``.

    Row ``t`` of ``audio[b]`` and ``midi[b]`` are an aligned frame pair.
    Pairs shorter than ``crop`` are zero-padded (mask 0).  With
    ``transpose``, both sides of a crop are shifted by the same random
    number of bins in ``[-transpose, transpose]``.  Each audio crop is passed
    through :func:`~msdmatch.models.augment.augment_audio` with probability
    ``augment``.
    """
    if not pairs:
        raise ParameterError("aligned_batch got no aligned pairs; did every pair fail alignment?")
    idx = rng.integers(0, len(pairs), size=batch)
    a, m = [], []
    for i in idx:
        p = pairs[int(i)]
        assert p.audio_w is not None and p.midi_w is not None
        sl = _crop(len(p.audio_w), crop, rng)
        k = _key(rng, transpose)
        xa = p.audio_w[sl]
        if augment and rng.random() < augment:
            xa = augment_audio(xa, rng)
        a.append(transpose_bins(xa, k))
        m.append(transpose_bins(p.midi_w[sl], k))
    n_bins = a[0].shape[1]
    xa, mask = pad_batch(a, n_bins=n_bins)
    xm, _ = pad_batch(m, n_bins=n_bins)
    return xa, xm, mask


def _midi_crop(p: Pair, length: int, rng: np.random.Generator) -> slice:
    n = len(p.midi)
    if p.midi_span is None or n <= length or p.midi_span[1] - p.midi_span[0] > length:
        return _crop(n, length, rng)
    lo = max(0, p.midi_span[1] - length)
    hi = min(p.midi_span[0], n - length)
    start = int(rng.integers(lo, hi + 1))
    return slice(start, start + length)


def sequence_batch(
    pairs: Sequence[Pair],
    *,
    rng: np.random.Generator,
    batch: int = 16,
    audio_frames: int = 646,
    midi_frames: int = 1500,
    transpose: int = 0,
    extra_audio: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unaligned random crops for PSE: ``(audio, audio_mask, midi, midi_mask)``.

    Audio crops are up to ``audio_frames`` long (a whole preview by default);
    MIDI crops up to ``midi_frames``.  When a pair was aligned, the MIDI crop
    is placed to contain the aligned region when it fits, so that the crop
    and the preview share content, with a random extension on each side.
    ``transpose`` shifts both sides of a pair as in :func:`aligned_batch`.
    ``extra_audio`` appends that many previews of pairs outside the batch
    (negatives only; none if the batch holds every pair), so the audio
    arrays have ``batch + extra_audio`` rows.
    """
    if not pairs:
        raise ParameterError("sequence_batch got no pairs; is the split empty?")
    idx = rng.integers(0, len(pairs), size=batch)
    a, m = [], []
    for i in idx:
        p = pairs[int(i)]
        k = _key(rng, transpose)
        a.append(transpose_bins(p.audio[_crop(len(p.audio), audio_frames, rng)], k))
        m.append(transpose_bins(p.midi[_midi_crop(p, midi_frames, rng)], k))
    others = np.setdiff1d(np.arange(len(pairs)), idx)
    if extra_audio and others.size:
        for i in rng.choice(others, size=extra_audio, replace=others.size < extra_audio):
            p = pairs[int(i)]
            a.append(transpose_bins(p.audio[_crop(len(p.audio), audio_frames, rng)], _key(rng, transpose)))
    n_bins = a[0].shape[1]
    xa, ma = pad_batch(a, n_bins=n_bins)
    xm, mm = pad_batch(m, n_bins=n_bins)
    return xa, ma, xm, mm


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-8)).astype(np.float32)


def generated_corpus(
    *,
    n_songs: int = 40,
    song_frames: tuple[int, int] = (600, 1200),
    preview_frames: int = 300,
    n_distractors: int = 10,
    n_bins: int = 48,
    seed: int = 0,
    midi_modality: str = "midi-synth",
) -> tuple[MemoryStore, MemoryStore, list[tuple[str, str, str]]]:
    """Generated stores shaped like real features, for tests and dry runs.

    Each song is a sequence of held chords (a few active semitones with
    overtones at +12 and +19 bins) on a dB-like non-negative scale, L2
    normalised per frame.  Its "audio preview" is a contiguous excerpt at a
    random offset with a random tempo change (+-10%), a different overtone
    balance and noise.

    Returns
    -------
    query_store, db_store : MemoryStore
    truth : list of (query_id, track_id, split)
        70/15/15 split over the songs; distractor tracks have no query.
    """
    rng = np.random.default_rng(seed)
    q_ids, q_seqs, d_ids, d_seqs, truth = [], [], [], [], []

    def chord_roll(n: int) -> np.ndarray:
        roll = np.zeros((n, n_bins), np.float32)
        t = 0
        while t < n:
            dur = int(rng.integers(4, 20))
            notes = rng.choice(n_bins - 19, size=int(rng.integers(1, 4)), replace=False)
            roll[t : t + dur, notes] = rng.uniform(0.6, 1.0, size=len(notes))
            t += dur
        return roll

    def render(roll: np.ndarray, overtone: float, noise: float) -> np.ndarray:
        spec = roll.copy()
        spec[:, 12:] += overtone * roll[:, :-12]
        spec[:, 19:] += 0.5 * overtone * roll[:, :-19]
        spec = spec + noise * rng.random(spec.shape).astype(np.float32)
        db = 20 * np.log10(np.maximum(spec, 1e-4))
        db = np.clip(db - db.max(), -80, 0) + 80
        return _normalise(db)

    n_train = int(round(0.7 * n_songs))
    n_valid = int(round(0.15 * n_songs))
    for k in range(n_songs + n_distractors):
        n = int(rng.integers(song_frames[0], song_frames[1] + 1))
        roll = chord_roll(n)
        tid = f"TR{k:06d}"
        stretch = rng.uniform(0.9, 1.1)
        plen = min(n, int(round(preview_frames * stretch)))
        off = int(rng.integers(0, n - plen + 1))
        src = np.clip(np.round(off + np.arange(preview_frames) * stretch).astype(int), 0, n - 1)
        src = src[src < off + plen]
        d_ids.append(tid)
        d_seqs.append(render(roll[src], overtone=rng.uniform(0.3, 0.8), noise=0.02))
        if k < n_songs:
            qid = f"Q{k:05d}"
            q_ids.append(qid)
            q_seqs.append(render(roll, overtone=0.4, noise=0.002))
            split = "train" if k < n_train else "valid" if k < n_train + n_valid else "test"
            truth.append((qid, tid, split))
    qs = MemoryStore(q_ids, q_seqs, modality=midi_modality)
    ds = MemoryStore(d_ids, d_seqs, modality="audio")
    return qs, ds, truth
