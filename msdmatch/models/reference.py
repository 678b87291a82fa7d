"""A PSE model's hub reference: the MIDI vectors its prune penalty is measured against.

See :mod:`msdmatch.kernels.hub`.  :func:`train_models` writes it after
exporting a PSE model, from the training split's queries; it runs the
exported ONNX net, so it needs no torch.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from msdmatch.errors import ModelError
from msdmatch.params import HUB_K, HUB_WEIGHT

#: File name of the reference vectors inside a model directory.
REFERENCE = "reference.npy"


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
    k = min(int(k), len(R))  # a tiny training set
    path = info.dir / REFERENCE
    np.save(path, R.astype(np.float16))
    doc = dict(info.raw, hub={"k": k, "weight": float(weight), "reference": REFERENCE, "n_reference": len(R)})
    (info.dir / "model.json").write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path
