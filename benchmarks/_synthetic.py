"""Real PSE embeddings and DHS hash words from a store, and synthetic databases drawn from them.

``real_codes`` reads ``pse/<model>`` and ``dhs/<model>/{words,offsets}`` from a
store when ``msdmatch embed`` has written them; otherwise it embeds the first
``max_items`` featurized items itself with the shipped ONNX nets (the same
calls ``msdmatch embed`` makes) and says so.  ``synth_pse`` and ``synth_dhs``
then draw a database of any size from those real codes.
"""

from __future__ import annotations

import numpy as np


def _model_infos(store, models: str | None, midi_modality: str | None = None):
    from msdmatch.stages.embed import resolve_models

    infos = resolve_models([models] if models else None, store.modality)
    if midi_modality:  # an audio store holds every modality's codes: take the queries'
        infos = [i for i in infos if i.midi_modality == midi_modality]
    pse = [i for i in infos if i.kind == "pse"]
    dhs = [i for i in infos if i.kind == "dhs"]
    if not pse or not dhs:
        raise SystemExit(f"need one PSE and one DHS model for a {store.modality} store; found "
                         f"{[i.name for i in infos]}")
    return pse[0], dhs[0]


def real_codes(url: str, *, models: str | None = None, max_items: int = 400, threads: int = 1,
               midi_modality: str | None = None) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray], str]:
    """Embeddings ``(n, 128)``, packed hash sequences and feature sequences of a store.

    ``midi_modality`` picks, in an audio store, the codes of the models for that query modality.

    Returns ``(E, words, features, how)``, where ``how`` says where the codes came from.
    """
    from msdmatch.io.modelfile import check_compatible
    from msdmatch.io.store import Store
    from msdmatch.stages.embed import embed_sequences, pack_bits

    store = Store(url)
    pse, dhs = _model_infos(store, models, midi_modality)
    n = min(len(store.ids), max_items)
    feats = store.sequences(0, n)
    g = store.group
    try:
        E = np.asarray(g[f"pse/{pse.name}"][:n], np.float32)
        off = np.asarray(g[f"dhs/{dhs.name}/offsets"][: n + 1], np.int64)
        flat = np.asarray(g[f"dhs/{dhs.name}/words"][off[0]:off[-1]], np.uint32)
        words = [flat[a - off[0]:b - off[0]] for a, b in zip(off[:-1], off[1:], strict=True)]
        how = f"read pse/{pse.name} and dhs/{dhs.name} of {n} items from {url}"
    except KeyError:
        on_pse = check_compatible(pse, store_params=store.params, store_modality=store.modality)
        on_dhs = check_compatible(dhs, store_params=store.params, store_modality=store.modality)
        E = np.stack(embed_sequences(feats, str(on_pse), threads=threads)).astype(np.float32)
        hs = embed_sequences(feats, str(on_dhs), downsample=dhs.downsample, threads=threads)
        words = [pack_bits(h) for h in hs]
        how = (f"{url} has no pse/{pse.name} or dhs/{dhs.name} yet: embedded its first {n} items "
               f"here with the shipped nets {on_pse.parent.name}/{on_pse.name} and "
               f"{on_dhs.parent.name}/{on_dhs.name}")
    ok = np.all(np.isfinite(E), axis=1) & np.array([len(w) > 0 for w in words])
    keep = np.flatnonzero(ok)
    return E[keep], [words[i] for i in keep], [feats[i] for i in keep], how


def synth_pse(E: np.ndarray, n: int, *, rng: np.random.Generator, noise: float = 0.35,
              chunk: int = 100_000) -> np.ndarray:
    """``n`` embeddings: a convex mix of two real rows plus Gaussian noise shaped by their covariance.

    Each entry is ``a E_i + (1 - a) E_j + noise * L z`` with ``a ~ U(0.6, 1)``
    and ``L L^T`` the covariance of the real embeddings, so every entry keeps
    the real per-dimension scale and correlations while no two are equal.
    """
    cov = np.cov(E.astype(np.float64), rowvar=False) + 1e-9 * np.eye(E.shape[1])
    L = np.linalg.cholesky(cov).astype(np.float32)
    out = np.empty((n, E.shape[1]), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        i = rng.integers(0, E.shape[0], m)
        j = rng.integers(0, E.shape[0], m)
        a = rng.uniform(0.6, 1.0, (m, 1)).astype(np.float32)
        z = rng.standard_normal((m, E.shape[1]), dtype=np.float32)
        out[s:s + m] = a * E[i] + (1 - a) * E[j] + noise * (z @ L.T)
    return out


def synth_dhs(words: list[np.ndarray], n: int, *, rng: np.random.Generator,
              chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """``n`` packed hash sequences: real sequences with bits flipped, real lengths.

    Entry ``i`` takes a real sequence and a length drawn from the real length
    distribution (the sequence is cut or repeated to it), then flips each bit
    whose real set-rate lies in [0.05, 0.95] with probability 1/8 (the AND of
    three random words).  Returns ``(flat words, offsets)``.
    """
    lens = np.array([len(w) for w in words], np.int64)
    flat_real = np.concatenate(words)
    off_real = np.concatenate([[0], np.cumsum(lens)])
    bits = (flat_real[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    rate = bits.mean(axis=0)
    varying = np.uint32(sum(1 << b for b in range(32) if 0.05 <= rate[b] <= 0.95))
    new_len = lens[rng.integers(0, len(lens), n)]
    offsets = np.concatenate([[0], np.cumsum(new_len)]).astype(np.int64)
    flat = np.empty(offsets[-1], np.uint32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        src = rng.integers(0, len(lens), e - s)
        ln = new_len[s:e]
        pos = np.arange(offsets[e] - offsets[s]) - np.repeat(offsets[s:e] - offsets[s], ln)
        gather = off_real[src].repeat(ln) + pos % lens[src].repeat(ln)
        w = flat_real[gather]
        r = rng.integers(0, 2**32, (3, w.size), dtype=np.uint32)
        flat[offsets[s]:offsets[e]] = w ^ (r[0] & r[1] & r[2] & varying)
    return flat, offsets
