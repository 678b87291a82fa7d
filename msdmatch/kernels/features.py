"""Feature extraction: pure functions, numpy in and numpy out.

Conventions
-----------
- Every feature matrix has shape ``(n_frames, params.n_bins)`` (time first),
  dtype float32, one frame per ``params.hop_length`` samples at
  ``params.sr`` (46.4 ms at the defaults).
- Audio and synthesized MIDI: CQT magnitude from MIDI note
  ``params.fmin_midi``, in dB relative to the clip's maximum with a
  ``params.top_db`` floor, each frame L2-normalised.  For audio the bins
  are centred on the recording's own tuning (:func:`estimate_tuning`, in
  steps of 10 cents); synthesized MIDI is at A4 = 440 Hz.
- Piano roll: pretty_midi piano roll at the same frame rate, drums excluded,
  each part's velocities scaled by its channel volume and expression (as a
  synthesizer plays them, :func:`channel_gain`), pitches folded by octaves
  into the 48 rows, log-compressed velocity, each frame L2-normalised
  (silent frames stay zero).

Nothing here reads files; decoding lives in :mod:`msdmatch.io.decode`.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from msdmatch.errors import InputError
from msdmatch.params import DEFAULT_PARAMS, FeatureParams

#: Peak amplitude below which audio counts as silent (about -100 dBFS).
SILENCE_PEAK = 1e-5


def _check_length(n_frames: int, params: FeatureParams) -> None:
    if n_frames > params.max_frames:
        raise InputError(
            f"too long: {n_frames} frames > max_frames={params.max_frames} "
            f"({params.max_frames * params.frame_seconds:.0f} s)"
        )


def _normalise_frames(S_db: np.ndarray, floor_db: float) -> np.ndarray:
    """Shift dB to be non-negative, transpose to time-first, L2-normalise frames."""
    return unit_frames((S_db - floor_db).T)


def unit_frames(X: np.ndarray) -> np.ndarray:
    """L2-normalise each frame (all-zero frames stay zero).

    Parameters
    ----------
    X : np.ndarray [shape=(n_frames, n_dims)]

    Returns
    -------
    Y : np.ndarray [shape=(n_frames, n_dims), dtype=float32]
    """
    Y = np.array(X, dtype=np.float32)
    norm = np.linalg.norm(Y, axis=1, keepdims=True)
    np.divide(Y, norm, out=Y, where=norm > 0)
    return Y


def standardize_bins(X: np.ndarray, *, eps: float = 1e-3, normalize: bool = True) -> np.ndarray:
    """Standardise each bin over the sequence, then L2-normalise the frames.

    A recording's equalisation, a high-pass, or an instrument brighter than
    the one synthesised adds a roughly constant offset per bin to a log
    spectrogram; taking out each bin's mean (and scale) over the sequence
    removes it, so the verify DTW compares what changes over time.

    Parameters
    ----------
    X : np.ndarray [shape=(n_frames, n_bins)]
        Features as stored (any float dtype).
    eps : float > 0
        Added to each bin's standard deviation (bins that never change map to 0).
    normalize : bool
        L2-normalise the frames (``False``: return the standardised bins, e.g.
        to normalise a subset of them with :func:`unit_frames`).

    Returns
    -------
    Z : np.ndarray [shape=(n_frames, n_bins), dtype=float32]
        Unit-norm frames (all-zero frames stay zero), unless ``normalize`` is false.
    """
    X = np.asarray(X, dtype=np.float32)
    Z = (X - X.mean(axis=0)) / (X.std(axis=0) + np.float32(eps))
    return unit_frames(Z) if normalize else Z


def _hashable(v):
    return (v.dtype.str, v.shape, v.tobytes()) if isinstance(v, np.ndarray) else v


@functools.cache
def _reuse_cqt_filters() -> None:
    """Make librosa build each CQT filter bank once per process, not once per call.

    ``librosa.cqt`` rebuilds its per-octave filter FFTs (wavelets, windows,
    sparsification) on every call, which is about a third of the time of a
    30 s preview; they depend only on the feature parameters.  librosa's own
    cache for them is on disk and no faster, so this keeps them in memory,
    keyed by every argument, and hands out copies (librosa rescales them in
    place).  Results are bit-identical; if librosa's internals change, it does
    nothing and the CQT is just slower.
    """
    from librosa.core import constantq

    build = getattr(constantq, "__vqt_filter_fft", None)
    if build is None or getattr(build, "_msdmatch_memo", False):
        return
    memo: dict = {}

    def cached(*args, **kwargs):
        key = (tuple(_hashable(a) for a in args), tuple(sorted((k, _hashable(v)) for k, v in kwargs.items())))
        entry = memo.get(key)
        if entry is None:  # safe with several worker threads: a race only builds twice
            entry = build(*args, **kwargs)
            if len(memo) >= 256:  # a few entries per tuning value
                memo.clear()
            memo[key] = entry
        basis, n_fft, lengths = entry
        return basis.copy(), n_fft, lengths

    marked: Any = cached
    marked._msdmatch_memo = True
    marked.__wrapped__ = build
    setattr(constantq, "__vqt_filter_fft", cached)


def estimate_tuning(y: np.ndarray, sr: int, *, n_fft: int = 4096, max_frames: int = 100,
                    step: float = 0.1) -> float:
    """How far a recording's pitches sit from A4 = 440 Hz equal temperament, in semitones.

    Spectral peaks between 80 Hz and 2 kHz (Hann-windowed frames, parabolic
    interpolation of the log magnitude) each give their offset from the
    nearest equal-tempered pitch; the estimate is the magnitude-weighted
    circular mean of these offsets, rounded to ``step``.  A recording
    transferred 2% fast is about 34 cents sharp; without correction its
    energy splits between neighbouring CQT bins, which the models and the
    DTW never saw.

    Parameters
    ----------
    y : np.ndarray [shape=(n_samples,)]
        Mono audio.
    sr : int
        Sample rate of ``y``.
    n_fft : int
        Frame length of the analysis (4096 at 22,050 Hz: 5.4 Hz bins).
    max_frames : int
        At most this many frames, evenly spaced, are analysed.
    step : float
        Resolution of the result in semitones; offsets within ``step / 2``
        of 0 give exactly 0.

    Returns
    -------
    tuning : float
        In ``[-0.5, 0.5]`` semitones, a multiple of ``step``; 0 if the audio
        is shorter than one frame or its peaks agree on no offset.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.size < n_fft:
        return 0.0
    n_frames = min(max_frames, 1 + (y.size - n_fft) // (n_fft // 2))  # hops of >= n_fft / 2
    starts = np.linspace(0, y.size - n_fft, n_frames).astype(int)
    frames = np.stack([y[a : a + n_fft] for a in starts]) * np.hanning(n_fft)
    mag = np.abs(np.fft.rfft(frames, axis=1))
    lo = max(1, int(80.0 * n_fft / sr))
    hi = min(mag.shape[1] - 1, int(2000.0 * n_fft / sr) + 1)
    band = mag[:, lo:hi]
    logm = np.log(mag[:, lo - 1 : hi + 1] + 1e-12)
    a, b, c = logm[:, :-2], logm[:, 1:-1], logm[:, 2:]
    peak = (b > a) & (b >= c) & (band > 0.05 * mag.max(axis=1, keepdims=True))
    if hi <= lo or not peak.any():
        return 0.0
    curv = np.where(peak, a - 2 * b + c, -1.0)
    delta = np.clip(0.5 * (a - c) / np.minimum(curv, -1e-12), -0.5, 0.5)
    k = np.nonzero(peak)
    freq = (lo + k[1] + delta[k]) * sr / n_fft
    semis = 12.0 * np.log2(freq / 440.0)
    offset = semis - np.round(semis)
    w = band[k]
    z = np.sum(w * np.exp(2j * np.pi * offset))
    if not np.isfinite(z) or abs(z) < 0.1 * np.sum(w):
        return 0.0
    tuning = np.angle(z) / (2 * np.pi)
    return float(np.clip(np.round(tuning / step) * step, -0.5, 0.5))


def audio_cqt(y: np.ndarray, sr: int, *, params: FeatureParams = DEFAULT_PARAMS,
              tuning: float | None = None) -> np.ndarray:
    """Log-magnitude constant-Q spectrogram of mono audio.

    Parameters
    ----------
    y : np.ndarray [shape=(n_samples,)]
        Mono audio, any float dtype.
    sr : int
        Sample rate of ``y``; resampled to ``params.sr`` if different.
    params : FeatureParams
        Feature geometry.
    tuning : float or None
        Offset of the recording's pitch grid from A4 = 440 Hz in semitones;
        the CQT bins are centred on it.  ``None`` estimates it
        (:func:`estimate_tuning`; 0 for audio in tune within 5 cents).

    Returns
    -------
    X : np.ndarray [shape=(n_frames, params.n_bins), dtype=float32]
        dB re clip maximum (``params.top_db`` floor, shifted to be >= 0),
        L2-normalised per frame.

    Raises
    ------
    InputError
        If the audio is empty, silent, non-finite or too long.
    """
    import librosa

    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1:
        raise InputError(f"audio must be mono with shape (n,), got shape {y.shape}")
    if y.size == 0:
        raise InputError("empty audio (0 samples)")
    if not np.all(np.isfinite(y)):
        raise InputError("audio contains NaN or infinite samples")
    if float(np.max(np.abs(y))) < SILENCE_PEAK:
        raise InputError("silent audio (peak below -100 dBFS)")
    if sr != params.sr:
        y = librosa.resample(y, orig_sr=sr, target_sr=params.sr, res_type="soxr_hq")
    _check_length(1 + y.size // params.hop_length, params)
    if tuning is None:
        tuning = estimate_tuning(y, params.sr)
    _reuse_cqt_filters()
    C = np.abs(
        librosa.cqt(
            y,
            sr=params.sr,
            hop_length=params.hop_length,
            fmin=params.fmin_hz,
            n_bins=params.n_bins,
            bins_per_octave=params.bins_per_octave,
            tuning=tuning,
        )
    )
    peak = float(np.max(C))
    if not np.isfinite(peak) or peak <= 0:
        raise InputError("CQT has no energy in the analysed range")
    S_db = librosa.amplitude_to_db(C, ref=peak, top_db=params.top_db)
    if params.beat_sync:
        S_db = _beat_sync(S_db, y, params)
    return _normalise_frames(S_db, -params.top_db)


def _beat_sync(S: np.ndarray, y: np.ndarray, params: FeatureParams) -> np.ndarray:
    """Average columns of ``S`` (bins, frames) between estimated beats."""
    import librosa

    _, beats = librosa.beat.beat_track(y=y, sr=params.sr, hop_length=params.hop_length)
    if len(beats) < 2:
        raise InputError("beat-synchronous features need at least 2 detected beats")
    return librosa.util.sync(S, beats, aggregate=np.mean)  # type: ignore[arg-type]


def midi_duration_check(pm, params: FeatureParams = DEFAULT_PARAMS) -> None:
    """Refuse MIDI with no notes, only drums, notes spanning less than ``MIN_SECONDS``, or longer than ``max_frames``.

    Parameters
    ----------
    pm : pretty_midi.PrettyMIDI
    params : FeatureParams
    """
    pitched = [i for i in pm.instruments if not i.is_drum and i.notes]
    if not any(i.notes for i in pm.instruments):
        raise InputError("MIDI file has no notes")
    if not pitched:
        raise InputError("MIDI file has only drum notes (nothing pitched to match)")
    end = pm.get_end_time()
    if not np.isfinite(end) or end <= 0:
        raise InputError(f"MIDI end time is {end!r} s; is the tempo map corrupt?")
    _check_length(int(np.ceil(end * params.frame_rate)), params)
    span = max(n.end for i in pitched for n in i.notes) - min(n.start for i in pitched for n in i.notes)
    check_min_seconds(span, what="MIDI notes")


def check_min_seconds(seconds: float, *, what: str = "audio") -> None:
    """Refuse an item shorter than :data:`msdmatch.params.MIN_SECONDS`.

    Raises
    ------
    InputError
        ``too short (X s, need >= Y s)``.
    """
    from msdmatch.params import MIN_SECONDS

    if not seconds >= MIN_SECONDS:
        raise InputError(f"too short ({seconds:.1f} s of {what}, need >= {MIN_SECONDS:g} s)")


#: Channel volume (CC 7) and expression (CC 11) of a part that sets none (General MIDI defaults).
DEFAULT_VOLUME, DEFAULT_EXPRESSION = 100, 127


def channel_gain(control_changes, n_frames: int, frame_rate: float) -> np.ndarray:
    """Velocity factor of a part from its volume (CC 7) and expression (CC 11), per frame.

    General MIDI's gain of 40 log10(cc / 127) dB for each controller, on the
    piano roll's velocity scale (20 log10(velocity / 127) dB) and relative to
    the defaults (:data:`DEFAULT_VOLUME`, :data:`DEFAULT_EXPRESSION`): a part
    that sets neither gets 1 everywhere; volume 50 gets 0.25 (-12 dB).

    Parameters
    ----------
    control_changes : sequence of pretty_midi.ControlChange
        The part's controllers, any order (``number``, ``value``, ``time``).
    n_frames : int
    frame_rate : float
        Frames per second.

    Returns
    -------
    gain : np.ndarray [shape=(n_frames,), dtype=float32]
        Each controller's latest value at or before the frame's time.
    """
    t = np.arange(n_frames) / frame_rate
    gain = np.ones(n_frames, dtype=np.float64)
    for number, default in ((7, DEFAULT_VOLUME), (11, DEFAULT_EXPRESSION)):
        cc = sorted((c.time, c.value) for c in control_changes if c.number == number)
        if not cc:
            continue
        times = np.array([c[0] for c in cc])
        values = np.array([c[1] for c in cc], dtype=np.float64)
        i = np.searchsorted(times, t, side="right") - 1
        level = np.where(i >= 0, values[np.maximum(i, 0)], default)
        gain *= (level / default) ** 2
    return gain.astype(np.float32)


def pianoroll(pm, *, params: FeatureParams = DEFAULT_PARAMS) -> np.ndarray:
    """Piano-roll features at the CQT frame rate, no synthesis.

    Parameters
    ----------
    pm : pretty_midi.PrettyMIDI
    params : FeatureParams

    Returns
    -------
    X : np.ndarray [shape=(n_frames, params.n_bins), dtype=float32]
        Rows are MIDI notes ``fmin_midi .. fmin_midi + n_bins - 1``; notes
        outside are folded by whole octaves into that range.
    """
    midi_duration_check(pm, params)
    n_frames = int(np.ceil(pm.get_end_time() * params.frame_rate)) + 1
    roll = np.zeros((128, n_frames), dtype=np.float32)
    for inst in pm.instruments:
        if inst.is_drum or not inst.notes:
            continue
        r = inst.get_piano_roll(fs=params.frame_rate)
        m = min(n_frames, r.shape[1])
        roll[:, :m] += r[:, :m] * channel_gain(inst.control_changes, m, params.frame_rate)
    folded = np.zeros((params.n_bins, n_frames), dtype=np.float32)
    lo = params.fmin_midi
    for pitch in range(128):
        row = roll[pitch]
        if not row.any():
            continue
        k = (pitch - lo) % 12 + 12 * min(max((pitch - lo) // 12, 0), params.n_bins // 12 - 1)
        folded[k] += row
    # Log-compress velocity to a dB-like scale: 0 stays silent.
    S = np.where(folded > 0, 20.0 * np.log10(np.maximum(folded, 1.0) / 127.0) + params.top_db, 0.0)
    S = np.maximum(S, 0.0)
    return _normalise_frames(S, 0.0)
