"""The real-material evaluation set's pure pieces (benchmarks/_realworld): WAD lumps, plan, format 0, open set."""
from __future__ import annotations

import io
import os
import struct
import sys

import mido
import numpy as np
import pretty_midi
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))

from _realworld import evaluate, midi, openset, plan, render  # noqa: E402


def _song(seed: int, *, seconds: float = 60.0, parts: int = 3, drums: bool = True) -> pretty_midi.PrettyMIDI:
    rng = np.random.default_rng(seed)
    pm = pretty_midi.PrettyMIDI(initial_tempo=110.0)
    for k in range(parts):
        inst = pretty_midi.Instrument(program=int(rng.integers(0, 100)))
        t = 0.0
        while t < seconds:
            d = float(rng.choice([0.25, 0.5, 1.0]))
            inst.notes.append(pretty_midi.Note(int(rng.integers(50, 110)), 40 + 12 * k + int(rng.integers(0, 12)),
                                               t, t + d))
            t += d
        pm.instruments.append(inst)
    if drums:
        dr = pretty_midi.Instrument(program=0, is_drum=True)
        dr.notes = [pretty_midi.Note(100, 36, b, b + 0.1) for b in np.arange(0, seconds, 0.5)]
        pm.instruments.append(dr)
    return pm


def _bytes(pm: pretty_midi.PrettyMIDI) -> bytes:
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


def _wad(lumps: list[tuple[bytes, bytes]], magic: bytes = b"PWAD") -> bytes:
    """A WAD file: header, the lumps' data, then the directory."""
    body, entries, off = b"", b"", 12
    for name, data in lumps:
        entries += struct.pack("<ii8s", off, len(data), name)
        body += data
        off += len(data)
    return struct.pack("<4sii", magic, len(lumps), off) + body + entries


def test_wad_midi_lumps_are_found_by_their_magic():
    a, b = _bytes(_song(1, seconds=5)), _bytes(_song(2, seconds=4, drums=False))
    palette = bytes(range(256)) * 3
    data = _wad([(b"D_RUNNIN", a), (b"PLAYPAL", palette), (b"D_STALKS", b), (b"D_DUPE", a)])
    lumps = midi.wad_lumps(data)
    assert [n for n, _ in lumps] == ["D_RUNNIN", "PLAYPAL", "D_STALKS", "D_DUPE"]
    assert lumps[1][1] == palette
    found = midi.midi_lumps(data)
    assert [n for n, _ in found] == ["D_RUNNIN", "D_STALKS", "D_DUPE"]
    assert found[0][1] == a and found[1][1] == b
    assert midi.dedupe(found) == [("D_RUNNIN", a), ("D_STALKS", b)]
    pm = midi.load_midi(found[1][1])
    assert len(pm.instruments) == 3 and pm.get_end_time() > 3.9
    assert [n for n, _ in midi.midi_lumps(_wad([(b"X", a)], magic=b"IWAD"))] == ["X"]


def test_wad_errors_name_the_problem():
    with pytest.raises(midi.WadError, match="not a WAD file"):
        midi.wad_lumps(b"MThd" + bytes(20))
    bad = bytearray(_wad([(b"D_X", b"MThd1234")]))
    struct.pack_into("<i", bad, 12 + 8, 10**6)  # the lump's size now runs past the end
    with pytest.raises(midi.WadError, match="outside"):
        midi.wad_lumps(bytes(bad))


def test_merge_to_format0_keeps_every_note():
    pm = _song(3, seconds=20)
    pm.instruments[0].pitch_bends.append(pretty_midi.PitchBend(512, 1.0))
    data = _bytes(pm)
    assert mido.MidiFile(file=io.BytesIO(data)).type == 1
    out = midi.to_format0(data)
    mf = mido.MidiFile(file=io.BytesIO(out))
    assert mf.type == 0 and len(mf.tracks) == 1

    def on(f):
        return sorted((m.channel, m.note, m.velocity) for tr in f.tracks for m in tr
                      if m.type == "note_on" and m.velocity > 0)

    assert on(mf) == on(mido.MidiFile(file=io.BytesIO(data)))
    back, orig = midi.load_midi(out), midi.load_midi(data)
    want = sorted((i.is_drum, n.pitch, round(n.start, 4), round(n.end, 4)) for i in orig.instruments for n in i.notes)
    got = sorted((i.is_drum, n.pitch, round(n.start, 4), round(n.end, 4)) for i in back.instruments for n in i.notes)
    assert len(got) == len(want) > 100
    assert got == want


def _infos(n: int) -> list[dict]:
    return [{"query_id": f"q{i}", **midi.describe(_song(10 + i, seconds=45 + 10 * i, parts=1 + i % 3))}
            for i in range(n)]


def test_plan_is_deterministic_and_depends_on_the_seed():
    infos = _infos(7)
    a, b, c = (plan.plan_queries(infos, seed=s) for s in (0, 0, 1))
    assert a == b and a != c
    for p, info in zip(a, infos):
        assert p["query_id"] == info["query_id"] and p["renderer"] in plan.RENDERERS
        assert 0 <= p["score_offset"] <= info["seconds"] - plan.PREVIEW_SECONDS / p["stretch"]
        melodic = [i for i, x in enumerate(info["parts"]) if not x["is_drum"]]
        assert p["drop"] == -1 or (p["drop"] in melodic and len(melodic) >= 2)
        assert p["drop_is_melody"] == (p["drop"] >= 0 and p["drop"] == info["melody"])
    counts = np.unique([p["renderer"] for p in a], return_counts=True)[1]
    assert counts.max() - counts.min() <= 1  # balanced over the queries
    tracks = [("naev/a", 200.0), ("supertux/b", 31.0), ("widelands/c", 400.0)]
    d0, d1 = (plan.plan_distractors(tracks, seed=s, target=20) for s in (0, 1))
    assert d0 == plan.plan_distractors(tracks, seed=0, target=20) and d0 != d1
    assert len(d0) >= 20 and {p["source"] for p in d0} == {t for t, _ in tracks}
    assert all(0 <= p["offset"] <= s - plan.PREVIEW_SECONDS for p in d0 for t, s in tracks if t == p["source"])
    ids = plan.assign_ids(50, seed=0)
    assert len(set(ids)) == 50 and ids == plan.assign_ids(50, seed=0) != plan.assign_ids(50, seed=1)


def test_melody_is_the_highest_non_drum_part():
    pm = _song(4, parts=3)
    assert midi.melody_part(pm) == 2  # parts are stacked an octave apart; the drums (3) are not melody


def test_perform_crops_to_the_window_and_drops_the_planned_part():
    pm = _song(5, seconds=90, parts=3)
    info = {"query_id": "q", **midi.describe(pm)}
    p = plan.plan_query(info, renderer=plan.RENDERERS[1], rng=np.random.default_rng(0))
    p.update(drop=info["melody"], skip_at=0.0, skip_len=0.0, humanize_s=0.0, velocity_jitter=0,
             double=-1, stretch=1.0, score_offset=20.0, offset=20.0)
    perf = render.perform(pm, p)
    assert [i.program for i in perf.instruments] == [i.program for k, i in enumerate(pm.instruments) if k != 2]
    for src, got in zip([i for k, i in enumerate(pm.instruments) if k != 2], perf.instruments):
        # notes sounding in the window; a note held into it starts at 0
        want = sorted((n.pitch, round(max(0.0, n.start - 20.0), 6)) for n in src.notes
                      if n.end > 20.0 and n.start < 50.0)
        assert sorted((n.pitch, round(n.start, 6)) for n in got.notes) == want
        assert all(0.0 <= n.start < n.end <= plan.PREVIEW_SECONDS for n in got.notes)


def test_true_ranks_and_recall_against_a_direct_count():
    rng = np.random.default_rng(0)
    db = rng.standard_normal((50, 8))
    q = db[[3, 7, 9]] + 0.3 * rng.standard_normal((3, 8))
    truth = np.array([3, 7, 20])
    r = evaluate.true_ranks(q, db, truth)
    direct = [1 + sum(np.sum((q[i] - db[j]) ** 2) < np.sum((q[i] - db[truth[i]]) ** 2) for j in range(50))
              for i in range(3)]
    assert r.tolist() == direct
    curve = evaluate.recall_curve(np.array([1.0, 2.0, 6.0]), n_db=100, n_queries=4)
    assert curve["0.01"] == 0.25 and curve["0.02"] == 0.5 and curve["0.05"] == 0.5 and curve["0.1"] == 0.75


def _read(path) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def test_openset_plan_removes_a_seeded_half_and_keeps_every_other_row(tmp_path):
    from msdmatch.evaluation.metrics import read_truth
    from msdmatch.evaluation.openset import truth_sets

    truth = {f"q{i}": {f"T{i}"} for i in range(10)}
    truth["q3"] = {"T3", "T3b"}  # two valid previews of one query
    tracks = sorted(set().union(*truth.values())) + ["D1", "D2"]  # D*: distractors
    previews = [str(tmp_path / "audio" / f"{t}.mp3") for t in tracks]
    a = openset.write_plan(truth, previews, out_dir=str(tmp_path / "a"), seed=0)
    b = openset.write_plan(dict(reversed(truth.items())), previews[::-1], out_dir=str(tmp_path / "b"), seed=0)
    c = openset.write_plan(truth, previews, out_dir=str(tmp_path / "c"), seed=1)
    assert a == b and len(a["removed"]) == 5 and a["removed"] != c["removed"]
    for name in ("truth-all.csv", "truth-half.csv", "db-half.txt", "removed.txt"):
        assert _read(tmp_path / "a" / name) == _read(tmp_path / "b" / name)

    def sets(name):
        t = read_truth(tmp_path / "a" / name)
        return truth_sets(t["query_id"].tolist(), t["track_id"].tolist())

    assert sets("truth-all.csv") == truth
    half = sets("truth-half.csv")
    assert half == {q: (set() if q in a["removed"] else t) for q, t in truth.items()}
    rows = _read(tmp_path / "a" / "truth-half.csv").splitlines()
    assert all(rows.count(f"{q},") == 1 and not any(r.startswith(f"{q},T") for r in rows) for q in a["removed"])
    gone = set().union(*(truth[q] for q in a["removed"]))
    kept = _read(tmp_path / "a" / "db-half.txt").splitlines()
    assert [os.path.basename(p)[:-4] for p in kept] == sorted(t for t in tracks if t not in gone)
    assert a["db_all"] == len(tracks) and a["db_half"] == len(kept) == len(tracks) - len(gone)
    assert _read(tmp_path / "a" / "removed.txt").split() == a["removed"]


def test_openset_pool_prefixes_each_run_and_the_report_counts_both(tmp_path):
    from msdmatch.evaluation.metrics import evaluate, read_matches, read_truth

    head = "query_id,rank,track_id,confidence,verify_score,dhs_score,pse_distance,thesis_confidence,matched\n"
    (tmp_path / "m-all.csv").write_text(head + "q1,1,T1,0.9,0.2,1,1,0.9,true\nq2,1,T2,0.8,0.3,1,1,0.8,true\n")
    (tmp_path / "m-half.csv").write_text(head + "q1,1,T1,0.9,0.2,1,1,0.9,true\nq2,1,D1,0.6,0.6,1,1,0.4,true\n")
    (tmp_path / "t-all.csv").write_text("query_id,track_id\nq1,T1\nq2,T2\n")
    (tmp_path / "t-half.csv").write_text("query_id,track_id\nq1,T1\nq2,\n")
    for kind in ("m", "t"):
        openset.pool({run: str(tmp_path / f"{kind}-{run}.csv") for run in openset.RUNS},
                     str(tmp_path / f"{kind}-pooled.csv"))
    assert _read(tmp_path / "t-pooled.csv").splitlines() == [
        "query_id,track_id", "all:q1,T1", "all:q2,T2", "half:q1,T1", "half:q2,"]
    met = evaluate(read_matches(str(tmp_path / "m-pooled.csv")), read_truth(tmp_path / "t-pooled.csv"))
    f = openset.figures(met)
    assert (f["queries"], f["no_match"]) == (4, 1)
    assert f["fused"]["false_accept_rate"] == 1.0 and f["fused"]["true_accept_rate"] == 1.0
    assert f["thesis"]["false_accept_rate"] == 0.0 and f["fused"]["auc"] == 1.0
    assert "synth / pooled" in openset.table({"figures": {"synth": {"pooled": f}}})


def test_dev_engine_preview_window_is_drawn_from_the_track_id():
    import dev_engine

    n, w = 60 * dev_engine.SR, int(dev_engine.PREVIEW_SECONDS * dev_engine.SR)
    starts = [dev_engine.preview_offset(f"TR{i:04d}", n, w) for i in range(200)]
    assert starts == [dev_engine.preview_offset(f"TR{i:04d}", n, w) for i in range(200)]
    assert min(starts) >= 0 and max(starts) <= n - w and len(set(starts)) > 150
    assert dev_engine.preview_offset("TR0001", w // 2, w) == 0  # shorter than a window: from the start
    y = np.sin(np.arange(n) * 0.01).astype(np.float32) * np.linspace(0.1, 1.0, n, dtype=np.float32)
    p = dev_engine.preview(y, "TR0007")
    s = dev_engine.preview_offset("TR0007", n, w)
    np.testing.assert_allclose(p, y[s:s + w] / np.abs(y[s:s + w]).max() * 0.9, rtol=1e-6)
    with pytest.raises(ValueError, match="silent"):
        dev_engine.preview(np.zeros(n, np.float32), "TR0007")


def test_dev_engine_moves_the_freepats_patch_dir_into_the_unpacked_tree():
    import dev_engine

    text = "# freepats\ndir /usr/share/midi/freepats\nbank 0\n 0 Tone_000/000_Acoustic_Grand_Piano.pat\n"
    got = dev_engine.freepats_config(text, "/tmp/root")
    assert "dir /tmp/root/usr/share/midi/freepats\n" in got
    assert got.replace("dir /tmp/root/usr/share/midi/freepats", "dir /usr/share/midi/freepats") == text


def test_dev_engine_refuses_a_foreign_folder_and_a_corpus_without_its_files(tmp_path):
    import dev_engine

    corpus = tmp_path / "corpus"
    (corpus / "midi").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="lacks split.csv, truth.csv, recordings.jsonl"):
        dev_engine.build(str(tmp_path / "out"), str(corpus))
    for name in dev_engine.CORPUS_FILES:
        (corpus / name).write_text("")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="did not write"):
        dev_engine.build(str(foreign), str(corpus))
    assert sorted(p.name for p in foreign.iterdir()) == ["mine.txt"]
    assert (foreign / "mine.txt").read_text() == "keep"
    built = tmp_path / "built"
    built.mkdir()
    (built / dev_engine.MARKER).write_text('{"corpus": "/elsewhere"}')
    with pytest.raises(FileExistsError, match="another corpus"):
        dev_engine.build(str(built), str(corpus))
