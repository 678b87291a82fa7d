"""Featurize stage: audio previews or MIDI files into an msdmatch store.

Plan, shard work and execution are kept apart:

- :func:`plan` (pure) turns the input items into immutable shards of
  ``partition_size`` items, and rejects duplicate ids up front;
- :func:`featurize_shard` processes one shard and writes one staging part;
- :func:`run` resumes or creates the store, runs the uncommitted shards on a
  Dask client, then consolidates the parts into the store's flat arrays.

Features follow :mod:`msdmatch.kernels.features`: (n_frames, 48) per item, stored as
float16.  Items that fail are recorded with a one-line reason in
``failures``; the stage goes on.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np

from msdmatch.errors import InputError, ParameterError, StageError
from msdmatch.io.sources import AUDIO_EXTENSIONS, MIDI_EXTENSIONS, Item, resolve_sources
from msdmatch.params import DEFAULT_PARAMS, FEATURIZE, FeatureParams

STAGE = "featurize"
MODES = ("synth", "pianoroll")


@dataclass(frozen=True)
class Shard:
    """One task's worth of input items."""

    pid: int
    items: tuple[Item, ...]


@dataclass
class Summary:
    """What a featurize run did; printed by the CLI."""

    items: int = 0
    failures: int = 0
    frames: int = 0
    seconds: float = 0.0
    threads: int = 1
    parts_run: int = 0
    parts_skipped: int = 0
    skipped: int = 0
    out: str = ""
    failure_reasons: dict = field(default_factory=dict)

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        per_core = self.items / max(self.seconds * self.threads, 1e-9)
        return (
            f"featurized {self.items} items ({self.frames} frames), {self.failures} failures, "
            f"{self.seconds:.1f} s, {per_core:.1f} items/s/core; "
            f"{self.parts_run} partitions run, {self.parts_skipped} already done"
            + (f"; {self.skipped} inputs skipped, their ids already in the store" if self.skipped else "")
            + f" -> {self.out}"
        )


def modality_of(kind: str, mode: str) -> str:
    """Store modality for a featurize kind (``audio``/``midi``) and MIDI mode."""
    if kind == "audio":
        return "audio"
    if mode not in MODES:
        raise ParameterError(f"--mode must be one of {MODES}, got {mode!r}")
    return f"midi-{mode}"


def plan(items: list[Item], *, partition_size: int) -> tuple[list[Shard], list[dict]]:
    """Split items into shards; duplicate ids and non-UTF-8 names become failures.

    Parameters
    ----------
    items : list of Item
        In a deterministic order (see :func:`msdmatch.io.sources.resolve_sources`).
    partition_size : int
        Items per shard (100-1,000 for real runs).

    Returns
    -------
    shards : list of Shard
    rejected : list of dict
        Failure rows for items dropped at planning time.
    """
    if partition_size < 1:
        raise ParameterError(f"partition_size must be >= 1, got {partition_size}")
    seen: dict[str, str] = {}
    keep, rejected = [], []
    for it in items:
        if not _utf8(it.source) or not _utf8(it.id):
            rejected.append(
                {"id": _printable(it.id), "source": _printable(it.source), "stage": STAGE,
                 "reason": "file name is not valid UTF-8; rename the file (ids and sources are UTF-8 text)"}
            )
            continue
        if it.id in seen:
            rejected.append(
                {"id": it.id, "source": it.source, "stage": STAGE,
                 "reason": f"duplicate id (first seen at {seen[it.id]})"}
            )
            continue
        seen[it.id] = it.source
        keep.append(it)
    shards = [
        Shard(pid, tuple(keep[a : a + partition_size]))
        for pid, a in enumerate(range(0, len(keep), partition_size))
    ]
    return shards, rejected


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # an OS file name with undecodable bytes (surrogate escapes)
        return False
    return True


def _printable(s: str) -> str:
    r"""``s`` with undecodable file-name bytes shown as ``\xNN``."""
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def plan_digest(shards: list[Shard], *, modality: str, params: FeatureParams, extra: str = "") -> str:
    """Stable hash of a plan, so a resumed run knows it is the same job."""
    h = hashlib.sha256(f"{modality}|{sorted(params.to_dict().items())}|{extra}".encode())
    for s in shards:
        h.update(f"#{s.pid}".encode())
        for it in s.items:
            h.update(f"\n{it.id}\t{it.source}".encode())
    return h.hexdigest()


def featurize_item(
    item: Item,
    *,
    modality: str,
    params: FeatureParams = DEFAULT_PARAMS,
    soundfont: str | None = None,
    storage_options: dict | None = None,
) -> np.ndarray:
    """Features of one file; raises InputError for a bad item.

    Returns
    -------
    X : np.ndarray [shape=(n_frames, params.n_bins), dtype=float32]
    """
    from msdmatch.io import decode
    from msdmatch.kernels import features

    if modality == "audio":
        data = decode.read_bytes(item.source, max_bytes=decode.MAX_AUDIO_BYTES, storage_options=storage_options)
        y, sr = decode.decode_audio(data, max_seconds=params.max_frames * params.frame_seconds)
        features.check_min_seconds(y.shape[0] / sr)
        return features.audio_cqt(y, sr, params=params)
    data = decode.read_bytes(item.source, max_bytes=decode.MAX_MIDI_BYTES, storage_options=storage_options)
    pm = decode.decode_midi(data)
    if modality == "midi-synth":
        return midi_cqt(pm, params=params, soundfont=soundfont)
    return features.pianoroll(pm, params=params)


def featurize_shard(
    shard: Shard,
    *,
    url: str,
    modality: str,
    params: FeatureParams = DEFAULT_PARAMS,
    soundfont: str | None = None,
    storage_options: dict | None = None,
    input_options: dict | None = None,
    lease: str | None = None,
) -> dict:
    """Featurize one shard and commit it as a staging part of the store.

    ``lease`` is the token of the writer's store lease: the part is committed
    only while that lease still holds (:func:`msdmatch.io.store.write_part`).

    Returns
    -------
    stats : dict
        ``items``, ``failures``, ``frames`` of this shard.
    """
    from msdmatch.io.store import write_part

    feats, ids, sources, fails = [], [], [], []
    for it in shard.items:
        try:
            X = featurize_item(
                it, modality=modality, params=params, soundfont=soundfont, storage_options=input_options
            )
            if X.shape[0] == 0:
                raise InputError("no frames")
            if not np.all(np.isfinite(X)):
                raise InputError("features contain NaN or infinity")
        except InputError as e:
            fails.append((it.id, it.source, str(e)))
            continue
        except MemoryError:
            fails.append((it.id, it.source, "out of memory while featurizing"))
            continue
        feats.append(X.astype(np.float16))
        ids.append(it.id)
        sources.append(it.source)
    lengths = np.array([f.shape[0] for f in feats], dtype=np.int64)
    allf = np.concatenate(feats) if feats else np.zeros((0, params.n_bins), np.float16)
    write_part(
        url, STAGE, shard.pid,
        {"features": allf, "lengths": lengths},
        {"ids": ids, "sources": sources,
         "fail_id": [f[0] for f in fails], "fail_source": [f[1] for f in fails],
         "fail_reason": [f[2] for f in fails]},
        storage_options=storage_options, lease=lease,
    )
    return {"items": len(ids), "failures": len(fails), "frames": int(lengths.sum())}


def consolidate(client, url: str, *, n_parts: int, rejected: list[dict], params: FeatureParams,
                storage_options: dict | None = None, progress: bool = True, base: dict | None = None) -> dict:
    """Concatenate committed parts into ``features``/``offsets``/``ids``/``sources``/``failures``.

    With ``base`` (``{'items', 'frames', 'failures'}`` of the store before an
    append), the parts are appended after those rows, which are kept; the
    store's ``revision`` goes up by one.  Idempotent: an interrupted
    consolidation is simply run again.
    """
    from msdmatch.io.store import (
        FEATURES_CHUNK,
        concat_parts,
        delete_path,
        open_group,
        read_part,
        read_strings,
        write_failures,
        write_offsets,
        write_strings,
    )

    root = open_group(url, mode="r+", storage_options=storage_options)
    b = base or {"items": 0, "frames": 0, "failures": 0}
    lengths, ids, sources, fails = [], [], [], []
    if base:
        lengths.append(np.diff(np.asarray(root["offsets"][: b["items"] + 1], dtype=np.int64)))
        ids += read_strings(root, "ids")[: b["items"]]
        sources += read_strings(root, "sources")[: b["items"]]
        fails += _failure_rows(root)[: b["failures"]]
    fails += rejected
    for pid in range(n_parts):
        g = read_part(root, STAGE, pid)
        lengths.append(np.asarray(g["lengths"][:], dtype=np.int64))
        ids += read_strings(g, "ids")
        sources += read_strings(g, "sources")
        for i, s, r in zip(read_strings(g, "fail_id"), read_strings(g, "fail_source"), read_strings(g, "fail_reason")):
            fails.append({"id": i, "source": s, "stage": STAGE, "reason": r})
    all_len = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(all_len)]).astype(np.int64)
    total = concat_parts(client, url, stage=STAGE, name="features", source="features",
                         part_rows=[int(x.sum()) for x in lengths[1 if base else 0 :]],
                         row_shape=(params.n_bins,), dtype="float16", chunk=FEATURES_CHUNK,
                         storage_options=storage_options, progress=progress, base=b["frames"])
    write_offsets(root, "offsets", offsets)
    write_strings(root, "ids", ids)
    write_strings(root, "sources", sources)
    write_failures(root, fails)
    attrs = dict(root.attrs)
    attrs.pop("append", None)
    attrs.update({"complete": True, "n_items": len(ids), "n_failures": len(fails), "n_frames": total,
                  "revision": int(attrs.get("revision", 0)) + (1 if base else 0)})
    root.attrs.put(attrs)
    delete_path(url, f"_parts/{STAGE}", storage_options=storage_options)
    return {"items": len(ids), "failures": len(fails), "frames": total,
            "reasons": [f["reason"] for f in fails]}


def run(
    src: str,
    out: str,
    *,
    client=None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    kind: str,
    mode: str = "synth",
    params: FeatureParams = DEFAULT_PARAMS,
    soundfont: str | None = None,
    partition_size: int = FEATURIZE.partition_size,
    storage_options: dict | None = None,
    overwrite: bool = False,
    append: bool = False,
    progress: bool = True,
    max_parts: int | None = None,
) -> Summary:
    """Featurize every file named by ``src`` into the store at ``out``.

    Parameters
    ----------
    src : str
        Directory, glob, manifest or URL prefix.
    out : str
        Store path or URL.
    client : distributed.Client, optional
        Run on this client; otherwise one is made from ``scheduler`` and
        ``n_workers`` once the inputs and ``out`` have been checked.
    kind : {'audio', 'midi'}
    mode : {'synth', 'pianoroll'}
        MIDI features; ignored for audio.
    params : FeatureParams
    soundfont : str, optional
        Soundfont for ``midi-synth``.
    partition_size : int
        Items per task.
    storage_options : dict, optional
        fsspec options for ``src`` and ``out``.
    overwrite : bool
        Replace an msdmatch store at ``out`` instead of resuming it.  Nothing
        that msdmatch did not make is ever replaced
        (:func:`msdmatch.io.outputs.check_store_out`).
    append : bool
        Add the items of ``src`` to the complete store at ``out``; items whose
        id the store already holds (or failed on) are skipped and counted.
        The store's ``revision`` goes up, so ``match`` knows it changed.
    max_parts : int, optional
        Stop after this many new partitions (leaves the store incomplete;
        used to test resuming).

    Returns
    -------
    Summary
    """
    from msdmatch.executor import using_client
    from msdmatch.io.lock import holds, store_lease
    from msdmatch.io.outputs import check_store_out
    from msdmatch.io.store import access_errors

    # Everything the user can get wrong is checked before a cluster starts.
    modality = modality_of(kind, mode)
    if append and overwrite:
        raise ParameterError("--append adds to a store and --overwrite replaces it: choose one")
    if modality == "midi-synth":
        from msdmatch.io.synth import check_soundfont, resolve_soundfont

        soundfont = resolve_soundfont(soundfont)
        check_soundfont(soundfont)
    state = check_store_out(out, src=src, overwrite=overwrite, storage_options=storage_options)
    exts = AUDIO_EXTENSIONS if kind == "audio" else MIDI_EXTENSIONS
    items = resolve_sources(src, extensions=exts, storage_options=storage_options)
    if not items:
        raise ParameterError(f"SRC {src!r} holds no {kind} files (looked for {', '.join(exts)})")
    with using_client(client, scheduler=scheduler, n_workers=n_workers, quiet=not progress) as c, \
            access_errors(out), store_lease(out, stage="featurize", storage_options=storage_options) as lease:
        try:
            return _run(items, src, out, client=c, modality=modality, params=params, soundfont=soundfont,
                        partition_size=partition_size, storage_options=storage_options,
                        replace=state == "replace", append=append and state == "resume", progress=progress,
                        max_parts=max_parts, lease=lease)
        except BaseException:
            if state != "resume" and holds(out, lease.token, storage_options=storage_options):
                _discard_if_empty(out, storage_options)  # never a store that another writer now holds
            raise


def _start_append(out, items, *, modality, params, storage_options):
    """Open a store to append to; returns the group, its base counts, the new items and the skipped count."""
    from msdmatch.io.store import check_format, open_group, read_strings

    group = open_group(out, mode="r+", storage_options=storage_options)
    attrs = dict(group.attrs)
    check_format(attrs, out)
    if attrs.get("modality") != modality or FeatureParams.from_dict(attrs["params"]) != params:
        raise ParameterError(
            f"--append: {out!r} holds {attrs.get('modality')!r} features with its own parameters; "
            f"these inputs are {modality!r}: append to a store of the same kind"
        )
    base = attrs.get("append")
    if base is None:
        if not attrs.get("complete"):
            raise ParameterError(f"--append: {out!r} is incomplete; finish it first by re-running the "
                                 "featurize command that started it (without --append)")
        base = {"items": int(attrs["n_items"]), "frames": int(attrs["n_frames"]),
                "failures": int(attrs["n_failures"])}
    known = set(read_strings(group, "ids")[: base["items"]])
    known |= {f["id"] for f in _failure_rows(group)[: base["failures"]]}
    new = [it for it in items if it.id not in known]
    return group, {k: base[k] for k in ("items", "frames", "failures")}, new, len(items) - len(new)


def _record_append(group, out, base, *, digest, src, n_parts, empty) -> None:
    """Mark an append in progress (the store reads as incomplete until it is consolidated)."""
    if "append" in group.attrs and group.attrs["append"]["digest"] != digest:
        raise ParameterError(
            f"--append: an earlier append into {out!r} from {group.attrs['append']['src']!r} was interrupted; "
            "re-run that command to finish it first"
        )
    if not empty:
        group.attrs.update({"append": {**base, "digest": digest, "src": src, "n_parts": n_parts},
                            "complete": False})


def _failure_rows(group) -> list[dict]:
    from msdmatch.io.store import FAILURE_FIELDS, read_strings

    if "failures" not in group:
        return []
    cols = [read_strings(group["failures"], f) for f in FAILURE_FIELDS]
    return [dict(zip(FAILURE_FIELDS, row)) for row in zip(*cols)]


def _discard_if_empty(out: str, storage_options: dict | None) -> None:
    """Remove a store this run created if no partition was committed (a failed start leaves nothing)."""
    import contextlib

    from msdmatch.io.store import committed_parts, delete_path, open_group

    with contextlib.suppress(Exception):
        g = open_group(out, storage_options=storage_options)
        if not g.attrs.get("complete") and not committed_parts(g, STAGE):
            delete_path(out, "", storage_options=storage_options)


def _run(items, src, out, *, client, modality, params, soundfont, partition_size, storage_options,
         replace, append, progress, max_parts, lease) -> Summary:
    from msdmatch.executor import run_shards, total_threads
    from msdmatch.io.store import committed_parts, init_store, open_group

    t0 = time.perf_counter()
    sf_name = soundfont.rsplit("/", 1)[-1] if soundfont else ""
    summary = Summary(out=out, threads=total_threads(client))
    base = None
    if append:
        group, base, items, summary.skipped = _start_append(out, items, modality=modality, params=params,
                                                            storage_options=storage_options)
    shards, rejected = plan(items, partition_size=partition_size)
    digest = plan_digest(shards, modality=modality, params=params, extra=sf_name)
    if append:
        _record_append(group, out, base, digest=digest, src=src, n_parts=len(shards),
                       empty=not (shards or rejected))
    else:
        group = init_store(
            out, modality=modality, params=params, storage_options=storage_options, overwrite=replace,
            plan={"digest": digest, "n_planned": len(items), "n_parts": len(shards),
                  "partition_size": partition_size, "src": src},
        )
        if sf_name:
            group.attrs["soundfont"] = sf_name
    if group.attrs.get("complete"):
        summary.parts_skipped = len(shards)
    else:
        done = committed_parts(group, STAGE)
        todo = [s for s in shards if s.pid not in done]
        summary.parts_skipped = len(shards) - len(todo)
        if max_parts is not None:
            todo = todo[:max_parts]
        run_shards(client, featurize_shard, todo, name=f"featurize-{modality}", progress=progress,
                   kwargs={"url": out, "modality": modality, "params": params, "soundfont": soundfont,
                           "storage_options": storage_options, "input_options": storage_options,
                           "lease": lease.token},
                   check=lease.check)
        summary.parts_run = len(todo)
        missing = len(shards) - len(committed_parts(group, STAGE))
        if not missing:
            lease.check()
            consolidate(client, out, n_parts=len(shards), rejected=rejected, params=params,
                        storage_options=storage_options, progress=progress, base=base)
        elif max_parts is None:
            raise StageError(
                f"{missing} of {len(shards)} partitions of {out!r} are not committed although every "
                "task finished; nothing committed is lost: re-run the same command to resume"
            )
    attrs = dict(open_group(out, storage_options=storage_options).attrs)
    summary.items = int(attrs.get("n_items", 0))
    summary.failures = int(attrs.get("n_failures", 0))
    summary.frames = int(attrs.get("n_frames", 0))
    summary.seconds = time.perf_counter() - t0
    return summary


def midi_cqt(pm, *, params: FeatureParams = DEFAULT_PARAMS, soundfont: str | None = None) -> np.ndarray:
    """Synthesize MIDI with fluidsynth and take its CQT.

    Parameters
    ----------
    pm : pretty_midi.PrettyMIDI
    params : FeatureParams
    soundfont : str or None
        Soundfont name or path; ``None`` is pretty_midi's TimGM6mb.

    Returns
    -------
    X : np.ndarray [shape=(n_frames, params.n_bins), dtype=float32]
    """
    from msdmatch.io.synth import render
    from msdmatch.kernels.features import audio_cqt, midi_duration_check

    midi_duration_check(pm, params)
    y = render(pm, sr=params.sr, soundfont=soundfont)
    return audio_cqt(y, params.sr, params=params, tuning=0.0)  # synthesized at A4 = 440 Hz
