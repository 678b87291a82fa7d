"""MIDI sources: lumps inside Doom WAD files, per-piece facts, and the merge to format 0.

A WAD file starts with a 12-byte header: the magic ``IWAD`` or ``PWAD``, an
int32 lump count and an int32 directory offset (little-endian).  The directory
holds one 16-byte entry per lump: int32 offset, int32 size and an 8-byte name
padded with NUL bytes.  Music lumps in Standard MIDI format begin with ``MThd``.
"""
from __future__ import annotations

import hashlib
import io
import struct

import numpy as np

#: The four bytes every Standard MIDI file starts with.
MIDI_MAGIC = b"MThd"


class WadError(ValueError):
    """The bytes are not a readable WAD file."""


def wad_lumps(data: bytes) -> list[tuple[str, bytes]]:
    """All lumps of a WAD file, in directory order.

    Parameters
    ----------
    data : bytes
        The whole WAD file.

    Returns
    -------
    lumps : list of (name, payload)
        ``name`` without its NUL padding.

    Raises
    ------
    WadError
        If the magic is not IWAD/PWAD or the directory points outside the file.
    """
    if len(data) < 12 or data[:4] not in (b"IWAD", b"PWAD"):
        raise WadError(f"not a WAD file: starts with {data[:4]!r}, expected b'IWAD' or b'PWAD'")
    _, count, dir_off = struct.unpack_from("<4sii", data, 0)
    if count < 0 or dir_off < 12 or dir_off + 16 * count > len(data):
        raise WadError(f"WAD directory ({count} entries at {dir_off}) lies outside the {len(data)}-byte file")
    out = []
    for i in range(count):
        off, size, raw = struct.unpack_from("<ii8s", data, dir_off + 16 * i)
        if off < 0 or size < 0 or off + size > len(data):
            raise WadError(f"lump {i} ({raw!r}) at {off}+{size} lies outside the {len(data)}-byte file")
        out.append((raw.split(b"\0", 1)[0].decode("ascii", "replace"), data[off : off + size]))
    return out


def midi_lumps(data: bytes) -> list[tuple[str, bytes]]:
    """The lumps of a WAD file that are Standard MIDI files (start with ``MThd``)."""
    return [(name, b) for name, b in wad_lumps(data) if b[:4] == MIDI_MAGIC]


def dedupe(items: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Keep the first item of each distinct payload (SHA-1 of the bytes), in order."""
    seen: set[str] = set()
    out = []
    for name, b in items:
        h = hashlib.sha1(b).hexdigest()
        if h not in seen:
            seen.add(h)
            out.append((name, b))
    return out


def load_midi(data: bytes):
    """Parse MIDI bytes with pretty_midi (warnings about odd files silenced)."""
    import warnings

    import pretty_midi

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pretty_midi.PrettyMIDI(io.BytesIO(data))


def melody_part(pm) -> int:
    """Index of the instrument that most likely carries the melody, or -1.

    The non-drum instrument with notes whose mean pitch is highest.
    """
    best, idx = -1.0, -1
    for i, inst in enumerate(pm.instruments):
        if inst.is_drum or not inst.notes:
            continue
        m = float(np.mean([n.pitch for n in inst.notes]))
        if m > best:
            best, idx = m, i
    return idx


def describe(pm) -> dict:
    """Facts the planner needs about a piece, JSON-serialisable.

    Returns
    -------
    info : dict
        ``seconds`` (end time), ``parts`` (``is_drum``, ``notes``,
        ``mean_pitch`` per instrument), ``melody`` (:func:`melody_part`) and
        ``density``: non-drum note onsets per whole second of the piece.
    """
    end = float(pm.get_end_time())
    density = np.zeros(int(np.ceil(end)) + 1, dtype=np.int64)
    parts = []
    for inst in pm.instruments:
        pitches = [n.pitch for n in inst.notes]
        parts.append({"is_drum": bool(inst.is_drum), "notes": len(pitches),
                      "mean_pitch": float(np.mean(pitches)) if pitches else 0.0})
        if not inst.is_drum and inst.notes:
            np.add.at(density, np.floor([n.start for n in inst.notes]).astype(np.int64), 1)
    return {"seconds": end, "parts": parts, "melody": melody_part(pm), "density": density.tolist()}


def to_format0(data: bytes) -> bytes:
    """Merge every track of a MIDI file into one (format 0), keeping all events and times.

    Parameters
    ----------
    data : bytes
        A format 0, 1 or 2 Standard MIDI file.

    Returns
    -------
    data0 : bytes
        A format 0 file with the same ticks per beat.
    """
    import mido

    mf = mido.MidiFile(file=io.BytesIO(data))
    out = mido.MidiFile(type=0, ticks_per_beat=mf.ticks_per_beat)
    out.tracks.append(mido.merge_tracks(mf.tracks))
    buf = io.BytesIO()
    out.save(file=buf)
    return buf.getvalue()
