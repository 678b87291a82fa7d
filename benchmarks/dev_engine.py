"""A dev set whose recordings come from an engine that neither training nor the evaluation set uses.

TiMidity++ with the freepats GUS patches (Debian ``timidity`` and ``freepats``, fetched with
``apt-get download`` and unpacked with ``dpkg -x``, never installed) renders each query MIDI of a
``msdmatch demo-data`` corpus whole, note for note; a 30 s window at an offset drawn from the
track id is cut, peak-normalised and encoded as MP3.  freepats has patches for 72 of the 128
melodic GM programs, so parts without one fall silent, as in real renditions.  The output reuses
the corpus's track ids, ``split.csv``, ``truth.csv`` and ``recordings.jsonl``, so
``benchmarks/pse_recall.py --corpus OUT --db OUT/db.zarr --queries synth=CORPUS/q-synth.zarr ...``
ranks the corpus's own query stores against it.  For choosing models (a dev set); the
real-material evaluation set (``benchmarks/realworld.py``) stays for evaluation only.

    python benchmarks/dev_engine.py DEV --corpus CORPUS [--debs DIR] [--workers 2]
    msdmatch featurize audio DEV/audio --out DEV/db.zarr
"""
from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import wave

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _realworld import debian  # noqa: E402
from _realworld.render import encode_mp3  # noqa: E402

#: timidity with the libraries a minimal system lacks, and the patches.
PACKAGES = ("timidity", "freepats", "libao4", "libao-common", "libspeex1")
#: Where freepats's configuration and patches are inside the unpacked tree.
FREEPATS_CFG, FREEPATS_DIR = "etc/timidity/freepats.cfg", "usr/share/midi/freepats"
SR, PREVIEW_SECONDS, KBPS = 22050, 30.0, 128
#: Files of the corpus that describe its previews, copied as they are.
CORPUS_FILES = ("split.csv", "truth.csv", "recordings.jsonl")
#: Written first into OUT; a folder with files but without it is refused.
MARKER = "dev_engine.json"


def freepats_config(text: str, root: str) -> str:
    """freepats's timidity configuration with its patch ``dir`` moved into the unpacked ``root``."""
    return text.replace(f"dir /{FREEPATS_DIR}", f"dir {os.path.join(root, FREEPATS_DIR)}")


def preview_offset(track_id: str, n_samples: int, n_window: int) -> int:
    """Start sample of the preview window: drawn from ``track_id``'s hash, within ``[0, n_samples - n_window]``."""
    seed = int(hashlib.sha256(track_id.encode()).hexdigest()[:8], 16)
    return int(np.random.default_rng(seed).integers(0, max(1, n_samples - n_window + 1)))


def preview(y: np.ndarray, track_id: str, *, sr: int = SR, seconds: float = PREVIEW_SECONDS) -> np.ndarray:
    """The preview window of a rendition ``y`` (n_samples,), peak-normalised to 0.9."""
    n = int(seconds * sr)
    y = y[preview_offset(track_id, len(y), n):][:n]
    peak = float(np.abs(y).max()) if y.size else 0.0
    if peak == 0.0:
        raise ValueError("the rendition is silent")
    return (y / peak * 0.9).astype(np.float32)


def render(midi: str, *, timidity: str, cfg: str, lib_dir: str) -> np.ndarray:
    """Mono float32 samples at :data:`SR` of ``midi`` rendered by timidity (reverb and chorus off)."""
    env = dict(os.environ, LD_LIBRARY_PATH=lib_dir)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "x.wav")
        subprocess.run([timidity, "-c", cfg, "-Ow1S", "-s", str(SR), "--output-mono", "-EFreverb=0",
                        "-EFchorus=0", "-o", out, midi], env=env, capture_output=True, check=True)
        with wave.open(out) as w:
            return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0


def _make(job: tuple) -> str:
    midi, out, track_id, tools = job
    try:
        y = preview(render(midi, **tools), track_id)
    except (subprocess.CalledProcessError, ValueError) as e:
        return f"{track_id}: {e}"
    tmp = out + ".part"
    with open(tmp, "wb") as fh:
        fh.write(encode_mp3(y, sr=SR, out_sr=SR, kbps=KBPS))
    os.replace(tmp, out)
    return ""


def build(out: str, corpus: str, *, debs: str | None = None, workers: int = 2) -> dict:
    """Render every (query, track) pair of ``corpus``'s ``split.csv`` into ``out/audio``.

    Resumable: previews already written are skipped (each is written whole or not at all).

    Parameters
    ----------
    out : str
        A new or empty folder, or one this function wrote before.
    corpus : str
        A ``msdmatch demo-data`` corpus (``midi/``, ``split.csv``, ``truth.csv``, ``recordings.jsonl``).
    debs : str, optional
        Where the .deb files are downloaded (default ``out/debs``).
    workers : int
        Rendering processes.

    Returns
    -------
    summary : dict
        ``pairs``, ``rendered`` and ``failed`` (one ``'<track_id>: <reason>'`` line each).
    """
    from concurrent.futures import ProcessPoolExecutor

    missing = [n for n in (*CORPUS_FILES, "midi") if not os.path.exists(os.path.join(corpus, n))]
    if missing:
        raise FileNotFoundError(f"--corpus {corpus!r} lacks {', '.join(missing)}; expected a msdmatch demo-data corpus")
    mark = os.path.join(out, MARKER)
    spec = {"corpus": os.path.abspath(corpus), "packages": list(PACKAGES), "sr": SR, "kbps": KBPS}
    if os.path.exists(mark):
        with open(mark, encoding="utf-8") as fh:
            if json.load(fh) != spec:
                raise FileExistsError(f"{out!r} was built from another corpus or with other settings "
                                      f"(see {MARKER}); choose another OUT")
    elif os.path.isdir(out) and os.listdir(out):
        raise FileExistsError(f"{out!r} holds files dev_engine did not write; expected a new or empty folder")
    os.makedirs(out, exist_ok=True)
    with open(mark, "w", encoding="utf-8") as fh:
        json.dump(spec, fh)
    root = os.path.join(out, "root")
    debian.extract(debian.download(debs or os.path.join(out, "debs"), packages=PACKAGES), root)
    cfg = os.path.join(out, "freepats.cfg")
    with open(os.path.join(root, FREEPATS_CFG), encoding="utf-8") as fh:
        text = freepats_config(fh.read(), os.path.abspath(root))
    with open(cfg, "w", encoding="utf-8") as fh:
        fh.write(text)
    libao = glob.glob(os.path.join(root, "usr/lib/*/libao.so.4"))
    if not libao:
        raise FileNotFoundError(f"libao.so.4 not found under {root}/usr/lib; was libao4 extracted?")
    tools = {"timidity": os.path.join(root, "usr/bin/timidity"), "cfg": cfg, "lib_dir": os.path.dirname(libao[0])}
    os.makedirs(os.path.join(out, "audio"), exist_ok=True)
    for name in CORPUS_FILES:
        shutil.copyfile(os.path.join(corpus, name), os.path.join(out, name))
    with open(os.path.join(corpus, "split.csv"), encoding="utf-8") as fh:
        pairs = sorted({(r["query_id"], r["track_id"]) for r in csv.DictReader(fh) if r["query_id"] and r["track_id"]})
    jobs = [(os.path.join(corpus, "midi", f"{q}.mid"), os.path.join(out, "audio", f"{t}.mp3"), t, tools)
            for q, t in pairs if not os.path.exists(os.path.join(out, "audio", f"{t}.mp3"))]
    with ProcessPoolExecutor(workers) as ex:
        failed = [r for r in ex.map(_make, jobs) if r]
    return {"pairs": len(pairs), "rendered": len(jobs) - len(failed), "failed": failed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--corpus", required=True, help="a msdmatch demo-data corpus (midi/, split.csv, ...)")
    ap.add_argument("--debs", default=None, help="where the .deb files go (default OUT/debs)")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    try:
        res = build(a.out, a.corpus, debs=a.debs, workers=a.workers)
    except (FileExistsError, FileNotFoundError) as e:
        print(f"dev_engine: {e}", file=sys.stderr)
        return 2
    print(f"{res['rendered']} previews rendered of {res['pairs']} pairs; {len(res['failed'])} failed")
    for f in res["failed"]:
        print(f"  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
