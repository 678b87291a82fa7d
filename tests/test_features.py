"""Pure feature functions: shapes, normalisation, refusals."""
import numpy as np
import pretty_midi
import pytest
from conftest import make_midi

from msdmatch.errors import InputError
from msdmatch.kernels import features
from msdmatch.params import DEFAULT_PARAMS, FeatureParams
from msdmatch.stages.featurize import midi_cqt


def test_audio_cqt_shape_and_norm(rng):
    sr = 22050
    t = np.arange(sr * 3) / sr
    y = 0.5 * np.sin(2 * np.pi * 220.0 * t) + 0.01 * rng.standard_normal(t.size)
    X = features.audio_cqt(y, sr)
    assert X.dtype == np.float32
    assert X.shape == (1 + y.size // DEFAULT_PARAMS.hop_length, 48)
    norms = np.linalg.norm(X, axis=1)
    np.testing.assert_allclose(norms[norms > 0], 1.0, rtol=1e-5)
    # A4 = MIDI 57 is bin 57 - 36 = 21: the strongest bin in the middle frames.
    assert int(np.argmax(X[X.shape[0] // 2])) == 21


def test_audio_cqt_resamples(rng):
    y = rng.standard_normal(44100 * 2).astype(np.float32) * 0.1
    X = features.audio_cqt(y, 44100)
    assert X.shape == (1 + 22050 * 2 // 1024, 48)


def test_reused_cqt_filters_are_bit_identical(rng, monkeypatch):
    from librosa.core import constantq

    y = (0.1 * rng.standard_normal(22050 * 4)).astype(np.float32)
    first, again = features.audio_cqt(y, 22050), features.audio_cqt(y, 22050)
    memo = getattr(constantq, "__vqt_filter_fft")
    assert getattr(memo, "_msdmatch_memo", False), "the filter bank is not reused"
    monkeypatch.setattr(constantq, "__vqt_filter_fft", memo.__wrapped__)
    monkeypatch.setattr(features, "_reuse_cqt_filters", lambda: None)
    fresh = features.audio_cqt(y, 22050)
    np.testing.assert_array_equal(first, fresh)
    np.testing.assert_array_equal(again, fresh)


@pytest.mark.parametrize(
    "y, match",
    [
        (np.zeros(0, np.float32), "empty"),
        (np.zeros(22050, np.float32), "silent"),
        (np.full(22050, np.nan, np.float32), "NaN"),
        (np.zeros((2, 100), np.float32), "mono"),
    ],
)
def test_audio_cqt_refuses(y, match):
    with pytest.raises(InputError, match=match):
        features.audio_cqt(y, 22050)


def test_audio_cqt_too_long(rng):
    p = FeatureParams(max_frames=50)
    with pytest.raises(InputError, match="too long"):
        features.audio_cqt(rng.standard_normal(22050 * 5).astype(np.float32), 22050, params=p)


def test_pianoroll_folds_octaves_and_skips_drums():
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(0)
    inst.notes += [pretty_midi.Note(100, 24, 0.0, 1.0),   # C1: below range, folds to row 0
                   pretty_midi.Note(100, 96, 1.0, 2.0),   # C7: above range, folds to row 36
                   pretty_midi.Note(100, 48, 11.0, 12.0)]  # the notes span the 10 s minimum
    drum = pretty_midi.Instrument(0, is_drum=True)
    drum.notes.append(pretty_midi.Note(100, 60, 0.0, 2.0))  # would be row 24 if counted
    pm.instruments += [inst, drum]
    X = features.pianoroll(pm)
    assert X.shape[1] == 48
    first = X[5]
    assert np.argmax(first) == 0 and first[24] == 0
    second = X[int(1.5 * DEFAULT_PARAMS.frame_rate)]
    assert np.argmax(second) == 36
    np.testing.assert_allclose(np.linalg.norm(second), 1.0, rtol=1e-5)


def test_channel_gain_steps_with_volume_and_expression():
    cc = pretty_midi.ControlChange
    fr = DEFAULT_PARAMS.frame_rate
    np.testing.assert_array_equal(features.channel_gain([], 10, fr), np.ones(10, np.float32))
    g = features.channel_gain([cc(11, 64, 2.0), cc(7, 50, 1.0), cc(10, 0, 0.0)], 100, fr)
    t = np.arange(100) / fr
    want = np.where(t >= 1.0, 0.25, 1.0) * np.where(t >= 2.0, (64 / 127) ** 2, 1.0)
    np.testing.assert_allclose(g, want, rtol=1e-6)


def test_pianoroll_weighs_parts_by_channel_volume():
    """A part at volume 50 sits 12 dB below one at the default; setting the default changes nothing."""
    def song(volume):
        pm = pretty_midi.PrettyMIDI()
        for pitch, cc in ((60, None), (64, volume)):
            inst = pretty_midi.Instrument(0)
            inst.notes.append(pretty_midi.Note(100, pitch, 0.0, 12.0))
            if cc is not None:
                inst.control_changes.append(pretty_midi.ControlChange(7, cc, 0.0))
            pm.instruments.append(inst)
        return pm

    plain = features.pianoroll(song(None))
    np.testing.assert_array_equal(features.pianoroll(song(100)), plain)
    X = features.pianoroll(song(50))
    row = X[int(5 * DEFAULT_PARAMS.frame_rate)]
    loud = 20 * np.log10(100 / 127) + DEFAULT_PARAMS.top_db
    lo = DEFAULT_PARAMS.fmin_midi
    np.testing.assert_allclose(row[64 - lo] / row[60 - lo], (loud + 20 * np.log10(0.25)) / loud, rtol=1e-5)
    assert plain[int(5 * DEFAULT_PARAMS.frame_rate), 64 - lo] == plain[int(5 * DEFAULT_PARAMS.frame_rate), 60 - lo]


def test_midi_refusals():
    pm = pretty_midi.PrettyMIDI()
    with pytest.raises(InputError, match="no notes"):
        features.pianoroll(pm)
    drum = pretty_midi.Instrument(0, is_drum=True)
    drum.notes.append(pretty_midi.Note(100, 36, 0.0, 1.0))
    pm.instruments.append(drum)
    with pytest.raises(InputError, match="only drum"):
        features.pianoroll(pm)
    long = make_midi(1, seconds=30.0)
    with pytest.raises(InputError, match="too long"):
        midi_cqt(long, params=FeatureParams(max_frames=100))


def test_midi_cqt_real_fluidsynth_matches_pianoroll_pitch():
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(0)  # acoustic grand piano, rendered by fluidsynth
    inst.notes.append(pretty_midi.Note(110, 69, 0.0, 12.0))  # A4 -> bin 33, over the 10 s minimum
    pm.instruments.append(inst)
    X = midi_cqt(pm)
    assert X.shape[1] == 48 and X.shape[0] >= int(2 * DEFAULT_PARAMS.frame_rate)
    assert int(np.argmax(X[10])) == 33
    assert int(np.argmax(features.pianoroll(pm)[10])) == 33


def test_beat_sync_shortens(rng):
    from msdmatch.io.synth import render

    y = render(make_midi(3, seconds=10.0), sr=22050)
    full = features.audio_cqt(y, 22050)
    sync = features.audio_cqt(y, 22050, params=FeatureParams(beat_sync=True))
    assert sync.shape[1] == 48 and 4 < sync.shape[0] < full.shape[0] // 3


def test_standardize_bins_removes_a_static_eq(rng):
    X = np.abs(rng.standard_normal((200, 48))).astype(np.float32)
    tilt = np.linspace(-3, 3, 48, dtype=np.float32)  # a fixed per-bin gain, as in dB
    a, b = features.standardize_bins(X), features.standardize_bins(X * 2 + tilt)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert not features.standardize_bins(np.ones((5, 48))).any()  # constant bins map to 0


@pytest.fixture(scope="module")
def rendered_song():
    from msdmatch.io.synth import render

    return render(make_midi(5, seconds=20.0), sr=22050)


def _played_sharp(y: np.ndarray, cents: float, sr: int = 22050) -> np.ndarray:
    """``y`` played 2^(cents/1200) times faster, as a fast tape or disc transfer is."""
    import librosa

    return librosa.resample(y, orig_sr=sr * 2 ** (cents / 1200), target_sr=sr, res_type="soxr_hq")


@pytest.mark.parametrize("cents", [-40, -15, 0, 25, 45])
def test_estimate_tuning_finds_a_transfer_speed_offset(rendered_song, cents):
    got = features.estimate_tuning(_played_sharp(rendered_song, cents), 22050, step=0.01)
    assert got == pytest.approx(cents / 100, abs=0.04)
    assert features.estimate_tuning(_played_sharp(rendered_song, cents), 22050) in np.round(
        np.arange(-5, 6) * 0.1, 10)


def test_estimate_tuning_of_short_odd_or_broken_audio_is_zero(rng):
    assert features.estimate_tuning(rng.standard_normal(1000), 22050) == 0.0
    assert features.estimate_tuning(np.full(22050, np.nan), 22050) == 0.0
    for sr in (3000, 1_000_000):  # analysis band (80 Hz - 2 kHz) clipped to what the rate can hold
        assert -0.5 <= features.estimate_tuning(rng.standard_normal(20000), sr) <= 0.5


def test_audio_cqt_centres_its_bins_on_a_detuned_recording(rendered_song):
    """A recording 40 cents sharp: with its tuning estimated, its pitch profile is the in-tune one."""
    sharp = _played_sharp(rendered_song, 40)
    profile = {name: features.audio_cqt(y, 22050, tuning=t).mean(axis=0)
               for name, y, t in [("in tune", rendered_song, 0.0), ("sharp, estimated", sharp, None),
                                  ("sharp, uncorrected", sharp, 0.0)]}
    ref = profile["in tune"]
    corr = {k: float(np.corrcoef(ref, v)[0, 1]) for k, v in profile.items() if k != "in tune"}
    assert corr["sharp, estimated"] > 0.99
    assert corr["sharp, estimated"] > corr["sharp, uncorrected"] + 0.02
