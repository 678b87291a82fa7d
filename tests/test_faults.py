"""Fault injection on real components (``pytest -m faults``).

Worker processes are killed with SIGKILL, the CLI gets a real SIGINT, the S3
server becomes unreachable behind a loopback TCP proxy, featurize eats a
generated corpus of bad files, stores and models of another format are fed to
every stage, and two CLI processes write one store at once.  Each result is
compared, array by array, with an undisturbed run on the shared cluster.
"""
from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import make_midi

from msdmatch.errors import FormatMismatchError, ParameterError, StoreError
from msdmatch.io.store import Store
from msdmatch.stages import embed, featurize
from msdmatch.stages.match import job as match

pytestmark = pytest.mark.faults

N_ITEMS = 40
CLI = [sys.executable, "-m", "msdmatch.cli"]
EMBED_PATHS = ("pse/pse-midi-synth", "pse/pse-midi-pianoroll", "dhs/dhs-midi-synth/words",
               "dhs/dhs-midi-synth/offsets", "dhs/dhs-midi-pianoroll/words", "dhs/dhs-midi-pianoroll/offsets")


# ------------------------------------------------------------------ data


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """N_ITEMS MIDI songs (12 s, above MIN_SECONDS) and their renderings as MP3 under another soundfont."""
    from conftest import write_mp3

    from msdmatch.io.synth import render

    root = tmp_path_factory.mktemp("faults")
    (root / "midi").mkdir()
    (root / "audio").mkdir()
    for k in range(N_ITEMS):
        pm = make_midi(100 + k, seconds=12.0)
        pm.write(str(root / "midi" / f"q{k:03d}.mid"))
        y = render(pm, sr=22050, soundfont="FluidR3_GM.sf2")
        write_mp3(root / "audio" / f"TRFAULT{k:010d}.mp3", y * 0.8, 22050)
    return root


@pytest.fixture(scope="module")
def reference(corpus, cluster_client, tmp_path_factory):
    """Undisturbed runs of every stage on the shared cluster."""
    root = tmp_path_factory.mktemp("reference")
    ref = {}
    for kind, name in (("audio", "audio"), ("midi", "midi")):
        url = str(root / f"{name}.zarr")
        featurize.run(str(corpus / name), url, client=cluster_client, kind=kind, mode="pianoroll",
                      partition_size=2, progress=False)
        ref[f"feat-{name}"] = url
        emb = str(root / f"{name}-embedded.zarr")
        shutil.copytree(url, emb)
        embed.run(emb, client=cluster_client, partition_size=2, progress=False)
        ref[f"emb-{name}"] = emb
    ref["match"] = match.run(ref["emb-midi"], ref["emb-audio"], client=cluster_client, rerank=8,
                             verify=4, progress=False)["table"]
    return ref


def assert_same_store(a_url: str, b_url: str, paths=("features", "offsets"), storage_options=None) -> None:
    a, b = Store(a_url), Store(b_url, storage_options=storage_options)
    assert a.ids == b.ids and a.sources == b.sources
    assert a.failures() == b.failures()
    for p in paths:
        np.testing.assert_array_equal(a.group[p][:], b.group[p][:], err_msg=p)


def assert_consistent(url: str, expected_ids: list[str]) -> None:
    """Every item exactly once, offsets consistent with the frames."""
    s = Store(url)
    assert sorted(s.ids) == sorted(expected_ids) and len(set(s.ids)) == len(s.ids)
    assert s.offsets[0] == 0 and np.all(np.diff(s.offsets) > 0)
    assert s.offsets[-1] == s.group["features"].shape[0]


def assert_same_table(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for c in a:
        if a[c].dtype.kind == "f":
            np.testing.assert_array_equal(a[c], b[c], err_msg=c)
        else:
            assert a[c].tolist() == b[c].tolist(), c


def committed(url: str, stage: str) -> int:
    """Committed staged parts of a local store, read from the part groups' metadata."""
    n = 0
    for meta in Path(url, "_parts", stage).glob("p*/zarr.json"):
        try:
            n += bool(json.loads(meta.read_text()).get("attributes", {}).get("committed"))
        except ValueError:  # being written right now
            pass
    return n


def wait_for(pred, *, timeout: float, what: str, every: float = 0.02):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ---------------------------------------------------------- 1. worker loss


@pytest.fixture(scope="module")
def fragile_client():
    """A LocalCluster of its own (2 process workers) whose workers the tests kill."""
    from distributed import Client, LocalCluster

    from msdmatch.executor import WORKER_ENV

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      env=WORKER_ENV) as cluster, Client(cluster) as client:
        yield client


class WorkerKiller(threading.Thread):
    """Kill (SIGKILL) the worker running a task whose key contains one of ``names``, once ``ready()``."""

    def __init__(self, client, names: tuple[str, ...], ready=lambda: True):
        super().__init__(daemon=True)
        self.client, self.names, self.ready = client, names, ready
        self.pids = client.run(os.getpid)
        self.killed: int | None = None
        self.at = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.ready():
                for addr, keys in self.client.processing().items():
                    if any(n in str(k) for k in keys for n in self.names):
                        os.kill(self.pids[addr], signal.SIGKILL)
                        self.killed, self.at = self.pids[addr], time.monotonic()
                        return
            time.sleep(0.01)


def _wait_workers(client, n: int = 2) -> None:
    client.wait_for_workers(n, timeout=60)


def test_worker_killed_mid_featurize(corpus, reference, fragile_client, tmp_path):
    _wait_workers(fragile_client)
    out = str(tmp_path / "db.zarr")
    killer = WorkerKiller(fragile_client, ("featurize-audio",), ready=lambda: committed(out, "featurize") >= 1)
    killer.start()
    s = featurize.run(str(corpus / "audio"), out, client=fragile_client, kind="audio", partition_size=2,
                      progress=False)
    done = time.monotonic()
    killer.stop.set()
    assert killer.killed and killer.at < done, "the kill did not land during the stage"
    assert killer.killed not in fragile_client.run(os.getpid).values()
    assert s.items == N_ITEMS and s.parts_run == N_ITEMS // 2
    assert_consistent(out, [p.stem for p in (corpus / "audio").glob("*.mp3")])
    assert_same_store(reference["feat-audio"], out)


def test_worker_killed_mid_embed(reference, fragile_client, copy_store):
    _wait_workers(fragile_client)
    url = copy_store(reference["feat-audio"], "emb.zarr")
    killer = WorkerKiller(fragile_client, ("embed",), ready=lambda: committed(url, "embed") >= 1)
    killer.start()
    s = embed.run(url, client=fragile_client, partition_size=2, progress=False)
    done = time.monotonic()
    killer.stop.set()
    assert killer.killed and killer.at < done, "the kill did not land during the stage"
    assert s["complete"] and s["items"] == N_ITEMS
    assert_consistent(url, Store(reference["feat-audio"]).ids)
    assert_same_store(reference["emb-audio"], url, paths=("features", "offsets") + EMBED_PATHS)
    off = Store(url).group["dhs/dhs-midi-synth/offsets"][:]
    np.testing.assert_array_equal(np.diff(off), -(-np.diff(Store(url).offsets) // 8))


def test_worker_killed_mid_match(reference, fragile_client, tmp_path):
    from msdmatch.evaluation.metrics import read_matches

    _wait_workers(fragile_client)
    out = tmp_path / "matches"
    # Killed once a batch is committed, while it runs any match task: the DB shards it held are
    # recomputed, its batch runs again, and the batches committed before stay.
    killer = WorkerKiller(fragile_client, ("match-",), ready=lambda: any(out.glob("part-*.parquet")))
    killer.start()
    s = match.run(reference["emb-midi"], reference["emb-audio"], str(out), client=fragile_client, rerank=8,
                  verify=4, batch_size=2, progress=False)
    done = time.monotonic()
    killer.stop.set()
    assert killer.killed and killer.at < done, "the kill did not land during the stage"
    assert s["batches_run"] == N_ITEMS // 2 and s["failures"] == 0
    t = read_matches(str(out))
    for q in Store(reference["emb-midi"]).ids:  # every query once, ranks 1..R, no duplicate candidate
        sel = t["query_id"] == q
        assert t["rank"][sel].tolist() == list(range(1, 9))
        assert len(set(t["track_id"][sel].tolist())) == 8
    assert_same_table(reference["match"], t)


# --------------------------------------------------------- 2. interruption

#: Copies of the corpus's audio in the interruption tests' input.  At 2 items
#: per partition one worker then has ~100 partitions (several seconds) left
#: when the first is committed, so SIGINT always lands mid-stage.
BIG_COPIES = 5


@pytest.fixture(scope="module")
def big(corpus, cluster_client, tmp_path_factory):
    """BIG_COPIES x N_ITEMS audio files and their undisturbed featurize and embed runs.

    Copy ``c`` of ``TRFAULT<k>.mp3`` is ``TRFAULT<c><k>.mp3``: the same audio
    under another id.
    """
    root = tmp_path_factory.mktemp("big")
    src = root / "audio"
    src.mkdir()
    for c in range(BIG_COPIES):
        for p in sorted((corpus / "audio").glob("*.mp3")):
            shutil.copy(p, src / f"TRFAULT{c}{p.stem[7:]}.mp3")
    feat = str(root / "feat.zarr")
    featurize.run(str(src), feat, client=cluster_client, kind="audio", partition_size=2, progress=False)
    emb = str(root / "emb.zarr")
    shutil.copytree(feat, emb)
    embed.run(emb, client=cluster_client, partition_size=2, progress=False)
    return {"src": src, "feat": feat, "emb": emb, "n_parts": BIG_COPIES * N_ITEMS // 2}


def _as_in_a_terminal() -> None:
    """Default SIGINT in the child, as for a command run in a terminal.

    A shell without job control (CI scripts, ``cmd &``) starts background
    commands with SIGINT ignored, and children inherit that; Python then
    never raises KeyboardInterrupt and Ctrl-C could not be simulated.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,
                            preexec_fn=_as_in_a_terminal)


def _descendants(pid: int) -> set[int]:
    """Live processes below ``pid`` (the CLI's LocalCluster workers and helpers)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if fields[0] != "Z":
            parent[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parent.items() if p in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _interrupted(proc: subprocess.Popen, log: Path) -> None:
    """SIGINT ``proc``; it exits 130 with one error line, no traceback, and no process left behind."""
    workers = _descendants(proc.pid)
    assert workers, "the CLI has no worker processes"
    proc.send_signal(signal.SIGINT)
    proc.wait(120)
    err = log.read_text()
    assert proc.returncode == 130, f"exit code {proc.returncode}: SIGINT did not land mid-stage\n{err}"
    lines = [ln for ln in err.splitlines() if ln.startswith("msdmatch:")]
    assert lines == ["msdmatch: interrupted; re-run the same command to resume"], err
    assert "Traceback" not in err
    # nothing may write to the store once the command has returned
    wait_for(lambda: not any(map(_alive, workers)), timeout=30, what="the interrupted run's workers to exit")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_swallowed_by_a_callback_is_raised_again():
    """Python loses a KeyboardInterrupt raised inside a finalizer ("Exception ignored"): the wait
    loops raise it again (test_sigint_mid_match_then_rerun once ran to the end this way)."""
    from msdmatch import executor

    class Finalizer:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100_000):  # the handler runs here, inside the finalizer
                pass

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    with executor._sigint_remembered():
        executor._raise_if_interrupted()  # nothing yet
        Finalizer()  # its KeyboardInterrupt is printed as ignored, not raised
        with pytest.raises(KeyboardInterrupt):
            executor._raise_if_interrupted()
    executor._raise_if_interrupted()  # forgotten once the job is over
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ignored, as in a background job: left alone
    with executor._sigint_remembered():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    signal.signal(signal.SIGINT, before)


def _interrupt_once_committed(args: list[str], url: str, stage: str, log: Path) -> int:
    """Start the CLI, SIGINT it once ``stage`` has committed a part; the parts committed then."""
    proc = _start(args, log)
    try:
        wait_for(lambda: proc.poll() is not None or committed(url, stage) >= 1, timeout=180,
                 what=f"a committed {stage} part")
        _interrupted(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
    return committed(url, stage)


def _run_cli(args: list[str]) -> subprocess.CompletedProcess:
    r = subprocess.run(CLI + args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def _counts(line: str) -> tuple[int, int]:
    import re

    m = re.search(r"(\d+) partitions run, (\d+) already done", line)
    assert m, line
    return int(m[1]), int(m[2])


def test_sigint_mid_featurize_then_resume(big, tmp_path):
    out = str(tmp_path / "db.zarr")
    args = ["featurize", "audio", str(big["src"]), "--out", out, "--partition-size", "2",
            "--workers", "1"]
    done_before = _interrupt_once_committed(args, out, "featurize", tmp_path / "err.txt")
    assert 1 <= done_before < big["n_parts"]
    with pytest.raises(StoreError, match=r"incomplete \(featurize was interrupted\).*re-run"):
        Store(out)  # a half-done store is never readable
    ran, skipped = _counts(_run_cli(args + ["--quiet"]).stdout)
    assert (ran, skipped) == (big["n_parts"] - done_before, done_before)  # committed parts not recomputed
    assert_same_store(big["feat"], out)
    assert not Path(out, "_parts", "featurize").exists()  # staging dropped once consolidated


def test_sigint_mid_embed_then_resume(reference, big, copy_store, tmp_path):
    url = copy_store(big["feat"], "emb.zarr")
    args = ["embed", url, "--partition-size", "2", "--workers", "1"]
    done_before = _interrupt_once_committed(args, url, "embed", tmp_path / "err.txt")
    assert 1 <= done_before < big["n_parts"]
    with pytest.raises(ParameterError, match=r"no complete 'pse/pse-midi-pianoroll'.*msdmatch embed"):
        match.run(reference["emb-midi"], url, progress=False)  # half-embedded arrays are not used
    ran, skipped = _counts(_run_cli(args + ["--quiet"]).stdout)
    assert (ran, skipped) == (big["n_parts"] - done_before, done_before)  # committed parts not recomputed
    assert_same_store(big["emb"], url, paths=("features", "offsets") + EMBED_PATHS)
    assert not Path(url, "_parts", "embed").exists()


def _cli_scheduler(log: Path) -> str | None:
    """The address of the CLI's own scheduler, from the line it prints once its cluster is up."""
    import re

    m = re.search(r"dask: LocalCluster .*scheduler (tcp://\S+)", log.read_text())
    return m[1] if m else None


def _wait_until_running(proc: subprocess.Popen, log: Path, name: str) -> None:
    """Return once a task whose key contains ``name`` runs on the CLI's cluster (or the CLI has exited)."""
    from distributed import Client

    address = wait_for(lambda: proc.poll() is not None or _cli_scheduler(log), timeout=180,
                       what="the CLI's scheduler", every=0.1)
    if proc.poll() is not None:
        return
    with Client(address, timeout="20s") as c:
        wait_for(lambda: proc.poll() is not None
                 or any(name in str(k) for keys in c.processing().values() for k in keys),
                 timeout=180, what=f"a {name} task", every=0.05)


def _batch_counts(line: str) -> tuple[int, int]:
    import re

    m = re.search(r"(\d+) batches run, (\d+) already done", line)
    assert m, line
    return int(m[1]), int(m[2])


def test_sigint_mid_match_then_rerun(reference, big, tmp_path):
    from msdmatch.evaluation.metrics import read_matches

    out = tmp_path / "matches"  # a Parquet dataset: one part per committed batch of 4 queries
    # 40 queries x 200 previews, 30 candidates verified each: 10 batches of several seconds on one worker
    args = ["match", reference["emb-midi"], big["emb"], "--rerank", "100", "--verify", "30",
            "--workers", "1", "--batch-size", "4"]
    _run_cli(args + ["--out", str(tmp_path / "undisturbed.parquet"), "--quiet"])
    log = tmp_path / "err.txt"
    proc = _start(args + ["--out", str(out)], log)
    try:
        wait_for(lambda: proc.poll() is not None or len(list(out.glob("part-*.parquet"))) >= 1, timeout=300,
                 what="a committed match batch")
        _interrupted(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
    done_before = len(list(out.glob("part-*.parquet")))
    assert 1 <= done_before < N_ITEMS // 4
    assert not (tmp_path / "undisturbed.parquet.msdmatch-parts").exists()
    _grown_db_is_refused(args, out, big, tmp_path)
    ran, skipped = _batch_counts(_run_cli(args + ["--out", str(out), "--quiet"]).stdout)
    assert (ran, skipped) == (N_ITEMS // 4 - done_before, done_before)  # committed batches not recomputed
    got, ref = read_matches(str(out)), read_matches(str(tmp_path / "undisturbed.parquet"))
    assert len(got["query_id"]) == 100 * N_ITEMS
    assert_same_table(ref, got)


def _grown_db_is_refused(args: list[str], out: Path, big: dict, tmp_path: Path) -> None:
    """A preview appended to (a copy of) the DB after a partial match: the re-run is refused in one line."""
    from conftest import make_midi, write_mp3

    from msdmatch.io.synth import render

    db, partial, extra = tmp_path / "grown.zarr", tmp_path / "partial", tmp_path / "extra"
    shutil.copytree(big["emb"], db)
    shutil.copytree(out, partial)
    extra.mkdir()
    write_mp3(extra / "TRGROWN000000001.mp3", render(make_midi(7, seconds=12.0), sr=22050) * 0.8, 22050)
    _run_cli(["featurize", "audio", str(extra), "--out", str(db), "--append", "--quiet"])
    _run_cli(["embed", str(db), "--quiet"])
    grown_args = [str(db) if a == big["emb"] else a for a in args]
    before = sorted(f.name for f in partial.iterdir())
    r = subprocess.run(CLI + grown_args + ["--out", str(partial), "--quiet"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "DB changed" in lines[0] and "--overwrite" in lines[0], r.stderr
    assert sorted(f.name for f in partial.iterdir()) == before  # nothing mixed in, nothing removed


# ----------------------------------------------------------- 3. S3 faults


class TcpProxy:
    """A loopback TCP proxy in front of the S3 server that can go down and come back on its port.

    ``down()`` closes the listening socket and every open connection, so clients
    get connection refused / reset exactly as from a stopped server; ``up()``
    listens on the same port again.
    """

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.port = 0
        self.up()

    def up(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.port = s.getsockname()[1]
        self.listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def down(self) -> None:
        with self.lock:
            if self.listener is not None:
                self.listener.close()
                self.listener = None
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self.conns = []

    def _accept(self, s: socket.socket) -> None:
        while True:
            try:
                a, _ = s.accept()
            except OSError:
                return
            try:
                b = socket.create_connection(self.target)
            except OSError:
                a.close()
                continue
            with self.lock:
                if self.listener is not s:
                    a.close()
                    b.close()
                    return
                self.conns += [a, b]
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(a, selectors.EVENT_READ, b)
            sel.register(b, selectors.EVENT_READ, a)
            while True:
                for key, _ in sel.select(timeout=1.0):
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            sel.close()
            for c in (a, b):
                c.close()


@pytest.fixture
def s3_proxy(s3, s3_server):
    proxy = TcpProxy(s3_server["port"])
    so = dict(s3["storage_options"], endpoint_url=f"http://127.0.0.1:{proxy.port}")
    yield {"proxy": proxy, "storage_options": so, "bucket": s3["bucket"], "fs": s3["fs"]}
    proxy.down()


def _s3_committed(fs, path: str) -> int:
    n = 0
    for meta in fs.glob(f"{path}/p*/zarr.json", refresh=True):
        try:
            n += bool(json.loads(fs.cat_file(meta)).get("attributes", {}).get("committed"))
        except (ValueError, FileNotFoundError):
            pass
    return n


def test_s3_outage_of_a_few_seconds_is_retried(corpus, reference, s3_proxy, cluster_client):
    proxy, so, fs = s3_proxy["proxy"], s3_proxy["storage_options"], s3_proxy["fs"]
    url = f"s3://{s3_proxy['bucket']}/db.zarr"
    parts = f"{s3_proxy['bucket']}/db.zarr/_parts/featurize"
    outage: dict = {}

    def cut() -> None:
        wait_for(lambda: _s3_committed(fs, parts) >= 1, timeout=120, what="a committed part", every=0.1)
        proxy.down()
        outage["start"] = time.monotonic()
        time.sleep(4.0)
        proxy.up()
        outage["end"] = time.monotonic()

    t = threading.Thread(target=cut, daemon=True)
    t.start()
    s = featurize.run(str(corpus / "audio"), url, client=cluster_client, kind="audio", partition_size=2,
                      storage_options=so, progress=False)
    t.join(30)
    assert outage.get("end") and outage["end"] < time.monotonic()
    assert s.items == N_ITEMS and s.failures == 0
    a, b = Store(reference["feat-audio"]), Store(url, storage_options=so)
    assert a.ids == b.ids
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(a.group["features"][:], b.group["features"][:])


@pytest.mark.slow  # ~50 s; the short outage and the S3 resume cases stay in CI
def test_s3_outage_beyond_the_retry_budget_fails_cleanly_then_resumes(corpus, reference, s3_proxy, tmp_path):
    proxy, so, fs = s3_proxy["proxy"], s3_proxy["storage_options"], s3_proxy["fs"]
    url = f"s3://{s3_proxy['bucket']}/db.zarr"
    parts = f"{s3_proxy['bucket']}/db.zarr/_parts/featurize"
    short = dict(so, config_kwargs={"retries": {"max_attempts": 2, "mode": "standard"}})
    args = ["featurize", "audio", str(corpus / "audio"), "--out", url, "--partition-size", "2",
            "--workers", "1", "--quiet", "--storage-options", json.dumps(short)]
    log = tmp_path / "err.txt"
    proc = _start(args, log)
    try:
        wait_for(lambda: _s3_committed(fs, parts) >= 1, timeout=180, what="a committed part", every=0.1)
        proxy.down()
        proc.wait(240)
    finally:
        proxy.up()
        if proc.poll() is None:
            proc.kill()
    err = log.read_text()
    assert proc.returncode == 1, err
    lines = [ln for ln in err.splitlines() if ln.startswith("msdmatch:")]
    assert len(lines) == 1 and "re-run the same command" in lines[0], err
    assert "Traceback" not in err
    with pytest.raises(StoreError, match="incomplete"):
        Store(url, storage_options=so)
    done_before = _s3_committed(fs, parts)
    ran, skipped = _counts(_run_cli(args).stdout)
    assert (ran, skipped) == (N_ITEMS // 2 - done_before, done_before)  # committed parts not recomputed
    assert_same_store(reference["feat-audio"], url, storage_options=so)
    assert not fs.exists(parts) and not fs.exists(f"{s3_proxy['bucket']}/db.zarr.lock")


def test_resume_on_s3_sees_the_parts_its_workers_committed(reference, corpus, s3, cluster_client):
    """Each stage, interrupted (``max_parts``) and resumed in one process, completes its store on S3.

    The resume lists the committed parts before its workers commit the rest,
    then lists them again: a cached listing would leave the store incomplete.
    """
    so, url = s3["storage_options"], f"s3://{s3['bucket']}/q.zarr"
    kw = {"client": cluster_client, "partition_size": 2, "storage_options": so, "progress": False}
    first = featurize.run(str(corpus / "midi"), url, kind="midi", mode="pianoroll", max_parts=3, **kw)
    assert (first.parts_run, first.items) == (3, 0)
    s = featurize.run(str(corpus / "midi"), url, kind="midi", mode="pianoroll", **kw)
    assert (s.parts_run, s.parts_skipped, s.items) == (N_ITEMS // 2 - 3, 3, N_ITEMS)
    assert_same_store(reference["feat-midi"], url, storage_options=so)
    assert not embed.run(url, max_parts=4, **kw)["complete"]
    e = embed.run(url, **kw)
    assert e["complete"] and (e["parts_run"], e["parts_skipped"]) == (N_ITEMS // 2 - 4, 4)
    midi_paths = tuple(p for p in EMBED_PATHS if "pianoroll" in p)
    assert_same_store(reference["emb-midi"], url, paths=("features", "offsets") + midi_paths, storage_options=so)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_of_writers_starting_at_once_exactly_one_gets_the_lease(where, request, tmp_path):
    from msdmatch.io.lock import store_lease

    if where == "s3":
        s3 = request.getfixturevalue("s3")
        url, so = f"s3://{s3['bucket']}/db.zarr", s3["storage_options"]
    else:
        url, so = str(tmp_path / "db.zarr"), None
    n = 6
    start, release = threading.Barrier(n), threading.Event()
    outcome: list = [None] * n

    def writer(i: int) -> None:
        start.wait()
        try:
            with store_lease(url, stage="featurize", storage_options=so):
                outcome[i] = "held"
                release.wait(30)
        except StoreError as e:
            outcome[i] = str(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    wait_for(lambda: all(outcome[i] is not None for i in range(n)), timeout=60, what="every writer")
    release.set()
    for t in threads:
        t.join(30)
    assert outcome.count("held") == 1, outcome
    refused = [o for o in outcome if o != "held"]
    assert all("is being written by `msdmatch featurize`" in o or "at the same moment" in o for o in refused)
    import fsspec

    fs, path = fsspec.core.url_to_fs(url + ".lock", **(so or {}))
    assert not fs.exists(path)  # released


# ---------------------------------------------------------- 4. bad input


@pytest.mark.parametrize("kind", ["audio", "midi"])
def test_fuzzed_bad_inputs(corpus, tmp_path, fragile_client, kind):
    from fuzz_inputs import write_bad_audio, write_bad_midi

    _wait_workers(fragile_client)
    src = tmp_path / kind
    src.mkdir()
    good = sorted((corpus / kind).iterdir())[:10]
    for p in good:
        shutil.copy(p, src / p.name)
    if kind == "audio":
        bad = write_bad_audio(src, good[0].read_bytes(), n=110)
    else:
        bad = write_bad_midi(src, good[0].read_bytes(), n=110)
    pids = fragile_client.run(os.getpid)
    out = str(tmp_path / "fuzz.zarr")
    s = featurize.run(str(src), out, client=fragile_client, kind=kind, mode="pianoroll", partition_size=8,
                      progress=False)
    assert fragile_client.run(os.getpid) == pids, "a worker died"
    store = Store(out)
    assert sorted(store.ids) == sorted(p.stem for p in good)
    fails = {os.path.basename(f["source"]): f["reason"] for f in store.failures()}
    printable = {n.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"): k
                 for n, k in bad.items()}
    assert set(fails) == set(printable)
    assert all(r.strip() for r in fails.values())
    by_kind = Counter(printable.values())
    reasons = Counter((printable[n], r.split(":")[0][:48]) for n, r in fails.items())
    print(f"\n{kind}: {len(good)} good processed, {len(bad)} bad all in failures; per kind {dict(by_kind)}")
    for (k, r), c in sorted(reasons.items()):
        print(f"  {k:13s} {c:3d}  {r}")
    assert s.items == len(good) and s.failures == len(bad)


# ------------------------------------------------ 5. version/format mismatch


def _set_attrs(url: str, **attrs) -> None:
    meta = Path(url, "zarr.json")
    doc = json.loads(meta.read_text())
    doc["attributes"].update(attrs)
    meta.write_text(json.dumps(doc))


def test_other_format_version_is_refused_by_every_stage(corpus, reference, copy_store, cluster_client,
                                                        tmp_path):
    from msdmatch.stages.report import run_report

    fmt = r"msdmatch_format=99 .*re-run `msdmatch featurize` into a new store"
    feat = copy_store(reference["feat-audio"], "feat.zarr")
    _set_attrs(feat, msdmatch_format=99)
    with pytest.raises(FormatMismatchError, match=fmt):  # featurize resume
        featurize.run(str(corpus / "audio"), feat, client=cluster_client, kind="audio", partition_size=2,
                      progress=False)
    with pytest.raises(FormatMismatchError, match=fmt):
        embed.run(feat, client=cluster_client, progress=False)
    db = copy_store(reference["emb-audio"], "db.zarr")
    _set_attrs(db, msdmatch_format=99)
    with pytest.raises(FormatMismatchError, match=fmt):
        match.run(reference["emb-midi"], db, client=cluster_client, progress=False)
    truth = tmp_path / "truth.csv"
    truth.write_text("query_id,track_id\n" + "".join(
        f"q{k:03d},TRFAULT{k:010d}\n" for k in range(N_ITEMS)))
    matches = tmp_path / "m.csv"
    from msdmatch.evaluation.metrics import write_matches

    write_matches(reference["match"], str(matches))
    with pytest.raises(FormatMismatchError, match=fmt):
        run_report(str(matches), str(truth), queries=reference["emb-midi"], db=db, client=cluster_client)


def test_other_feature_parameters_are_refused_by_every_stage(corpus, reference, copy_store, cluster_client):
    feat = copy_store(reference["feat-audio"], "feat.zarr")
    params = json.loads(Path(feat, "zarr.json").read_text())["attributes"]["params"]
    _set_attrs(feat, params=dict(params, n_bins=36))
    with pytest.raises(FormatMismatchError, match=r"other parameters .*n_bins.*--overwrite"):
        featurize.run(str(corpus / "audio"), feat, client=cluster_client, kind="audio", partition_size=2,
                      progress=False)
    with pytest.raises(FormatMismatchError, match=r"n_bins=36 but model expects 48.*msdmatch featurize"):
        embed.run(feat, client=cluster_client, progress=False)
    db = copy_store(reference["emb-audio"], "db.zarr")
    _set_attrs(db, params=dict(params, n_bins=36))
    with pytest.raises(FormatMismatchError, match=r"other (feature )?parameters.*n_bins"):
        match.run(reference["emb-midi"], db, client=cluster_client, progress=False)


def test_model_of_another_format_is_refused(reference, copy_store, cluster_client, tmp_path):
    from msdmatch.io.modelfile import shipped_model_dir

    model = tmp_path / "pse-old"
    shutil.copytree(shipped_model_dir() / "pse-midi-pianoroll", model)
    doc = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps(dict(doc, msdmatch_format=99)))
    url = copy_store(reference["feat-midi"], "q.zarr")
    with pytest.raises(FormatMismatchError, match="msdmatch_format=99 but this msdmatch reads 1.*re-train"):
        embed.run(url, models=[str(model)], client=cluster_client, progress=False)


# ------------------------------------------------------------ 6. concurrency


def test_two_featurize_processes_on_one_store(corpus, tmp_path, reference):
    out = str(tmp_path / "db.zarr")
    args = ["featurize", "audio", str(corpus / "audio"), "--out", out, "--partition-size", "2",
            "--workers", "1", "--quiet"]
    procs = [subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[0] == 2)
    lines = [ln for ln in loser[2].splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in loser[2], loser[2]
    assert "is being written by `msdmatch featurize`" in lines[0] or "at the same moment" in lines[0]
    assert_same_store(reference["feat-audio"], out)
    assert not Path(out + ".lock").exists()
