"""Generate a corpus of bad input files (audio and MIDI) mixed with good ones.

Every bad file is broken in a way that no decoder can repair (a destroyed
header, nothing pitched, an impossible length, ...), so the featurize stage
must put each of them in ``failures``.  Files are small except ``huge``, which
are sparse files: their size is over the byte limit, their disk use is ~0.

``write_bad_audio(d, good_mp3, n=...)`` and ``write_bad_midi(d, good_mid, n=...)``
return ``{file name: kind}`` of the bad files they wrote.  The kinds cycle so
each appears about ``n / len(kinds)`` times, every variant seeded.

A MIDI header stores its track count in 16 bits, so "declares 100,000 tracks"
cannot be written; ``manytracks`` files declare 65,535 (the field's maximum)
or other counts over the reader's limit.
"""
from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np

SR = 22050
#: A file name that is not valid UTF-8 (Latin-1 bytes), as the OS gives it to Python.
NON_UTF8 = os.fsdecode(b"caf\xe9-\xff")

AUDIO_KINDS = ("truncated", "bitflipped", "zerobyte", "wrongext", "huge", "toolong", "silent",
               "clippednoise", "nan", "nonutf8")
MIDI_KINDS = ("truncated", "bitflipped", "zerobyte", "wrongext", "huge", "nonotes", "onlydrums",
              "absurdtempo", "manytracks", "nonutf8")


def _wav_bytes(y: np.ndarray, sr: int = SR, *, subtype: str = "PCM_16") -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, y, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def _sparse(path: Path, size: int, head: bytes) -> None:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)


def _mp3_frame_starts(data: bytes) -> list[int]:
    return [i for i in range(len(data) - 1) if data[i] == 0xFF and (data[i + 1] & 0xE0) == 0xE0]


def bad_audio_file(kind: str, k: int, rng: np.random.Generator, good_mp3: bytes) -> tuple[str, bytes | None]:
    """One bad audio file: (file name, content); content None means written specially."""
    if kind == "truncated":  # shorter than one MP3 frame (418 bytes at 128 kbit/s, 22,050 Hz)
        return f"truncated{k}.mp3", good_mp3[: int(rng.integers(1, 400))]
    if kind == "bitflipped":  # one bit flipped in every frame sync word: no frame is found
        b = bytearray(good_mp3)
        for i in _mp3_frame_starts(good_mp3):
            b[i] ^= 1 << int(rng.integers(0, 8))
        return f"bitflipped{k}.mp3", bytes(b)
    if kind == "zerobyte":
        return f"zerobyte{k}.{('mp3', 'wav', 'flac')[k % 3]}", b""
    if kind == "wrongext":  # a MIDI file or text under an audio extension
        if k % 2:
            return f"wrongext{k}.mp3", b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0MTrk\x00\x00\x00\x04\x00\xff\x2f\x00"
        return f"wrongext{k}.wav", f"id,title\n{k},not audio\n".encode() * 10
    if kind == "huge":  # over the 200 MiB input limit (sparse)
        return f"huge{k}.mp3", None
    if kind == "toolong":  # a valid WAV of 8 minutes, over max_frames (464 s)
        return f"toolong{k}.wav", _wav_bytes(np.zeros(8000 * 480, np.int16), 8000)
    if kind == "silent":
        return f"silent{k}.wav", _wav_bytes(np.zeros(SR * int(rng.integers(1, 4)), np.float32))
    if kind == "clippednoise":  # full-scale noise clipped at +-1
        y = np.clip(8.0 * rng.standard_normal(SR * 2), -1, 1).astype(np.float32)
        return f"clippednoise{k}.wav", _wav_bytes(y)
    if kind == "nan":
        y = 0.1 * rng.standard_normal(SR).astype(np.float32)
        y[rng.integers(0, SR, 5)] = np.nan if k % 2 == 0 else np.inf
        return f"nan{k}.wav", _wav_bytes(y, subtype="FLOAT")
    if kind == "nonutf8":  # a decodable file whose name is not UTF-8
        return f"{NON_UTF8}{k}.mp3", good_mp3
    raise ValueError(kind)


def _pm_bytes(pm) -> bytes:
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


def bad_midi_file(kind: str, k: int, rng: np.random.Generator, good_mid: bytes) -> tuple[str, bytes | None]:
    """One bad MIDI file: (file name, content); content None means written specially."""
    import pretty_midi

    if kind == "truncated":  # cut inside the header or the first track chunk header
        return f"truncated{k}.mid", good_mid[: int(rng.integers(1, 22))]
    if kind == "bitflipped":  # a bit flipped in the MThd magic or in the header's chunk length
        b = bytearray(good_mid)
        b[int(rng.integers(0, 8))] ^= 1 << int(rng.integers(0, 8))
        return f"bitflipped{k}.mid", bytes(b)
    if kind == "zerobyte":
        return f"zerobyte{k}.mid", b""
    if kind == "wrongext":  # audio or text under a MIDI extension
        return f"wrongext{k}.mid", (b"ID3\x03\x00" + bytes(200)) if k % 2 else b"just text\n" * 5
    if kind == "huge":  # over the 8 MiB MIDI limit (sparse)
        return f"huge{k}.mid", None
    if kind == "nonotes":
        pm = pretty_midi.PrettyMIDI(initial_tempo=float(rng.integers(60, 180)))
        pm.instruments.append(pretty_midi.Instrument(program=int(rng.integers(0, 128))))
        return f"nonotes{k}.mid", _pm_bytes(pm)
    if kind == "onlydrums":
        pm = pretty_midi.PrettyMIDI()
        dr = pretty_midi.Instrument(0, is_drum=True)
        for j in range(int(rng.integers(1, 30))):
            dr.notes.append(pretty_midi.Note(100, int(rng.integers(35, 82)), j * 0.25, j * 0.25 + 0.1))
        pm.instruments.append(dr)
        return f"onlydrums{k}.mid", _pm_bytes(pm)
    if kind == "absurdtempo":  # 3.6-8 BPM (a MIDI tempo is at most 2**24 us per beat): ~10-25 minutes
        pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=float(rng.uniform(3.6, 8.0)))
        inst = pretty_midi.Instrument(0)
        inst.notes += [pretty_midi.Note(100, 60, 0, 1), pretty_midi.Note(100, 64, 40000, 40001)]
        pm.instruments.append(inst)
        return f"absurdtempo{k}.mid", _pm_bytes(pm)
    if kind == "manytracks":
        n = 65535 if k % 2 == 0 else int(rng.integers(1025, 65535))
        return f"manytracks{k}.mid", (b"MThd" + struct.pack(">IHHH", 6, 1, n, 480)
                                      + b"MTrk\x00\x00\x00\x04\x00\xff\x2f\x00")
    if kind == "nonutf8":
        return f"{NON_UTF8}{k}.mid", good_mid
    raise ValueError(kind)


def _write(d: Path, name: str, data: bytes | None, limit: int) -> None:
    p = d / name
    if data is None:
        _sparse(p, limit + 1 + 4096, b"\xff\xfb\x90\x00")
    else:
        p.write_bytes(data)


def write_bad_audio(d: Path, good_mp3: bytes, *, n: int = 110, seed: int = 7) -> dict[str, str]:
    """Write ``n`` bad audio files into ``d``; returns {file name: kind}."""
    from msdmatch.io.decode import MAX_AUDIO_BYTES

    rng = np.random.default_rng(seed)
    out = {}
    for j in range(n):
        kind = AUDIO_KINDS[j % len(AUDIO_KINDS)]
        name, data = bad_audio_file(kind, j, rng, good_mp3)
        _write(d, name, data, MAX_AUDIO_BYTES)
        out[name] = kind
    return out


def write_bad_midi(d: Path, good_mid: bytes, *, n: int = 110, seed: int = 11) -> dict[str, str]:
    """Write ``n`` bad MIDI files into ``d``; returns {file name: kind}."""
    from msdmatch.io.decode import MAX_MIDI_BYTES

    rng = np.random.default_rng(seed)
    out = {}
    for j in range(n):
        kind = MIDI_KINDS[j % len(MIDI_KINDS)]
        name, data = bad_midi_file(kind, j, rng, good_mid)
        _write(d, name, data, MAX_MIDI_BYTES)
        out[name] = kind
    return out
