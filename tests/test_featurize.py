"""The featurize stage on a real LocalCluster: equality with the pure functions,
resume, bad input, planning."""
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from msdmatch.errors import FormatMismatchError, ParameterError, StoreError
from msdmatch.io.sources import Item
from msdmatch.io.store import Store
from msdmatch.stages import featurize as stage


def test_store_equals_pure_functions(tiny_corpus, tmp_path, cluster_client):
    out = str(tmp_path / "db.zarr")
    s = stage.run(str(tiny_corpus / "audio"), out, client=cluster_client, kind="audio",
                  partition_size=2, progress=False)
    assert s.items == 6 and s.failures == 0
    store = Store(out)
    assert store.modality == "audio" and store.n == 6
    for i, (id_, src) in enumerate(zip(store.ids, store.sources)):
        direct = stage.featurize_item(Item(id_, src), modality="audio")
        np.testing.assert_array_equal(store.sequence(i), direct.astype(np.float16).astype(np.float32))
    assert store.offsets[-1] == store.group["features"].shape[0]


@pytest.mark.parametrize("mode", ["synth", "pianoroll"])
def test_midi_store(tiny_corpus, tmp_path, cluster_client, mode):
    out = str(tmp_path / f"q-{mode}.zarr")
    stage.run(str(tiny_corpus / "midi"), out, client=cluster_client, kind="midi", mode=mode,
              partition_size=4, progress=False)
    store = Store(out)
    assert store.modality == f"midi-{mode}"
    assert store.ids == [f"song{k}" for k in range(6)]
    direct = stage.featurize_item(Item("song2", str(tiny_corpus / "midi" / "song2.mid")),
                                  modality=f"midi-{mode}")
    np.testing.assert_array_equal(store.sequence(2), direct.astype(np.float16).astype(np.float32))


def test_resume_recomputes_nothing_committed(tiny_corpus, tmp_path, cluster_client):
    full = str(tmp_path / "full.zarr")
    part = str(tmp_path / "part.zarr")
    kw = dict(client=cluster_client, kind="audio", partition_size=2, progress=False)
    stage.run(str(tiny_corpus / "audio"), full, **kw)
    first = stage.run(str(tiny_corpus / "audio"), part, max_parts=1, **kw)
    assert first.parts_run == 1
    with pytest.raises(StoreError, match="incomplete"):
        Store(part)
    second = stage.run(str(tiny_corpus / "audio"), part, **kw)
    assert (second.parts_run, second.parts_skipped) == (2, 1)
    third = stage.run(str(tiny_corpus / "audio"), part, **kw)
    assert (third.parts_run, third.parts_skipped) == (0, 3)
    a, b = Store(full), Store(part)
    assert a.ids == b.ids and a.sources == b.sources
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(a.group["features"][:], b.group["features"][:])


def test_resume_refuses_other_inputs(tiny_corpus, tmp_path, cluster_client):
    out = str(tmp_path / "x.zarr")
    kw = dict(client=cluster_client, kind="audio", progress=False)
    stage.run(str(tiny_corpus / "audio"), out, partition_size=2, **kw)
    with pytest.raises(StoreError, match="different list of inputs"):
        stage.run(str(tiny_corpus / "audio" / "TRTINY00000000000[0-2].mp3"), out, partition_size=2, **kw)
    with pytest.raises(StoreError, match="already holds 'audio'"):
        stage.run(str(tiny_corpus / "midi"), out, kind="midi", client=cluster_client, progress=False)


@pytest.mark.parametrize("kind, mode, attr, says", [
    ("audio", "synth", "tuning", "assumed A4 = 440 Hz"),
    ("midi", "pianoroll", "volume", "ignored channel volume"),
])
def test_resume_refuses_a_store_of_an_earlier_method(kind, mode, attr, says, tiny_corpus, tmp_path, cluster_client):
    """A store written before the tuning estimate (audio) or the CC 7/11 weighting (piano roll)."""
    import zarr

    out = str(tmp_path / "x.zarr")
    kw = dict(client=cluster_client, kind=kind, mode=mode, partition_size=2, progress=False)
    stage.run(str(tiny_corpus / kind), out, max_parts=1, **kw)
    g = zarr.open_group(out, mode="r+")
    assert g.attrs[attr]
    del g.attrs[attr]  # as an earlier msdmatch wrote it
    with pytest.raises(FormatMismatchError, match=f"{says}.*--overwrite"):
        stage.run(str(tiny_corpus / kind), out, **kw)
    assert stage.run(str(tiny_corpus / kind), out, overwrite=True, **kw).parts_run == 3


def _wav(path, y, sr=22050, *, float_=False):
    import soundfile as sf

    sf.write(str(path), y, sr, subtype="FLOAT" if float_ else "PCM_16")


def make_bad_audio(d, rng, good_mp3: bytes):
    """One file of each bad kind; returns the expected reason fragment per id."""
    (d / "truncated.mp3").write_bytes(good_mp3[:300])
    flipped = bytearray(good_mp3)
    flipped[:64] = bytes(rng.integers(0, 256, 64, dtype=np.uint8))
    (d / "bitflipped.mp3").write_bytes(bytes(flipped[:2000]))
    (d / "zero.mp3").write_bytes(b"")
    (d / "textfile.mp3").write_bytes(b"hello, I am not audio\n" * 20)
    _wav(d / "silent.wav", np.zeros(22050 * 12, np.float32))
    y = 0.1 * rng.standard_normal(22050 * 12).astype(np.float32)
    y[100:200] = np.nan
    _wav(d / "nan.wav", y, float_=True)
    _wav(d / "huge.wav", 0.1 * rng.standard_normal(8000 * 500).astype(np.float32), 8000)
    (d / "wrongext.mp3").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk\x00\x00\x00\x04\x00\xff\x2f\x00")
    return {"truncated": "", "bitflipped": "", "zero": "empty file", "textfile": "cannot decode",
            "silent": "silent", "nan": "NaN", "huge": "limit", "wrongext": "cannot decode"}


def make_bad_midi(d):
    import pretty_midi

    (d / "garbage.mid").write_bytes(b"\x00\x01garbage" * 10)
    (d / "empty.mid").write_bytes(b"")
    pretty_midi.PrettyMIDI().write(str(d / "nonotes.mid"))
    pm = pretty_midi.PrettyMIDI()
    dr = pretty_midi.Instrument(0, is_drum=True)
    dr.notes.append(pretty_midi.Note(100, 36, 0, 1))
    pm.instruments.append(dr)
    pm.write(str(d / "drumsonly.mid"))
    hdr = b"MThd" + struct.pack(">IHHH", 6, 1, 65535, 480)  # the 16-bit field's maximum
    (d / "manytracks.mid").write_bytes(hdr + b"MTrk\x00\x00\x00\x04\x00\xff\x2f\x00")
    pm = pretty_midi.PrettyMIDI(initial_tempo=4.0)  # absurdly slow: hours long
    inst = pretty_midi.Instrument(0)
    inst.notes += [pretty_midi.Note(100, 60, 0, 1), pretty_midi.Note(100, 62, 20000, 20001)]
    pm.instruments.append(inst)
    pm.write(str(d / "absurdtempo.mid"))
    return {"garbage": "not a MIDI", "empty": "empty file", "nonotes": "no notes",
            "drumsonly": "only drum", "manytracks": "tracks", "absurdtempo": "too long"}


def test_bad_input_is_recorded_and_good_items_survive(tiny_corpus, tmp_path, cluster_client, rng):
    import shutil

    src = tmp_path / "audio"
    shutil.copytree(tiny_corpus / "audio", src)
    good = sorted(p.stem for p in src.glob("*.mp3"))
    expected = make_bad_audio(src, rng, (src / f"{good[0]}.mp3").read_bytes())
    out = str(tmp_path / "db.zarr")
    s = stage.run(str(src), out, client=cluster_client, kind="audio", partition_size=3, progress=False)
    store = Store(out)
    assert sorted(store.ids) == good
    fails = {f["id"]: f["reason"] for f in store.failures()}
    assert set(fails) == set(expected), fails
    for k, frag in expected.items():
        assert frag in fails[k] and fails[k], (k, fails[k])
    assert s.items == len(good) and s.failures == len(expected)


def test_bad_midi_is_recorded(tiny_corpus, tmp_path, cluster_client):
    import shutil

    src = tmp_path / "midi"
    shutil.copytree(tiny_corpus / "midi", src)
    expected = make_bad_midi(src)
    out = str(tmp_path / "q.zarr")
    stage.run(str(src), out, client=cluster_client, kind="midi", mode="pianoroll", partition_size=4,
              progress=False)
    store = Store(out)
    assert sorted(store.ids) == [f"song{k}" for k in range(6)]
    fails = {f["id"]: f["reason"] for f in store.failures()}
    assert set(fails) == set(expected)
    for k, frag in expected.items():
        assert frag in fails[k], (k, fails[k])


@given(n=st.integers(0, 60), size=st.integers(1, 17), dup=st.integers(0, 5))
def test_plan_covers_every_item_once(n, size, dup):
    items = [Item(f"id{i}", f"/x/{i}.mp3") for i in range(n)]
    items += [Item(f"id{i}", f"/y/{i}.mp3") for i in range(min(dup, n))]
    shards, rejected = stage.plan(items, partition_size=size)
    planned = [it.id for s in shards for it in s.items]
    assert len(planned) == len(set(planned)) == n
    assert len(rejected) == min(dup, n)
    assert all(len(s.items) <= size for s in shards)
    assert [s.pid for s in shards] == list(range(len(shards)))


def test_plan_refuses_bad_partition_size():
    with pytest.raises(ParameterError, match="partition_size must be >= 1"):
        stage.plan([], partition_size=0)


def test_second_writer_is_refused_while_the_first_holds_the_lease(tiny_corpus, tmp_path):
    import subprocess
    import sys

    from msdmatch.io.lock import store_lease

    out = str(tmp_path / "db.zarr")
    with store_lease(out, stage="featurize"):
        r = subprocess.run([sys.executable, "-m", "msdmatch.cli", "featurize", "audio",
                            str(tiny_corpus / "audio"), "--out", out, "--workers", "1", "--quiet"],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "is being written by `msdmatch featurize`" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "db.zarr.lock").exists()  # released


def test_stale_lease_of_a_dead_process_is_taken_over(tmp_path):
    import json
    import socket

    from msdmatch.io.lock import store_lease

    out = str(tmp_path / "db.zarr")
    (tmp_path / "db.zarr.lock").write_text(json.dumps(
        {"token": "x", "host": socket.gethostname(), "pid": 2**22 + 17, "stage": "featurize",
         "since": 0, "renewed": 9e12}))
    with store_lease(out, stage="featurize") as me:
        assert json.loads((tmp_path / "db.zarr.lock").read_text())["token"] == me.token


def test_local_cluster_workers_get_thread_limits_malloc_and_monitoring_settings(cluster_client):
    from msdmatch.executor import MONITORING, WORKER_ENV, WORKER_MALLOC

    def env():
        import os

        return {k: os.environ.get(k) for k in (*WORKER_ENV, "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}

    want = dict(WORKER_ENV, **{k.rsplit(".", 1)[1]: str(v) for k, v in WORKER_MALLOC.items()})
    seen = cluster_client.run(env)
    assert len(seen) == 2 and all(v == want for v in seen.values()), seen

    def intervals():
        import dask

        return {k: dask.config.get(k) for k in MONITORING}

    seen = cluster_client.run(intervals)
    assert len(seen) == 2 and all(v == MONITORING for v in seen.values()), seen
