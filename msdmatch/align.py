"""Align a MIDI file to an audio recording and retime it.

The verify step's cosine DTW gives a path between the MIDI synthesis's CQT
frames and the recording's; note times are mapped through that path
(piecewise-linear between path points, as in Raffel & Ellis's alignment
work) with ``pretty_midi.PrettyMIDI.adjust_times``.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError
from .params import DEFAULT_PARAMS, FeatureParams


def path_to_time_map(path: np.ndarray, *, frame_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Monotone (midi_time, audio_time) anchor pairs from a DTW path.

    Parameters
    ----------
    path : np.ndarray [shape=(L, 2)]
        ``(midi_frame, audio_frame)`` cells.
    frame_seconds : float

    Returns
    -------
    midi_times, audio_times : np.ndarray [shape=(n,)]
        Strictly increasing MIDI times and non-decreasing audio times.
    """
    path = np.asarray(path)
    if path.ndim != 2 or path.shape[1] != 2 or len(path) < 2:
        raise InputError(f"alignment path must have shape (L>=2, 2), got {path.shape}")
    # keep the mean audio frame for each MIDI frame, so MIDI times increase strictly
    m, first = np.unique(path[:, 0], return_index=True)
    a = np.array([path[path[:, 0] == i, 1].mean() for i in m])
    return m * frame_seconds, np.maximum.accumulate(a) * frame_seconds


def align(pm, y: np.ndarray, sr: int, *, params: FeatureParams = DEFAULT_PARAMS,
          soundfont: str | None = None) -> tuple[object, float, np.ndarray]:
    """Retime ``pm`` to the recording ``y``.

    Parameters
    ----------
    pm : pretty_midi.PrettyMIDI
        Modified in place and returned.
    y : np.ndarray [shape=(n_samples,)]
    sr : int

    Returns
    -------
    pm : pretty_midi.PrettyMIDI
        Retimed; notes outside the aligned span are clipped to it.
    confidence : float
        The thesis's DTW confidence ``clip(2(1 - s), 0, 1)``.
    path : np.ndarray [shape=(L, 2)]
    """
    from .dtw import cosine_dtw, dtw_confidence
    from .features import audio_cqt, midi_cqt

    X = midi_cqt(pm, params=params, soundfont=soundfont)
    Y = audio_cqt(y, sr, params=params)
    score, path = cosine_dtw(X, Y, gully=0.96)
    mt, at = path_to_time_map(path, frame_seconds=params.frame_seconds)
    pm.adjust_times(mt, at)
    return pm, float(dtw_confidence(score)), path


def align_files(midi_path: str, audio_path: str, out: str, *, soundfont: str | None = None) -> float:
    """Read, align and write; returns the confidence."""
    from .decode import MAX_AUDIO_BYTES, MAX_MIDI_BYTES, decode_audio, decode_midi, read_bytes

    pm = decode_midi(read_bytes(midi_path, max_bytes=MAX_MIDI_BYTES))
    y, sr = decode_audio(read_bytes(audio_path, max_bytes=MAX_AUDIO_BYTES),
                         max_seconds=DEFAULT_PARAMS.max_frames * DEFAULT_PARAMS.frame_seconds)
    pm, conf, _ = align(pm, y, sr, soundfont=soundfont)
    pm.write(out)
    return conf
