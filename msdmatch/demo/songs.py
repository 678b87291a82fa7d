"""Songs for the demo corpus: music21 corpus works and generated pop songs.

Every function returns a ``pretty_midi.PrettyMIDI`` of about 45-120 s at a
resolution of 480 ticks per quarter note.  All randomness comes from the
``numpy.random.Generator`` passed in, so the same generator state gives the
same notes (and byte-identical MIDI files).

music21 is imported inside the functions that need it; parsing one work and
turning it into notes costs about 0.05-0.2 s.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from msdmatch.errors import InputError

#: Shortest and longest song in seconds; previews are 30 s subsequences.
MIN_SECONDS = 45.0
MAX_SECONDS = 120.0

#: music21 corpus collections used, in a fixed order.  ``multi`` means the
#: files hold several tunes (ABC opus files), enumerated by their X: number.
_COLLECTIONS = (
    ("bach", ".mxl", False),
    ("essenFolksong", ".abc", True),
    ("palestrina", ".krn", False),
    ("ryansMammoth", ".abc", True),
    ("oneills1850", ".abc", True),
    ("airdsAirs", ".abc", True),
)

#: Ensembles for multi-part works, as GM programs from the top part down.
_ENSEMBLES = (
    (40, 40, 41, 42),  # string quartet
    (52, 52, 52, 52),  # choir
    (19, 19, 19, 19),  # church organ
    (56, 60, 57, 58),  # brass
    (73, 68, 71, 70),  # winds
    (0, 0, 0, 0),  # piano
    (48, 48, 48, 48),  # string ensemble
    (22, 21, 23, 32),  # reed band with bass
)
#: Lead instruments for single-line tunes.
_LEADS = (40, 73, 110, 21, 0, 74, 22, 68, 71, 25, 24, 105, 109)

# General MIDI families (first program of each family of eight).
_MELODY_PROGRAMS = (0, 1, 4, 11, 16, 22, 24, 26, 40, 56, 61, 64, 65, 66, 68, 71, 73, 80, 81, 85)
_CHORD_PROGRAMS = (0, 2, 4, 5, 16, 18, 24, 25, 27, 48, 49, 50, 88, 89, 90, 91, 94)
_BASS_PROGRAMS = (32, 33, 34, 35, 36, 37, 38, 39, 43)
_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
_PROGRESSIONS = (
    (0, 4, 5, 3), (0, 5, 3, 4), (0, 3, 4, 4), (5, 3, 0, 4), (0, 3, 0, 4),
    (0, 1, 4, 0), (0, 5, 1, 4), (3, 4, 0, 0), (0, 2, 3, 4), (5, 4, 3, 4),
)
_STRUCTURES = (
    "IVCVCBCO", "VCVCCO", "IVVCVCBCC", "IVCVCO", "VVCVVCBC", "IAVCAVCBCO",
)


@dataclass(frozen=True)
class Work:
    """One music21 corpus work: a corpus path and, for opus files, a tune number."""

    path: str
    number: int | None = None

    @property
    def key(self) -> str:
        """Stable text identifier, e.g. ``'essenFolksong/altdeu10.abc#7'``."""
        return self.path if self.number is None else f"{self.path}#{self.number}"


@functools.lru_cache(maxsize=1)
def music21_catalog() -> tuple[Work, ...]:
    """Deterministic list of usable music21 corpus works.

    Collections are interleaved round-robin (bach, essen, palestrina, ...)
    so any prefix mixes styles.  Enumerating reads the ABC files' ``X:``
    lines only; nothing is parsed.

    Returns
    -------
    works : tuple of Work
    """
    from music21 import corpus

    lists = []
    for name, ext, multi in _COLLECTIONS:
        works = []
        paths = sorted(str(p) for p in corpus.getComposer(name) if str(p).endswith(ext))
        for p in paths:
            rel = p.split("/corpus/", 1)[-1]
            if not multi:
                works.append(Work(rel))
                continue
            with open(p, encoding="utf-8", errors="replace") as fh:
                numbers = [
                    int(line[2:].strip().split()[0])
                    for line in fh
                    if line.startswith("X:") and line[2:].strip().split()[:1]
                    and line[2:].strip().split()[0].isdigit()
                ]
            if len(numbers) <= 1:
                works.append(Work(rel))
            else:
                works.extend(Work(rel, n) for n in dict.fromkeys(numbers))
        lists.append(works)
    return tuple(interleave(lists))


def interleave(lists: list[list]) -> list:
    """Round-robin merge: the first item of each list, then the second of each, and so on."""
    return [w[i] for i in range(max(map(len, lists), default=0)) for w in lists if i < len(w)]


def _part_notes(part) -> list[tuple[float, float, int, int]]:
    """(onset quarters, duration quarters, pitch, velocity) of a part, ties merged."""
    notes: list[list] = []
    open_ties: dict[int, list] = {}
    for el in part.flatten().notes:
        on, ql = float(el.offset), float(el.quarterLength)
        if ql <= 0:
            continue  # grace notes
        vel = el.volume.velocity if el.volume.velocity else 80
        tie = el.tie.type if el.tie is not None else None
        for p in el.pitches:
            m = int(p.midi)
            if tie in ("stop", "continue") and m in open_ties:
                open_ties[m][1] = on + ql - open_ties[m][0]
                if tie == "stop":
                    del open_ties[m]
                continue
            n = [on, ql, m, int(vel)]
            notes.append(n)
            if tie == "start":
                open_ties[m] = n
    return [tuple(n) for n in notes]


def _has_repeats(score) -> bool:
    """Whether a score has repeat barlines or jumps (expanding them deep-copies the score)."""
    from music21 import bar, repeat

    return any(True for _ in score.recurse().getElementsByClass((bar.Repeat, repeat.RepeatExpression)))


def music21_song(work: Work, *, rng: np.random.Generator):
    """Turn a music21 corpus work into a multi-track song.

    Repeats are expanded where music21 can; the piece is looped (like sung
    verses) until it lasts at least :data:`MIN_SECONDS` and cut at
    :data:`MAX_SECONDS`.  Programs come from a randomly chosen ensemble,
    since the corpus leaves them at 0.

    Parameters
    ----------
    work : Work
    rng : np.random.Generator

    Returns
    -------
    pm : pretty_midi.PrettyMIDI

    Raises
    ------
    InputError
        If the work cannot be parsed or has fewer than 8 notes.
    """
    import music21
    import pretty_midi

    music21.defaults.ticksPerQuarter = 480
    try:
        score = music21.corpus.parse(work.path, number=work.number)
    except Exception as e:  # music21 raises many kinds of errors on odd files
        raise InputError(f"music21 could not parse {work.key}: {e}") from None
    if _has_repeats(score):
        try:
            score = score.expandRepeats()
        except Exception:
            pass  # some scores have inconsistent repeat marks: play them as written
    parts = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]
    tracks = [n for n in (_part_notes(p) for p in parts) if n]
    if sum(len(t) for t in tracks) < 8:
        raise InputError(f"music21 work {work.key} has too few notes")
    length_q = max(n[0] + n[1] for t in tracks for n in t)
    # order tracks from high to low so the ensemble's top voice gets the lead
    tracks.sort(key=lambda t: -float(np.mean([n[2] for n in t])))
    tempo = float(rng.uniform(66, 132)) if len(tracks) > 1 else float(rng.uniform(84, 150))
    spq = 60.0 / tempo
    once = length_q * spq
    loops = int(min(6, max(1, np.ceil(MIN_SECONDS / once)))) if once > 0 else 1
    end = min(MAX_SECONDS, loops * once)
    if len(tracks) == 1:
        programs: tuple[int, ...] = (int(rng.choice(_LEADS)),)
    else:
        ens = _ENSEMBLES[int(rng.integers(len(_ENSEMBLES)))]
        programs = tuple(ens[min(i, len(ens) - 1)] for i in range(len(tracks)))
    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=tempo)
    for track, prog in zip(tracks, programs):
        inst = pretty_midi.Instrument(program=int(prog))
        for k in range(loops):
            for on, ql, pitch, vel in track:
                s = (on + k * length_q) * spq
                if s >= end - 0.05:
                    continue
                e = min(end, s + ql * spq)
                inst.notes.append(pretty_midi.Note(int(np.clip(vel, 30, 120)), pitch, s, e))
        if inst.notes:
            pm.instruments.append(inst)
    return pm


def _rhythm(rng: np.random.Generator, beats: int) -> list[float]:
    """Durations in beats summing to one bar."""
    cells = ((1.0,), (0.5, 0.5), (1.5, 0.5), (2.0,), (0.75, 0.25), (0.5, 1.0, 0.5))
    out: list[float] = []
    while sum(out) < beats:
        cell = cells[int(rng.integers(len(cells)))]
        if sum(out) + sum(cell) <= beats:
            out.extend(cell)
        else:
            out.append(beats - sum(out))
    return out


def generated_song(*, rng: np.random.Generator):
    """A generated multi-instrument song with drums, bass, chords and melody.

    Sections (intro, verse, chorus, bridge, outro) each have their own
    chord progression, melody and drum groove, repeated verbatim wherever
    the section recurs.  Tempo, key, mode, meter and GM programs are random.

    Parameters
    ----------
    rng : np.random.Generator

    Returns
    -------
    pm : pretty_midi.PrettyMIDI
        Four instruments, in order: melody, chords, bass, drums.
    """
    import pretty_midi

    tempo = float(rng.uniform(72, 152))
    beats = 3 if rng.random() < 0.2 else 4
    spb = 60.0 / tempo
    bar = beats * spb
    tonic = int(rng.integers(12))
    scale = _MINOR if rng.random() < 0.35 else _MAJOR
    structure = _STRUCTURES[int(rng.integers(len(_STRUCTURES)))]
    sec_bars = {"I": 4, "O": 4, "B": 4, "A": 4, "V": 8, "C": 8}
    target = float(rng.uniform(MIN_SECONDS + 5, MAX_SECONDS - 10))
    while sum(sec_bars[s] for s in structure) * bar < target:
        structure = structure[:-1] + "VC" + structure[-1]
    while sum(sec_bars[s] for s in structure) * bar > MAX_SECONDS and len(structure) > 2:
        structure = structure[1:]

    def degree_pitch(d: int, base: int) -> int:
        return base + tonic + scale[d % 7] + 12 * (d // 7)

    sections = {}
    for s in dict.fromkeys(structure):
        prog = _PROGRESSIONS[int(rng.integers(len(_PROGRESSIONS)))]
        mel = []  # (beat offset in section, duration beats, scale degree)
        deg = int(rng.integers(0, 5))
        for b in range(sec_bars[s] if s in "VC" else 4):
            if s in "VC" and b >= 4 and rng.random() < 0.7:
                mel.extend((o + 4 * beats, d, g) for o, d, g in mel if o < 4 * beats and int(o // beats) == b - 4)
                continue
            t = 0.0
            root = prog[b % 4]
            for d in _rhythm(rng, beats):
                if t == 0 or rng.random() < 0.3:
                    deg = root + int(rng.choice((0, 2, 4, 7))) if t == 0 else deg + int(rng.integers(-2, 3))
                else:
                    deg += int(rng.integers(-2, 3))
                deg = int(np.clip(deg, 0, 11))
                if s not in "IO" and rng.random() > 0.12:
                    mel.append((b * beats + t, d, deg))
                t += d
        sections[s] = {
            "prog": prog,
            "mel": mel,
            "comp": int(rng.integers(3)),
            "groove": int(rng.integers(3)),
        }
    programs = (
        int(rng.choice(_MELODY_PROGRAMS)),
        int(rng.choice(_CHORD_PROGRAMS)),
        int(rng.choice(_BASS_PROGRAMS)),
    )
    melody, chords, bass = (pretty_midi.Instrument(program=p) for p in programs)
    drums = pretty_midi.Instrument(program=0, is_drum=True)
    vel_base = int(rng.integers(70, 100))

    def add(inst, pitch: int, start_beats: float, dur_beats: float, vel: int) -> None:
        inst.notes.append(pretty_midi.Note(int(np.clip(vel, 20, 127)), int(pitch),
                                           start_beats * spb, (start_beats + dur_beats) * spb))

    pos = 0.0  # in beats
    for s in structure:
        sec = sections[s]
        nb = sec_bars[s]
        for o, d, g in sec["mel"]:
            add(melody, degree_pitch(g, 60 + (12 if s == "C" else 0)), pos + o, d * 0.95,
                vel_base + 10 + int(rng.integers(-8, 9)))
        for b in range(nb):
            root = sec["prog"][b % 4]
            start = pos + b * beats
            triad = [degree_pitch(root + k, 52) for k in (0, 2, 4)]
            hits = {0: [0.0], 1: [float(i) for i in range(beats)], 2: [0.0, beats / 2]}[sec["comp"]]
            for h in hits:
                for p in triad:
                    add(chords, p, start + h, (beats / len(hits)) * 0.9, vel_base - 15)
            bass_root = degree_pitch(root, 36)
            for i in range(beats):
                p = bass_root if i % 2 == 0 or rng.random() < 0.5 else degree_pitch(root + 4, 36)
                add(bass, p, start + i, 0.9, vel_base)
            for i in range(beats * 2):
                t8 = start + i / 2
                add(drums, 42 if sec["groove"] != 2 else 51, t8, 0.25, vel_base - 20 + 10 * (i % 2 == 0))
                if i % 2 == 0:
                    beat = i // 2
                    if beat == 0 or (sec["groove"] == 1 and beat == 2 and beats == 4):
                        add(drums, 36, t8, 0.25, vel_base + 10)
                    elif beat % 2 == 1 or (beats == 3 and beat == 2):
                        add(drums, 38, t8, 0.25, vel_base + 5)
            if b == 0:
                add(drums, 49, start, 1.0, vel_base + 15)
        pos += nb * beats
    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=tempo)
    pm.instruments.extend([melody, chords, bass, drums])
    return pm
