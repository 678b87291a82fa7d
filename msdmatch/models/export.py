"""Export of a trained model pair to ONNX plus ``model.json``.

Layout of a model directory::

    <dir>/audio.onnx   f: features (B, T, 48), mask (B, T) -> hashes | embedding
    <dir>/midi.onnx    g: same signature, MIDI weights
    <dir>/model.json   format version, kind, modalities, feature parameters,
                       z-score statistics, bits/downsampling/embedding size,
                       validation metrics, training description, I/O names,
                       parity numbers
    <dir>/weights.npz  DHS only: the torch weights of f and g, which a
                       pooled-hash PSE trained later starts from (read by
                       :func:`load_nets`; matching needs only the ONNX files)

ONNX files use the legacy TorchScript exporter (opset 17) with dynamic batch
and time axes and are single files.  :func:`check_parity` compares
onnxruntime with torch: PSE max abs diff <= 1e-4, DHS bit agreement >= 99.9%.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msdmatch.errors import ModelError
from msdmatch.models.nets import NetConfig, build_net, n_parameters
from msdmatch.models.pairs import pad_batch
from msdmatch.params import FORMAT_VERSION, FeatureParams

__all__ = ["export_onnx", "check_parity", "export_model", "load_nets", "PSE_TOL", "DHS_MIN_AGREEMENT"]

OPSET = 17
PSE_TOL = 1e-4
DHS_MIN_AGREEMENT = 0.999
INPUTS = ("features", "mask")
WEIGHTS = "weights.npz"


def _output_name(kind: str) -> str:
    return "hashes" if kind == "dhs" else "embedding"


def export_onnx(net: torch.nn.Module, path: str | Path) -> Path:
    """Write ``net`` (a DHSNet or PSENet) to a single ONNX file at ``path``."""
    kind = net.cfg.kind
    out = _output_name(kind)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.cpu().eval()
    x = torch.rand(2, 37, net.cfg.n_bins)
    m = torch.ones(2, 37)
    m[1, 30:] = 0
    axes: dict[str, dict[int, str]] = {"features": {0: "batch", 1: "time"}, "mask": {0: "batch", 1: "time"}}
    axes[out] = {0: "batch", 1: "steps"} if kind == "dhs" else {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (x, m), str(path), input_names=list(INPUTS), output_names=[out],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return path


def _random_inputs(n_bins: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Padded batches of random non-negative L2-normalised frames."""
    rng = np.random.default_rng(seed)
    batches = []
    for lengths in ([646], [100, 37, 81], [1, 9, 17]):
        seqs = []
        for n in lengths:
            s = rng.random((n, n_bins)).astype(np.float32) ** 3
            seqs.append(s / np.linalg.norm(s, axis=1, keepdims=True))
        batches.append(pad_batch(seqs, n_bins=n_bins))
    return batches


def check_parity(
    net: torch.nn.Module,
    onnx_path: str | Path,
    *,
    inputs: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    real: Sequence[np.ndarray] = (),
    seed: int = 0,
) -> dict[str, float]:
    """Compare onnxruntime with torch on random and real inputs.

    Parameters
    ----------
    net : DHSNet or PSENet
    onnx_path : path
    inputs : sequence of (features, mask)
        Extra batches ``(B, T, n_bins), (B, T)``; random batches are always
        included.
    real : sequence of np.ndarray [shape=(frames, n_bins)]
        Real sequences, run one by one and as one padded batch.
    seed : int

    Returns
    -------
    parity : dict
        ``max_abs_diff`` over all outputs (valid steps only) and, for DHS,
        ``bit_agreement`` (fraction of equal bits).

    Raises
    ------
    ModelError
        PSE diff above 1e-4 or DHS agreement below 99.9%.
    """
    import onnxruntime as ort

    kind = net.cfg.kind
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    batches = list(_random_inputs(net.cfg.n_bins, seed)) + list(inputs)
    real = list(real)
    batches += [pad_batch([s], n_bins=net.cfg.n_bins) for s in real]
    if real:
        batches.append(pad_batch(real, n_bins=net.cfg.n_bins))
    net = net.cpu().eval()
    diff, agree, total = 0.0, 0, 0
    for x, m in batches:
        (y_onnx,) = sess.run(None, {"features": x, "mask": m})
        with torch.no_grad():
            y_torch = net(torch.from_numpy(x), torch.from_numpy(m)).numpy()
        if y_onnx.shape != y_torch.shape:
            raise ModelError(f"ONNX output shape {y_onnx.shape} != torch {y_torch.shape} for {onnx_path}")
        diff = max(diff, float(np.abs(y_onnx - y_torch).max()))
        if kind == "dhs":
            steps = -(-m.sum(1).astype(int) // net.cfg.downsample)
            for b, n in enumerate(steps):
                agree += int(((y_onnx[b, :n] > 0) == (y_torch[b, :n] > 0)).sum())
                total += int(n * y_onnx.shape[2])
    out = {"max_abs_diff": diff, "n_batches": float(len(batches))}
    if kind == "dhs":
        out["bit_agreement"] = agree / max(total, 1)
        if out["bit_agreement"] < DHS_MIN_AGREEMENT:
            raise ModelError(f"{onnx_path}: ONNX/torch bit agreement {out['bit_agreement']:.5f} "
                             f"< {DHS_MIN_AGREEMENT}; the export is not faithful")
    elif diff > PSE_TOL:
        raise ModelError(f"{onnx_path}: ONNX/torch max abs diff {diff:.2e} > {PSE_TOL}; "
                         "the export is not faithful")
    return out


def export_model(
    f: torch.nn.Module,
    g: torch.nn.Module,
    *,
    out_dir: str | Path,
    name: str,
    midi_modality: str,
    params: FeatureParams,
    stats: dict[str, tuple[np.ndarray, np.ndarray]],
    metrics: dict[str, Any],
    config: NetConfig,
    training: dict[str, Any] | None = None,
    real_inputs: dict[str, Sequence[np.ndarray]] | None = None,
) -> Path:
    """Export nets f (audio) and g (MIDI) and write ``model.json``.

    Parameters
    ----------
    f, g : DHSNet or PSENet
        Trained audio and MIDI nets (same config).
    out_dir : path
        Model directory to create.
    name : str
        Model name, e.g. ``'pse-midi-synth'``.
    midi_modality : {'midi-synth', 'midi-pianoroll'}
    params : FeatureParams
        Feature parameters of the training stores.
    stats : dict
        ``{'audio': (mean, std), 'midi': (mean, std)}``, ``(n_bins,)`` each.
    metrics : dict
        Scalar validation metrics (``bc`` at least).
    config : NetConfig
    training : dict, optional
        Description of the training data and settings.
    real_inputs : dict, optional
        ``{'audio': [seq, ...], 'midi': [seq, ...]}`` real sequences for the
        parity check.

    Returns
    -------
    model_json : Path
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kind = config.kind
    real_inputs = real_inputs or {}
    parity = {}
    for modality, net in (("audio", f), ("midi", g)):
        path = export_onnx(net, out / f"{modality}.onnx")
        parity[modality] = check_parity(net, path, real=real_inputs.get(modality, ()))
    doc = {
        "msdmatch_format": FORMAT_VERSION,
        "kind": kind,
        "name": name,
        "audio_modality": "audio",
        "midi_modality": midi_modality,
        "feature_params": params.to_dict(),
        "zscore": {m: {"mean": np.asarray(s[0]).astype(float).tolist(),
                       "std": np.asarray(s[1]).astype(float).tolist()} for m, s in stats.items()},
        "n_bits": config.out_dim if kind == "dhs" else None,
        "downsample": config.downsample if kind == "dhs" else None,
        "embedding_dim": config.out_dim if kind == "pse" else None,
        "inputs": list(INPUTS),
        "output": _output_name(kind),
        "files": {"audio": "audio.onnx", "midi": "midi.onnx"} | ({"weights": WEIGHTS} if kind == "dhs" else {}),
        "architecture": config.to_dict(),
        "n_parameters": n_parameters(f) + n_parameters(g),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "training": training or {},
        "parity": parity,
        "opset": OPSET,
    }
    if kind == "dhs":
        np.savez_compressed(out / WEIGHTS, **{f"{m}/{k}": v.cpu().numpy() for m, net in (("audio", f), ("midi", g))
                                              for k, v in net.state_dict().items()})
    path = out / "model.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def load_nets(model_dir: str | Path, *, modality: str, params: FeatureParams) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Torch nets (f, g) of an exported DHS model, from its ``weights.npz``.

    Raises
    ------
    ModelError
        Not a DHS model, or no weights (exported before they were saved).
    FormatMismatchError
        Another MIDI modality or other feature parameters than ``params``.
    """
    from msdmatch.io.modelfile import check_compatible, load_model

    info = load_model(model_dir)
    if info.kind != "dhs":
        raise ModelError(f"{info.dir}: a pooled-hash PSE needs a DHS model, got kind={info.kind!r}")
    check_compatible(info, store_params=params, store_modality=modality)
    path = info.dir / WEIGHTS
    if not path.is_file():
        raise ModelError(f"{path} is missing: the PSE is built on the DHS model's torch weights; "
                         "train both models together (`msdmatch train --kind both`)")
    cfg = NetConfig.from_dict(info.raw["architecture"])
    with np.load(path) as z:
        nets = []
        for m in ("audio", "midi"):
            net = build_net(cfg)
            net.load_state_dict({k.split("/", 1)[1]: torch.from_numpy(z[k]) for k in z.files
                                 if k.startswith(m + "/")})
            nets.append(net.eval())
    return nets[0], nets[1]
