"""The msdmatch Zarr v3 store: layout, validation, staged writes.

Layout (one group per store; see DESIGN.md "Store format")::

    features   (total_frames, n_bins) float16, chunked along frames
    offsets    (n + 1,) int64      sequence i = features[offsets[i]:offsets[i+1]]
    ids        (n,) str
    sources    (n,) str
    failures/  id, source, stage, reason   (m,) str each
    pse/<model>                 (n, 128) float32           written by embed
    dhs/<model>/words, offsets  flat uint32 + (n+1,) int64  written by embed
    _parts/<stage>/p000123/     staging area of one partition (private)

Writers never share a chunk: each partition writes its own staging arrays,
then marks them ``committed`` in the part group's attributes (one atomic
object write).  Readers only ever see consolidated arrays, which are written
from the committed parts in chunk-aligned blocks once every part is done.
Group attributes record ``msdmatch_format``, ``modality``, the feature
parameters and the msdmatch version; readers refuse anything else.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from msdmatch import __version__
from msdmatch.errors import FormatMismatchError, MsdmatchError, ParameterError, StoreAccessError, StoreError
from msdmatch.params import FORMAT_VERSION, MODALITIES, FeatureParams

#: Frames per chunk of ``features`` (16384 x 48 x 2 bytes = 1.5 MiB).
FEATURES_CHUNK = 16384
#: Rows per chunk of the per-item string and offset arrays.
ITEM_CHUNK = 65536
FAILURE_FIELDS = ("id", "source", "stage", "reason")


def _is_io_error(e: BaseException) -> bool:
    mod = type(e).__module__.split(".")[0]
    return isinstance(e, OSError) or mod in ("botocore", "aiobotocore", "aiohttp", "s3fs")


@contextlib.contextmanager
def access_errors(url: str) -> Iterator[None]:
    """Turn storage and network errors raised while a stage runs into one-line :class:`StoreAccessError`.

    Retries have already been spent by then (s3fs/botocore for each request,
    Dask for each task); the store is left as it was, resumable.
    """
    try:
        yield
    except MsdmatchError:
        raise
    except Exception as e:
        if not _is_io_error(e):
            raise
        from msdmatch.executor import one_line

        raise StoreAccessError(
            f"lost access to store {url!r} ({one_line(e)}); nothing committed is lost: "
            "re-run the same command to resume"
        ) from e


def is_remote(url: str) -> bool:
    """True for fsspec URLs such as ``s3://bucket/x.zarr``."""
    return "://" in str(url) and not str(url).startswith("file://")


def fs_options(storage_options: dict | None) -> dict:
    """Fsspec options for a remote store: the caller's, with directory listings never cached.

    A store is written by many processes at once: worker processes commit
    parts while the process that runs the stage waits, then lists them.
    s3fs keeps every listing for the life of its filesystem instance, and
    fsspec shares one instance per set of options in a process, so a listing
    taken before the workers ran (the resume check) would hide every part
    they committed since.  Listings are only taken per stage, never per item,
    so not caching them costs a few requests.

    Parameters
    ----------
    storage_options : dict, optional
        The caller's fsspec options (credentials, ``endpoint_url``, ``config_kwargs``).

    Returns
    -------
    dict
        A new dict; ``use_listings_cache`` is always False.
    """
    return {**(storage_options or {}), "use_listings_cache": False}


def open_group(url: str, *, mode: str = "r", storage_options: dict | None = None):
    """Open a Zarr v3 group locally or through fsspec (see :func:`fs_options`)."""
    import zarr

    kw: dict[str, Any] = {}
    if is_remote(url):
        kw["storage_options"] = fs_options(storage_options)
    try:
        return zarr.open_group(str(url), mode=mode, zarr_format=3, **kw)
    except FileNotFoundError:
        raise StoreError(f"no msdmatch store at {url!r}; create it with `msdmatch featurize`") from None
    except (PermissionError, OSError) as e:
        raise StoreError(f"cannot open store {url!r} (mode {mode!r}): {e}") from None


def write_strings(group, name: str, values: Sequence[str]) -> None:
    """Write ``values`` as the string array ``name`` of ``group``, replacing it."""
    n = len(values)
    arr = group.create_array(
        name, shape=(n,), dtype=str, chunks=(max(1, min(n, ITEM_CHUNK)),), overwrite=True
    )
    if n:
        arr[:] = np.asarray(list(values), dtype=str)


def read_strings(group, name: str) -> list[str]:
    """The string array ``name`` of ``group`` as a list."""
    arr = group[name]
    return [str(s) for s in arr[:]] if arr.shape[0] else []


def write_offsets(group, name: str, offsets: np.ndarray) -> None:
    """Write ``offsets`` (np.ndarray [shape=(n_items + 1,), int64]) as the array ``name``, replacing it."""
    group.create_array(name, shape=offsets.shape, dtype="int64", chunks=(min(offsets.size, ITEM_CHUNK),),
                       overwrite=True)[:] = offsets


def create_item_rows(group, name: str, *, n: int, width: int | None, chunk: int) -> None:
    """Create ``name``: one float32 row of ``width`` per item (one value if None), NaN until written."""
    shape, chunks = ((n,), (chunk,)) if width is None else ((n, width), (chunk, width))
    group.create_array(name, shape=shape, dtype="float32", chunks=chunks, overwrite=True, fill_value=np.nan)


def prune_vectors(group, model: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    """A database's PSE vectors of ``model`` with their hub coordinate, rows ``start:stop``.

    Returns
    -------
    vectors : np.ndarray [shape=(n, embedding_dim + 1), dtype=float32]
        ``pse/<model>`` with :func:`msdmatch.kernels.hub.hub_column` of
        ``hub/<model>`` appended (zeros when the store has none); the exact
        Euclidean prune over them ranks by the penalised distance.
    """
    from msdmatch.kernels.hub import hub_column, with_hub

    stop = group[f"pse/{model}"].shape[0] if stop is None else stop
    E = np.asarray(group[f"pse/{model}"][start:stop], dtype=np.float32)
    path = f"hub/{model}"
    col = (hub_column(np.asarray(group[path][start:stop]), float(group[path].attrs["weight"]))
           if path in group else None)
    return with_hub(E, col)


class Store:
    """A consolidated msdmatch store.

    Parameters
    ----------
    url : str
        Local path or fsspec URL.
    storage_options : dict, optional
        fsspec options (credentials, ``endpoint_url``) for remote stores.
    mode : {'r', 'r+'}
    """

    def __init__(self, url: str, *, storage_options: dict | None = None, mode: str = "r"):
        self.url = str(url)
        self.storage_options = storage_options
        self.group = open_group(self.url, mode=mode, storage_options=storage_options)
        attrs = dict(self.group.attrs)
        check_format(attrs, self.url)
        if not attrs.get("complete"):
            raise StoreError(
                f"store {self.url!r} is incomplete (featurize was interrupted); "
                "re-run the same `msdmatch featurize` command to finish it"
            )
        self.attrs = attrs
        self.modality: str = attrs["modality"]
        self.params = FeatureParams.from_dict(attrs["params"])

    @functools.cached_property
    def offsets(self) -> np.ndarray:
        """(n + 1,) int64 frame offsets."""
        return np.asarray(self.group["offsets"][:], dtype=np.int64)

    @functools.cached_property
    def ids(self) -> list[str]:
        """Item ids, in store order."""
        return read_strings(self.group, "ids")

    @property
    def sources(self) -> list[str]:
        """Where each item came from."""
        return read_strings(self.group, "sources")

    def strings(self, name: str, start: int, stop: int) -> list[str]:
        """Items ``start:stop`` of a per-item string array (``ids`` or ``sources``), one read."""
        return [str(v) for v in self.group[name][start:stop]] if stop > start else []

    @property
    def n(self) -> int:
        """Number of featurized items."""
        return int(self.offsets.size - 1)

    def sequence(self, i: int) -> np.ndarray:
        """Features of item ``i``, shape (n_frames, n_bins), float32."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return np.asarray(self.group["features"][a:b], dtype=np.float32)

    def sequences(self, start: int = 0, stop: int | None = None) -> list[np.ndarray]:
        """Items ``start:stop`` with one contiguous read, float32."""
        stop = self.n if stop is None else stop
        off = self.offsets[start : stop + 1]
        if stop <= start:
            return []
        block = np.asarray(self.group["features"][off[0] : off[-1]], dtype=np.float32)
        return [block[a - off[0] : b - off[0]] for a, b in zip(off[:-1], off[1:])]

    def failures(self) -> list[dict[str, str]]:
        """Rows of the failures table."""
        if "failures" not in self.group:
            return []
        g = self.group["failures"]
        cols = {f: read_strings(g, f) for f in FAILURE_FIELDS}
        return [dict(zip(FAILURE_FIELDS, row)) for row in zip(*cols.values())]

    def require(self, *, params: FeatureParams | None = None, modality: str | None = None) -> None:
        """Refuse the store if its parameters or modality differ from the caller's."""
        if params is not None and params != self.params:
            raise FormatMismatchError(
                f"store {self.url!r} was featurized with other parameters "
                f"({'; '.join(self.params.diff(params))}); re-run `msdmatch featurize` "
                "with matching settings or use a model trained on these"
            )
        if modality is not None and modality != self.modality:
            raise FormatMismatchError(
                f"store {self.url!r} holds {self.modality!r} features but {modality!r} "
                "was expected; did you swap QUERIES and DB?"
            )


#: How audio stores place the CQT bins (attribute ``tuning``); stores without it assumed A4 = 440 Hz.
AUDIO_TUNING = "estimated per recording, 10-cent steps"
#: How piano-roll stores weigh velocities (attribute ``volume``); stores without it ignored CC 7/11.
PIANOROLL_VOLUME = "velocity x (CC7 / 100)^2 x (CC11 / 127)^2"
#: Store attributes that name a featurization method, per modality, with the message of a mismatch.
METHOD_ATTRS = {
    "audio": ("tuning", AUDIO_TUNING, "assumed A4 = 440 Hz for every recording; this one centres "
              "the CQT on each recording's tuning"),
    "midi-pianoroll": ("volume", PIANOROLL_VOLUME, "ignored channel volume and expression (CC 7, "
                       "CC 11); this one scales each part's velocities by them"),
}


def check_format(attrs: dict, url: str) -> None:
    """Refuse stores that are not msdmatch stores of this format version."""
    if "msdmatch_format" not in attrs:
        raise StoreError(f"{url!r} is not an msdmatch store (no 'msdmatch_format' attribute)")
    fmt = attrs["msdmatch_format"]
    if fmt != FORMAT_VERSION:
        raise FormatMismatchError(
            f"store {url!r} has msdmatch_format={fmt} but this msdmatch "
            f"({__version__}) reads format {FORMAT_VERSION}; re-run `msdmatch featurize` "
            "into a new store, or use the msdmatch version that wrote it"
        )


def init_store(
    url: str,
    *,
    modality: str,
    params: FeatureParams,
    plan: dict,
    storage_options: dict | None = None,
    overwrite: bool = False,
):
    """Create a store for writing, or reopen one to resume.

    The caller has checked ``url`` with :func:`msdmatch.io.outputs.check_store_out`:
    nothing is there, an empty folder, or an msdmatch store.  An existing
    store is reused only if its format, modality, parameters and plan digest
    all match; otherwise the caller is told how to proceed.  With
    ``overwrite`` an existing msdmatch store is removed and made afresh.

    Returns
    -------
    group : zarr.Group opened for writing
    """
    if modality not in MODALITIES:
        raise StoreError(f"modality {modality!r} is not one of {MODALITIES}")
    import zarr

    attrs = {
        "msdmatch_format": FORMAT_VERSION,
        "modality": modality,
        "params": params.to_dict(),
        "msdmatch_version": __version__,
        "plan": plan,
        "complete": False,
    }
    method = METHOD_ATTRS.get(modality)
    if method:
        attrs[method[0]] = method[1]
    exists = True
    try:
        g = open_group(url, mode="r", storage_options=storage_options)
        old = dict(g.attrs)
    except StoreError:
        exists = False
    if exists and not overwrite and old:
        check_format(old, url)
        if old.get("modality") != modality:
            raise StoreError(
                f"{url!r} already holds {old.get('modality')!r} features, not {modality!r}; "
                "choose another --out or pass --overwrite"
            )
        if method and old.get(method[0]) != method[1]:
            raise FormatMismatchError(
                f"{url!r} was featurized by an earlier msdmatch that {method[2]}. Featurize into a "
                "new --out or pass --overwrite"
            )
        diff = FeatureParams.from_dict(old["params"]).diff(params)
        if diff:
            raise FormatMismatchError(
                f"{url!r} was featurized with other parameters ({'; '.join(diff)}); "
                "choose another --out or pass --overwrite"
            )
        if old.get("plan", {}).get("digest") != plan["digest"]:
            raise StoreError(
                f"{url!r} was started from a different list of inputs or partition size; "
                "re-run with the original SRC, choose another --out, or pass --overwrite"
            )
        return open_group(url, mode="r+", storage_options=storage_options)
    if exists and old:
        # check_store_out has established that this is an msdmatch store: only then is it removed
        check_format(old, url)
        delete_path(url, "", storage_options=storage_options)
    kw: dict[str, Any] = {"storage_options": fs_options(storage_options)} if is_remote(url) else {}
    try:
        g = zarr.open_group(url, mode="w-", zarr_format=3, **kw)
    except (PermissionError, OSError) as e:
        raise StoreError(f"cannot create store {url!r}: {e}") from None
    g.attrs.update(attrs)
    return g


# ----------------------------------------------------------------- staging


def part_path(stage: str, pid: int) -> str:
    """Group path of one staged partition."""
    return f"_parts/{stage}/p{pid:06d}"


def encode_part(arrays: dict[str, np.ndarray], strings: dict[str, Sequence[str]]) -> dict[str, bytes]:
    """The objects of one staged part's arrays, keyed by their path inside the part; nothing is stored.

    The part is built by zarr in memory, so the objects are exactly those
    zarr would write.  The part's own group metadata (``zarr.json``) is left
    out: :func:`write_part` stores it.

    Parameters
    ----------
    arrays : dict of str to np.ndarray
        Numeric arrays, chunked along their first axis.
    strings : dict of str to sequence of str
        String arrays.

    Returns
    -------
    objects : dict of str to bytes
    """
    import zarr
    from zarr.storage import MemoryStore

    buffers: dict = {}
    g = zarr.open_group(MemoryStore(buffers), mode="w", zarr_format=3)
    for name, a in arrays.items():
        a = np.asarray(a)
        chunks = (max(1, min(a.shape[0], FEATURES_CHUNK)),) + a.shape[1:]
        arr = g.create_array(name, shape=a.shape, dtype=a.dtype, chunks=chunks)
        if a.size:
            arr[...] = a
    for name, values in strings.items():
        write_strings(g, name, values)
    return {k: v.to_bytes() for k, v in buffers.items() if k != "zarr.json"}


def group_doc(attributes: dict | None = None) -> bytes:
    """The ``zarr.json`` of a Zarr v3 group with ``attributes`` (the spec's format)."""
    doc = {"zarr_format": 3, "node_type": "group", "attributes": attributes or {}}
    return json.dumps(doc, indent=2).encode()


def filesystem(url: str, storage_options: dict | None = None) -> tuple[Any, str]:
    """The fsspec filesystem of a store and the store's root path on it (see :func:`fs_options`)."""
    import fsspec

    options = fs_options(storage_options) if is_remote(url) else {"auto_mkdir": True}
    try:
        fs, root = fsspec.core.url_to_fs(str(url), **options)
        if hasattr(fs, "connect"):  # s3fs builds its session lazily; check the options now
            fs.connect()
    except TypeError as e:
        raise ParameterError(f"--storage-options: {e} (expected options of the {url.split(':')[0]} filesystem, "
                             f"got {sorted(storage_options or {})})") from None
    return fs, root.rstrip("/")


def _remove(fs, path: str) -> None:
    """Delete ``path`` and everything below it, if it exists."""
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)


def _put_whole(fs, path: str, data: bytes) -> None:
    """Store one object so that a reader sees all of it or none of it.

    An object store's PUT is already that; a local file is written beside
    its place and renamed into it.
    """
    if "file" not in fs.protocol:
        fs.pipe_file(path, data)
        return
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    fs.pipe_file(tmp, data)
    os.replace(tmp, path)


def write_part(
    url: str,
    stage: str,
    pid: int,
    arrays: dict[str, np.ndarray],
    strings: dict[str, Sequence[str]],
    *,
    storage_options: dict | None = None,
    lease: str | None = None,
) -> None:
    """Store one partition's staging arrays, then mark it committed.

    With ``lease`` (the writer's lease token), the part is committed only if
    the store's lease still holds that token; otherwise :class:`StoreError`
    (fencing: a writer that lost its lease never commits again).

    The part's arrays are encoded in memory (:func:`encode_part`) and stored
    together (concurrently on S3) below an uncommitted group; the group
    metadata with ``committed`` replaces it last, in one whole-object write,
    so readers never see a partial part.  A part left by an earlier attempt
    is uncommitted first (its group metadata goes before any of its arrays),
    then removed, so a rewrite that dies half-way never leaves a committed
    part with missing chunks.
    """
    objects = encode_part(arrays, strings)
    fs, root = filesystem(url, storage_options)
    _ensure_group(fs, f"{root}/_parts")
    _ensure_group(fs, f"{root}/_parts/{stage}")
    base = f"{root}/{part_path(stage, pid)}"
    _remove(fs, f"{base}/zarr.json")
    _remove(fs, base)
    _put_whole(fs, f"{base}/zarr.json", group_doc())
    fs.pipe({f"{base}/{k}": v for k, v in objects.items()})
    if lease is not None:
        from msdmatch.io.lock import holds

        if not holds(url, lease, storage_options=storage_options):
            raise StoreError(f"store {url!r}: this writer lost its lease; part {pid} was not committed")
    _put_whole(fs, f"{base}/zarr.json", group_doc({"committed": True}))


def _ensure_group(fs, path: str) -> None:
    """Create an empty group at ``path`` unless one is there (a staging area's parents)."""
    if not fs.exists(f"{path}/zarr.json"):
        _put_whole(fs, f"{path}/zarr.json", group_doc())


def committed_parts(group, stage: str) -> set[int]:
    """Partition ids whose staging write finished."""
    path = f"_parts/{stage}"
    if path not in group:
        return set()
    done = set()
    for name, sub in group[path].groups():
        if sub.attrs.get("committed"):
            done.add(int(name[1:]))
    return done


def read_part(group, stage: str, pid: int) -> Any:
    """The zarr group of one committed part."""
    return group[part_path(stage, pid)]


def plan_blocks(total: int, *, chunk: int, chunks_per_block: int = 16, start: int = 0) -> list[tuple[int, int]]:
    """Chunk-aligned ``[start, stop)`` row ranges covering rows ``start:total``.

    Parameters
    ----------
    total : int
        Number of rows of the consolidated array.
    chunk : int
        Chunk length of that array; every block boundary but ``start`` is a
        multiple, so no two blocks share a chunk.
    chunks_per_block : int
        Chunks written by one task.
    start : int
        First row to cover (rows before it are kept as they are: an append).
    """
    step = chunk * chunks_per_block
    first = min(total, -(-max(start, 1) // step) * step) if start else 0
    head = [(start, first)] if start < first else []
    return head + [(a, min(a + step, total)) for a in range(first, total, step)]


def copy_block(
    block: tuple[int, int],
    *,
    url: str,
    stage: str,
    name: str,
    source: str,
    part_spans: list[tuple[int, int, int]],
    storage_options: dict | None = None,
) -> int:
    """Fill rows ``block`` of array ``name`` from array ``source`` of staged parts.

    Parameters
    ----------
    part_spans : list of (pid, start, stop)
        Where each part's rows go in the consolidated array.

    Returns
    -------
    n_rows : int
    """
    root = open_group(url, mode="r+", storage_options=storage_options)
    a, b = block
    out = root[name]
    buf = np.empty((b - a,) + out.shape[1:], dtype=out.dtype)
    for pid, s, e in part_spans:
        lo, hi = max(s, a), min(e, b)
        if lo < hi:
            buf[lo - a : hi - a] = root[f"{part_path(stage, pid)}/{source}"][lo - s : hi - s]
    out[a:b] = buf
    return b - a


def write_failures(group, rows: list[dict[str, str]]) -> None:
    """Replace the failures table with ``rows`` (dicts with FAILURE_FIELDS)."""
    g = group.require_group("failures")
    for f in FAILURE_FIELDS:
        write_strings(g, f, [str(r[f]) for r in rows])


def delete_path(url: str, path: str, *, storage_options: dict | None = None) -> None:
    """Remove a sub-tree of a store msdmatch made (``path=''``: the whole store)."""
    fs, root = filesystem(url, storage_options)
    _remove(fs, f"{root}/{path}".rstrip("/"))


def concat_parts(
    client,
    url: str,
    *,
    stage: str,
    name: str,
    source: str,
    part_rows: Sequence[int],
    row_shape: tuple[int, ...],
    dtype: str,
    chunk: int,
    storage_options: dict | None = None,
    progress: bool = True,
    base: int = 0,
) -> int:
    """Concatenate array ``source`` of every staged part of ``stage`` into ``name``.

    Runs chunk-aligned copy tasks on the client, so no two tasks write the
    same chunk.  With ``base > 0`` the parts are appended after the first
    ``base`` rows of the existing array, which are kept.

    Parameters
    ----------
    part_rows : sequence of int
        Rows held by each part, in part order.
    row_shape : tuple
        Shape of one row (``(48,)`` for features, ``()`` for hash words).

    Returns
    -------
    total : int
        Rows of the consolidated array.
    """
    from msdmatch.executor import run_shards

    starts = base + np.concatenate([[0], np.cumsum(np.asarray(part_rows, dtype=np.int64))])
    total = int(starts[-1])
    root = open_group(url, mode="r+", storage_options=storage_options)
    if base:
        root[name].resize((total,) + tuple(row_shape))
        chunk = root[name].chunks[0]
    else:
        root.create_array(name, shape=(total,) + tuple(row_shape), dtype=dtype,
                          chunks=(chunk,) + tuple(row_shape), overwrite=True)
    spans = [(pid, int(starts[pid]), int(starts[pid + 1])) for pid in range(len(part_rows))]
    run_shards(client, copy_block, plan_blocks(total, chunk=chunk, start=base), name=f"{stage}-consolidate",
               progress=progress, kwargs={"url": url, "stage": stage, "source": source,
                                          "part_spans": spans, "storage_options": storage_options,
                                          "name": name})
    return total
