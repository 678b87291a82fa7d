"""The realistic recording style: deterministic plans, dropped melody, structure changes, jitter."""
from __future__ import annotations

import json

import numpy as np
import pretty_midi
import pytest

from msdmatch.demo import recording as R
from msdmatch.demo import songs as S
from msdmatch.errors import ParameterError


def _song(seed: int = 3):
    return S.generated_song(rng=np.random.default_rng(seed))


def test_realistic_plan_is_deterministic_and_json():
    pm = _song()
    a = R.plan_recording(pm, rng=np.random.default_rng(5), style="realistic")
    b = R.plan_recording(pm, rng=np.random.default_rng(5), style="realistic")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["style"] == "realistic" and a["segments"]
    perf_a, perf_b = R.perform(pm, a), R.perform(pm, b)
    notes = [[(n.pitch, n.start, n.end, n.velocity) for n in i.notes] for i in perf_a.instruments]
    assert notes == [[(n.pitch, n.start, n.end, n.velocity) for n in i.notes] for i in perf_b.instruments]


def test_default_plan_has_no_style_key_and_bad_style_is_refused():
    pm = _song()
    assert "style" not in R.plan_recording(pm, rng=np.random.default_rng(0))
    with pytest.raises(ParameterError):
        R.plan_recording(pm, rng=np.random.default_rng(0), style="live")


def test_melody_is_sometimes_dropped_and_one_melodic_part_stays():
    pm = _song()
    melody = R.melody_part(pm)
    melodic = [i for i, x in enumerate(pm.instruments) if not x.is_drum]
    assert np.mean([pm.instruments[melody].notes[k].pitch for k in range(10)]) > 55
    plans = [R.plan_recording(pm, rng=np.random.default_rng(s), style="realistic") for s in range(60)]
    dropped = [melody in p["drops"] for p in plans]
    assert 5 <= sum(dropped) <= 35  # drawn with probability 0.3
    assert all(set(melodic) - set(p["drops"]) for p in plans)
    p = next(p for p, d in zip(plans, dropped) if d)
    perf = R.perform(pm, {**p, "extra_lead": -1, "octave_double": -1})
    assert len(perf.instruments) <= len(pm.instruments) - len(p["drops"]) + int(p["extra_percussion"])


def test_restructure_against_direct_computation():
    notes = [pretty_midi.Note(80, 60 + i, float(i), i + 0.5) for i in range(10)]
    segments = [[2.0, 5.0], [2.0, 5.0], [7.0, 10.0]]  # intro cut, a section repeated, one omitted
    out = R.restructure(notes, segments, jitter=0.0, rng=np.random.default_rng(0))
    want = []
    cursor = 0.0
    for a, b in segments:
        for n in notes:
            if a <= n.start < b:
                want.append((n.pitch, cursor + n.start - a, cursor + min(n.end, b) - a))
        cursor += b - a
    assert [n.pitch for n in out] == [w[0] for w in want]
    np.testing.assert_allclose([(n.start, n.end) for n in out], [w[1:] for w in want], atol=1e-12)
    jittered = R.restructure(notes, segments, jitter=0.02, rng=np.random.default_rng(0))
    shifts = np.array([n.start for n in jittered]) - np.array([w[1] for w in want])
    assert 0 < np.std(shifts) < 0.05 and all(n.start >= 0 and n.end > n.start for n in jittered)


def test_plan_sections_keep_order_and_cover_the_song():
    pm = _song()
    end = pm.get_end_time()
    for s in range(20):
        segs = R.plan_sections(pm, rng=np.random.default_rng(s))
        assert all(0 <= a < b <= end + 1e-9 for a, b in segs)
        full = R.plan_sections(pm, rng=np.random.default_rng(s))
        assert segs == full


def test_realistic_recording_renders(tmp_path):
    pm = _song()
    mp3, plan = R.make_recording(pm, rng=np.random.default_rng(1), style="realistic")
    path = tmp_path / "x.mp3"
    path.write_bytes(mp3)
    y, sr = R.load_preview(str(path))
    assert abs(y.size / sr - R.PREVIEW_SECONDS) < 1.0 and np.max(np.abs(y)) > 0.1


def test_song_seconds_inverts_the_plan_warp():
    pm = _song()
    plan = {**R.plan_recording(pm, rng=np.random.default_rng(2)), "extra_lead": -1, "extra_percussion": False}
    kw = {k: plan["warp_" + k] for k in ("rate", "depth", "period", "phase")}
    starts = np.array(sorted({n.start for i in pm.instruments for n in i.notes}))
    preview = R.warp_times(starts, **kw) - plan["offset"]
    inside = (preview > 0) & (preview < R.PREVIEW_SECONDS)
    assert inside.sum() > 20
    np.testing.assert_allclose(R.song_seconds(plan, preview[inside]), starts[inside], atol=0.011)
    # every note the rendition plays starts where a song note starts
    perf = R.perform(pm, plan)
    played = np.array(sorted({n.start for i in perf.instruments for n in i.notes if n.start > 0}))
    back = R.song_seconds(plan, played)
    assert np.abs(back[:, None] - starts[None, :]).min(axis=1).max() < 0.011


def test_song_seconds_follows_a_realistic_plans_sections():
    pm = _song()
    starts = np.array(sorted({n.start for i in pm.instruments for n in i.notes}))
    restructured = repeats = 0
    for seed in range(40):
        plan = {**R.plan_recording(pm, rng=np.random.default_rng(seed), style="realistic"),
                "jitter": 0.0, "extra_lead": -1, "extra_percussion": False}
        perf = R.perform(pm, plan)
        played = np.array(sorted({n.start for i in perf.instruments for n in i.notes if n.start > 0}))
        back = R.song_seconds(plan, played)
        # every note the rendition plays starts where a song note starts, across cuts and repeats
        assert np.abs(back[:, None] - starts[None, :]).min(axis=1).max() < 0.011
        unsectioned = R.song_seconds({k: v for k, v in plan.items() if k != "segments"}, played)
        restructured += bool(np.any(np.abs(back - unsectioned) > 1.0))
        repeats += bool(np.any(np.diff(back) < -1.0))
    assert restructured >= 3 and repeats >= 1


def test_time_maps_follow_duplicates_and_realistic_plans(tmp_path):
    from msdmatch.demo.corpus import time_maps

    pm = _song()
    plan = R.plan_recording(pm, rng=np.random.default_rng(4))
    rows = [
        {"track_id": "A", "query_id": "q", "plan": plan, "error": ""},
        {"track_id": "B", "query_id": "q", "duplicate_of": "A", "plan": {"kind": "offset", "offset": 1.5}, "error": ""},
        {"track_id": "C", "query_id": "q", "duplicate_of": "A", "plan": {"kind": "reencode", "kbps": 64}, "error": ""},
        {"track_id": "D", "query_id": "r", "error": "",
         "plan": R.plan_recording(pm, rng=np.random.default_rng(4), style="realistic")},
        {"track_id": "E", "query_id": "", "plan": plan, "error": ""},  # a distractor has no song to align to
    ]
    path = tmp_path / "recordings.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    maps = time_maps([str(path)])
    assert sorted(maps) == ["A", "B", "C", "D"]
    s = np.array([0.0, 10.0])
    np.testing.assert_allclose(maps["A"](s), R.song_seconds(plan, s))
    np.testing.assert_allclose(maps["B"](s), R.song_seconds({**plan, "offset": 1.5}, s))
    np.testing.assert_allclose(maps["C"](s), maps["A"](s))
    np.testing.assert_allclose(maps["D"](s), R.song_seconds(rows[3]["plan"], s))
