"""Resolve a SRC argument into a sorted list of input items.

SRC is a directory (searched recursively), a glob, a manifest (``.txt`` with
one path or URL per line, or ``.csv`` with a ``source``/``path`` column and an
optional ``id`` column), or an ``s3://`` prefix.  Item ids are file stems
unless the manifest gives them.
"""
from __future__ import annotations

import csv
import io
import os
import posixpath
from dataclasses import dataclass

from msdmatch.errors import ParameterError

AUDIO_EXTENSIONS = (".mp3", ".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")
MIDI_EXTENSIONS = (".mid", ".midi", ".kar")
MANIFEST_EXTENSIONS = (".txt", ".csv", ".lst")


@dataclass(frozen=True)
class Item:
    """One input file: its id and where it came from."""

    id: str
    source: str


def _stem(path: str) -> str:
    return os.path.splitext(posixpath.basename(path.rstrip("/")))[0]


def _fs_for(src: str, storage_options: dict | None):
    import fsspec

    fs, _, _ = fsspec.get_fs_token_paths(src, storage_options=storage_options or {})
    return fs


def _with_protocol(fs, path: str, src: str) -> str:
    if "://" in src and "://" not in path:
        return f"{src.split('://', 1)[0]}://{path}"
    return path


def _read_manifest(src: str, storage_options: dict | None) -> list[Item]:
    import fsspec

    with fsspec.open(src, "rt", encoding="utf-8", **(storage_options or {})) as f:
        text = f.read()
    base = os.path.dirname(src)
    items = []
    if src.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(text)))
        if rows and not ({"source", "path"} & set(rows[0])):
            raise ParameterError(
                f"manifest {src!r} has columns {list(rows[0])}; expected a 'source' or 'path' column"
            )
        for r in rows:
            s = (r.get("source") or r.get("path") or "").strip()
            if s:
                s = s if ("://" in s or os.path.isabs(s)) else os.path.join(base, s)
                items.append(Item((r.get("id") or "").strip() or _stem(s), s))
    else:
        for line in text.splitlines():
            s = line.strip()
            if s and not s.startswith("#"):
                s = s if ("://" in s or os.path.isabs(s)) else os.path.join(base, s)
                items.append(Item(_stem(s), s))
    return items


def resolve_sources(
    src: str, *, extensions: tuple[str, ...], storage_options: dict | None = None
) -> list[Item]:
    """List the input items named by ``src``.

    Parameters
    ----------
    src : str
        Directory, glob, manifest file or URL prefix.
    extensions : tuple of str
        File extensions (lower case, with dot) to keep when searching a
        directory or glob; manifests are taken as given.
    storage_options : dict, optional
        fsspec options for remote sources.

    Returns
    -------
    items : list of Item
        Sorted by source, so the same SRC always gives the same plan.
    """
    if not src:
        raise ParameterError("SRC is empty; expected a directory, glob, manifest or s3:// prefix")
    fs = _fs_for(src, storage_options)
    path = src.split("://", 1)[1] if "://" in src else src
    if any(ch in path for ch in "*?["):
        found = fs.glob(path)
    elif fs.isdir(path):
        found = fs.find(path)
    elif fs.isfile(path) and path.lower().endswith(MANIFEST_EXTENSIONS):
        return sorted(_read_manifest(src, storage_options), key=lambda it: it.source)
    elif fs.isfile(path):
        found = [path]
    else:
        raise ParameterError(
            f"SRC {src!r} does not exist; expected a directory, glob, manifest "
            "(.txt/.csv) or s3:// prefix"
        )
    keep = [p for p in found if p.lower().endswith(extensions)]
    return sorted(
        (Item(_stem(p), _with_protocol(fs, p, src)) for p in keep), key=lambda it: it.source
    )
