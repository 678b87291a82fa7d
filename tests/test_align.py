"""Alignment: the compact retiming, the aligner against a known tempo map, `align` and `align-matches`."""
from __future__ import annotations

import csv
import hashlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_midi, write_mp3


def msdmatch(*args, **kw):
    return subprocess.run([sys.executable, "-m", "msdmatch.cli", *args], capture_output=True,
                          text=True, timeout=300, **kw)


def _rich_midi(path: Path, *, seconds: float = 24.0) -> None:
    """A type-1 file with two instruments, tempo and meter changes, CCs, pitch bends, lyrics and markers."""
    import mido

    ppq = 480
    mid = mido.MidiFile(type=1, ticks_per_beat=ppq)
    meta = mido.MidiTrack([
        mido.MetaMessage("track_name", name="conductor", time=0),
        mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0),
        mido.MetaMessage("set_tempo", tempo=500000, time=0),
        mido.MetaMessage("marker", text="verse", time=0),
        mido.MetaMessage("set_tempo", tempo=600000, time=8 * ppq),
        mido.MetaMessage("time_signature", numerator=3, denominator=4, time=4 * ppq),
        mido.MetaMessage("marker", text="chorus", time=4 * ppq),
    ])
    mid.tracks.append(meta)
    n_beats = int(seconds / 0.55)
    for ch, (program, base) in enumerate(((0, 60), (33, 40))):
        tr = mido.MidiTrack([mido.MetaMessage("track_name", name=f"part{ch}", time=0),
                             mido.Message("program_change", channel=ch, program=program, time=0),
                             mido.Message("control_change", channel=ch, control=7, value=100, time=0)])
        for b in range(n_beats):
            if ch == 0 and b % 4 == 0:
                tr.append(mido.MetaMessage("lyrics", text=f"la{b}", time=0))
            if ch == 1 and b % 8 == 3:
                tr.append(mido.Message("pitchwheel", channel=ch, pitch=512, time=0))
            if b % 6 == 5:
                tr.append(mido.Message("control_change", channel=ch, control=64, value=127, time=0))
            tr.append(mido.Message("note_on", channel=ch, note=base + (b * 5) % 12, velocity=90, time=0))
            tr.append(mido.Message("note_off", channel=ch, note=base + (b * 5) % 12, velocity=0, time=ppq * 3 // 4))
            tr.append(mido.Message("note_on", channel=ch, note=base + 7, velocity=0, time=ppq // 4))  # stray off
        mid.tracks.append(tr)
    mid.save(str(path))


def _kinds(mid) -> dict:
    out: dict = {}
    for tr in mid.tracks:
        for m in tr:
            key = m.type if m.type != "note_on" else ("note_on" if m.velocity else "note_off")
            out[key] = out.get(key, 0) + 1
    return out


def _warp(t):
    return 1.1 * t + 0.8 * np.sin(t / 4.0)


def test_retime_keeps_every_event_and_writes_one_tempo_change_per_beat_at_most(tmp_path):
    import mido
    import pretty_midi

    from msdmatch.kernels.retime import beat_ticks, map_times, read_label, retime

    _rich_midi(tmp_path / "rich.mid")
    mid = mido.MidiFile(str(tmp_path / "rich.mid"))
    pm = pretty_midi.PrettyMIDI(str(tmp_path / "rich.mid"))
    src = np.linspace(0, pm.get_end_time() + 1, 400)
    dst = _warp(src)
    out, info = retime(mid, src, dst, beats=beat_ticks(pm), tolerance=0.005)
    out.save(str(tmp_path / "out.mid"))
    back = mido.MidiFile(str(tmp_path / "out.mid"))
    a, b = _kinds(mid), _kinds(back)
    for kind in ("note_on", "note_off", "program_change", "control_change", "pitchwheel", "lyrics", "marker",
                 "track_name", "time_signature"):
        assert a[kind] == b[kind], kind
    assert len(back.tracks) == len(mid.tracks)
    # notes land on the warped times within the tolerance (plus tempo rounding)
    pb = pretty_midi.PrettyMIDI(str(tmp_path / "out.mid"))
    assert [i.program for i in pb.instruments] == [i.program for i in pm.instruments]
    for ia, ib in zip(pm.instruments, pb.instruments):
        want = map_times(np.array([n.start for n in ia.notes]), src, dst)
        got = np.array([n.start for n in ib.notes])
        assert np.max(np.abs(got - want)) < 0.006
    lyr = [(t, m.text) for t, m in _abs(back) if m.type == "lyrics"]
    lyr0 = [(t, m.text) for t, m in _abs(mid) if m.type == "lyrics"]
    assert [x[1] for x in lyr] == [x[1] for x in lyr0] and [x[0] for x in lyr] == [x[0] for x in lyr0]
    # tempo changes: at most one per beat of the original, counted from the file itself
    beats = beat_ticks(pm)
    tempo_ticks = np.array([t for t, m in _abs(back) if m.type == "set_tempo" and t > 0])
    per_beat = np.bincount(np.searchsorted(beats, tempo_ticks - info["tick_offset"], side="right"))
    assert per_beat.max() <= 1 and info["max_tempo_changes_per_beat"] <= 1
    assert info["tempo_events"] < len(beats)
    assert read_label(back)["tick_offset"] == 0


def _abs(mid):
    for tr in mid.tracks:
        t = 0
        for m in tr:
            t += m.time
            yield t, m


def test_retime_of_a_steady_map_needs_one_tempo(tmp_path):
    import mido
    import pretty_midi

    from msdmatch.kernels.retime import beat_ticks, retime

    _rich_midi(tmp_path / "rich.mid")
    mid = mido.MidiFile(str(tmp_path / "rich.mid"))
    pm = pretty_midi.PrettyMIDI(str(tmp_path / "rich.mid"))
    src = np.linspace(0, 40, 50)
    out, info = retime(mid, src, 0.9 * src + 1.5, beats=beat_ticks(pm))
    # the original has two tempos; stretched uniformly and delayed by 1.5 s it needs a lead-in and the two
    assert info["tempo_events"] == 3, info
    buf = io.BytesIO()
    out.save(file=buf)
    buf.seek(0)
    pb = pretty_midi.PrettyMIDI(buf)
    got = np.array([n.start for i in pb.instruments for n in i.notes])
    want = 0.9 * np.array([n.start for i in pm.instruments for n in i.notes]) + 1.5
    assert np.max(np.abs(got - want)) < 0.002


@pytest.mark.filterwarnings("ignore:Tempo, Key or Time signature change events")
def test_retime_reads_the_tempo_map_as_pretty_midi_does(tmp_path):
    """Two tempos on one tick: the last wins; tempo events off the first track are not pretty_midi's."""
    import mido
    import pretty_midi

    from msdmatch.kernels.retime import beat_ticks, retime

    mid = mido.MidiFile(type=1, ticks_per_beat=96)
    mid.tracks.append(mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500000, time=0),
                                      mido.MetaMessage("set_tempo", tempo=428571, time=0)]))
    tr = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=900000, time=0)])
    for k in range(40):
        tr.append(mido.Message("note_on", note=60 + k % 5, velocity=80, time=0 if k == 0 else 48))
        tr.append(mido.Message("note_off", note=60 + k % 5, velocity=0, time=48))
    mid.tracks.append(tr)
    mid.save(str(tmp_path / "t.mid"))
    pm = pretty_midi.PrettyMIDI(str(tmp_path / "t.mid"))
    src = np.linspace(0, 30, 10)
    out, _ = retime(mid, src, src, beats=beat_ticks(pm), span=(5.0, 12.0))
    buf = io.BytesIO()
    out.save(file=buf)
    pb = pretty_midi.PrettyMIDI(io.BytesIO(buf.getvalue()))
    want = np.array([n.start for n in pm.instruments[0].notes if 5.0 <= n.start <= 12.0])
    got = np.array([n.start for n in pb.instruments[0].notes])
    assert len(got) == len(want) > 0 and np.max(np.abs(got - want)) < 0.002


def test_retime_of_an_excerpt_drops_notes_outside_and_records_the_span(tmp_path):
    import mido
    import pretty_midi

    from msdmatch.kernels.retime import beat_ticks, read_label, retime

    _rich_midi(tmp_path / "rich.mid")
    mid = mido.MidiFile(str(tmp_path / "rich.mid"))
    pm = pretty_midi.PrettyMIDI(str(tmp_path / "rich.mid"))
    src = np.linspace(6.0, 16.0, 100)
    dst = src - 6.0
    out, info = retime(mid, src, dst, beats=beat_ticks(pm), span=(6.0, 16.0))
    buf = io.BytesIO()
    out.save(file=buf)
    back = mido.MidiFile(file=io.BytesIO(buf.getvalue()))
    pb = pretty_midi.PrettyMIDI(io.BytesIO(buf.getvalue()))
    starts = np.array([n.start for i in pm.instruments for n in i.notes])
    inside = np.sort(starts[(starts >= 6.0 - 1e-6) & (starts <= 16.0 + 1e-6)]) - 6.0
    got = np.sort([n.start for i in pb.instruments for n in i.notes])
    assert len(got) == len(inside) == info["notes_kept"] and info["notes_dropped"] == len(starts) - len(inside)
    assert np.max(np.abs(got - inside)) < 0.003
    label = read_label(back)
    assert label["midi_start"] == pytest.approx(6.0, abs=0.01) and label["midi_end"] <= 16.5
    # programs and controllers before the span are kept at the start; lyrics outside are dropped
    kinds = _kinds(back)
    assert kinds["program_change"] == 2 and [i.program for i in pb.instruments] == [0, 33]
    assert kinds["lyrics"] < _kinds(mid)["lyrics"]
    assert all(t == 0 for t, m in _abs(back) if m.type == "program_change")


def test_align_retimes_a_stretched_rendition_with_a_compact_tempo_map(tmp_path):
    import mido
    import pretty_midi

    from msdmatch.io.synth import render
    from msdmatch.stages.align.pair import align, retime_to

    pm = make_midi(11, seconds=24.0)
    perf = make_midi(11, seconds=24.0)
    t = np.linspace(0, perf.get_end_time() + 1, 200)
    perf.adjust_times(t, _warp(t))  # 10 % slower with a drift, and another soundfont
    y = render(perf, sr=22050, soundfont="FluidR3_GM.sf2")
    a = align(pm, y, 22050)
    assert not a.excerpt and a.confidence > 0.5
    buf = io.BytesIO()
    pm.write(buf)
    out, info = retime_to(mido.MidiFile(file=io.BytesIO(buf.getvalue())), pm, a)
    buf2 = io.BytesIO()
    out.save(file=buf2)
    pb = pretty_midi.PrettyMIDI(io.BytesIO(buf2.getvalue()))
    got = np.array([n.start for i in pb.instruments for n in i.notes])
    want = _warp(np.array([n.start for i in pm.instruments for n in i.notes]))
    err = np.abs(got - want)
    assert err.mean() < 0.03 and np.percentile(err, 95) < 0.08, (err.mean(), np.percentile(err, 95))
    assert info["max_tempo_changes_per_beat"] <= 1


def test_align_finds_an_excerpt_inside_the_midi():
    from msdmatch.io.synth import render
    from msdmatch.stages.align.pair import align

    pm = make_midi(5, seconds=60.0, drums=False)
    perf = make_midi(5, seconds=60.0, drums=False)
    t = np.linspace(0, perf.get_end_time() + 1, 300)
    perf.adjust_times(t, _warp(t))
    y = render(perf, sr=22050, soundfont="FluidR3_GM.sf2")
    off = 20.0
    a = align(pm, y[int(off * 22050): int((off + 25) * 22050)], 22050)
    assert a.excerpt
    starts = np.array([n.start for i in pm.instruments for n in i.notes])
    tr = _warp(starts) - off
    ok = (tr > 0.5) & (tr < 24.5)
    est = np.interp(starts[ok], a.midi_times, a.audio_times)
    assert np.mean(np.abs(est - tr[ok])) < 0.05
    # the span is where the excerpt sits in the MIDI
    lo = np.interp(off, _warp(t), t)
    assert abs(a.span[0] - lo) < 0.5


# ----------------------------------------------------------------------------- the `align` command


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from msdmatch.io.synth import render

    root = tmp_path_factory.mktemp("pair")
    pm = make_midi(3, seconds=14.0)
    pm.write(str(root / "song.mid"))
    y = render(pm, sr=22050, soundfont="FluidR3_GM.sf2")
    write_mp3(root / "rec.mp3", y * 0.8, 22050)
    write_mp3(root / "short.mp3", y[: int(1.5 * 22050)] * 0.8, 22050)
    return root


def _one_line(r) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_align_cli_writes_a_labelled_file_and_replaces_only_its_own(pair, tmp_path):
    import mido

    from msdmatch.kernels.retime import read_label

    out = tmp_path / "aligned.mid"
    r = msdmatch("align", str(pair / "song.mid"), str(pair / "rec.mp3"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "tempo events" in r.stdout
    assert read_label(mido.MidiFile(str(out)))["confidence"] > 0.5
    _one_line(msdmatch("align", str(pair / "song.mid"), str(pair / "rec.mp3"), "--out", str(out)))
    r = msdmatch("align", str(pair / "song.mid"), str(pair / "rec.mp3"), "--out", str(out), "--overwrite")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("case", ["folder", "missing-parent", "foreign-file", "foreign-midi", "extension"])
def test_align_cli_refuses_a_bad_out_before_computing(pair, tmp_path, case):
    foreign = tmp_path / "mine.mid"
    shutil.copy(pair / "song.mid", foreign)  # a user's MIDI file, not written by msdmatch
    (tmp_path / "notes.txt").write_text("my thesis")
    out = {"folder": tmp_path, "missing-parent": tmp_path / "no" / "such" / "a.mid",
           "foreign-file": tmp_path / "notes.txt", "foreign-midi": foreign, "extension": tmp_path / "a.wav"}[case]
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir() if p.is_file()}
    # the audio does not exist: a refusal after computing would name it, not --out
    r = msdmatch("align", str(pair / "song.mid"), str(tmp_path / "nothing.mp3"), "--out", str(out), "--overwrite")
    _one_line(r)
    assert "--out" in r.stderr
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir() if p.is_file()}
    assert before == after


def test_align_cli_refuses_a_pair_that_covers_too_little(pair, tmp_path):
    out = tmp_path / "a.mid"
    _one_line(msdmatch("align", str(pair / "song.mid"), str(pair / "short.mp3"), "--out", str(out)))
    assert not out.exists() and not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- align-matches


@pytest.fixture(scope="module")
def batch(tiny_corpus, tmp_path_factory, cluster_client):
    """Stores of 4 pairs whose sources are then spoiled: one MIDI unreadable, one recording silent."""
    from msdmatch.stages import featurize

    root = tmp_path_factory.mktemp("batch")
    for d in ("midi", "audio"):
        (root / d).mkdir()
    for k in range(4):
        shutil.copy(tiny_corpus / "midi" / f"song{k}.mid", root / "midi")
        shutil.copy(tiny_corpus / "audio" / f"TRTINY{k:012d}.mp3", root / "audio")
    featurize.run(str(root / "midi"), str(root / "q.zarr"), client=cluster_client, kind="midi", progress=False)
    featurize.run(str(root / "audio"), str(root / "d.zarr"), client=cluster_client, kind="audio", progress=False)
    (root / "midi" / "song2.mid").write_bytes(b"MThd garbage")
    write_mp3(root / "audio" / f"TRTINY{3:012d}.mp3", np.zeros(22050 * 12, np.float32), 22050)
    rows = [(f"song{k}", 1, f"TRTINY{k:012d}", conf) for k, conf in enumerate((0.9, 0.8, 0.95, 0.7))]
    rows += [("song4", 1, "TRTINY000000000004", 0.2), ("song0", 2, "TRTINY000000000001", 0.1)]
    with open(root / "matches.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["query_id", "rank", "track_id", "confidence", "verify_score", "dhs_score", "pse_distance"])
        for q, r, t, c in rows:
            w.writerow([q, r, t, c, 0.1, 0.1, 0.1])
    return root


def test_align_matches_writes_resumes_and_records_failures(batch, tmp_path, cluster_client):
    import mido

    from msdmatch.kernels.retime import read_label
    from msdmatch.stages.align import batch as align_batch

    out = tmp_path / "aligned"
    s = align_batch.run(str(batch / "matches.csv"), queries=str(batch / "q.zarr"), db=str(batch / "d.zarr"),
                        out=str(out), client=cluster_client, progress=False)
    assert (s["pairs"], s["written"], s["skipped"], s["failed"]) == (4, 2, 0, 2), s
    assert sorted(p.name for p in out.glob("*.mid")) == ["song0.mid", "song1.mid"]
    assert read_label(mido.MidiFile(str(out / "song0.mid")))["audio"] == "TRTINY000000000000.mp3"
    fails = {r["query_id"]: r["reason"] for r in csv.DictReader(open(out / "failures.csv"))}
    assert set(fails) == {"song2", "song3"}
    assert "MIDI" in fails["song2"] and "silent" in fails["song3"]
    assert not list(out.glob("*.tmp"))
    # an interrupted run left one file out: the re-run writes it and skips the others
    (out / "song1.mid").unlink()
    s = align_batch.run(str(batch / "matches.csv"), queries=str(batch / "q.zarr"), db=str(batch / "d.zarr"),
                        out=str(out), client=cluster_client, progress=False)
    assert (s["written"], s["skipped"], s["failed"]) == (1, 1, 2), s
    # --min-confidence overrides: only the 0.95 and 0.9 rows
    s = align_batch.run(str(batch / "matches.csv"), queries=str(batch / "q.zarr"), db=str(batch / "d.zarr"),
                        out=str(out), min_confidence=0.85, client=cluster_client, progress=False)
    assert s["pairs"] == 2


def test_select_top_uses_matched_when_present():
    from msdmatch.stages.align.batch import select_top

    t = {"query_id": np.array(["a", "b", "c", "a"]), "rank": np.array([1, 1, 1, 2]),
         "track_id": np.array(["x", "y", "z", "w"]), "confidence": np.array([0.4, 0.9, 0.6, 0.3])}
    assert [r[0] for r in select_top(t, matched=None, min_confidence=None)] == ["b", "c"]
    assert [r[0] for r in select_top(t, matched=np.array([True, False, True, False]),
                                     min_confidence=None)] == ["a", "c"]
    assert [r[0] for r in select_top(t, matched=np.array(["True", "False", "False", "x"]),
                                     min_confidence=0.85)] == ["b"]


@pytest.mark.parametrize("case", ["missing-matches", "foreign-out", "bad-confidence", "swapped"])
def test_align_matches_cli_mistakes_are_one_line(batch, tmp_path, case):
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "keep.txt").write_text("x")
    args = {"missing-matches": [str(tmp_path / "none.csv"), "--queries", str(batch / "q.zarr"),
                                "--db", str(batch / "d.zarr"), "--out", str(tmp_path / "o")],
            "foreign-out": [str(batch / "matches.csv"), "--queries", str(batch / "q.zarr"),
                            "--db", str(batch / "d.zarr"), "--out", str(tmp_path / "theirs")],
            "bad-confidence": [str(batch / "matches.csv"), "--queries", str(batch / "q.zarr"),
                               "--db", str(batch / "d.zarr"), "--out", str(tmp_path / "o"), "--min-confidence", "2"],
            "swapped": [str(batch / "matches.csv"), "--queries", str(batch / "d.zarr"),
                        "--db", str(batch / "q.zarr"), "--out", str(tmp_path / "o")]}[case]
    _one_line(msdmatch("align-matches", *args))
    assert (tmp_path / "theirs" / "keep.txt").read_text() == "x"
