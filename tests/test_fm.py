"""The FM engine for training previews: determinism, voice limit, pitch, and its share in a corpus."""
from __future__ import annotations

import numpy as np
import pretty_midi
import pytest

from msdmatch.demo import recording as R
from msdmatch.demo import songs as S
from msdmatch.demo.fm import render_fm, voice_limit
from msdmatch.errors import ParameterError

SR = 22050


def _perf(notes, *, program=0, drums=()):
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(program=program)
    inst.notes = [pretty_midi.Note(100, p, s, e) for p, s, e in notes]
    pm.instruments.append(inst)
    if drums:
        d = pretty_midi.Instrument(program=0, is_drum=True)
        d.notes = [pretty_midi.Note(110, p, s, s + 0.1) for p, s in drums]
        pm.instruments.append(d)
    return pm


def test_render_is_deterministic_and_seed_changes_the_timbre():
    perf = _perf([(60 + i % 12, 0.4 * i, 0.4 * i + 0.35) for i in range(20)], drums=[(36, 0.0), (38, 0.8)])
    a = render_fm(perf, sr=SR, seconds=10.0, seed=3)
    assert a.dtype == np.float32 and a.shape == (10 * SR,)
    assert np.max(np.abs(a)) == pytest.approx(1.0)
    np.testing.assert_array_equal(a, render_fm(perf, sr=SR, seconds=10.0, seed=3))
    assert not np.allclose(a, render_fm(perf, sr=SR, seconds=10.0, seed=4))


def test_silent_window_renders_zeros():
    y = render_fm(pretty_midi.PrettyMIDI(), sr=SR, seconds=2.0, seed=0)
    assert y.shape == (2 * SR,) and not y.any()


@pytest.mark.parametrize("seed", range(6))
def test_a_held_note_sounds_at_its_pitch(seed):
    """Every patch keeps the note's fundamental or a harmonic of it: the strongest
    spectral peak lies on the note's harmonic series (FM with integer and half ratios)."""
    f0 = 440.0 * 2 ** ((57 - 69) / 12)  # A3, 220 Hz
    y = render_fm(_perf([(57, 0.0, 1.9)]), sr=SR, seconds=2.0, seed=seed)
    seg = y[int(0.2 * SR):int(1.2 * SR)]
    spec = np.abs(np.fft.rfft(seg * np.hanning(seg.size)))
    freqs = np.fft.rfftfreq(seg.size, 1 / SR)
    peak = freqs[np.argmax(spec)]
    harmonic = peak / (f0 / 2)  # half ratios put energy at multiples of f0 / 2
    assert abs(harmonic - round(harmonic)) < 0.05, (peak, harmonic)


def test_voice_limit_against_direct_computation():
    rng = np.random.default_rng(0)
    starts = np.sort(rng.uniform(0, 10, 60))
    notes = np.stack([starts, starts + rng.uniform(0.1, 3.0, 60)], axis=1)
    for voices in (1, 3, 9):
        ends = voice_limit(notes, voices)
        assert np.all(ends <= notes[:, 1]) and np.all(ends >= notes[:, 0])
        for t in notes[:, 0]:  # at each onset, at most `voices` notes sound
            assert np.sum((notes[:, 0] <= t) & (ends > t)) <= voices
        cut = np.flatnonzero(ends < notes[:, 1])
        for j in cut:  # a note is only cut at another note's onset
            assert ends[j] in notes[:, 0]
    np.testing.assert_array_equal(voice_limit(notes, 1000), notes[:, 1])


def test_fm_share_draws_the_engine_and_leaves_the_rest_of_the_plan(tmp_path):
    pm = S.generated_song(rng=np.random.default_rng(3))
    mp3_plain, plain = R.make_recording(pm, rng=np.random.default_rng(1))
    mp3_zero, zero = R.make_recording(pm, rng=np.random.default_rng(1), fm_share=0.0)
    assert mp3_plain == mp3_zero and plain == zero and "engine" not in plain
    mp3_fm, fm = R.make_recording(pm, rng=np.random.default_rng(1), fm_share=1.0)
    assert fm == {**plain, "engine": "fm"} and mp3_fm != mp3_plain
    path = tmp_path / "fm.mp3"
    path.write_bytes(mp3_fm)
    y, sr = R.load_preview(str(path))
    assert abs(y.size / sr - R.PREVIEW_SECONDS) < 1.0 and np.max(np.abs(y)) > 0.1
    engines = ["engine" in R.make_recording(pm, rng=np.random.default_rng(s), fm_share=0.5)[1]
               for s in range(16)]
    assert 2 <= sum(engines) <= 14


def test_bad_fm_share_is_refused(tmp_path):
    from msdmatch.demo import build_corpus

    with pytest.raises(ParameterError, match="fm_share"):
        build_corpus(tmp_path / "c", songs=1, distractors=0, fm_share=1.5)
