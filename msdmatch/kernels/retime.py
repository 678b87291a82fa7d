"""Retime a MIDI file to a recording with a compact tempo map.

Every event keeps its place in the score (its tick); only the tempo map is
replaced, so every track, program change, control change, pitch bend,
system-exclusive message, lyric and marker moves with the notes.  This is
unlike ``pretty_midi.PrettyMIDI.adjust_times``, which writes a tempo event at
every anchor of the time map.

Conventions
-----------
* A *time map* is a pair of arrays ``(src, dst)`` in seconds: ``src`` are
  times of the original MIDI (under its own tempo map, as pretty_midi reports
  them), strictly increasing; ``dst`` are times in the recording,
  non-decreasing.  Between anchors it is linear; outside, it continues with
  the slope of its first or last segment.
* The new tempo map changes tempo only on beats of the original (as
  ``pretty_midi.PrettyMIDI.get_beats`` counts them: time signatures and
  compound metres included), and only where a straight line through the
  previous change misses the time map by more than ``tolerance`` at some beat.
* An *aligned span* ``(start, end)`` in original seconds marks what the
  recording covers.  Notes whose onsets fall outside it are dropped; state
  events before it (programs, controllers, pitch bends, names, signatures,
  system-exclusive) move to the start of the file; other events outside it
  are dropped.  Output tick ``t`` is original tick ``t - tick_offset``.
* The file records what was done in a text meta event of its first track:
  ``msdmatch-aligned {json}`` with the span, the tick offset and the
  caller's fields (:data:`LABEL_PREFIX`, :func:`read_label`).
"""
from __future__ import annotations

import json

import numpy as np

from msdmatch.errors import InputError, ParameterError

#: Start of the text meta event that marks a file msdmatch aligned.
LABEL_PREFIX = "msdmatch-aligned "
#: Largest tempo a set_tempo event holds (microseconds per quarter note).
_MAX_US = 0xFFFFFF
#: Fastest tempo written: 1 ms per quarter note.
_MIN_US = 1000
#: Text-like meta events that belong to a moment of the music.
_TIMED_META = {"lyrics", "marker", "text", "cue_marker"}


def _extrapolating_interp(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    y = np.interp(x, xp, fp)
    if len(xp) >= 2:
        lo = (fp[1] - fp[0]) / max(xp[1] - xp[0], 1e-12)
        hi = (fp[-1] - fp[-2]) / max(xp[-1] - xp[-2], 1e-12)
        y = np.where(x < xp[0], fp[0] + (x - xp[0]) * lo, y)
        y = np.where(x > xp[-1], fp[-1] + (x - xp[-1]) * hi, y)
    return y


def map_times(t: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Apply a time map (linear between anchors, extrapolated outside).

    Parameters
    ----------
    t : np.ndarray [shape=(k,)]
        Original times in seconds.
    src, dst : np.ndarray [shape=(n,)]
        The time map, see the module docstring.

    Returns
    -------
    u : np.ndarray [shape=(k,)]
        Times in the recording.
    """
    return _extrapolating_interp(np.asarray(t, np.float64), np.asarray(src, np.float64),
                                 np.asarray(dst, np.float64))


def _absolute(mid) -> list[list[tuple[int, object]]]:
    tracks = []
    for track in mid.tracks:
        t, evs = 0, []
        for msg in track:
            t += msg.time
            evs.append((t, msg))
        tracks.append(evs)
    return tracks


class TempoMap:
    """Ticks to seconds under a file's set_tempo events.

    Only the first track's tempo events count, as pretty_midi reads a file
    (the aligner's synthesis and every time it reports follow pretty_midi);
    :func:`retime` removes the tempo events of every track.
    """

    def __init__(self, tracks: list[list[tuple[int, object]]], ppq: int):
        changes = sorted(((t, m.tempo) for t, m in tracks[0] if m.type == "set_tempo"),
                         key=lambda c: c[0]) if tracks else []  # stable: the last of a tick wins
        ticks, us = [0], [500000]
        for t, tempo in changes:
            if t == ticks[-1]:
                us[-1] = tempo
            else:
                ticks.append(t)
                us.append(tempo)
        self.ticks = np.asarray(ticks, np.float64)
        self.us = np.asarray(us, np.float64)
        self.ppq = ppq
        self.secs = np.concatenate([[0.0], np.cumsum(np.diff(self.ticks) * self.us[:-1] / 1e6 / ppq)])

    def seconds(self, ticks: np.ndarray) -> np.ndarray:
        """Seconds at ``ticks`` (float array)."""
        ticks = np.asarray(ticks, np.float64)
        k = np.clip(np.searchsorted(self.ticks, ticks, side="right") - 1, 0, len(self.ticks) - 1)
        return self.secs[k] + (ticks - self.ticks[k]) * self.us[k] / 1e6 / self.ppq

    def tick(self, seconds: float) -> float:
        """Inverse of :meth:`seconds` (fractional tick)."""
        k = max(0, int(np.searchsorted(self.secs, seconds, side="right")) - 1)
        return float(self.ticks[k] + (seconds - self.secs[k]) * 1e6 * self.ppq / self.us[k])


def beat_ticks(pm) -> np.ndarray:
    """Ticks of the beats of a ``pretty_midi.PrettyMIDI`` (its ``get_beats``), sorted and unique."""
    beats = pm.get_beats()
    return np.unique(np.asarray([pm.time_to_tick(b) for b in beats], np.int64))


def compact_segments(ticks: np.ndarray, targets: np.ndarray, *, ppq: int,
                     tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Fewest tempo segments, breaking only at anchors, that meet every anchor within ``tolerance``.

    Parameters
    ----------
    ticks : np.ndarray [shape=(k,)]
        Strictly increasing anchor ticks (beats), the first where the map starts.
    targets : np.ndarray [shape=(k,)]
        Seconds each anchor should land at, non-decreasing.
    ppq : int
        Ticks per quarter note.
    tolerance : float
        Largest allowed miss in seconds at any anchor.

    Returns
    -------
    starts : np.ndarray [shape=(s,), dtype=int64]
        Indices into ``ticks`` where a tempo starts.
    tempos : np.ndarray [shape=(s,), dtype=int64]
        Microseconds per quarter note of each segment.
    """
    ticks = np.asarray(ticks, np.float64)
    T = np.asarray(targets, np.float64)
    k = len(ticks)
    if k < 2:
        return np.zeros(1, np.int64), np.full(1, 500000, np.int64)
    # a strictly increasing target keeps every tempo finite and positive
    floor = np.diff(ticks) / ppq * _MIN_US / 1e6
    T = T[0] + np.concatenate([[0.0], np.cumsum(np.maximum(np.diff(T), floor))])
    starts, tempos = [], []
    s, now = 0, T[0]  # `now`: the time the written map reaches anchor s (rounding included)
    while s < k - 1:
        e = s + 1
        while e + 1 < k:
            slope = (T[e + 1] - now) / (ticks[e + 1] - ticks[s])
            mid = now + slope * (ticks[s + 1 : e + 1] - ticks[s])
            if np.max(np.abs(mid - T[s + 1 : e + 1])) > tolerance:
                break
            e += 1
        us = int(np.clip(round((T[e] - now) / (ticks[e] - ticks[s]) * ppq * 1e6), _MIN_US, _MAX_US))
        starts.append(s)
        tempos.append(us)
        now += us / 1e6 * (ticks[e] - ticks[s]) / ppq
        s = e
    return np.asarray(starts, np.int64), np.asarray(tempos, np.int64)


def _note_keys(msg) -> tuple[int, int] | None:
    if msg.type in ("note_on", "note_off"):
        return msg.channel, msg.note
    return None


def _is_on(msg) -> bool:
    return msg.type == "note_on" and msg.velocity > 0


def retime(mid, src: np.ndarray, dst: np.ndarray, *, beats: np.ndarray, span: tuple[float, float] | None = None,
           tolerance: float = 0.005, label: dict | None = None):
    """Retime a MIDI file to a time map with a compact tempo map.

    Parameters
    ----------
    mid : mido.MidiFile
        The original; not modified.  Format 0 or 1, ticks per beat.
    src, dst : np.ndarray [shape=(n,)]
        The time map (see the module docstring).
    beats : np.ndarray [shape=(b,), dtype=int]
        Ticks of the original's beats (:func:`beat_ticks`); tempo changes only there.
    span : (float, float), optional
        Aligned span in original seconds; ``None``: the whole file.
    tolerance : float
        Largest miss of the written tempo map at a beat, in seconds.
    label : dict, optional
        Fields recorded in the file's ``msdmatch-aligned`` text event.

    Returns
    -------
    out : mido.MidiFile
        The retimed file.
    info : dict
        ``tempo_events``, ``beats`` (in the span), ``max_tempo_changes_per_beat``,
        ``notes_kept``, ``notes_dropped``, ``tick_offset`` and ``span``.
    """
    import mido

    if mid.type == 2:
        raise InputError("MIDI format 2 (independent sequences) cannot be aligned to one recording")
    if not isinstance(mid.ticks_per_beat, int) or mid.ticks_per_beat <= 0:
        raise InputError(f"MIDI uses SMPTE time division ({mid.ticks_per_beat}); expected ticks per beat")
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.ndim != 1 or src.shape != dst.shape or len(src) < 2 or np.any(np.diff(src) <= 0):
        raise ParameterError("time map must be two arrays of equal length >= 2 with strictly increasing src")
    ppq = mid.ticks_per_beat
    tracks = _absolute(mid)
    tm = TempoMap(tracks, ppq)
    s0, s1 = (0.0, np.inf) if span is None else (float(span[0]), float(span[1]))
    if map_times([s0], src, dst)[0] < 0:  # the recording starts inside the span: start the span there
        s0 = max(s0, float(np.interp(0.0, dst, src)))
    tick0 = int(np.ceil(tm.tick(s0) - 1e-6)) if s0 > 0 else 0
    # 1. which events survive, in original ticks (state events before the span move to its start)
    kept_tracks, n_kept, n_dropped, last_tick = [], 0, 0, tick0
    for evs in tracks:
        kept, open_notes = [], {}
        secs = tm.seconds(np.array([t for t, _ in evs], np.float64)) if evs else np.zeros(0)
        for (t, msg), sec in zip(evs, secs):
            key = _note_keys(msg)
            if msg.type in ("set_tempo", "end_of_track"):
                continue
            if key is not None and _is_on(msg):
                ok = t >= tick0 and sec <= s1 + 1e-9
                open_notes.setdefault(key, []).append((t, ok))
                n_kept += ok
                n_dropped += not ok
                if ok:
                    kept.append((t, msg))
                continue
            if key is not None:  # a note off closes every open note of its key begun earlier
                opened = open_notes.get(key, [])
                closing = [x for x in opened if x[0] != t]
                open_notes[key] = [x for x in opened if x[0] == t]
                if any(ok for _, ok in closing) or (not closing and tick0 <= t and sec <= s1):
                    kept.append((max(t, tick0), msg))
                continue
            if t < tick0:
                if not (msg.is_meta and msg.type in _TIMED_META):
                    kept.append((-1, msg))  # state before the span: to the start of the file
            elif sec <= s1 + 1e-9:
                kept.append((t, msg))
            else:
                kept.append((t, msg, "late"))
        kept_tracks.append(kept)
        last_tick = max([last_tick] + [x[0] for x in kept if len(x) == 2])
    # events after the span survive only while kept notes still sound
    kept_tracks = [[x[:2] for x in kept if len(x) == 2 or (x[0] <= last_tick and not (
        x[1].is_meta and x[1].type in _TIMED_META))] for kept in kept_tracks]
    if n_kept == 0:
        raise InputError("no note of the MIDI file lies in the aligned span")
    # 2. the tempo map: anchors at the span start, the beats inside, and the last event
    inner = np.asarray(beats, np.int64)
    inner = inner[(inner > tick0) & (inner < last_tick)]
    anchors = np.concatenate([[tick0], inner, [last_tick]]) if last_tick > tick0 else np.array([tick0, tick0 + ppq])
    targets = map_times(tm.seconds(anchors), src, dst)
    lead_s = max(0.0, float(targets[0]))
    targets[0] = lead_s
    starts, tempos = compact_segments(anchors, targets, ppq=ppq, tolerance=tolerance)
    lead = 0
    if lead_s > 1e-4:
        first_spt = tempos[0] / 1e6 / ppq
        lead = max(int(np.ceil(lead_s * 1e6 * ppq / _MAX_US)), int(round(lead_s / first_spt)), 1)
    offset = lead - tick0
    tempo_events = []
    if lead:
        tempo_events.append((0, int(np.clip(round(lead_s * 1e6 * ppq / lead), _MIN_US, _MAX_US))))
    for s, us in zip(starts, tempos):
        tempo_events.append((int(anchors[s]) + offset, int(us)))
    # 3. write: tempo map and label in the first track, every event at its new tick
    info_span = {"midi_start": s0, "midi_end": float(min(s1, tm.seconds([last_tick])[0])),
                 "audio_start": lead_s,
                 "audio_end": float(map_times(tm.seconds([last_tick]), src, dst)[0])}
    doc = {**(label or {}), **{k: round(v, 4) for k, v in info_span.items()}, "tick_offset": offset}
    out = mido.MidiFile(type=mid.type, ticks_per_beat=ppq, charset=mid.charset)
    for n, kept in enumerate(kept_tracks):
        evs = [(t + offset if t >= 0 else 0, 1, i, m) for i, (t, m) in enumerate(kept)]
        if n == 0:
            evs.append((0, 0, 0, mido.MetaMessage("text", text=LABEL_PREFIX + json.dumps(doc, sort_keys=True))))
            evs += [(t, 0, 1 + i, mido.MetaMessage("set_tempo", tempo=us)) for i, (t, us) in enumerate(tempo_events)]
        evs.sort(key=lambda e: e[:3])
        track, now = mido.MidiTrack(), 0
        for t, _, _, m in evs:
            track.append(m.copy(time=t - now))
            now = t
        track.append(mido.MetaMessage("end_of_track", time=0))
        out.tracks.append(track)
    changes = np.asarray([t - offset for t, _ in tempo_events if t > 0], np.int64)
    per_beat = (np.bincount(np.searchsorted(np.asarray(beats), changes, side="right"))
                if len(changes) else np.zeros(1, np.int64))
    return out, {"tempo_events": len(tempo_events), "beats": int(len(inner) + 1),
                 "max_tempo_changes_per_beat": int(per_beat.max()), "notes_kept": int(n_kept),
                 "notes_dropped": int(n_dropped), "tick_offset": int(offset), "span": info_span}


def read_label(mid) -> dict | None:
    """The ``msdmatch-aligned`` record of a file :func:`retime` wrote, or ``None``.

    Parameters
    ----------
    mid : mido.MidiFile
    """
    for track in mid.tracks[:1]:
        for msg in track:
            if msg.is_meta and msg.type == "text" and msg.text.startswith(LABEL_PREFIX):
                try:
                    return json.loads(msg.text[len(LABEL_PREFIX):])
                except ValueError:
                    return None
    return None
