"""A model's hub reference: the MIDI queries its hub correction is measured against.

See :mod:`msdmatch.kernels.hub`.  :func:`train_models` writes it after
exporting each model, from the training split's queries: every one as PSE
vectors (:func:`write_hub_reference`), the first :data:`~msdmatch.params.DHS_HUB_N`
as DHS hash sequences (:func:`write_dhs_reference`).  Both run the exported
ONNX net, so they need no torch.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from msdmatch.errors import ModelError
from msdmatch.params import DHS_HUB_K, DHS_HUB_N, DHS_HUB_WEIGHT, HUB_K, HUB_WEIGHT

#: File name of a PSE model's reference vectors inside its directory.
REFERENCE = "reference.npy"
#: File name of a DHS model's reference hash sequences (flat ``words`` and ``offsets``).
DHS_REFERENCE = "reference.npz"


def write_hub_reference(model_dir: str | Path, midi: Sequence[np.ndarray], *, k: int = HUB_K,
                        weight: float = HUB_WEIGHT) -> Path:
    """Embed ``midi`` with a PSE model's MIDI net and record them as its hub reference.

    Parameters
    ----------
    model_dir : path
        An exported PSE model; its ``model.json`` gains ``hub``.
    midi : sequence of np.ndarray [shape=(n_frames_i, n_bins)]
        One feature sequence per reference query (the training split's queries,
        each once).
    k, weight : int, float
        The penalty's neighbours (at most the reference's size) and weight
        (:mod:`msdmatch.kernels.hub`).

    Returns
    -------
    path : Path
        The reference file, ``(len(midi), embedding_dim)`` float16.
    """
    from msdmatch.io.modelfile import load_model
    from msdmatch.stages.embed import embed_sequences

    info = load_model(model_dir)
    if info.kind != "pse":
        raise ModelError(f"{model_dir}: a hub reference belongs to a PSE model, not a {info.kind!r} one")
    R = np.stack(embed_sequences(list(midi), str(info.midi_onnx))).astype(np.float32)
    R = R[np.all(np.isfinite(R), axis=1)]
    if not len(R):
        raise ModelError(f"{model_dir}: no finite reference vector among {len(midi)} MIDI sequences")
    path = info.dir / REFERENCE
    np.save(path, R.astype(np.float16))
    _record(info, k=k, weight=weight, name=REFERENCE, n=len(R))
    return path


def write_dhs_reference(model_dir: str | Path, midi: Sequence[np.ndarray], *, k: int = DHS_HUB_K,
                        weight: float = DHS_HUB_WEIGHT, n: int = DHS_HUB_N) -> Path:
    """Hash the first ``n`` of ``midi`` with a DHS model's MIDI net and record them as its hub reference.

    Parameters
    ----------
    model_dir : path
        An exported DHS model; its ``model.json`` gains ``hub``.
    midi : sequence of np.ndarray [shape=(n_frames_i, n_bins)]
        One feature sequence per training query, each once.
    k, weight, n : int, float, int
        The correction's reference queries averaged (at most the reference's
        size), its weight and the reference's size (:mod:`msdmatch.kernels.hub`).

    Returns
    -------
    path : Path
        The reference file (``.npz``: ``words`` uint32, ``offsets`` int64).
    """
    from msdmatch.io.modelfile import load_model
    from msdmatch.stages.embed import embed_sequences, pack_bits

    info = load_model(model_dir)
    if info.kind != "dhs":
        raise ModelError(f"{model_dir}: a hash reference belongs to a DHS model, not a {info.kind!r} one")
    hashes = embed_sequences(list(midi)[: int(n)], str(info.midi_onnx), downsample=info.downsample)
    words = [pack_bits(h) for h in hashes if len(h) and np.all(np.isfinite(h))]
    if not words:
        raise ModelError(f"{model_dir}: no usable reference hash sequence among {len(hashes)} MIDI sequences")
    path = info.dir / DHS_REFERENCE
    np.savez(path, words=np.concatenate(words),
             offsets=np.concatenate([[0], np.cumsum([len(w) for w in words])]).astype(np.int64))
    _record(info, k=k, weight=weight, name=DHS_REFERENCE, n=len(words))
    return path


def _record(info, *, k: int, weight: float, name: str, n: int) -> None:
    """Write ``hub`` into the model's ``model.json``; ``k`` is capped at the reference's size."""
    hub = {"k": min(int(k), n), "weight": float(weight), "reference": name, "n_reference": n}
    (info.dir / "model.json").write_text(json.dumps(dict(info.raw, hub=hub), indent=2, sort_keys=False) + "\n")
