"""Reading exported models: ``model.json`` + two ONNX files (torch-free).

A model directory holds ``audio.onnx`` (net f), ``midi.onnx`` (net g) and
``model.json`` (see :mod:`msdmatch.models.export`).  Inputs are named
``features`` (float32 ``(batch, time, n_bins)``, raw store features) and
``mask`` (float32 ``(batch, time)``); the output is ``hashes``
(``(batch, ceil(time / downsample), n_bits)``, bits are ``> 0``) for DHS
models or ``embedding`` (``(batch, embedding_dim)``) for PSE models.

Workers load sessions through :func:`session`, which is cached per process.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msdmatch.errors import FormatMismatchError, ModelError, ParameterError
from msdmatch.params import FORMAT_VERSION, MODALITIES, FeatureParams

__all__ = [
    "ModelInfo",
    "load_model",
    "shipped_model_dir",
    "default_models",
    "check_compatible",
    "session",
    "run_net",
    "load_reference",
    "load_word_reference",
]

_REQUIRED = ("msdmatch_format", "kind", "name", "audio_modality", "midi_modality",
             "feature_params", "zscore", "inputs", "output", "files")


@dataclass(frozen=True)
class ModelInfo:
    """A loaded ``model.json`` with resolved ONNX paths.

    Attributes
    ----------
    dir : Path
        Model directory.
    kind : {'dhs', 'pse'}
    name : str
    audio_modality, midi_modality : str
        ``'audio'`` and ``'midi-synth'`` / ``'midi-pianoroll'``.
    params : FeatureParams
        Feature parameters the model was trained on.
    n_bits, downsample : int or None
        DHS hash width and time downsampling factor.
    embedding_dim : int or None
        PSE embedding size.
    zscore : dict
        ``{'audio': {'mean': [...], 'std': [...]}, 'midi': {...}}`` (already
        baked into the ONNX nets; recorded for reference).
    metrics, training : dict
        Validation metrics and training description.
    inputs : tuple of str
    output : str
    audio_onnx, midi_onnx : Path
    hub : dict or None
        The model's hub correction (:mod:`msdmatch.kernels.hub`): ``k``,
        ``weight`` and ``reference``, the path of its reference (:meth:`reference`):
        MIDI vectors for a PSE model (``.npy``), hash sequences for a DHS model (``.npz``).
    raw : dict
        The whole JSON document.
    """

    dir: Path
    kind: str
    name: str
    audio_modality: str
    midi_modality: str
    params: FeatureParams
    n_bits: int | None
    downsample: int | None
    embedding_dim: int | None
    zscore: dict[str, Any]
    metrics: dict[str, Any]
    training: dict[str, Any]
    inputs: tuple[str, ...]
    output: str
    audio_onnx: Path
    midi_onnx: Path
    hub: dict[str, Any] | None = None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def reference(self) -> np.ndarray | list[np.ndarray]:
        """The hub correction's reference.

        Returns
        -------
        reference : np.ndarray [shape=(m, embedding_dim), float32] or list of np.ndarray [shape=(M_i,), uint32]
            A PSE model's reference vectors, or a DHS model's packed hash sequences.
        """
        if self.hub is None:
            raise ModelError(f"model {self.name!r} has no hub reference")
        load = load_reference if self.kind == "pse" else load_word_reference
        return load(str(self.hub["reference"]))

    def onnx_for(self, modality: str) -> Path:
        """ONNX file of the net that embeds a store of ``modality``."""
        if modality == self.audio_modality:
            return self.audio_onnx
        if modality == self.midi_modality:
            return self.midi_onnx
        raise FormatMismatchError(
            f"model {self.name!r} embeds modalities 'audio' and {self.midi_modality!r}, "
            f"not {modality!r}; pick a model trained on {modality!r} stores"
        )


def shipped_model_dir() -> Path:
    """Directory of the models shipped inside the package (``msdmatch/shipped``)."""
    return Path(__file__).resolve().parents[1] / "shipped"


def default_models(midi_modality: str = "midi-synth") -> tuple[Path, Path]:
    """Shipped ``(pse_dir, dhs_dir)`` for a MIDI modality.

    Raises
    ------
    ModelError
        If the package ships no model for ``midi_modality``.
    """
    if midi_modality not in MODALITIES[1:]:
        raise ParameterError(f"midi_modality={midi_modality!r} must be one of {MODALITIES[1:]}")
    dirs = tuple(shipped_model_dir() / f"{k}-{midi_modality}" for k in ("pse", "dhs"))
    missing = [str(d) for d in dirs if not (d / "model.json").is_file()]
    if missing:
        raise ModelError(
            f"no shipped model for {midi_modality!r} (missing {missing}); train one with "
            "`msdmatch train` and pass --models"
        )
    return dirs[0], dirs[1]


def _resolve(path_or_name: str | os.PathLike) -> Path:
    p = Path(path_or_name)
    if p.is_file():
        return p
    if (p / "model.json").is_file():
        return p / "model.json"
    shipped = shipped_model_dir() / str(path_or_name) / "model.json"
    if not p.is_absolute() and shipped.is_file():
        return shipped
    known = sorted(d.name for d in shipped_model_dir().glob("*") if (d / "model.json").is_file())
    raise ModelError(
        f"model {os.fspath(path_or_name)!r} not found: not a model.json, a directory holding "
        f"one, or a shipped model name (shipped: {known or 'none'})"
    )


def load_model(path_or_name: str | os.PathLike) -> ModelInfo:
    """Load and validate a model.

    Parameters
    ----------
    path_or_name : path or str
        A ``model.json``, a model directory, or the name of a shipped model
        (e.g. ``'pse-midi-synth'``).

    Raises
    ------
    ModelError
        Missing files, malformed JSON or missing fields.
    FormatMismatchError
        Written by another msdmatch format version.
    """
    path = _resolve(path_or_name)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read model.json ({exc})") from exc
    if not isinstance(doc, dict):
        raise ModelError(f"{path}: model.json must hold a JSON object")
    missing = [k for k in _REQUIRED if k not in doc]
    if missing:
        raise ModelError(f"{path}: model.json lacks fields {missing}; was it written by "
                         "msdmatch.models.export?")
    if doc["msdmatch_format"] != FORMAT_VERSION:
        raise FormatMismatchError(
            f"{path}: msdmatch_format={doc['msdmatch_format']!r} but this msdmatch reads "
            f"{FORMAT_VERSION}; use the msdmatch version that trained it or re-train"
        )
    kind = doc["kind"]
    if kind not in ("dhs", "pse"):
        raise ModelError(f"{path}: kind={kind!r} must be 'dhs' or 'pse'")
    if doc["audio_modality"] != "audio" or doc["midi_modality"] not in MODALITIES[1:]:
        raise ModelError(f"{path}: modalities {doc['audio_modality']!r}/{doc['midi_modality']!r} "
                         f"must be 'audio' and one of {MODALITIES[1:]}")
    if kind == "dhs" and not (doc.get("n_bits") and doc.get("downsample")):
        raise ModelError(f"{path}: a DHS model needs n_bits and downsample")
    if kind == "pse" and not doc.get("embedding_dim"):
        raise ModelError(f"{path}: a PSE model needs embedding_dim")
    expected_out = "hashes" if kind == "dhs" else "embedding"
    if doc["output"] != expected_out or list(doc["inputs"]) != ["features", "mask"]:
        raise ModelError(f"{path}: a {kind} model must map inputs ['features', 'mask'] to "
                         f"{expected_out!r}, got {doc['inputs']} -> {doc['output']!r}")
    files = {m: path.parent / doc["files"][m] for m in ("audio", "midi")}
    for m, f in files.items():
        if not f.is_file():
            raise ModelError(f"{path}: {m} net {f} is missing; copy the whole model directory")
    hub = doc.get("hub")
    if hub is not None:
        if not {"k", "weight", "reference"} <= set(hub):
            raise ModelError(f"{path}: 'hub' needs k, weight and reference, got {sorted(hub)}")
        hub = dict(hub, reference=path.parent / hub["reference"])
        if not hub["reference"].is_file():
            raise ModelError(f"{path}: hub reference {hub['reference']} is missing; copy the whole model directory")
    return ModelInfo(
        dir=path.parent, kind=kind, name=str(doc["name"]),
        audio_modality="audio", midi_modality=doc["midi_modality"],
        params=FeatureParams.from_dict(doc["feature_params"]),
        n_bits=doc.get("n_bits"), downsample=doc.get("downsample"),
        embedding_dim=doc.get("embedding_dim"), zscore=doc["zscore"],
        metrics=doc.get("metrics", {}), training=doc.get("training", {}),
        inputs=tuple(doc["inputs"]), output=doc["output"],
        audio_onnx=files["audio"], midi_onnx=files["midi"], hub=hub, raw=doc,
    )


@functools.lru_cache(maxsize=8)
def load_reference(path: str) -> np.ndarray:
    """Hub reference vectors stored at ``path`` (``.npy``), float32; cached per process."""
    return np.load(path).astype(np.float32)


@functools.lru_cache(maxsize=8)
def load_word_reference(path: str) -> list[np.ndarray]:
    """A DHS model's hub reference at ``path`` (``.npz`` of flat ``words`` and ``offsets``); cached per process."""
    with np.load(path) as z:
        words, off = np.asarray(z["words"], np.uint32), np.asarray(z["offsets"], np.int64)
    return [words[a:b] for a, b in zip(off[:-1], off[1:])]


def check_compatible(model: ModelInfo, *, store_params: FeatureParams, store_modality: str) -> Path:
    """Refuse a store the model cannot embed; return the ONNX file to use.

    Parameters
    ----------
    model : ModelInfo
    store_params : FeatureParams
        Parameters the store was featurized with.
    store_modality : str
        The store's modality.

    Raises
    ------
    FormatMismatchError
        Naming the differing parameter or modality and how to fix it.
    """
    if store_modality not in (model.audio_modality, model.midi_modality):
        hint = ("re-featurize the MIDI with `msdmatch featurize midi --mode "
                f"{model.midi_modality.split('-')[1]}` or pick a model trained on {store_modality!r}"
                if store_modality in MODALITIES[1:] else f"is {store_modality!r} a valid modality?")
        raise FormatMismatchError(
            f"store has modality {store_modality!r} but model {model.name!r} embeds 'audio' "
            f"and {model.midi_modality!r}; {hint}"
        )
    a, b = store_params.to_dict(), model.params.to_dict()
    diffs = [k for k in b if a.get(k) != b[k]]
    if diffs:
        what = ", ".join(f"{k}={a.get(k)!r} but model expects {b[k]!r}" for k in diffs)
        raise FormatMismatchError(
            f"store has {what}; re-run `msdmatch featurize` with the default parameters "
            f"or pick a model trained on them"
        )
    return model.onnx_for(store_modality)


@functools.lru_cache(maxsize=16)
def session(onnx_path: str | os.PathLike, threads: int = 1) -> Any:
    """Cached onnxruntime session (one per process, path and thread count).

    Sessions cannot be pickled: call this inside the worker task.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ModelError("onnxruntime is not installed; `pip install onnxruntime`") from exc
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    return ort.InferenceSession(os.fspath(onnx_path), so, providers=["CPUExecutionProvider"])


def run_net(
    onnx_path: str | os.PathLike, features: np.ndarray, mask: np.ndarray, *, threads: int = 1
) -> np.ndarray:
    """Run one net on a padded batch.

    Parameters
    ----------
    onnx_path : path
    features : np.ndarray [shape=(batch, time, n_bins)]
    mask : np.ndarray [shape=(batch, time)]
        1 for valid frames, 0 for padding.

    Returns
    -------
    out : np.ndarray
        ``(batch, ceil(time/8), n_bits)`` hashes or ``(batch, dim)`` embeddings.
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    m = np.ascontiguousarray(mask, dtype=np.float32)
    if x.ndim != 3 or m.shape != x.shape[:2]:
        raise ParameterError(f"features {x.shape} and mask {m.shape} must be (B, T, bins) and (B, T)")
    return session(os.fspath(onnx_path), threads).run(None, {"features": x, "mask": m})[0]
