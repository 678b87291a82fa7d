"""MATCHES on storage: one file, a Parquet dataset committed batch by batch, or a Zarr group.

Forms, chosen by ``--out`` (a local path or an fsspec URL such as ``s3://``):

- ``NAME.csv`` / ``NAME.parquet``: one file, for small runs.  The job
  commits its batches to a staging dataset ``NAME.csv.msdmatch-parts/`` beside
  it and streams them into the file at the end (temp file + rename locally,
  one upload on S3), then removes the staging dataset.  Failures go to
  ``NAME.csv.failures.csv`` when there are any.
- ``NAME.zarr``: a Zarr v3 group with one array per column (the ``columns``
  attribute lists them) and a ``failures`` group; staged like a file.
- ``NAME`` (no extension) or ``s3://bucket/prefix``: a Parquet dataset
  directory, read by ``pandas.read_parquet(NAME)``, ``pyarrow.parquet.read_table``
  and ``dask.dataframe.read_parquet``.  It holds:

  - ``part-<start>-<stop>.parquet``: the rows of query store rows
    ``start:stop`` (zero-padded to 10 digits, so files sort in query order),
    each written whole (temp file + rename, or one PUT): a part that exists
    is committed;
  - ``_failures/part-<start>-<stop>.csv``: that batch's failed queries
    (``query_id, stage, reason``), written before its part;
  - :data:`META` (``_msdmatch-matches.json``): ``kind``, ``format_version``,
    the run's identity (:func:`msdmatch.stages.match.plan.run_identity`),
    ``batch_size`` and ``complete``.  Readers ignore ``_``-prefixed names.

Only an msdmatch output is ever resumed or replaced; anything else at
``--out`` is refused before any work.
"""
from __future__ import annotations

import io
import json
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from msdmatch.errors import MsdmatchError, ParameterError

#: The metadata object of a MATCHES dataset (and of a staging dataset).
META = "_msdmatch-matches.json"
KIND = "msdmatch-matches"
FORMAT_VERSION = 1
STAGING_SUFFIX = ".msdmatch-parts"
FAILURES_SUFFIX = ".failures.csv"
_PART = re.compile(r"^part-(\d{10})-(\d{10})\.parquet$")
_FORMS = {"csv": "csv", "parquet": "parquet", "zarr": "zarr"}


def _remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _fs(path: str, storage_options: dict | None):
    from msdmatch.io.store import filesystem

    return filesystem(path, storage_options)


def out_form(path: str) -> str:
    """``'csv'``, ``'parquet'``, ``'zarr'`` or ``'dataset'`` (a folder name without an extension)."""
    name = str(path).rstrip("/").rsplit("/", 1)[-1]
    if "." not in name.lstrip("."):
        return "dataset"
    ext = name.rsplit(".", 1)[-1].lower()
    if ext in _FORMS:
        return _FORMS[ext]
    raise ParameterError(
        f"--out {path!r}: expected a .csv or .parquet file, a .zarr group, or a folder name without an "
        f"extension (a Parquet dataset), not '.{ext}'"
    )


# ----------------------------------------------------------------------------- table columns


def _checked(table: Mapping, name: str = "matches") -> dict[str, np.ndarray]:
    """The contract's columns checked (:func:`msdmatch.evaluation.metrics._check_matches`) plus the decision columns."""
    from msdmatch.evaluation.metrics import _check_matches
    from msdmatch.stages.match.batch import DECISION_COLUMNS

    out = _check_matches(table, name)
    n = len(out["query_id"])
    for c in DECISION_COLUMNS:
        if c in table:
            col = np.asarray(table[c])
            if col.shape != (n,):
                raise ParameterError(f"{name} column {c!r} has shape {col.shape}, expected ({n},)")
            if c == "matched":
                out[c] = (np.isin(col.astype(str), ("True", "true", "1", "1.0")) if col.dtype.kind in "OUS"
                          else np.nan_to_num(col.astype(np.float64)) != 0)
            else:
                out[c] = col.astype(np.float64)
    return out


def _columns(t: Mapping) -> list[str]:
    from msdmatch.evaluation.metrics import MATCH_COLUMNS, OPTIONAL_COLUMNS
    from msdmatch.stages.match.batch import DECISION_COLUMNS

    return [c for c in MATCH_COLUMNS + OPTIONAL_COLUMNS + DECISION_COLUMNS if c in t]


def _arrow(table: Mapping, meta: dict | None = None):
    import pyarrow as pa

    t = _checked(table)
    arrow = pa.table({c: t[c] for c in _columns(t)})
    if meta is not None:
        arrow = arrow.replace_schema_metadata({b"msdmatch": json.dumps(meta).encode()})
    return arrow


def _to_numpy(arrow) -> dict[str, np.ndarray]:
    return {c: arrow.column(c).to_numpy(zero_copy_only=False) for c in arrow.column_names}


def _parquet_bytes(arrow) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(arrow, buf)
    return buf.getvalue()


def _csv_bytes(table: Mapping) -> bytes:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    buf = io.BytesIO()
    pcsv.write_csv(pa.table({k: np.asarray(v) for k, v in table.items()}), buf)
    return buf.getvalue()


def _put_whole(fs, path: str, data: bytes) -> None:
    """One object, seen whole or not at all: a PUT remotely, a hidden temp file + rename locally."""
    if "file" not in fs.protocol:
        fs.pipe_file(path, data)
        return
    head, tail = os.path.split(path)
    os.makedirs(head, exist_ok=True)
    tmp = os.path.join(head, f".{tail}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _read_parquet(fs, path: str):
    import pyarrow.parquet as pq

    # bytes, not a threaded read of a Python file object (pyarrow 26 can abort at exit after one)
    return pq.read_table(io.BytesIO(fs.cat_file(path)), use_threads=False)


def _read_csv_bytes(data: bytes, name: str):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    opts = pcsv.ConvertOptions(column_types={"query_id": pa.string(), "track_id": pa.string(),
                                             "stage": pa.string(), "reason": pa.string()})
    try:
        return pcsv.read_csv(io.BytesIO(data), convert_options=opts,
                             read_options=pcsv.ReadOptions(use_threads=False))
    except Exception as e:  # pyarrow raises ArrowInvalid with a useful message
        raise MsdmatchError(f"cannot parse {name} as CSV: {e}") from None


# ----------------------------------------------------------------------------- the committed dataset


@dataclass(frozen=True)
class Dataset:
    """A MATCHES Parquet dataset (the output itself, or a file's staging area)."""

    path: str
    storage_options: dict | None = None

    def _fs(self):
        return _fs(self.path, self.storage_options)

    def meta(self) -> dict:
        """Its :data:`META` document, ``{}`` if it has none."""
        fs, root = self._fs()
        try:
            doc = json.loads(fs.cat_file(f"{root}/{META}"))
        except (FileNotFoundError, ValueError):
            return {}
        return doc if isinstance(doc, dict) and doc.get("kind") == KIND else {}

    def write_meta(self, doc: dict) -> None:
        """Write :data:`META` whole."""
        from msdmatch import __version__

        fs, root = self._fs()
        if "file" in fs.protocol:
            os.makedirs(root, exist_ok=True)
        body = {"kind": KIND, "format_version": FORMAT_VERSION, "msdmatch_version": __version__, **doc}
        _put_whole(fs, f"{root}/{META}", json.dumps(body, indent=2).encode())

    def parts(self) -> list[tuple[int, int]]:
        """Query row ranges of the committed parts, in order."""
        fs, root = self._fs()
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
        except FileNotFoundError:
            return []
        found = [_PART.match(n) for n in names]
        return sorted((int(m[1]), int(m[2])) for m in found if m)

    def commit(self, start: int, stop: int, table: Mapping, failures: Mapping) -> None:
        """Commit one batch: its failures, then its rows (the part's existence is the commit)."""
        fs, root = self._fs()
        name = f"{start:010d}-{stop:010d}"
        if len(failures.get("query_id", ())):
            _put_whole(fs, f"{root}/_failures/part-{name}.csv", _csv_bytes(failures))
        _put_whole(fs, f"{root}/part-{name}.parquet", _parquet_bytes(_arrow(table)))

    def read_part(self, start: int, stop: int):
        """One committed part as a pyarrow Table."""
        fs, root = self._fs()
        return _read_parquet(fs, f"{root}/part-{start:010d}-{stop:010d}.parquet")

    def failures(self) -> dict[str, np.ndarray]:
        """The failures of the committed parts, ``query_id, stage, reason``."""
        import pyarrow as pa

        from msdmatch.stages.match.batch import FAILURE_COLUMNS

        fs, root = self._fs()
        tables = []
        for a, b in self.parts():
            p = f"{root}/_failures/part-{a:010d}-{b:010d}.csv"
            if fs.exists(p):
                tables.append(_read_csv_bytes(fs.cat_file(p), p))
        if not tables:
            return {c: np.zeros(0, str) for c in FAILURE_COLUMNS}
        t = pa.concat_tables(tables)
        return {c: np.asarray(t.column(c).to_pylist(), dtype=str) for c in FAILURE_COLUMNS}

    def remove(self) -> None:
        """Delete the dataset (only ever called on one that :meth:`meta` recognises)."""
        fs, root = self._fs()
        if fs.exists(root):
            fs.rm(root, recursive=True)


# ----------------------------------------------------------------------------- an output


@dataclass(frozen=True)
class MatchesOut:
    """Where a match job writes: its form, its committed dataset and the final file if any."""

    path: str
    form: str
    storage_options: dict | None = None

    @property
    def dataset(self) -> Dataset:
        """The dataset batches are committed to."""
        p = self.path.rstrip("/")
        return Dataset(p if self.form == "dataset" else p + STAGING_SUFFIX, self.storage_options)

    @property
    def failures_path(self) -> str:
        """The failures file of a single-file output."""
        return self.path + FAILURES_SUFFIX

    def commit(self, batch, table: Mapping, failures: Mapping) -> None:
        """Commit one batch's rows and failures (called in a worker)."""
        self.dataset.commit(batch.start, batch.stop, table, failures)

    def finish(self, *, meta: dict) -> dict:
        """Mark the dataset complete, or stream it into the final file or group; returns counts."""
        ds = self.dataset
        fails = ds.failures()
        if self.form == "dataset":
            ds.write_meta({**meta, "complete": True})
            return {"failures": len(fails["query_id"])}
        if self.form == "zarr":
            n = _finish_zarr(self, ds, fails, meta)
        else:
            n = _finish_file(self, ds, meta)
            fs, root = _fs(self.failures_path, self.storage_options)
            if len(fails["query_id"]):
                _put_whole(fs, root, _csv_bytes(fails))
            elif fs.exists(root):
                fs.rm_file(root)  # ours: the output check accepted it
        ds.remove()
        return {"rows": n, "failures": len(fails["query_id"])}


def _finish_file(out: MatchesOut, ds: Dataset, meta: dict) -> int:
    """Stream the committed parts into one .parquet or .csv file, seen whole or not at all."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    fs, root = _fs(out.path, out.storage_options)
    local = "file" in fs.protocol
    target = os.path.join(os.path.dirname(root), f".{os.path.basename(root)}.{uuid.uuid4().hex[:8]}.tmp") \
        if local else root
    n = 0
    writer = None
    with fs.open(target, "wb") as fh:
        try:
            for a, b in ds.parts():
                t = ds.read_part(a, b)
                if writer is None:
                    schema = t.schema.with_metadata({b"msdmatch": json.dumps({"kind": KIND, **meta}).encode()})
                    writer = (pq.ParquetWriter(fh, schema) if out.form == "parquet"
                              else pcsv.CSVWriter(fh, t.schema))
                writer.write_table(t.replace_schema_metadata(writer.schema.metadata)
                                   if out.form == "parquet" else t)
                n += t.num_rows
            if writer is None:  # no batch: an empty table with the columns
                empty = _arrow({c: np.zeros(0) for c in ("query_id", "rank", "track_id", "confidence",
                                                         "verify_score", "dhs_score", "pse_distance")})
                (pq.write_table if out.form == "parquet" else pcsv.write_csv)(empty, fh)
        finally:
            if writer is not None:
                writer.close()
    if local:
        os.replace(target, root)
    return n


def _finish_zarr(out: MatchesOut, ds: Dataset, fails: dict, meta: dict) -> int:
    """Write the committed parts as a Zarr group, one array per column, filled part by part."""
    import pyarrow.parquet as pq

    from msdmatch.io.store import open_group, write_strings

    fs, root = ds._fs()
    parts = ds.parts()
    lengths = [pq.read_metadata(io.BytesIO(fs.cat_file(f"{root}/part-{a:010d}-{b:010d}.parquet"))).num_rows
               for a, b in parts]
    total = int(sum(lengths))
    g = open_group(out.path, mode="w", storage_options=out.storage_options)
    arrays: dict = {}
    pos = 0
    for (a, b), n in zip(parts, lengths, strict=True):
        t = _to_numpy(ds.read_part(a, b))
        if not arrays:
            for c in _columns(t):
                dt = str if t[c].dtype.kind in "OUT" else t[c].dtype
                arrays[c] = g.create_array(c, shape=(total,), dtype=dt, chunks=(max(1, min(total, 1 << 20)),))
        for c, arr in arrays.items():
            col = t[c].astype(str) if t[c].dtype.kind in "OUT" else t[c]
            if n:
                arr[pos : pos + n] = col
        pos += n
    fg = g.require_group("failures")
    for c, v in fails.items():
        write_strings(fg, c, v.tolist())
    g.attrs.update({"kind": KIND, "columns": list(arrays), **meta})
    return total


# ----------------------------------------------------------------------------- read and write


def read_matches(path: str | os.PathLike, *, storage_options: dict | None = None) -> dict[str, np.ndarray]:
    """Read MATCHES in any form: ``.csv``, ``.parquet``, ``.zarr`` or a Parquet dataset folder.

    Parameters
    ----------
    path : str
        Local path or fsspec URL (``s3://bucket/matches.parquet``, ``s3://bucket/matches``).
    storage_options : dict, optional
        fsspec options for a remote path.

    Returns
    -------
    table : dict of str to np.ndarray [shape=(n,)]
        ``query_id``/``track_id`` as str, ``rank`` int64, scores float64,
        ``matched`` bool, with the columns the table has.
    """
    import pyarrow as pa

    path = os.fspath(path)
    form = out_form(path)
    fs, root = _fs(path, storage_options)
    if not fs.exists(root):
        raise ParameterError(f"MATCHES {path!r} does not exist; expected the --out of `msdmatch match`")
    name = os.path.basename(path.rstrip("/"))
    if form == "zarr":
        from msdmatch.io.store import open_group, read_strings

        g = open_group(path, storage_options=storage_options)
        table = {c: (np.asarray(read_strings(g, c)) if g[c].dtype.kind in "OTU" else g[c][:])
                 for c in g.attrs.get("columns", [])}
    elif form == "parquet":
        table = _to_numpy(_read_parquet(fs, root))
    elif form == "csv":
        table = _to_numpy(_read_csv_bytes(fs.cat_file(root), path))
    else:
        ds = Dataset(path.rstrip("/"), storage_options)
        if not ds.meta():
            raise ParameterError(f"{path} is not a MATCHES dataset written by msdmatch (no {META})")
        parts = ds.parts()
        tables = [ds.read_part(a, b) for a, b in parts]
        table = _to_numpy(pa.concat_tables(tables)) if tables else {}
        if not tables:
            raise MsdmatchError(f"matches {path} has no committed batch yet")
    return _checked(table, name)


def read_failures(path: str | os.PathLike, *, storage_options: dict | None = None) -> dict[str, np.ndarray]:
    """The failures table of a MATCHES output (``query_id, stage, reason``), empty if it has none."""
    from msdmatch.stages.match.batch import FAILURE_COLUMNS

    path = os.fspath(path)
    form = out_form(path)
    if form == "dataset":
        return Dataset(path.rstrip("/"), storage_options).failures()
    if form == "zarr":
        from msdmatch.io.store import open_group, read_strings

        g = open_group(path, storage_options=storage_options)
        if "failures" in g:
            return {c: np.asarray(read_strings(g["failures"], c), dtype=str) for c in FAILURE_COLUMNS}
        return {c: np.zeros(0, str) for c in FAILURE_COLUMNS}
    fs, root = _fs(path + FAILURES_SUFFIX, storage_options)
    if not fs.exists(root):
        return {c: np.zeros(0, str) for c in FAILURE_COLUMNS}
    t = _read_csv_bytes(fs.cat_file(root), root)
    return {c: np.asarray(t.column(c).to_pylist(), dtype=str) for c in FAILURE_COLUMNS}


def write_matches(table: Mapping, path: str | os.PathLike, *, storage_options: dict | None = None) -> None:
    """Write a whole MATCHES table (columns in contract order) in the form ``path`` names.

    ``.csv``/``.parquet`` are one object; a ``.zarr`` group gets one array
    per column and the column list in its ``columns`` attribute; a folder
    gets a one-part Parquet dataset.
    """
    path = os.fspath(path)
    form = out_form(path)
    fs, root = _fs(path, storage_options)
    if form == "dataset":
        t = _checked(table)
        ds = Dataset(path.rstrip("/"), storage_options)
        ds.write_meta({"complete": True})
        n = len(t["query_id"])
        ds.commit(0, n, t, {})
        return
    if form == "zarr":
        from msdmatch.io.store import open_group, write_strings

        t = _checked(table)
        cols = _columns(t)
        g = open_group(path, mode="w", storage_options=storage_options)
        for c in cols:
            if t[c].dtype.kind == "U":
                write_strings(g, c, t[c].tolist())
            else:
                g.create_array(c, shape=t[c].shape, dtype=t[c].dtype,
                               chunks=(max(1, min(len(t[c]), 1 << 20)),))[:] = t[c]
        g.attrs.update({"kind": KIND, "columns": cols})
        return
    arrow = _arrow(table)
    if form == "parquet":
        _put_whole(fs, root, _parquet_bytes(arrow))
    else:
        _put_whole(fs, root, _csv_bytes({c: arrow.column(c).to_numpy(zero_copy_only=False)
                                         for c in arrow.column_names}))


# ----------------------------------------------------------------------------- the output check


@dataclass(frozen=True)
class Resume:
    """What :func:`check_out` found at ``--out``.

    Attributes
    ----------
    action : {'new', 'resume', 'complete'}
        ``complete``: a finished single-file or Zarr output of the same run.
    done : tuple of (start, stop)
        Query row ranges already committed.
    batch_size : int or None
        The batch size the committed batches were planned with.
    """

    action: str
    done: tuple = ()
    batch_size: int | None = None


def _agree(recorded: dict, identity: dict, prefix_digest) -> list[str]:
    from msdmatch.stages.match.plan import differences

    diff = differences(recorded, identity)
    rq, cq = recorded.get("queries", {}), identity["queries"]
    if rq != cq:
        n = rq.get("n")
        if not isinstance(n, int) or n > cq["n"] or prefix_digest(n) != rq.get("ids_sha256"):
            diff.append(f"the QUERIES store changed since ({n} -> {cq['n']} items, other ids)")
    return diff


def _refuse(path: str, diff: list[str]) -> ParameterError:
    return ParameterError(
        f"--out {path!r} holds matches made with other parameters or data ({'; '.join(diff[:3])}); "
        "pass --overwrite to replace them, or choose a new --out"
    )


def _file_meta(out: MatchesOut) -> dict | None:
    """The run identity recorded in an existing single file or group; None if it is not msdmatch's."""
    fs, root = _fs(out.path, out.storage_options)
    try:
        if out.form == "parquet":
            import pyarrow.parquet as pq

            md = pq.read_schema(io.BytesIO(fs.cat_file(root))).metadata or {}
            doc = json.loads(md.get(b"msdmatch", b"{}"))
            return doc if doc.get("kind") == KIND else None
        if out.form == "zarr":
            doc = json.loads(fs.cat_file(f"{root}/zarr.json")).get("attributes", {})
            return doc if doc.get("kind") == KIND else None
        with fs.open(root, "rb") as fh:  # CSV: msdmatch's own header, but no metadata
            head = fh.read(200).decode("utf-8", "replace")
        return {} if head.startswith('"query_id","rank","track_id"') else None
    except Exception:  # noqa: BLE001 - unreadable: not ours
        return None


def _listing(path: str, storage_options: dict | None) -> tuple[str, list[str]]:
    from msdmatch.io.outputs import _listing as listing

    return listing(path, storage_options)


def check_place(path: str, *, storage_options: dict | None = None) -> MatchesOut:
    """The checks of ``--out`` that need no data, made before anything is opened or started.

    Its form (extension), that its folder exists and is writable, and that
    whatever is there (file, folder, staging folder, failures file) was made
    by msdmatch.

    Raises
    ------
    ParameterError
        One line naming ``--out`` and the reason.
    """
    from msdmatch.io.outputs import _check_parent, _refuse_near_src, probe_writable

    path = os.fspath(path)
    form = out_form(path)
    out = MatchesOut(path.rstrip("/") if form == "dataset" else path, form, storage_options)
    _refuse_near_src(out.path, None)
    ds = out.dataset
    kind, names = _listing(ds.path, storage_options)
    if form == "dataset" and kind == "file":
        raise ParameterError(f"--out {path!r} is an existing file; a name without an extension is a folder "
                             "(a Parquet dataset): choose another --out, or add .csv or .parquet")
    if kind == "dir" and names and not ds.meta():
        what = "folder" if form == "dataset" else f"staging folder {ds.path!r}"
        raise ParameterError(
            f"--out {path!r}: the {what} holds other files ({', '.join(names[:3])}"
            f"{', …' if len(names) > 3 else ''}) and was not made by msdmatch; choose a new --out"
        )
    if form != "dataset":
        fkind, _ = _listing(out.path, storage_options)
        if fkind != "absent":
            if form != "zarr" and fkind == "dir":
                raise ParameterError(f"--out {path!r} is a folder; expected a {form} file path")
            if _file_meta(out) is None:
                raise ParameterError(f"--out {path!r} exists and was not written by msdmatch; choose another path")
        fails = _listing(out.failures_path, storage_options)[0]
        if fails != "absent" and fkind == "absent" and kind == "absent":
            raise ParameterError(f"{out.failures_path!r} exists and was not written by msdmatch for --out "
                                 f"{path!r}; choose another --out")
    if _remote(out.path):
        probe_writable(out.path if form == "dataset" else out.path.rsplit("/", 1)[0],
                       storage_options=storage_options)
    else:
        _check_parent(out.path, storage_options)
    return out


def check_out(path: str, *, identity: dict, prefix_digest, overwrite: bool = False,
              storage_options: dict | None = None) -> tuple[MatchesOut, Resume]:
    """Check ``--out`` before any work: :func:`check_place`, then whether what is there may be resumed.

    Parameters
    ----------
    path : str
        ``--out``: a local path or fsspec URL.
    identity : dict
        :func:`msdmatch.stages.match.plan.run_identity` of this run.
    prefix_digest : callable
        ``prefix_digest(n) -> str``: :func:`msdmatch.stages.match.plan.ids_digest` of the
        query store's first ``n`` ids (a query store that grew by ``featurize
        --append`` keeps its earlier batches).
    overwrite : bool
        Replace an msdmatch MATCHES output made by another run (never anything else).

    Returns
    -------
    out : MatchesOut
    resume : Resume

    Raises
    ------
    ParameterError
        One line: a bad extension, a missing or unwritable folder, a file or
        folder msdmatch did not make, or matches of another run without
        ``overwrite``.
    """
    out = check_place(path, storage_options=storage_options)
    ds = out.dataset
    meta = ds.meta()
    final = _file_meta(out) if out.form != "dataset" and _listing(out.path, storage_options)[0] != "absent" \
        else None
    if final is not None:
        diff = _agree(final.get("run", {}), identity, prefix_digest) if final else ["a CSV file records no run"]
        if not diff and final.get("run", {}).get("queries") == identity["queries"]:
            if overwrite:
                ds.remove()
                return out, Resume("new")
            return out, Resume("complete")
        if not overwrite:
            raise _refuse(path, diff or ["the QUERIES store grew since"])
        ds.remove()
        return out, Resume("new")
    if meta:
        diff = _agree(meta.get("run", {}), identity, prefix_digest)
        if diff:
            if not overwrite:
                raise _refuse(path, diff)
            ds.remove()
            return out, Resume("new")
        if overwrite:
            ds.remove()
            return out, Resume("new")
        return out, Resume("resume", tuple(ds.parts()), meta.get("batch_size"))
    return out, Resume("new")
