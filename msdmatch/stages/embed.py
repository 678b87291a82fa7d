"""Embed stage: run the PSE and DHS nets (ONNX) over a store's sequences.

Writes, for each model, into the store:

- ``pse/<model>``: (n, embedding_dim) float32, one row per item;
- ``hub/<model>``: (n,) float32, an audio store's hub scores for a model
  with a hub reference (:mod:`msdmatch.kernels.hub`; attributes ``k`` and
  ``weight``): the prune adds a PSE model's to its distances, the rerank
  subtracts a DHS model's from its ratios;
- ``dhs/<model>/words``: flat uint32 hash words, one per downsampled step
  (bit k of a word is output unit k > 0), and ``dhs/<model>/offsets``
  (n + 1,) int64, with ``ceil(n_frames / downsample)`` words per item;
- ``screen/frames``: flat int8 screen frames (:func:`msdmatch.kernels.screen.screen_frames`,
  ``ceil(n_frames / 8)`` rows of n_bins per item), and ``screen/offsets``
  (n + 1,) int64; they depend on no model.

Shards are contiguous item ranges.  Each shard is one Dask task: it reads its
frames with one read, batches sequences of similar length (padding is masked
inside the nets, so an item's output does not depend on its batch), writes its
PSE rows in place (chunks are aligned to shards) and stages its hash words,
then commits.  Items whose nets produce non-finite outputs are recorded in
``failures`` with stage ``embed``; their PSE row is NaN and they get no words.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msdmatch.errors import ModelError, ParameterError, StageError
from msdmatch.params import EMBED

STAGE = "embed"
#: Frames per padded batch given to onnxruntime.  Small enough that a
#: batch's activations (frames x 48 bins x 16 filters, float32: 6 MB) stay in
#: cache: at 8192 frames two workers on one shared L3 ran 10-20% slower
#: each, at 2048 neither slows the other and one alone is as fast.
BATCH_FRAMES = 2048


@dataclass(frozen=True)
class Shard:
    """Items ``start:stop`` of the store."""

    pid: int
    start: int
    stop: int


def plan(n_items: int, *, partition_size: int, start: int = 0) -> list[Shard]:
    """Contiguous shards of items ``start:n_items``, aligned to ``partition_size`` (the PSE chunk length).

    Every boundary but ``start`` is a multiple of ``partition_size``, so no
    two shards write the same PSE chunk, also when an append starts mid-chunk.
    """
    if partition_size < 1:
        raise ParameterError(f"partition_size must be >= 1, got {partition_size}")
    cuts = sorted({start, n_items} | set(range(-(-start // partition_size) * partition_size, n_items,
                                                partition_size)))
    return [Shard(pid, a, b) for pid, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])) if a < b]


def pack_bits(hashes: np.ndarray) -> np.ndarray:
    """Pack sign bits of net outputs into uint32 words.

    Parameters
    ----------
    hashes : np.ndarray [shape=(n_steps, n_bits)], n_bits <= 32

    Returns
    -------
    words : np.ndarray [shape=(n_steps,), dtype=uint32]
        Bit k is ``hashes[:, k] > 0``.
    """
    bits = (np.asarray(hashes) > 0).astype(np.uint32)
    if bits.ndim != 2 or bits.shape[1] > 32:
        raise ParameterError(f"hashes must have shape (n_steps, <=32), got {bits.shape}")
    return (bits << np.arange(bits.shape[1], dtype=np.uint32)).sum(axis=1, dtype=np.uint32)


def batches(lengths: np.ndarray, *, max_frames: int = BATCH_FRAMES) -> list[np.ndarray]:
    """Group item indices of similar length into batches of at most ``max_frames`` padded frames.

    Parameters
    ----------
    lengths : np.ndarray [shape=(n,)]

    Returns
    -------
    groups : list of np.ndarray of indices
    """
    order = np.argsort(lengths, kind="stable")
    groups, cur = [], []
    for i in order:
        longest = max(int(lengths[i]), *(int(lengths[j]) for j in cur[-1:])) if cur else int(lengths[i])
        if cur and longest * (len(cur) + 1) > max_frames:
            groups.append(np.array(cur))
            cur = []
        cur.append(int(i))
    if cur:
        groups.append(np.array(cur))
    return groups


def embed_sequences(seqs: list[np.ndarray], onnx_path: str, *, downsample: int | None = None,
                    threads: int = 1, max_frames: int = BATCH_FRAMES) -> list[np.ndarray]:
    """Run one ONNX net over sequences, batched by length.

    Parameters
    ----------
    seqs : list of np.ndarray [shape=(n_frames_i, n_bins)]
    onnx_path : str
    downsample : int, optional
        Time downsampling of a DHS net (its output is cut to
        ``ceil(n_frames_i / downsample)`` steps per item).

    Returns
    -------
    outs : list of np.ndarray
        Per item: ``(dim,)`` embedding or ``(ceil(n_frames_i / 8), n_bits)`` hashes
        (the net's padded output cut to the item's own length).
    """
    from msdmatch.io.modelfile import run_net

    lengths = np.array([s.shape[0] for s in seqs], dtype=np.int64)
    outs: list = [None] * len(seqs)
    for idx in batches(lengths, max_frames=max_frames):
        T = int(lengths[idx].max())
        x = np.zeros((len(idx), T, seqs[idx[0]].shape[1]), np.float32)
        m = np.zeros((len(idx), T), np.float32)
        for b, i in enumerate(idx):
            x[b, : lengths[i]] = seqs[i]
            m[b, : lengths[i]] = 1.0
        y = run_net(onnx_path, x, m, threads=threads)
        for b, i in enumerate(idx):
            if y.ndim == 3:
                outs[i] = y[b, : -(-int(lengths[i]) // int(downsample or 1))]
            else:
                outs[i] = y[b]
    return outs


def embed_shard(shard: Shard, *, url: str, models: list[dict], storage_options: dict | None = None,
                lease: str | None = None) -> dict:
    """Embed one shard with every model; write PSE rows and stage DHS words.

    A sequence shorter than :data:`msdmatch.params.MIN_SECONDS` (an item
    featurized by an msdmatch without that minimum) gets no embedding and no
    hashes, so it is never a candidate, and is recorded as a failure.

    Parameters
    ----------
    models : list of dict
        ``{'name', 'kind', 'onnx', 'downsample', 'hub'}`` per model (``hub``: the
        model's hub correction with its reference path, for an audio store; else None).
    lease : str, optional
        The writer's store-lease token; see :func:`msdmatch.io.store.write_part`.
    """
    from msdmatch.executor import worker_threads
    from msdmatch.io.store import Store, write_part

    store = Store(url, storage_options=storage_options, mode="r+")
    seqs = store.sequences(shard.start, shard.stop)
    threads = worker_threads()
    ids = store.strings("ids", shard.start, shard.stop)  # not all n ids in every task
    bad: dict[str, str] = {}
    arrays: dict[str, np.ndarray] = {}
    from msdmatch.params import MIN_SECONDS

    short = [k for k, x in enumerate(seqs) if len(x) < int(MIN_SECONDS * store.params.frame_rate)]
    for k in short:
        bad[ids[k]] = (f"too short for DHS ({len(seqs[k]) * store.params.frame_seconds:.1f} s; "
                       "re-run `msdmatch featurize`, which refuses items this short)")
    for m in models:
        outs = embed_sequences(seqs, m["onnx"], downsample=m["downsample"], threads=threads)
        if m["kind"] == "pse":
            E = np.stack(outs).astype(np.float32) if outs else np.zeros((0, 128), np.float32)
            for k in np.flatnonzero(~np.all(np.isfinite(E), axis=1)):
                bad[ids[k]] = f"{m['name']}: non-finite embedding"
                E[k] = np.nan
            E[short] = np.nan
            store.group[f"pse/{m['name']}"][shard.start : shard.stop] = E
            if m.get("hub"):
                from msdmatch.io.modelfile import load_reference
                from msdmatch.kernels.hub import hub_scores

                store.group[f"hub/{m['name']}"][shard.start : shard.stop] = hub_scores(
                    E, load_reference(m["hub"]["reference"]), k=m["hub"]["k"])
        else:
            words, counts = [], []
            for k, h in enumerate(outs):
                if not np.all(np.isfinite(h)):
                    bad[ids[k]] = f"{m['name']}: non-finite hashes"
                    h = h[:0]
                if k in short:
                    h = h[:0]
                words.append(pack_bits(h))
                counts.append(len(words[-1]))
            arrays[f"{m['name']}__words"] = np.concatenate(words) if words else np.zeros(0, np.uint32)
            arrays[f"{m['name']}__counts"] = np.asarray(counts, np.int64)
            if m.get("hub"):
                from msdmatch.io.modelfile import load_word_reference
                from msdmatch.kernels.hub import dhs_hub_scores

                store.group[f"hub/{m['name']}"][shard.start : shard.stop] = dhs_hub_scores(
                    arrays[f"{m['name']}__words"], np.concatenate([[0], np.cumsum(counts)]),
                    load_word_reference(m["hub"]["reference"]), k=m["hub"]["k"])
    from msdmatch.kernels.screen import screen_frames

    frames = [screen_frames(x) for x in seqs]
    arrays["screen__frames"] = (np.concatenate(frames) if frames
                                else np.zeros((0, store.params.n_bins), np.int8))
    arrays["screen__counts"] = np.asarray([len(f) for f in frames], np.int64)
    srcs = store.strings("sources", shard.start, shard.stop) if bad else []
    write_part(url, STAGE, shard.pid, arrays,
               {"fail_id": list(bad), "fail_reason": list(bad.values()),
                "fail_source": [srcs[ids.index(i)] for i in bad]},
               storage_options=storage_options, lease=lease)
    return {"items": len(seqs), "failures": len(bad)}


def summary_line(s: dict, url: str) -> str:
    """One-line summary of :func:`run`'s result."""
    per_core = s["items"] / max(s["seconds"] * s["threads"], 1e-9)
    return (f"embedded {s['items']} items with {', '.join(s['models'])}: {s['failures']} failures, "
            f"{s['seconds']:.1f} s, {per_core:.1f} items/s/core; {s['parts_run']} partitions run, "
            f"{s['parts_skipped']} already done -> {url}")


def resolve_models(models: list[str] | None, modality: str) -> list:
    """Model directories to embed a store of ``modality`` with.

    ``None`` means the shipped models: for an audio store, every shipped
    model; for a MIDI store, those trained on its modality.  A path may be a
    model directory or a directory of model directories (``msdmatch train``'s
    output).
    """
    from msdmatch.io.modelfile import load_model, shipped_model_dir

    roots = [Path(m) for m in models] if models else [shipped_model_dir()]
    dirs: list[Path] = []
    for r in roots:
        if (r / "model.json").is_file() or r.suffix == ".json":
            dirs.append(r)
        elif r.is_dir():
            dirs += sorted(d for d in r.iterdir() if (d / "model.json").is_file())
        else:
            dirs.append(r)  # load_model explains what is wrong (or finds a shipped name)
    infos = [load_model(d) for d in dirs]
    if len(infos) > 1:  # a directory of models: those that fit the store
        infos = [i for i in infos if modality in ("audio", i.midi_modality)]
    if not infos:
        raise ModelError(f"no model found for a {modality!r} store in {[str(r) for r in roots]}")
    return infos


def model_digest(info) -> str:
    """Digest of a model's ``model.json`` (16 hex digits), recorded with the arrays it embeds.

    Parameters
    ----------
    info : ModelInfo
        From :func:`msdmatch.io.modelfile.load_model`.
    """
    import hashlib
    import json

    return hashlib.sha256(json.dumps(info.raw, sort_keys=True).encode()).hexdigest()[:16]


def embedded_digest(group, path: str) -> str | None:
    """The :func:`model_digest` that embedded ``path`` (``pse/<model>`` or ``dhs/<model>``) of a store.

    Read from the array's ``model_digest`` attribute, else from the store's
    ``embed_state`` key (stores embedded before the attribute existed);
    None when neither says.
    """
    d = group[path].attrs.get("model_digest")
    if d:
        return str(d)
    name = path.split("/", 1)[1]
    key = str(dict(group.attrs.get("embed_state", {})).get("key", ""))
    found = dict(e.split(":") for e in key.split("|") if e.count(":") == 1)
    return found.get(name)


def run(url: str, *, models: list[str] | None = None, client=None, scheduler: str | None = None,
        n_workers: int | None = None, partition_size: int = EMBED.partition_size, storage_options: dict | None = None,
        progress: bool = True, max_parts: int | None = None) -> dict:
    """Embed every item of the store at ``url``; resumable.

    Returns
    -------
    summary : dict
        ``items``, ``failures``, ``models``, ``seconds``, ``parts_run``, ``parts_skipped``.
    """
    from msdmatch.executor import using_client
    from msdmatch.io.modelfile import check_compatible
    from msdmatch.io.store import Store

    store = Store(url, storage_options=storage_options)
    infos = resolve_models(models, store.modality)
    specs = [{"name": i.name, "kind": i.kind, "downsample": i.downsample, "digest": model_digest(i),
              "onnx": str(check_compatible(i, store_params=store.params, store_modality=store.modality)),
              # a hub correction is a property of the previews, so only an audio store gets it
              "hub": (dict(i.hub, reference=str(i.hub["reference"]))
                      if i.hub is not None and store.modality == "audio" else None)}
             for i in infos]
    from msdmatch.io.lock import store_lease
    from msdmatch.io.outputs import probe_writable
    from msdmatch.io.store import access_errors

    probe_writable(url, storage_options=storage_options)  # a read-only store is refused before any work
    with using_client(client, scheduler=scheduler, n_workers=n_workers, quiet=not progress) as c, \
            access_errors(url), store_lease(url, stage="embed", storage_options=storage_options) as lease:
        return _run(url, store, specs, client=c, partition_size=partition_size,
                    storage_options=storage_options, progress=progress, max_parts=max_parts, lease=lease)


def _run(url, store, specs, *, client, partition_size, storage_options, progress, max_parts, lease) -> dict:
    from msdmatch.executor import run_shards, total_threads
    from msdmatch.io.store import (
        committed_parts,
        create_item_rows,
        delete_path,
        open_group,
        read_part,
        read_strings,
        write_failures,
    )

    t0 = time.perf_counter()
    from msdmatch.kernels import screen

    key = ("|".join(f"{s['name']}:{s['digest']}" for s in specs)
           + f"|screen:{screen.FORMAT_VERSION}:{screen.POOL}|{partition_size}")
    g = open_group(url, mode="r+", storage_options=storage_options)
    state = dict(g.attrs.get("embed_state", {}))
    if state.get("key") != key:  # a new set of models: start the staging afresh
        delete_path(url, f"_parts/{STAGE}", storage_options=storage_options)
        for s in specs:
            if s["kind"] == "pse":
                create_item_rows(g, f"pse/{s['name']}", n=store.n, width=128, chunk=partition_size)
            if s["hub"]:
                create_item_rows(g, f"hub/{s['name']}", n=store.n, width=None, chunk=partition_size)
            elif f"hub/{s['name']}" in g:  # left by another version of the model
                delete_path(url, f"hub/{s['name']}", storage_options=storage_options)
        state = {"key": key, "complete": False, "base": 0}
    elif state.get("complete") and int(state.get("n", store.n)) < store.n:
        # items were appended to the store: embed only those
        state = {"key": key, "complete": False, "base": int(state.get("n", store.n))}
        for s in specs:  # readers (match) see the model's arrays as incomplete until the end
            path = f"pse/{s['name']}" if s["kind"] == "pse" else f"dhs/{s['name']}"
            g[path].attrs["complete"] = False
            if s["kind"] == "pse":
                g[path].resize((store.n, 128))
            if s["hub"]:
                g[f"hub/{s['name']}"].resize((store.n,))
        g["screen/frames"].attrs["complete"] = False
    g.attrs["embed_state"] = state
    base = int(state.get("base", 0))
    shards = plan(store.n, partition_size=partition_size, start=base)
    done = committed_parts(g, STAGE) if not state.get("complete") else {s.pid for s in shards}
    todo = [s for s in shards if s.pid not in done]
    skipped = len(shards) - len(todo)
    if max_parts is not None:
        todo = todo[:max_parts]
    run_shards(client, embed_shard, todo, name="embed", progress=progress, check=lease.check,
               kwargs={"url": url, "models": specs, "storage_options": storage_options, "lease": lease.token})
    missing = 0 if g.attrs["embed_state"].get("complete") else len(shards) - len(committed_parts(g, STAGE))
    complete = not missing
    if missing and max_parts is None:
        raise StageError(
            f"{missing} of {len(shards)} embed partitions of {url!r} are not committed although every "
            "task finished; nothing committed is lost: re-run the same command to resume"
        )
    n_fail = 0
    if complete and not g.attrs["embed_state"].get("complete"):
        lease.check()
        parts = [read_part(g, STAGE, s.pid) for s in shards]
        fails = [f for f in store.failures() if base or f["stage"] != STAGE]
        for p in parts:
            for i, src, r in zip(read_strings(p, "fail_id"), read_strings(p, "fail_source"), read_strings(p, "fail_reason")):
                fails.append({"id": i, "source": src, "stage": STAGE, "reason": r})
        n_fail = sum(f["stage"] == STAGE for f in fails)
        for s in specs:
            if s["kind"] != "dhs":
                continue
            counts = [np.asarray(p[f"{s['name']}__counts"][:], np.int64) for p in parts]
            _consolidate(client, url, g, f"dhs/{s['name']}/words", f"{s['name']}__words", counts,
                         row_shape=(), dtype="uint32", chunk=1 << 20, storage_options=storage_options,
                         progress=progress, base=base)
        counts = [np.asarray(p["screen__counts"][:], np.int64) for p in parts]
        _consolidate(client, url, g, "screen/frames", "screen__frames", counts, row_shape=(store.params.n_bins,),
                     dtype="int8", chunk=1 << 16, storage_options=storage_options, progress=progress,
                     base=base)
        g["screen/frames"].attrs.update({"format_version": screen.FORMAT_VERSION, "pool": screen.POOL,
                                         "complete": True})
        write_failures(g, fails)
        for s in specs:
            path = f"pse/{s['name']}" if s["kind"] == "pse" else f"dhs/{s['name']}"
            g[path].attrs.update({"model": s["name"], "kind": s["kind"], "model_digest": s["digest"],
                                  "complete": True})
            if s["hub"]:
                g[f"hub/{s['name']}"].attrs.update({"model": s["name"], "model_digest": s["digest"],
                                                   "k": s["hub"]["k"], "weight": s["hub"]["weight"],
                                                   "complete": True})
        g.attrs["embed_state"] = {"key": key, "complete": True, "n": store.n}
        delete_path(url, f"_parts/{STAGE}", storage_options=storage_options)
    return {"items": store.n, "failures": n_fail, "models": [s["name"] for s in specs],
            "seconds": time.perf_counter() - t0, "threads": total_threads(client),
            "parts_run": len(todo), "parts_skipped": skipped, "complete": bool(complete)}


def _consolidate(client, url, g, name, source, counts, *, row_shape, dtype, chunk, storage_options, progress,
                 base: int = 0):
    """Concatenate a ragged staged array into ``<dir>/<leaf>`` and write ``<dir>/offsets`` beside it.

    Parameters
    ----------
    counts : list of np.ndarray [shape=(n_items_in_part,), int64]
        Rows per item, per part.
    base : int
        Items already consolidated (an append): their rows are kept.
    """
    from msdmatch.io.store import concat_parts, write_offsets

    old = np.asarray(g[f"{name.rsplit('/', 1)[0]}/offsets"][: base + 1], np.int64) if base else np.zeros(1, np.int64)
    concat_parts(client, url, stage=STAGE, name=name, source=source, part_rows=[int(c.sum()) for c in counts],
                 row_shape=row_shape, dtype=dtype, chunk=chunk, storage_options=storage_options,
                 progress=progress, base=int(old[-1]))
    allc = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    off = np.concatenate([old, old[-1] + np.cumsum(allc)]).astype(np.int64)
    write_offsets(g, f"{name.rsplit('/', 1)[0]}/offsets", off)
