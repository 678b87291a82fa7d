"""Shared fixtures: seeded rng, generated MIDI/audio, a real LocalCluster, a real S3 server."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).parent.parent / ".numba_cache"))

S3_KEY, S3_SECRET = "testing-key-AKIA", "testing-secret-Zq9"


@pytest.fixture
def rng():
    return np.random.default_rng(20260522)


def make_midi(seed: int, *, seconds: float = 20.0, program: int = 0, drums: bool = True):
    """A small multi-instrument song built in code: melody, bass, chords, drums."""
    import pretty_midi

    r = np.random.default_rng(seed)
    pm = pretty_midi.PrettyMIDI(initial_tempo=float(r.integers(80, 140)))
    beat = 60.0 / pm.get_tempo_changes()[1][0]
    root = int(r.integers(48, 60))
    scale = np.array([0, 2, 4, 5, 7, 9, 11])
    mel = pretty_midi.Instrument(program=program)
    bass = pretty_midi.Instrument(program=33)
    chords = pretty_midi.Instrument(program=48)
    t = 0.0
    while t < seconds:
        dur = beat * float(r.choice([0.5, 1.0, 1.0, 2.0]))
        p = root + 12 + int(scale[r.integers(0, 7)]) + 12 * int(r.integers(0, 2))
        mel.notes.append(pretty_midi.Note(int(r.integers(70, 110)), p, t, t + dur * 0.9))
        t += dur
    for k in range(int(seconds / (2 * beat))):
        deg = int(r.integers(0, 7))
        s = k * 2 * beat
        bass.notes.append(pretty_midi.Note(90, root - 12 + int(scale[deg]), s, s + 2 * beat * 0.95))
        for d in (0, 2, 4):
            chords.notes.append(pretty_midi.Note(60, root + int(scale[(deg + d) % 7]), s, s + 2 * beat))
    pm.instruments += [mel, bass, chords]
    if drums:
        dr = pretty_midi.Instrument(program=0, is_drum=True)
        for k in range(int(seconds / beat)):
            dr.notes.append(pretty_midi.Note(100, 36 if k % 2 == 0 else 38, k * beat, k * beat + 0.1))
        pm.instruments.append(dr)
    return pm


def write_mp3(path: Path, y: np.ndarray, sr: int, *, kbps: int = 128) -> None:
    import lameenc

    enc = lameenc.Encoder()
    enc.set_bit_rate(kbps)
    enc.set_in_sample_rate(sr)
    enc.set_channels(1)
    enc.set_quality(7)
    pcm = (np.clip(y, -1, 1) * 32767).astype(np.int16).tobytes()
    path.write_bytes(enc.encode(pcm) + enc.flush())


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """6 MIDI files and their 'recordings' (another soundfont, MP3)."""
    from msdmatch.io.synth import render

    root = tmp_path_factory.mktemp("tiny")
    (root / "midi").mkdir()
    (root / "audio").mkdir()
    for k in range(6):
        pm = make_midi(k, seconds=12.0)
        pm.write(str(root / "midi" / f"song{k}.mid"))
        y = render(pm, sr=22050, soundfont="FluidR3_GM.sf2")
        write_mp3(root / "audio" / f"TRTINY{k:012d}.mp3", y * 0.8, 22050)
    return root


@pytest.fixture(scope="session")
def cluster_client():
    """A real LocalCluster with 2 process workers, as the stages start one."""
    from msdmatch.executor import client_for

    with client_for(None, n_workers=2, dashboard=False, quiet=True) as client:
        yield client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 protocol server (moto server mode) on loopback, in its own process."""
    import time
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=0.5)
            break
        except Exception:
            time.sleep(0.1)
    yield {"endpoint_url": url, "port": port, "proc": proc}
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def s3(s3_server, monkeypatch):
    """Credentials in the standard AWS environment and a fresh bucket; returns storage_options."""
    import uuid

    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    so = {"endpoint_url": s3_server["endpoint_url"], "key": S3_KEY, "secret": S3_SECRET,
          "client_kwargs": {"region_name": "us-east-1"}}
    import boto3

    bucket = f"b{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=so["endpoint_url"], aws_access_key_id=S3_KEY,
                 aws_secret_access_key=S3_SECRET, region_name="us-east-1").create_bucket(Bucket=bucket)
    fs = s3fs.S3FileSystem(**so)
    return {"bucket": bucket, "storage_options": so, "fs": fs}


@pytest.fixture(scope="session")
def tiny_stores(tiny_corpus, tmp_path_factory, cluster_client):
    """Featurized tiny corpus: {'audio': url, 'midi-synth': url, 'midi-pianoroll': url} (not embedded)."""
    from msdmatch.stages import featurize

    root = tmp_path_factory.mktemp("stores")
    out = {}
    for kind, mode, name in (("audio", "synth", "audio"), ("midi", "synth", "midi-synth"),
                             ("midi", "pianoroll", "midi-pianoroll")):
        src = tiny_corpus / ("audio" if kind == "audio" else "midi")
        url = str(root / f"{name}.zarr")
        featurize.run(str(src), url, client=cluster_client, kind=kind, mode=mode, partition_size=4,
                      progress=False)
        out[name] = url
    return out


@pytest.fixture
def copy_store(tmp_path):
    """Copy a local store so a test can modify it."""
    import shutil

    def _copy(url: str, name: str | None = None) -> str:
        dst = tmp_path / (name or Path(url).name)
        shutil.copytree(url, dst)
        return str(dst)

    return _copy
