"""Where a stage may write: msdmatch only ever replaces what msdmatch made.

Every stage checks its output path here before it computes anything:

- an msdmatch **store** (``featurize --out``) may be written at a path that
  does not exist, an empty folder, or an msdmatch store (resumed, or replaced
  with ``overwrite``);
- an output **folder** (``report --out``, ``train --out``, ``demo OUT``,
  ``align-matches --out``) may be written where nothing is, in an empty folder,
  or in a folder that carries msdmatch's marker file (:data:`MARKER`) of the
  same kind;
- an output **file** (``calibrate --out``, ``align --out``) must have one of
  the stage's extensions, sit in a writable folder, and may replace only a
  file that msdmatch wrote (the caller says how to recognise one).

Anything else (a folder with other files, the current directory, SRC itself,
a parent of SRC or a path inside it, an ``s3://`` prefix holding other
objects) is refused with one line, and nothing is touched.  Remote outputs are
probed once with a small object written and removed, so missing credentials,
a missing bucket or a read-only prefix are found before the work starts.
"""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable

from msdmatch.errors import ParameterError

#: Name of the marker file msdmatch leaves in every output folder it makes.
MARKER = "msdmatch-output.json"


def _is_remote(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def _fs(path: str, storage_options: dict | None):
    from msdmatch.io.store import filesystem

    return filesystem(path, storage_options)


def _remote_error(path: str, e: BaseException) -> ParameterError:
    """One line for a failed probe of a remote output."""
    from msdmatch.executor import one_line

    name = type(e).__name__
    if "Credentials" in name or "Profile" in name:
        why = "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or pass --storage-options"
    elif isinstance(e, PermissionError) or "AccessDenied" in str(e) or "Forbidden" in str(e):
        why = "access denied by the server; check the credentials' permissions on this bucket"
    elif isinstance(e, FileNotFoundError) or "NoSuchBucket" in str(e):
        why = "the bucket does not exist; create it first"
    elif "Endpoint" in name or "Connect" in name:
        why = f"cannot reach the storage endpoint ({one_line(e)})"
    else:
        why = one_line(e)
    return ParameterError(f"cannot write to {path!r}: {why}")


def probe_writable(path: str, *, storage_options: dict | None = None) -> None:
    """Check that a folder or prefix accepts writes by writing and removing one small object.

    Parameters
    ----------
    path : str
        A local folder (which must exist) or an fsspec prefix.

    Raises
    ------
    ParameterError
        One line naming the path and the reason (credentials, permissions,
        missing bucket, unreachable endpoint, read-only file system).
    """
    probe = f"{str(path).rstrip('/')}/.msdmatch-probe-{uuid.uuid4().hex[:12]}"
    try:
        fs, root = _fs(probe, storage_options)
        fs.pipe_file(root, b"")
        fs.rm_file(root)
    except ParameterError:
        raise
    except Exception as e:
        if _is_remote(path):
            raise _remote_error(path, e) from None
        raise ParameterError(f"cannot write in {path!r}: {e.strerror if isinstance(e, OSError) else e}") from None


def _listing(path: str, storage_options: dict | None) -> tuple[str, list[str]]:
    """What is at ``path``: ``('absent'|'file'|'dir', names of its entries)``."""
    if not _is_remote(path):
        if not os.path.lexists(path):
            return "absent", []
        if not os.path.isdir(path):
            return "file", []
        return "dir", sorted(os.listdir(path))
    try:
        fs, root = _fs(path, storage_options)
        if fs.isfile(root):
            return "file", []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    except FileNotFoundError:
        return "absent", []
    except ParameterError:
        raise
    except Exception as e:
        raise _remote_error(path, e) from None
    return ("dir" if names else "absent"), sorted(names)


def _read_json(path: str, storage_options: dict | None) -> dict:
    try:
        fs, root = _fs(path, storage_options)
        doc = json.loads(fs.cat_file(root))
    except Exception:
        return {}
    return doc if isinstance(doc, dict) else {}


def _refuse_near_src(out: str, src: str | None) -> None:
    """Refuse the current directory, SRC, a parent of SRC and a path inside SRC (local paths)."""
    if _is_remote(out):
        if src and _is_remote(src):
            a, b = out.rstrip("/") + "/", src.rstrip("/") + "/"
            if a.startswith(b) or b.startswith(a):
                raise ParameterError(f"--out {out!r} overlaps SRC {src!r}; write the output somewhere else")
        return
    real = os.path.realpath(out)
    if real == os.path.realpath(os.getcwd()):
        raise ParameterError(f"--out {out!r} is the current directory; name a new folder, e.g. --out out.zarr")
    if not src or _is_remote(src):
        return
    root = src
    for i, ch in enumerate(src):
        if ch in "*?[":
            root = os.path.dirname(src[:i]) or "."
            break
    root_real = os.path.realpath(root)
    if real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep) or \
            root_real.startswith(real.rstrip(os.sep) + os.sep):
        raise ParameterError(
            f"--out {out!r} is SRC, inside SRC or a parent of SRC ({src!r}); write the output somewhere else"
        )


def _check_parent(path: str, storage_options: dict | None) -> None:
    if _is_remote(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise ParameterError(f"--out {path!r}: {parent!r} is a file, not a folder")
    if not os.path.isdir(parent):
        raise ParameterError(f"--out {path!r}: its folder {parent!r} does not exist; create it first")
    probe_writable(parent)


def _check_new(path: str, storage_options: dict | None) -> None:
    """A new output: a remote prefix must accept writes, a local one's folder must exist and be writable."""
    if _is_remote(path):
        probe_writable(path, storage_options=storage_options)
    else:
        _check_parent(path, storage_options)


def check_store_out(url: str, *, src: str | None = None, overwrite: bool = False,
                    storage_options: dict | None = None) -> str:
    """Decide whether a store may be written at ``url``.

    Parameters
    ----------
    url : str
        The ``--out`` of featurize: a local path or fsspec URL.
    src : str, optional
        The stage's SRC; ``url`` may not be it, inside it or a parent of it.
    overwrite : bool
        Replace an existing msdmatch store.

    Returns
    -------
    state : {'new', 'resume', 'replace'}
        ``new``: nothing is there (or an empty folder); ``resume``: an msdmatch
        store to continue; ``replace``: an msdmatch store to remove first.

    Raises
    ------
    ParameterError
        When anything else is at ``url``.
    """
    _refuse_near_src(url, src)
    kind, names = _listing(url, storage_options)
    if kind == "file":
        raise ParameterError(f"--out {url!r} is an existing file, not an msdmatch store; choose another --out")
    if kind == "absent" or not names:
        _check_new(url, storage_options)
        return "new"
    attrs = _read_json(f"{url.rstrip('/')}/zarr.json", storage_options).get("attributes", {})
    if "msdmatch_format" not in attrs:
        raise ParameterError(
            f"--out {url!r} holds other files ({', '.join(names[:3])}{', …' if len(names) > 3 else ''}) "
            "and is not an msdmatch store; msdmatch never writes into a folder it did not make: "
            "choose a new or empty --out"
        )
    probe_writable(url, storage_options=storage_options)
    return "replace" if overwrite else "resume"


def check_out_dir(path: str, *, kind: str, overwrite: bool = False, storage_options: dict | None = None) -> None:
    """Refuse an output folder unless it is new, empty, or msdmatch's own of the same ``kind``.

    Parameters
    ----------
    path : str
        Local folder or fsspec prefix.
    kind : str
        What the folder holds (``'report'``, ``'models'``, ``'demo'``, ...),
        recorded in its :data:`MARKER`.
    overwrite : bool
        Accept an msdmatch folder of the same kind (its files are replaced
        one by one as they are written).  Without it, such a folder is
        accepted too when the stage resumes into it; stages that do not
        resume pass ``overwrite=True`` only when asked.
    """
    _refuse_near_src(path, None)
    what, names = _listing(path, storage_options)
    if what == "file":
        raise ParameterError(f"--out {path!r} is an existing file; expected a folder for the {kind} output")
    if what == "absent" or not names:
        _check_new(path, storage_options)
        return
    mark = _read_json(f"{path.rstrip('/')}/{MARKER}", storage_options)
    if not mark:
        raise ParameterError(
            f"--out {path!r} holds other files ({', '.join(names[:3])}{', …' if len(names) > 3 else ''}) "
            "and was not made by msdmatch; choose a new or empty folder"
        )
    if mark.get("kind") != kind:
        raise ParameterError(
            f"--out {path!r} holds msdmatch {mark.get('kind')!r} output, not {kind!r}; choose another folder"
        )
    probe_writable(path, storage_options=storage_options)


def mark_out_dir(path: str, *, kind: str, storage_options: dict | None = None, **info) -> None:
    """Create the output folder (if needed) and write its :data:`MARKER`."""
    from msdmatch import __version__

    fs, root = _fs(path, storage_options)
    if not _is_remote(path):
        os.makedirs(root, exist_ok=True)
    doc = {"kind": kind, "msdmatch_version": __version__, **info}
    fs.pipe_file(f"{root}/{MARKER}", json.dumps(doc, indent=2).encode())


def check_out_file(path: str, *, suffixes: tuple[str, ...], ours: Callable[[str], bool] | None = None,
                   overwrite: bool = False, what: str = "output") -> None:
    """Refuse an output file path before any work is done.

    Parameters
    ----------
    path : str
        Local file path.
    suffixes : tuple of str
        Accepted extensions, lower case with the dot.
    ours : callable, optional
        ``ours(path) -> bool`` tells whether an existing file was written by
        msdmatch; without it no existing file is replaced.
    overwrite : bool
        Replace an existing file that msdmatch wrote.
    what : str
        What the file is, for the messages.
    """
    if not str(path).lower().endswith(suffixes):
        raise ParameterError(f"--out {path!r}: expected a {what} file ending in {' or '.join(suffixes)}")
    if os.path.isdir(path):
        raise ParameterError(f"--out {path!r} is a folder; expected a {what} file path ending in {suffixes[0]}")
    _check_parent(path, None)
    if os.path.lexists(path):
        if not (ours and ours(path)):
            raise ParameterError(f"--out {path!r} exists and was not written by msdmatch; choose another path")
        if not overwrite:
            raise ParameterError(f"--out {path!r} exists; pass --overwrite to replace it, or choose another path")


def write_whole(path: str, data: bytes) -> None:
    """Write a local file so that a reader sees all of it or none of it (temp file, then rename)."""
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
