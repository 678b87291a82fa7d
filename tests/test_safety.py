"""msdmatch never destroys a user's files; every user mistake is one line with exit code 2.

Each test makes the mistake a new user makes and checks three things: the exit
code, that stderr is one line without a traceback, and (where there are
foreign files) that they survive byte for byte.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_midi, write_mp3

pytestmark = pytest.mark.safety


def msdmatch(*args, env=None, **kw):
    e = {**os.environ, **(env or {})}
    e = {k: v for k, v in e.items() if v is not None}
    return subprocess.run([sys.executable, "-m", "msdmatch.cli", *args], capture_output=True, text=True,
                          timeout=300, env=e, **kw)


def one_line_exit_2(r, fragment: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("msdmatch: error: ") and lines[0].count("msdmatch:") == 1, lines[0]
    assert fragment in lines[0], lines[0]


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` (or of ``root`` itself)."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture
def audio_src(tiny_corpus, tmp_path):
    src = tmp_path / "songs"
    shutil.copytree(tiny_corpus / "audio", src)
    return src


# ------------------------------------------------------------ 1. foreign outputs


@pytest.mark.parametrize("overwrite", [False, True])
def test_featurize_refuses_a_foreign_folder(audio_src, tmp_path, overwrite):
    out = tmp_path / "p2"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    before = digest(out)
    r = msdmatch("featurize", "audio", str(audio_src), "--out", str(out), "--quiet",
                 *(["--overwrite"] if overwrite else []))
    one_line_exit_2(r, "not an msdmatch store")
    assert digest(out) == before


def test_featurize_refuses_the_current_directory(audio_src):
    before = digest(audio_src)
    r = msdmatch("featurize", "audio", ".", "--out", ".", "--quiet", cwd=audio_src)
    one_line_exit_2(r, "current directory")
    assert digest(audio_src) == before


@pytest.mark.parametrize("where", ["src", "inside", "parent"])
def test_featurize_refuses_src_its_parent_and_inside(audio_src, where):
    out = {"src": audio_src, "inside": audio_src / "db.zarr", "parent": audio_src.parent}[where]
    before = digest(audio_src)
    r = msdmatch("featurize", "audio", str(audio_src), "--out", str(out), "--quiet")
    one_line_exit_2(r, "SRC")
    assert digest(audio_src) == before
    assert not (audio_src / "db.zarr").exists()


def test_featurize_refuses_an_existing_file(audio_src, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    r = msdmatch("featurize", "audio", str(audio_src), "--out", str(f), "--quiet", "--overwrite")
    one_line_exit_2(r, "existing file")
    assert f.read_text() == "keep me"


def test_featurize_into_an_empty_folder_and_overwrite_of_its_own_store(audio_src, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    r = msdmatch("featurize", "audio", str(audio_src), "--out", str(out), "--quiet", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert (out / "zarr.json").is_file()
    r = msdmatch("featurize", "audio", str(audio_src), "--out", str(out), "--quiet", "--workers", "1",
                 "--overwrite")
    assert r.returncode == 0, r.stderr
    assert "featurized 6 items" in r.stdout and "0 already done" in r.stdout


def test_featurize_refuses_a_foreign_s3_prefix(audio_src, s3):
    fs, b = s3["fs"], s3["bucket"]
    fs.pipe(f"{b}/mine/thesis.tex", b"x")
    r = msdmatch("featurize", "audio", str(audio_src), "--out", f"s3://{b}/mine", "--quiet", "--overwrite",
                 "--storage-options", f'{{"endpoint_url": "{s3["storage_options"]["endpoint_url"]}"}}')
    one_line_exit_2(r, "not an msdmatch store")
    assert fs.cat(f"{b}/mine/thesis.tex") == b"x"


def test_s3_without_credentials_is_one_line(audio_src, s3_server, tmp_path):
    env = {k: None for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    so = f'{{"endpoint_url": "{s3_server["endpoint_url"]}"}}'
    r = msdmatch("featurize", "audio", str(audio_src), "--out", "s3://somebucket/db.zarr", "--quiet",
                 "--storage-options", so, env=env)
    one_line_exit_2(r, "credentials")
    r = msdmatch("featurize", "audio", "s3://somebucket/songs/", "--out", str(tmp_path / "db.zarr"), "--quiet",
                 "--storage-options", so, env=env)
    one_line_exit_2(r, "credentials")


def test_demo_and_train_refuse_a_foreign_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "data.csv").write_text("a,b\n")
    before = digest(out)
    one_line_exit_2(msdmatch("demo", str(out)), "not made by msdmatch")
    one_line_exit_2(msdmatch("train", str(tmp_path / "q.zarr"), str(tmp_path / "d.zarr"), "--truth",
                             str(tmp_path / "t.csv"), "--out", str(out)), "not made by msdmatch")
    assert digest(out) == before


# ------------------------------------------------------------ 2. minimum lengths


def test_too_short_audio_and_midi_are_failures(tmp_path, cluster_client):
    from msdmatch.io.store import Store
    from msdmatch.io.synth import render
    from msdmatch.stages import featurize

    a, m = tmp_path / "a", tmp_path / "m"
    a.mkdir()
    m.mkdir()
    y = render(make_midi(1, seconds=12.0), sr=22050)
    write_mp3(a / "long.mp3", y * 0.8, 22050)
    import soundfile as sf

    sf.write(a / "blip.wav", y[: int(0.3 * 22050)], 22050)
    data = (a / "long.mp3").read_bytes()
    (a / "trunc.mp3").write_bytes(data[:2048])
    make_midi(2, seconds=12.0).write(str(m / "song.mid"))
    make_midi(3, seconds=3.0).write(str(m / "short.mid"))
    featurize.run(str(a), str(tmp_path / "db.zarr"), client=cluster_client, kind="audio", progress=False)
    featurize.run(str(m), str(tmp_path / "q.zarr"), client=cluster_client, kind="midi", progress=False)
    db, q = Store(str(tmp_path / "db.zarr")), Store(str(tmp_path / "q.zarr"))
    assert db.ids == ["long"] and q.ids == ["song"]
    reasons = {f["id"]: f["reason"] for f in db.failures() + q.failures()}
    assert set(reasons) == {"blip", "trunc", "short"}
    for k in reasons:
        assert reasons[k].startswith("too short (") and "need >= 10 s" in reasons[k], reasons


def test_garbage_soundfont_leaves_no_store(tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    make_midi(2, seconds=12.0).write(str(m / "song.mid"))
    sf = tmp_path / "bad.sf2"
    sf.write_bytes(b"RIFF" + (4000).to_bytes(4, "little") + b"sfbk" + os.urandom(4000))  # a header, then junk
    r = msdmatch("featurize", "midi", str(m), "--out", str(tmp_path / "q.zarr"), "--soundfont", str(sf), "--quiet")
    one_line_exit_2(r, "soundfont")
    assert not (tmp_path / "q.zarr").exists()


# ------------------------------------------------------------ 3-4. user mistakes


def test_unreachable_scheduler_is_one_line(audio_src, tmp_path):
    r = msdmatch("featurize", "audio", str(audio_src), "--out", str(tmp_path / "db.zarr"), "--quiet",
                 "--scheduler", "tcp://127.0.0.1:9")
    one_line_exit_2(r, "cannot reach Dask scheduler")
    assert not (tmp_path / "db.zarr").exists()


def test_missing_parent_is_refused_before_any_work(audio_src, tmp_path):
    t0 = time.monotonic()
    r = msdmatch("featurize", "audio", str(audio_src), "--out", str(tmp_path / "no" / "sub" / "db.zarr"), "--quiet")
    one_line_exit_2(r, "does not exist")
    assert time.monotonic() - t0 < 10


def test_read_only_store_in_embed_is_one_line(tiny_corpus, tmp_path, cluster_client):
    from msdmatch.stages import featurize

    db = tmp_path / "db.zarr"
    featurize.run(str(tiny_corpus / "audio"), str(db), client=cluster_client, kind="audio", progress=False)
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available on this file system")
    try:
        r = msdmatch("embed", str(db), "--quiet")
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    one_line_exit_2(r, "cannot write in")
    assert "re-run" not in r.stderr


def test_library_warnings_stay_off_stderr(tmp_path):
    """A MIDI file that makes pretty_midi/librosa warn: stderr shows only the summary's absence of noise."""
    m = tmp_path / "m"
    m.mkdir()
    make_midi(4, seconds=12.0).write(str(m / "song.mid"))
    r = msdmatch("featurize", "midi", str(m), "--out", str(tmp_path / "q.zarr"), "--quiet", "--workers", "1",
                 "--mode", "pianoroll")
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr, r.stderr


# ------------------------------------------------------------ 5. Ctrl-C


def test_ctrl_c_is_one_line_and_exit_130(tiny_corpus, tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    for k in range(200):  # seconds of work left for one worker when the first partition starts
        shutil.copy(next((tiny_corpus / "audio").glob("*.mp3")), src / f"TR{k:04d}.mp3")
    p = subprocess.Popen([sys.executable, "-m", "msdmatch.cli", "featurize", "audio", str(src), "--out",
                          str(tmp_path / "db.zarr"), "--partition-size", "2", "--workers", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         # as from a terminal's shell: SIGINT at its default, whatever this process ignores
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((tmp_path / "db.zarr").glob("_parts/featurize/p*/zarr.json")):
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("msdmatch")]
    assert lines == ["msdmatch: interrupted; re-run the same command to resume"], err


# ------------------------------------------------------------ 6. lease fencing


def _slow_featurize(tmp_path, tiny_corpus, client, lease_module, monkeypatch):
    src = tmp_path / "many"
    src.mkdir()
    for k in range(12):
        shutil.copy(next((tiny_corpus / "audio").glob("*.mp3")), src / f"TR{k:04d}.mp3")
    monkeypatch.setattr(lease_module, "HEARTBEAT", 0.2)
    return src


def test_lost_lease_stops_the_writer_renewal_fails(tiny_corpus, tmp_path, cluster_client, monkeypatch):
    """The lease file is replaced by a folder: renewal fails, the writer stops before its next commit."""
    from msdmatch.errors import StoreError
    from msdmatch.io import lock
    from msdmatch.stages import featurize

    src = _slow_featurize(tmp_path, tiny_corpus, cluster_client, lock, monkeypatch)
    out = tmp_path / "db.zarr"
    lockf = Path(str(out) + ".lock")
    real = lock.store_lease

    import contextlib

    @contextlib.contextmanager
    def breaking(url, **kw):
        with real(url, **kw) as lease:
            lockf.unlink()
            lockf.mkdir()  # every later read and write of the lease fails
            time.sleep(0.6)
            yield lease
        lockf.rmdir()

    monkeypatch.setattr(lock, "store_lease", breaking)
    with pytest.raises(StoreError, match="stopped writing store .*renewing its lease|lost its lease"):
        featurize.run(str(src), str(out), client=cluster_client, kind="audio", partition_size=1, progress=False)


def test_lost_lease_stops_the_writer_taken_over(tiny_corpus, tmp_path, cluster_client, monkeypatch):
    """Another writer takes the lease over: the first stops and commits nothing more."""
    import json

    from msdmatch.errors import StoreError
    from msdmatch.io import lock
    from msdmatch.io.store import committed_parts, open_group
    from msdmatch.stages import featurize

    src = _slow_featurize(tmp_path, tiny_corpus, cluster_client, lock, monkeypatch)
    out = tmp_path / "db.zarr"
    lockf = Path(str(out) + ".lock")
    real = lock.store_lease

    import contextlib

    @contextlib.contextmanager
    def taken(url, **kw):
        with real(url, **kw) as lease:
            lockf.write_text(json.dumps({"token": "someone-else", "host": "elsewhere", "pid": 1,
                                         "stage": "featurize", "since": time.time(), "renewed": time.time()}))
            time.sleep(0.6)
            yield lease

    monkeypatch.setattr(lock, "store_lease", taken)
    with pytest.raises(StoreError, match="taken over|lost its lease"):
        featurize.run(str(src), str(out), client=cluster_client, kind="audio", partition_size=1, progress=False)
    assert committed_parts(open_group(str(out)), "featurize") == set()
    assert "someone-else" in lockf.read_text()  # the other writer's lease is left in place


# ------------------------------------------------------------ report, calibrate: inputs and outputs


@pytest.fixture
def small_matches(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("query_id,rank,track_id,confidence,verify_score,dhs_score,pse_distance\n"
                 "q1,1,T1,0.9,0.2,0.3,0.5\nq1,2,T2,0.1,0.5,0.4,0.6\nq2,1,T3,0.8,0.25,0.3,0.5\n")
    t = tmp_path / "truth.csv"
    t.write_text("query_id,track_id\nq1,T1\nq2,T4\n")
    return m, t


def test_report_refuses_a_foreign_out_folder(small_matches, tmp_path):
    m, t = small_matches
    out = tmp_path / "mine"
    out.mkdir()
    (out / "paper.pdf").write_bytes(b"%PDF")
    before = digest(out)
    one_line_exit_2(msdmatch("report", str(m), "--truth", str(t), "--out", str(out)), "not made by msdmatch")
    assert digest(out) == before
    r = msdmatch("report", str(m), "--truth", str(t), "--out", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    r = msdmatch("report", str(m), "--truth", str(t), "--out", str(tmp_path / "rep"))  # its own: rewritten
    assert r.returncode == 0, r.stderr


def test_report_out_under_a_read_only_folder(small_matches, tmp_path):
    m, t = small_matches
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available on this file system")
    try:
        r = msdmatch("report", str(m), "--truth", str(t), "--out", str(ro / "report"))
    finally:
        subprocess.run(["chattr", "-i", str(ro)], check=True)
    one_line_exit_2(r, "cannot write in")


def test_calibrate_refuses_to_replace_a_foreign_file(small_matches, tmp_path):
    m, t = small_matches
    f = tmp_path / "notes.json"
    f.write_text('{"mine": true}')
    one_line_exit_2(msdmatch("calibrate", str(m), "--truth", str(t), "--out", str(f)), "not written by msdmatch")
    assert f.read_text() == '{"mine": true}'
    one_line_exit_2(msdmatch("calibrate", str(m), "--truth", str(t), "--out", str(tmp_path / "x.txt")), ".json")


@pytest.mark.parametrize("case", ["missing", "empty", "not-utf8", "no-columns", "matches-missing"])
def test_bad_truth_or_matches_is_one_line(small_matches, tmp_path, case):
    m, t = small_matches
    if case == "missing":
        t = tmp_path / "nope.csv"
    elif case == "empty":
        t.write_text("")
    elif case == "not-utf8":
        t.write_bytes("query_id,track_id\nq1,T\xe9\n".encode("latin-1"))
    elif case == "no-columns":
        t.write_text("a,b\n1,2\n")
    else:
        m = tmp_path / "nope.parquet"
    r = msdmatch("report", str(m), "--truth", str(t))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1, r.stderr


def test_an_empty_database_says_so(tmp_path, cluster_client):
    from msdmatch.stages import featurize

    a, m = tmp_path / "a", tmp_path / "m"
    a.mkdir()
    m.mkdir()
    (a / "broken.mp3").write_bytes(b"\x00" * 500)
    make_midi(2, seconds=12.0).write(str(m / "song.mid"))
    featurize.run(str(a), str(tmp_path / "db.zarr"), client=cluster_client, kind="audio", progress=False)
    featurize.run(str(m), str(tmp_path / "q.zarr"), client=cluster_client, kind="midi", mode="pianoroll",
                  progress=False)
    r = msdmatch("match", str(tmp_path / "q.zarr"), str(tmp_path / "db.zarr"), "--out", str(tmp_path / "m.csv"))
    one_line_exit_2(r, "is empty")
