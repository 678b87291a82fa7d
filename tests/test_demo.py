"""Tests for the demo corpus (msdmatch.demo)."""
from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from msdmatch.demo import build_corpus, load_preview, preview_seconds
from msdmatch.demo import corpus as C
from msdmatch.demo import recording as R
from msdmatch.demo import songs as S
from msdmatch.errors import ParameterError


@pytest.fixture
def rng():
    return np.random.default_rng(20240601)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    summary = build_corpus(out, songs=6, distractors=4, seed=3, duplicates=0.0, n_workers=2, progress=False)
    return out, summary


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".mid", ".mp3", ".csv")}


def test_tiny_corpus_builds(tiny):
    out, summary = tiny
    assert summary["queries"] == 6 and summary["distractors"] == 4 and summary["failures"] == 0
    assert summary["music21_songs"] == 5 and summary["generated_songs"] == 5
    assert len(list((out / "midi").glob("*.mid"))) == 6
    mp3s = sorted((out / "audio").glob("*.mp3"))
    assert len(mp3s) == 10
    assert all(re.fullmatch(r"TR[A-Z0-9]{16}", p.stem) for p in mp3s)
    meta = json.loads((out / "corpus.json").read_text())
    assert meta["seed"] == 3 and meta["counts"]["previews"] == 10
    assert "TimGM6mb.sf2" not in meta["soundfonts"]["recordings"]


def test_truth_and_split_consistent(tiny):
    out, _ = tiny
    truth = _read(out / "truth.csv")
    split = _read(out / "split.csv")
    assert list(truth[0]) == ["query_id", "track_id"]
    assert list(split[0]) == ["query_id", "track_id", "split"]
    assert len(truth) == 6 and len(split) == 10
    assert {r["split"] for r in split} <= {"train", "valid", "test"}
    by_track = {r["track_id"]: r for r in split}
    for r in truth:
        assert (out / "midi" / f"{r['query_id']}.mid").is_file()
        assert (out / "audio" / f"{r['track_id']}.mp3").is_file()
        assert by_track[r["track_id"]]["query_id"] == r["query_id"]
    assert sum(1 for r in split if r["query_id"] == "") == 4
    assert len({r["track_id"] for r in split}) == 10


def test_preview_decodes_to_30_seconds(tiny):
    out, _ = tiny
    path = next((out / "audio").glob("*.mp3"))
    assert 29.9 < preview_seconds(str(path)) < 30.3
    y, sr = load_preview(str(path))
    assert sr in (22050, 44100) and y.dtype == np.float32 and np.max(np.abs(y)) > 0.1


def test_same_seed_is_reproducible(tiny, tmp_path):
    out, _ = tiny
    build_corpus(tmp_path, songs=6, distractors=4, seed=3, duplicates=0.0, n_workers=1, progress=False)
    a, b = _tree_hashes(tmp_path), _tree_hashes(out)
    # MIDI, truth and split files are byte-identical; decisions are identical
    assert {k: v for k, v in a.items() if not k.endswith(".mp3")} == \
        {k: v for k, v in b.items() if not k.endswith(".mp3")}
    assert (tmp_path / "recordings.jsonl").read_text() == (out / "recordings.jsonl").read_text()
    # audio may differ by fluidsynth voice-pool state (task order), but only slightly
    for p in sorted((out / "audio").glob("*.mp3")):
        y1, _ = load_preview(str(p))
        y2, _ = load_preview(str(tmp_path / "audio" / p.name))
        assert np.corrcoef(y1, y2)[0, 1] > 0.98


def test_other_seed_differs():
    a = C.plan_corpus(songs=3, distractors=2, seed=0, works=[])
    b = C.plan_corpus(songs=3, distractors=2, seed=1, works=[])
    assert {s.track_id for s in a}.isdisjoint({s.track_id for s in b})


def test_plan_splits_and_music21_share():
    specs = C.plan_corpus(songs=300, distractors=700, seed=0, works=[f"w{i}" for i in range(2000)])
    assert sum(1 for s in specs if s.work) == 500
    assert sum(1 for s in specs[:300] if s.work) == 150
    frac = {k: sum(s.split == k for s in specs) / len(specs) for k in ("train", "valid", "test")}
    assert 0.62 < frac["train"] < 0.78 and 0.09 < frac["valid"] < 0.21
    assert [s.query_id == "" for s in specs] == [i >= 300 for i in range(1000)]


def test_plan_balanced_draws_collections_evenly():
    works = [f"folk/{i}" for i in range(900)] + [f"bach/{i}" for i in range(60)] + [f"mass/{i}" for i in range(40)]
    picked = [s.work for s in C.plan_corpus(songs=300, distractors=0, seed=0, works=works, balanced=True) if s.work]
    counts = {c: sum(w.startswith(c + "/") for w in picked) for c in ("folk", "bach", "mass")}
    assert counts == {"folk": 55, "bach": 55, "mass": 40}  # 150 works; the smallest collection runs out
    assert [w for w in picked if w.startswith("bach/")] == [f"bach/{i}" for i in range(55)]
    plain = [s.work for s in C.plan_corpus(songs=300, distractors=0, seed=0, works=works) if s.work]
    assert plain == works[:150]


def test_plan_rejects_bad_counts():
    with pytest.raises(ParameterError, match="songs=-1 must be a non-negative integer"):
        C.plan_corpus(songs=-1, distractors=2, seed=0)
    with pytest.raises(ParameterError, match="corpus would be empty"):
        C.plan_corpus(songs=0, distractors=0, seed=0)


def test_generated_song_has_all_parts(rng):
    for _ in range(3):
        pm = S.generated_song(rng=rng)
        assert S.MIN_SECONDS - 1 <= pm.get_end_time() <= S.MAX_SECONDS + 1
        melody, chords, bass, drums = pm.instruments
        assert drums.is_drum and {36, 38} <= {n.pitch for n in drums.notes}
        assert max(n.pitch for n in bass.notes) < 60
        onsets = {}
        for n in chords.notes:
            onsets.setdefault(round(n.start, 4), set()).add(n.pitch)
        assert max(len(v) for v in onsets.values()) >= 3  # real chords
        assert len(melody.notes) > 20 and np.mean([n.pitch for n in melody.notes]) > 60
        assert not any(i.is_drum for i in (melody, chords, bass))


def test_music21_song_is_multitrack_with_programs(rng):
    pm = S.music21_song(S.Work("bach/bwv24.6.mxl"), rng=rng)
    assert len(pm.instruments) == 4
    assert S.MIN_SECONDS <= pm.get_end_time() <= S.MAX_SECONDS + 1
    assert len({i.program for i in pm.instruments}) >= 1


def test_time_warp_is_monotonic_and_bounded(rng):
    t = np.linspace(0, 120, 5000)
    w = R.warp_times(t, rate=1.06, depth=0.03, period=20.0, phase=1.0)
    assert np.all(np.diff(w) > 0)
    assert abs(w[-1] / t[-1] - 1.06) < 0.01


def test_recording_differs_from_query(rng, tmp_path):
    from msdmatch.io.synth import render

    pm = S.generated_song(rng=rng)
    mp3, plan = R.make_recording(pm, rng=np.random.default_rng(5))
    assert plan["soundfont"] != "TimGM6mb.sf2"
    assert abs(plan["warp_rate"] - 1.0) >= 0.02
    path = tmp_path / "x.mp3"
    path.write_bytes(mp3)
    rec, sr = load_preview(str(path))
    if sr != 22050:
        rec = rec[::2]
    query = render(pm, sr=22050)  # how the product synthesizes the query
    start = int(plan["offset"] * 22050)
    q = query[start:start + rec.size]
    n = min(q.size, rec.size)
    corr = float(np.dot(q[:n], rec[:n]) / (np.linalg.norm(q[:n]) * np.linalg.norm(rec[:n])))
    assert abs(corr) < 0.5
