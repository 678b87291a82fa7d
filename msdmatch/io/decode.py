"""Read one input item (audio or MIDI) from a local path or URL.

This is the I/O edge of featurization: bytes come in through fsspec, so
``s3://`` works the same as a local path.  Every problem with the item itself
is raised as :class:`~msdmatch.errors.InputError` with a one-line reason, which
the stage records in the store's ``failures`` table.
"""
from __future__ import annotations

import io
import re
import warnings

import numpy as np

from msdmatch.errors import InputError

#: Largest input file accepted, in bytes (a 30 s preview is ~0.5 MB).
MAX_AUDIO_BYTES = 200 * 2**20
MAX_MIDI_BYTES = 8 * 2**20
#: Largest number of tracks a MIDI file may declare.
MAX_MIDI_TRACKS = 1024
#: Audio with more than this fraction of samples at full scale is clipped
#: noise, not music (a loud master clips well under 1% of its samples).
MAX_CLIPPED_FRACTION = 0.2


def read_bytes(source: str, *, max_bytes: int, storage_options: dict | None = None) -> bytes:
    """Read a whole file through fsspec, refusing empty and oversized files."""
    import fsspec

    try:
        with fsspec.open(source, "rb", **(storage_options or {})) as f:
            size = getattr(f, "size", None)
            if size is not None and size > max_bytes:
                raise InputError(f"file is {size} bytes, over the {max_bytes}-byte limit")
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise InputError("file not found") from None
    except PermissionError:
        raise InputError("permission denied") from None
    except IsADirectoryError:
        raise InputError("is a directory, not a file") from None
    if len(data) == 0:
        raise InputError("empty file (0 bytes)")
    if len(data) > max_bytes:
        raise InputError(f"file is over the {max_bytes}-byte limit")
    return data


def decode_audio(data: bytes, *, max_seconds: float) -> tuple[np.ndarray, int]:
    """Decode audio bytes to mono float32 with soundfile.

    Parameters
    ----------
    data : bytes
        Encoded audio (mp3, wav, flac, ogg).
    max_seconds : float
        Longer audio is refused before it is decoded.

    Returns
    -------
    y : np.ndarray [shape=(n_samples,), dtype=float32]
    sr : int
    """
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            sr = int(f.samplerate)
            if f.frames > max_seconds * sr:
                raise InputError(
                    f"audio is {f.frames / sr:.0f} s long, over the {max_seconds:.0f} s limit"
                )
            y = f.read(dtype="float32", always_2d=True)
    except InputError:
        raise
    except Exception as e:  # libsndfile reports corrupt data in many ways
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        msg = re.sub(r"Error opening <[^>]*>: ", "", msg)
        if "does not exist or is not a regular file" in msg:  # libsndfile's words for a stub of data
            msg = "data is truncated or not a recognised format"
        raise InputError(f"cannot decode audio: {msg}") from None
    if y.shape[0] == 0:
        raise InputError("audio has no samples")
    clipped = float(np.mean(np.abs(y) >= 0.999))
    if clipped > MAX_CLIPPED_FRACTION:
        raise InputError(f"audio is clipped noise: {clipped:.0%} of samples at full scale")
    return y.mean(axis=1), sr


def decode_midi(data: bytes):
    """Parse MIDI bytes with pretty_midi.

    Returns
    -------
    pm : pretty_midi.PrettyMIDI
    """
    import pretty_midi

    if data[:4] != b"MThd":
        raise InputError("not a MIDI file (no MThd header)")
    if len(data) >= 12:
        n_tracks = int.from_bytes(data[10:12], "big")
        if n_tracks > MAX_MIDI_TRACKS:
            raise InputError(f"MIDI header declares {n_tracks} tracks, over the {MAX_MIDI_TRACKS} limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pretty_midi.PrettyMIDI(io.BytesIO(data))
    except Exception as e:  # mido/pretty_midi raise many types on corrupt data
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"cannot parse MIDI: {msg[:200]}") from None
