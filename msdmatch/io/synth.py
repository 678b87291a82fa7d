"""Render MIDI to audio with fluidsynth and a General MIDI soundfont.

Each file gets a fresh ``fluidsynth.Synth`` (a reused one carries voice state
from file to file, so features would depend on the order of work), while one
synthesizer per (process, soundfont, sample rate) stays loaded to keep
fluidsynth's sample cache warm.  Output is float (no dither), mono, at the
requested rate, peak-normalised: the same MIDI always gives the same samples.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from msdmatch.errors import InputError, ParameterError

#: Debian's soundfont directory, searched for names given without a path.
_SF_DIRS = ("/usr/share/sounds/sf2", "/usr/share/sounds/sf3", "/usr/share/soundfonts")


def default_soundfont() -> str:
    """Path of the soundfont used for query synthesis (TimGM6mb, shipped by pretty_midi)."""
    import pretty_midi

    return str(Path(pretty_midi.__file__).parent / "TimGM6mb.sf2")


def resolve_soundfont(name: str | None) -> str:
    """Turn a soundfont name or path into an existing path.

    Parameters
    ----------
    name : str or None
        ``None`` for the default, a path, or a file name looked up in
        Debian's soundfont directories (e.g. ``"FluidR3_GM.sf2"``).
    """
    if name is None:
        return default_soundfont()
    if os.path.isfile(name):
        return name
    for d in _SF_DIRS:
        p = os.path.join(d, name)
        if os.path.isfile(p):
            return p
    raise ParameterError(
        f"soundfont {name!r} not found as a path or in {', '.join(_SF_DIRS)}; "
        "install it (see README setup) or pass a path to an .sf2/.sf3 file"
    )


#: MIDI channels of the synthesizer: one per instrument.
_CHANNELS = 256


def _new_synth(sf2_path: str, sr: int):
    try:
        import fluidsynth
    except ImportError as e:  # libfluidsynth missing
        raise ParameterError(
            "fluidsynth is not usable: install the Debian package 'fluidsynth' "
            f"(apt-get install -y --no-install-recommends fluidsynth); {e}"
        ) from None
    # No reverb or chorus; the soundfont's own sound only.
    synth = fluidsynth.Synth(samplerate=float(sr), gain=0.3, channels=_CHANNELS,
                             **{"synth.reverb.active": 0, "synth.chorus.active": 0})
    sfid = synth.sfload(sf2_path)
    if sfid < 0:
        synth.delete()
        raise ParameterError(f"fluidsynth could not load soundfont {sf2_path!r}")
    return synth, sfid


def check_soundfont(sf2_path: str, *, sr: int = 22050) -> None:
    """Load a soundfont once and let it go, so that a bad one is refused before any work.

    Raises
    ------
    ParameterError
        If fluidsynth cannot load it (not a soundfont, truncated, unreadable).
    """
    with open(sf2_path, "rb") as f:
        head = f.read(12)
    if head[:4] != b"RIFF" or head[8:12] not in (b"sfbk", b"DLS "):
        raise ParameterError(f"{sf2_path!r} is not a soundfont (no RIFF sfbk header); pass an .sf2/.sf3 file")
    saved = os.dup(2)  # fluidsynth prints its own errors on the process's stderr
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            synth, _ = _new_synth(sf2_path, sr)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    synth.delete()


@functools.lru_cache(maxsize=4)
def _keeper(sf2_path: str, sr: int):
    """Keep a synthesizer alive per process so fluidsynth's sample cache stays warm.

    Loading the same soundfont again then costs 0.04-0.15 s, not 0.1-0.4 s.
    """
    return _new_synth(sf2_path, sr)


def _events(pm, sr: int) -> list[tuple[int, int, int, int, int, int]]:
    """(sample, order, kind, channel, a, b) events; one channel per instrument."""
    ev = []
    for ch, inst in enumerate(i for i in pm.instruments if i.notes):
        ev.append((0, 0, 0, ch, 128 if inst.is_drum else 0, inst.program))
        for n in inst.notes:
            ev.append((int(round(n.start * sr)), 2, 1, ch, n.pitch, n.velocity))
            ev.append((int(round(n.end * sr)), 1, 2, ch, n.pitch, 0))
        for b in inst.pitch_bends:
            ev.append((int(round(b.time * sr)), 1, 3, ch, b.pitch, 0))
        for c in inst.control_changes:
            ev.append((int(round(c.time * sr)), 1, 4, ch, c.number, c.value))
    ev.sort()
    return ev


def render(pm, *, sr: int = 22050, soundfont: str | None = None, tail: float = 1.0) -> np.ndarray:
    """Synthesize a ``pretty_midi.PrettyMIDI`` object.

    Rendering is deterministic: the same MIDI gives the same samples whatever
    was rendered before on this synthesizer.

    Parameters
    ----------
    pm : pretty_midi.PrettyMIDI
        The MIDI data.
    sr : int
        Output sample rate in Hz.
    soundfont : str or None
        Soundfont path or name; ``None`` uses :func:`default_soundfont`.
    tail : float
        Seconds rendered after the last note ends.

    Returns
    -------
    y : np.ndarray [shape=(n_samples,), dtype=float32]
        Mono audio, peak-normalised to 1.

    Raises
    ------
    InputError
        If the MIDI has no notes or renders to silence.
    """
    path = resolve_soundfont(soundfont)
    events = _events(pm, int(sr))
    if not any(e[2] == 1 for e in events):
        raise InputError("MIDI file has no notes")
    n_channels = sum(1 for e in events if e[2] == 0)
    if n_channels > _CHANNELS:
        raise InputError(f"MIDI file has {n_channels} instruments, over the {_CHANNELS} limit")
    # A fresh synthesizer per file: a reused one keeps voice state that makes
    # the output depend on what was rendered before it.
    _keeper(path, int(sr))
    synth, sfid = _new_synth(path, int(sr))
    try:
        y = _play(synth, sfid, events, n_tail=int(tail * sr))
    finally:
        synth.delete()
    peak = float(np.max(np.abs(y)))
    if peak <= 0:
        raise InputError("MIDI renders to silence with this soundfont")
    return y / peak


def _play(synth, sfid: int, events: list, *, n_tail: int) -> np.ndarray:
    chunks, now = [], 0
    for t, _, kind, ch, a, b in events:
        if t > now:
            chunks.append(_pull(synth, t - now))
            now = t
        if kind == 0:
            if synth.program_select(ch, sfid, a, b) == -1:
                synth.program_select(ch, sfid, a, 0)
        elif kind == 1:
            synth.noteon(ch, a, b)
        elif kind == 2:
            synth.noteoff(ch, a)
        elif kind == 3:
            synth.pitch_bend(ch, a)
        else:
            synth.cc(ch, a, b)
    chunks.append(_pull(synth, n_tail))
    return np.concatenate(chunks)


@functools.lru_cache(maxsize=1)
def _write_float():
    """``fluid_synth_write_float``: float output, no dither.

    Dither's state would make 16-bit output depend on what was rendered before.
    """
    import ctypes

    import fluidsynth

    f = fluidsynth._fl.fluid_synth_write_float
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                  ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    return f


def _pull(synth, n: int) -> np.ndarray:
    buf = np.zeros((n, 2), dtype=np.float32)
    if n:
        _write_float()(synth.synth, n, buf.ctypes.data, 0, 2, buf.ctypes.data, 1, 2)
    return buf.mean(axis=1)
