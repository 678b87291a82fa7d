"""Benchmark inputs built in code: multi-instrument MIDI songs and their MP3 'previews'."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def song(seed: int, *, seconds: float = 30.0):
    """A generated multi-instrument song (the demo corpus's generator)."""
    from msdmatch.demo.corpus import make_song, plan_corpus

    spec = plan_corpus(songs=1, distractors=0, seed=seed, music21_fraction=0.0)[0]
    pm, _ = make_song(spec)
    return pm


def previews(out: Path, *, n: int, distinct: int = 25, seconds: float = 30.0) -> list[Path]:
    """``n`` 30 s MP3 previews (``distinct`` renderings, copied under new names)."""
    import lameenc

    from msdmatch.io.synth import render

    out.mkdir(parents=True, exist_ok=True)
    base = []
    for k in range(distinct):
        p = out / f"TRBENCH{k:011d}.mp3"
        if not p.exists():
            y = render(song(k), sr=22050, soundfont="FluidR3_GM.sf2")[: int(seconds * 22050)]
            enc = lameenc.Encoder()
            enc.set_bit_rate(128)
            enc.set_in_sample_rate(22050)
            enc.set_channels(1)
            p.write_bytes(enc.encode((np.clip(y * 0.8, -1, 1) * 32767).astype(np.int16).tobytes()) + enc.flush())
        base.append(p)
    paths = list(base)
    for k in range(distinct, n):
        p = out / f"TRBENCH{k:011d}.mp3"
        if not p.exists():
            shutil.copy(base[k % distinct], p)
        paths.append(p)
    return paths[:n]
