"""A lease on a store, so that two writers never work on it at once.

The lease is a small JSON file beside the store (``<store>.lock``), local or
on S3.  A writer takes it before it starts, by creating the file only if it
does not exist (``O_EXCL`` locally, ``If-None-Match: *`` on S3, so of two
writers starting at once exactly one succeeds; on an S3-compatible server
that ignores ``If-None-Match``, reading the lease back 50 ms later is the
remaining guard), and renews it every ``HEARTBEAT`` seconds; a second writer
is refused with a message naming the holder.  A lease is stale, and may be taken over, when its holder has not
renewed it for ``STALE`` seconds, or when its holder ran on this host and its
process is gone (e.g. killed with SIGKILL).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from msdmatch.errors import StoreError

HEARTBEAT = 20.0
STALE = 90.0


def _fs_path(url: str, storage_options: dict | None):
    """The filesystem and path of the lease beside the store at ``url``."""
    from msdmatch.io.store import filesystem

    return filesystem(str(url).rstrip("/") + ".lock", storage_options)


def _alive(info: dict) -> bool:
    if info.get("host") != socket.gethostname():
        return time.time() - float(info.get("renewed", 0)) < STALE
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return time.time() - float(info.get("renewed", 0)) < STALE


def _read(fs, path: str) -> dict | None:
    """The lease at ``path``; None if there is none, {} if it cannot be parsed."""
    try:
        doc = json.loads(fs.cat_file(path))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) and "token" in doc else {}


def _create(fs, path: str, data: bytes) -> bool:
    """Write ``path`` unless it exists, atomically (O_EXCL locally, If-None-Match on S3)."""
    try:
        with fs.open(path, "xb") as f:
            f.write(data)
    except FileExistsError:
        if fs.exists(path):
            return False
        # os.makedirs says "exists" when a parent of the lease is a file
        raise NotADirectoryError(f"{path.rsplit('/', 1)[0]} is not a directory") from None
    return True


def _holder(fs, path: str) -> dict | None:
    """The live lease at ``path``, if any; a stale one is removed.

    A lease that cannot be parsed is being written right now, unless it
    still cannot be parsed a moment later (its writer died mid-write).
    """
    held = _read(fs, path)
    if held == {}:
        time.sleep(0.5)
        held = _read(fs, path)
    if held is None:
        return None
    if held and _alive(held):
        return held
    with contextlib.suppress(FileNotFoundError):
        if _read(fs, path) == held:
            fs.rm_file(path)
    return None


def _busy(url: str, held: dict) -> StoreError:
    since = time.strftime("%H:%M:%S", time.localtime(held.get("since", 0)))
    return StoreError(
        f"store {url!r} is being written by `msdmatch {held.get('stage')}` (pid {held.get('pid')} "
        f"on {held.get('host')}, since {since}); "
        f"wait for it to finish, or delete {url.rstrip('/')}.lock if that process is gone"
    )


def _acquire(fs, path: str, url: str, me: dict) -> None:
    """Take the lease or raise :class:`StoreError` naming its holder."""
    parent = path.rsplit("/", 1)[0]
    try:
        if parent and not fs.exists(parent):
            fs.makedirs(parent, exist_ok=True)
        for _ in range(2):  # the second try follows the removal of a stale lease
            if _create(fs, path, json.dumps(me).encode()):
                break
            held = _holder(fs, path)
            if held:
                raise _busy(url, held)
        else:
            raise StoreError(f"store {url!r}: another writer took the lease at the same moment; try again")
    except (OSError, ValueError) as e:
        raise StoreError(f"cannot create store {url!r} (writing its lease {path}): {e}") from None
    time.sleep(0.05)
    if (_read(fs, path) or {}).get("token") != me["token"]:
        raise StoreError(f"store {url!r}: another writer took the lease at the same moment; try again")


class Lease:
    """A held store lease: its token, and whether it still holds.

    The renew thread records a failed renewal or a lease taken over by
    another writer; :meth:`check` then raises, so the writer stops before
    its next commit.  Workers check the token itself before they commit a
    part (:func:`holds`).
    """

    def __init__(self, url: str, token: str):
        self.url = url
        self.token = token
        self.lost: str | None = None

    def check(self) -> None:
        """Raise :class:`StoreError` if the lease was lost."""
        if self.lost:
            raise StoreError(
                f"stopped writing store {self.url!r}: {self.lost}; what was committed is kept. "
                "Make sure no other msdmatch writes this store, then re-run the same command"
            )


def holds(url: str, token: str, *, storage_options: dict | None = None) -> bool:
    """True if the lease of the store at ``url`` is still ``token``'s."""
    try:
        fs, path = _fs_path(url, storage_options)
        return (_read(fs, path) or {}).get("token") == token
    except Exception:  # a lease that cannot be read is not held
        return False


@contextlib.contextmanager
def store_lease(url: str, *, stage: str, storage_options: dict | None = None) -> Iterator[Lease]:
    """Hold the store's lease for the duration of a stage.

    The lease is created only if there is none (an atomic exclusive create,
    locally and on S3), so of two writers starting at once exactly one gets
    it.  A stale lease is removed first.  It is renewed every
    :data:`HEARTBEAT` seconds; if a renewal fails, or another writer has
    taken the lease over, the yielded :class:`Lease` is marked lost.

    Raises
    ------
    StoreError
        If another live writer holds the lease.
    """
    fs, path = _fs_path(url, storage_options)
    me = {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
          "stage": stage, "since": time.time(), "renewed": time.time()}
    _acquire(fs, path, url, me)
    lease = Lease(url, me["token"])
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(HEARTBEAT):
            try:
                held = _read(fs, path)
                if (held or {}).get("token") != me["token"]:
                    who = f"pid {held.get('pid')} on {held.get('host')}" if held else "nobody (it was removed)"
                    lease.lost = f"its lease was taken over by {who}"
                    return
                fs.pipe_file(path, json.dumps(dict(me, renewed=time.time())).encode())
            except Exception as e:
                lease.lost = f"renewing its lease {path} failed ({type(e).__name__}: {e})"
                return

    t = threading.Thread(target=renew, name="msdmatch-lease", daemon=True)
    t.start()
    try:
        yield lease
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            if (_read(fs, path) or {}).get("token") == me["token"]:
                fs.rm_file(path)
