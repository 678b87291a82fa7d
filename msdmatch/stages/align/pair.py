"""Align a MIDI file to a recording of it and retime it with a compact tempo map.

This is a separate pass from matching: the verify DTW's 46 ms CQT frames
place notes to about a frame, while aligned MIDI is used as a note-level
annotation of the recording.  The aligner:

1. synthesizes the MIDI (fluidsynth, the query soundfont);
2. computes, for it and the recording, chroma, onset and pitch features
   (:func:`align_features`) at ``hop / sr`` seconds (11.6 ms by default);
3. runs a multi-resolution DTW (:func:`msdmatch.kernels.align_dtw.align_path`):
   a global path for a full rendition, a subsequence path (the recording
   is a part of the MIDI) for an excerpt;
4. turns the path into a monotone time map (optionally corrects its local
   offsets by correlating the two sides' onsets, :func:`refine_time_map`),
   and retimes the file with :func:`msdmatch.kernels.retime.retime`: one tempo
   change per beat at most, none
   where the tempo is steady, every event kept; notes outside an excerpt's
   span are dropped and the file records its span.

Times are seconds; a time map is ``(midi_times, audio_times)``, see
:mod:`msdmatch.kernels.retime`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from msdmatch.errors import InputError, ParameterError
from msdmatch.params import COSINE_GULLY, DEFAULT_PARAMS

#: Sample rate of the alignment features.
ALIGN_SR = 22050
#: Hop of the alignment features in samples (11.6 ms at 22,050 Hz).
ALIGN_HOP = 256
#: An excerpt: a recording shorter than this fraction of the MIDI synthesis.
EXCERPT_RATIO = 0.75
#: Smallest part of each side (seconds) an alignment must cover.
MIN_ALIGNED_SECONDS = 10.0
#: Smallest fraction of the shorter side an alignment must cover.
MIN_COVERAGE = 0.5


@dataclass
class Alignment:
    """A MIDI-to-recording alignment.

    Attributes
    ----------
    midi_times, audio_times : np.ndarray [shape=(n,)]
        The time map: strictly increasing MIDI seconds, non-decreasing recording seconds.
    span : (float, float)
        MIDI seconds the recording covers.
    audio_span : (float, float)
        Recording seconds the path covers.
    excerpt : bool
        The recording was aligned as a part of the MIDI.
    confidence : float
        The thesis's DTW confidence ``clip(2(1 - s), 0, 1)`` of the verify DTW on the 46 ms CQTs.
    path : np.ndarray [shape=(L, 2)]
        ``(midi_frame, audio_frame)`` cells at ``hop_seconds``.
    """

    midi_times: np.ndarray
    audio_times: np.ndarray
    span: tuple[float, float]
    audio_span: tuple[float, float]
    excerpt: bool
    confidence: float
    path: np.ndarray = field(repr=False)
    hop_seconds: float = ALIGN_HOP / ALIGN_SR


def align_features(y: np.ndarray, sr: int, *, hop: int = ALIGN_HOP, tuning: float | None = None,
                   onset_weight: float = 1.0, pitch_weight: float = 1.0, gamma: float = 10.0,
                   pitch_gamma: float = 100.0, return_onsets: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Chroma, onset and pitch features for alignment.

    From the log-compressed CQT (6 octaves from C2, 12 bins per octave):

    * chroma: the CQT folded into 12 pitch classes, then log-compressed;
    * onsets: the half-wave rectified frame difference of the log CQT,
      folded the same way, normalised by its local maximum and smeared
      forward with a decaying window (after the DLNCO features of Ewert,
      Müller and Grosche 2009), which pins the path to note onsets;
    * pitch: each of the 72 log-CQT bins standardised over the sequence
      (signed), which tells octaves and voicings apart where chroma cannot,
      while a recording's equalisation and timbre, constant per bin, cancel.

    Each part is L2-normalised per frame, weighted, and the frame normalised again.

    Parameters
    ----------
    y : np.ndarray [shape=(n_samples,)]
    sr : int
    hop : int
        Hop in samples at :data:`ALIGN_SR`.
    tuning : float or None
        Semitones from A4 = 440 Hz; ``None`` estimates it.
    onset_weight, pitch_weight : float >= 0
        Weights of the onset and pitch parts relative to the chroma part.
    gamma : float > 0
        Log compression ``log(1 + gamma * x / max)`` of the CQT and the chroma.
    pitch_gamma : float > 0
        Log compression of the CQT for the pitch part.

    return_onsets : bool
        Also return the onset strength per pitch class (for :func:`refine_time_map`).

    Returns
    -------
    F : np.ndarray [shape=(n_frames, 96), dtype=float32]
        Unit frames (silent frames stay zero).
    onsets : np.ndarray [shape=(n_frames, 12), dtype=float32]
        Only with ``return_onsets``: rectified log-CQT flux folded into pitch classes.
    """
    import librosa
    from scipy.ndimage import maximum_filter1d
    from scipy.signal import lfilter

    from msdmatch.kernels.features import SILENCE_PEAK, estimate_tuning

    y = np.asarray(y, np.float32)
    if y.ndim != 1 or y.size == 0 or not np.all(np.isfinite(y)) or float(np.max(np.abs(y))) < SILENCE_PEAK:
        raise InputError("audio is empty, silent or not finite")
    if sr != ALIGN_SR:
        y = librosa.resample(y, orig_sr=sr, target_sr=ALIGN_SR, res_type="soxr_hq")
    if tuning is None:
        tuning = estimate_tuning(y, ALIGN_SR)
    C = np.abs(librosa.cqt(y, sr=ALIGN_SR, hop_length=hop, fmin=librosa.midi_to_hz(36), n_bins=72,
                           bins_per_octave=12, tuning=tuning))
    L = np.log1p(gamma * C / max(float(C.max()), 1e-12))
    chroma = np.log1p(gamma * C.reshape(6, 12, -1).sum(axis=0) / max(float(C.max()), 1e-12))
    flux = np.maximum(np.diff(L, axis=1, prepend=L[:, :1]), 0.0)
    onset = flux.reshape(6, 12, -1).sum(axis=0)
    strength = np.ascontiguousarray(onset.T, np.float32)
    onset = onset / np.maximum(maximum_filter1d(onset.max(axis=0), size=int(round(1.0 * ALIGN_SR / hop)) | 1), 1e-3)
    decay = np.sqrt(np.linspace(1.0, 0.0, max(2, int(round(0.12 * ALIGN_SR / hop))), endpoint=False))
    onset = lfilter(decay, [1.0], onset, axis=1)
    # the pitch part: each CQT bin standardised over the sequence, so that a
    # recording's equalisation and its instruments' spectral envelopes cancel
    Lp = np.log1p(pitch_gamma * C / max(float(C.max()), 1e-12))
    pitch = (Lp - Lp.mean(axis=1, keepdims=True)) / (Lp.std(axis=1, keepdims=True) + 1e-3)
    parts = []
    for P, w in ((chroma, 1.0), (onset, onset_weight), (pitch, pitch_weight)):
        P = P.T.astype(np.float32)
        n = np.linalg.norm(P, axis=1, keepdims=True)
        np.divide(P, n, out=P, where=n > 1e-6)
        P[n[:, 0] <= 1e-6] = 0.0
        parts.append(w * P)
    F = np.concatenate(parts, axis=1)
    n = np.linalg.norm(F, axis=1, keepdims=True)
    np.divide(F, n, out=F, where=n > 0)
    return (F, strength) if return_onsets else F


def refine_time_map(midi_times: np.ndarray, audio_times: np.ndarray, midi_onsets: np.ndarray,
                    audio_onsets: np.ndarray, *, frame_seconds: float, window: float = 1.0, step: float = 0.5,
                    max_lag: int = 8, smooth: int = 5) -> np.ndarray:
    """Shift a time map locally so that the onsets of the two sides line up.

    Around every ``step`` seconds of the MIDI, the MIDI's onset strength over
    ``window`` seconds on each side is carried through the time map and
    correlated with the recording's at lags of up to ``max_lag`` frames; the
    best lags, median-filtered over ``smooth`` windows, are added to the map.
    This removes what the DTW's frame grid and its smoothing leave of a local
    offset (an instrument that speaks later in the recording, a path that
    settles a frame or two off), not gross errors.

    Parameters
    ----------
    midi_times, audio_times : np.ndarray [shape=(n,)]
        The time map.
    midi_onsets, audio_onsets : np.ndarray [shape=(n_frames, 12)]
        Onset strengths at ``frame_seconds`` (:func:`align_features` with ``return_onsets``).
    frame_seconds : float

    Returns
    -------
    audio_times : np.ndarray [shape=(n,)]
        Refined, non-decreasing.
    """
    from scipy.ndimage import median_filter

    mt, at = np.asarray(midi_times, np.float64), np.asarray(audio_times, np.float64)
    centres = np.arange(mt[0] + window, mt[-1] - window, step)
    if len(centres) < 3:
        return at
    lags = np.arange(-max_lag, max_lag + 1)
    offsets = np.zeros(len(centres))
    for k, c in enumerate(centres):
        fm = np.arange(max(0, int((c - window) / frame_seconds)),
                       min(len(midi_onsets), int((c + window) / frame_seconds)))
        fa = np.round(np.interp(fm * frame_seconds, mt, at) / frame_seconds).astype(np.int64)
        scores = np.zeros(len(lags))
        for i, lag in enumerate(lags):
            g = fa + lag
            ok = (g >= 0) & (g < len(audio_onsets))
            scores[i] = np.sum(midi_onsets[fm[ok]] * audio_onsets[g[ok]])
        if scores.max() > 0:
            offsets[k] = lags[int(np.argmax(scores))] * frame_seconds
    offsets = median_filter(offsets, size=smooth, mode="nearest")
    return np.maximum.accumulate(at + np.interp(mt, centres, offsets))


def path_to_time_map(path: np.ndarray, *, frame_seconds: float, smooth: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Monotone (midi_time, audio_time) anchors from a DTW path.

    Parameters
    ----------
    path : np.ndarray [shape=(L, 2)]
        ``(midi_frame, audio_frame)`` cells, monotone.
    frame_seconds : float
    smooth : int
        Half-width in frames of the moving average taken along the MIDI axis
        (0: none); it removes the staircase of the DTW path.

    Returns
    -------
    midi_times, audio_times : np.ndarray [shape=(n,)]
        Strictly increasing MIDI times and non-decreasing audio times.
    """
    path = np.asarray(path)
    if path.ndim != 2 or path.shape[1] != 2 or len(path) < 2:
        raise InputError(f"alignment path must have shape (L>=2, 2), got {path.shape}")
    m, inv = np.unique(path[:, 0], return_inverse=True)
    a = np.bincount(inv, weights=path[:, 1]) / np.bincount(inv)
    if smooth and len(a) > 2 * smooth + 1:
        k = np.ones(2 * smooth + 1) / (2 * smooth + 1)
        pad = np.concatenate([np.full(smooth, a[0]), a, np.full(smooth, a[-1])])
        inner = np.convolve(pad, k, mode="valid")
        inner[:smooth], inner[-smooth:] = a[:smooth], a[-smooth:]
        a = inner
    if len(m) < 2:
        raise InputError("the alignment path covers a single MIDI frame; the pair does not align")
    return m * frame_seconds, np.maximum.accumulate(a) * frame_seconds


def align(pm, y: np.ndarray, sr: int, *, soundfont: str | None = None, mode: str = "auto",
          hop: int = ALIGN_HOP, radius: int = 16, onset_weight: float = 1.0,
          refine: bool = False, synth: np.ndarray | None = None) -> Alignment:
    """Align ``pm`` to the recording ``y``.

    Parameters
    ----------
    pm : pretty_midi.PrettyMIDI
        Not modified.
    y : np.ndarray [shape=(n_samples,)]
        The recording, mono.
    sr : int
    soundfont : str or None
        Soundfont of the MIDI synthesis (default: the query soundfont).
    mode : {'auto', 'full', 'excerpt'}
        ``auto``: an excerpt when the recording is shorter than
        :data:`EXCERPT_RATIO` of the synthesis.
    hop : int
        Feature hop in samples at :data:`ALIGN_SR`.
    radius : int
        Band half-width of the multi-resolution DTW, in frames.
    onset_weight : float
        See :func:`align_features`.
    refine : bool
        Correct local offsets with :func:`refine_time_map` (off by default: with
        the pitch features it changed the benchmark's mean error by under 1 ms).
    synth : np.ndarray, optional
        The MIDI already synthesized at :data:`ALIGN_SR` (skips synthesis).

    Returns
    -------
    Alignment
    """
    from msdmatch.io.synth import render
    from msdmatch.kernels.align_dtw import align_path
    from msdmatch.kernels.dtw import cosine_dtw, dtw_confidence
    from msdmatch.kernels.features import audio_cqt, midi_duration_check

    if mode not in ("auto", "full", "excerpt"):
        raise ParameterError(f"mode must be 'auto', 'full' or 'excerpt', got {mode!r}")
    midi_duration_check(pm)
    ys = render(pm, sr=ALIGN_SR, soundfont=soundfont) if synth is None else synth
    X, Xo = align_features(ys, ALIGN_SR, hop=hop, tuning=0.0, onset_weight=onset_weight, return_onsets=True)
    Y, Yo = align_features(y, sr, hop=hop, onset_weight=onset_weight, return_onsets=True)
    excerpt = mode == "excerpt" or (mode == "auto" and len(Y) < EXCERPT_RATIO * len(X))
    path = align_path(X, Y, subseq=excerpt, radius=radius)
    fs = hop / ALIGN_SR
    mt, at = path_to_time_map(path, frame_seconds=fs)
    if refine:
        at = refine_time_map(mt, at, Xo, Yo, frame_seconds=fs)
    span = (float(mt[0]), float(mt[-1]) + fs) if excerpt else (0.0, float("inf"))
    audio_span = (float(at[0]), float(at[-1]) + fs)
    _check_coverage(mt, at, midi_seconds=len(X) * fs, audio_seconds=len(Y) * fs)
    Xc = audio_cqt(ys, ALIGN_SR, tuning=0.0)
    Yc = audio_cqt(y, sr)
    score = cosine_dtw(Xc, Yc, gully=COSINE_GULLY, return_path=False)
    return Alignment(mt, at, span, audio_span, excerpt, float(dtw_confidence(score)), path, fs)


def _check_coverage(mt: np.ndarray, at: np.ndarray, *, midi_seconds: float, audio_seconds: float) -> None:
    """Refuse an alignment that covers too little of either side.

    Each side's covered span must be at least :data:`MIN_ALIGNED_SECONDS`, and
    the shorter input must be covered to at least :data:`MIN_COVERAGE`.
    """
    covered = {"MIDI": (float(mt[-1] - mt[0]), midi_seconds), "recording": (float(at[-1] - at[0]), audio_seconds)}
    shorter = min(midi_seconds, audio_seconds)
    for what, (c, total) in covered.items():
        need = max(MIN_ALIGNED_SECONDS, MIN_COVERAGE * total if total <= shorter else 0.0)
        if c < need:
            raise InputError(
                f"the alignment covers {c:.1f} s of the {what} ({total:.1f} s long); need >= {need:.1f} s: "
                "is this the right pair, and is neither file truncated?"
            )


def retime_to(mid, pm, alignment: Alignment, *, label: dict | None = None, tolerance: float = 0.005):
    """Write the retimed file for an alignment (see :func:`msdmatch.kernels.retime.retime`).

    Parameters
    ----------
    mid : mido.MidiFile
        The original file.
    pm : pretty_midi.PrettyMIDI
        The same file parsed by pretty_midi (for its beats).
    alignment : Alignment

    Returns
    -------
    out : mido.MidiFile
    info : dict
    """
    from msdmatch.kernels.retime import beat_ticks, retime

    span = alignment.span if alignment.excerpt else None
    doc = {"confidence": round(alignment.confidence, 4), "excerpt": alignment.excerpt, **(label or {})}
    return retime(mid, alignment.midi_times, alignment.audio_times, beats=beat_ticks(pm), span=span,
                  tolerance=tolerance, label=doc)


def is_aligned_midi(path: str) -> bool:
    """Whether the file at ``path`` is a MIDI file msdmatch aligned (it carries the label)."""
    import mido

    from msdmatch.kernels.retime import read_label

    try:
        return read_label(mido.MidiFile(path)) is not None
    except Exception:  # unreadable or not MIDI: not ours
        return False


def check_align_out(out: str, *, overwrite: bool = False) -> None:
    """Refuse an ``align --out`` before any work: a folder, a missing or unwritable parent, a foreign file."""
    from msdmatch.io.outputs import check_out_file

    check_out_file(out, suffixes=(".mid", ".midi"), ours=is_aligned_midi, overwrite=overwrite,
                   what="MIDI")


def align_files(midi_path: str, audio_path: str, out: str, *, soundfont: str | None = None,
                mode: str = "auto", storage_options: dict | None = None) -> dict:
    """Read, align, retime and write one pair; the output is written whole or not at all.

    Returns
    -------
    summary : dict
        ``confidence``, ``excerpt``, ``midi_span`` and ``audio_span`` (seconds the file
        covers), and the retiming's counts (see :func:`msdmatch.kernels.retime.retime`).
    """
    import io

    import mido

    from msdmatch.io.decode import MAX_AUDIO_BYTES, MAX_MIDI_BYTES, decode_audio, decode_midi, read_bytes
    from msdmatch.io.outputs import write_whole

    data = read_bytes(midi_path, max_bytes=MAX_MIDI_BYTES, storage_options=storage_options)
    pm = decode_midi(data)
    try:
        mid = mido.MidiFile(file=io.BytesIO(data))
    except Exception as e:  # pretty_midi read it, so this is rare
        raise InputError(f"cannot parse MIDI: {e}") from None
    y, sr = decode_audio(read_bytes(audio_path, max_bytes=MAX_AUDIO_BYTES, storage_options=storage_options),
                         max_seconds=DEFAULT_PARAMS.max_frames * DEFAULT_PARAMS.frame_seconds)
    a = align(pm, y, sr, soundfont=soundfont, mode=mode)
    aligned, info = retime_to(mid, pm, a, label={"audio": str(audio_path).rsplit("/", 1)[-1]})
    buf = io.BytesIO()
    aligned.save(file=buf)
    write_whole(out, buf.getvalue())
    sp = info.pop("span")
    return {"confidence": a.confidence, "excerpt": a.excerpt, "midi_span": (sp["midi_start"], sp["midi_end"]),
            "audio_span": (sp["audio_start"], sp["audio_end"]), **info}
