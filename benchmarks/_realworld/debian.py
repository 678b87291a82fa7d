"""Fetch the Debian packages (``apt-get download`` + ``dpkg -x``, no install) and find their files."""
from __future__ import annotations

import glob
import hashlib
import os
import subprocess

#: Packages of the evaluation set: MIDI queries, sound banks, the adplay FM renderer
#: (with the libraries it loads that a minimal system lacks) and produced music.
PACKAGES = (
    "freedoom", "freedink-data",
    "minuet-data", "opl3-soundfont", "csound-soundfont", "denemo-data",
    "adplay", "libadplug-2.3.3-0", "libbinio1v5", "libsdl1.2debian", "libcaca0",
    "naev-data", "supertux-data", "widelands-data",
)
#: Sound banks (renderer name -> path inside the extracted tree).
SOUNDFONTS = {
    "GeneralUser-v1.47.sf2": "usr/share/minuet/soundfonts/GeneralUser-v1.47.sf2",
    "OPL-3_FM_128M.sf2": "usr/share/sounds/sf2/OPL-3_FM_128M.sf2",
    "sf_GMbank.sf2": "usr/share/sounds/sf2/sf_GMbank.sf2",
    "A320U.sf2": "usr/share/sounds/sf2/A320U.sf2",
}
WADS = ("usr/share/games/doom/freedoom1.wad", "usr/share/games/doom/freedoom2.wad")
DINK_MIDI = "usr/share/games/dink/dink/Sound/*.mid"
MUSIC = {  # distractor source prefix -> glob
    "supertux": "usr/share/games/supertux2/music/**/*.ogg",
    "naev": "usr/share/naev/dat/snd/music/*.ogg",
    "widelands": "usr/share/games/widelands/data/music/*.ogg",
}


def _have(debs: str, pkg: str) -> bool:
    return bool(glob.glob(os.path.join(debs, f"{pkg}_*.deb")))


def download(debs: str, *, packages: tuple[str, ...] = PACKAGES, log=print) -> list[str]:
    """``apt-get download`` the ``packages`` missing from ``debs``; returns all .deb paths.

    Runs ``apt-get update`` once if a download fails, then retries.
    """
    os.makedirs(debs, exist_ok=True)
    missing = [p for p in packages if not _have(debs, p)]
    if missing:
        log(f"apt-get download {' '.join(missing)}")
        r = subprocess.run(["apt-get", "download", *missing], cwd=debs, capture_output=True, text=True)
        if r.returncode != 0:
            log("apt-get download failed; running apt-get update once")
            subprocess.run(["apt-get", "update"], capture_output=True, check=False)
            subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True)
    return sorted(glob.glob(os.path.join(debs, "*.deb")))


def extract(debs: list[str], root: str, *, log=print) -> None:
    """``dpkg -x`` each package into ``root`` (once: a marker per package records it)."""
    marks = os.path.join(root, ".extracted")
    os.makedirs(marks, exist_ok=True)
    for deb in debs:
        mark = os.path.join(marks, os.path.basename(deb))
        if not os.path.exists(mark):
            log(f"dpkg -x {os.path.basename(deb)}")
            subprocess.run(["dpkg", "-x", deb, root], check=True)
            open(mark, "w").close()


def lib_dir(root: str) -> str:
    """The extracted multiarch library directory (libadplug, libbinio, libSDL, libcaca)."""
    hits = glob.glob(os.path.join(root, "usr/lib/*/libadplug-*.so.0"))
    if not hits:
        raise FileNotFoundError(f"libadplug not found under {root}/usr/lib; was libadplug extracted?")
    return os.path.dirname(hits[0])


def check_adplay(root: str) -> str:
    """Path of the extracted adplay binary, after checking that its libraries all load."""
    adplay = os.path.join(root, "usr/bin/adplay")
    env = dict(os.environ, LD_LIBRARY_PATH=lib_dir(root))
    out = subprocess.run(["ldd", adplay], env=env, capture_output=True, text=True).stdout
    missing = [ln.split()[0] for ln in out.splitlines() if "not found" in ln]
    if missing:
        raise RuntimeError(f"adplay cannot load {', '.join(missing)}; apt-get download their packages into DEBS")
    return adplay


def music_tracks(root: str) -> list[tuple[str, str]]:
    """(source id, path) of each distinct produced-music track, sorted; ``*_fast`` copies skipped."""
    out, seen = [], set()
    for pre, pat in MUSIC.items():
        for p in sorted(glob.glob(os.path.join(root, pat), recursive=True)):
            stem = os.path.splitext(os.path.basename(p))[0]
            if stem.endswith("_fast"):
                continue
            with open(p, "rb") as fh:
                h = hashlib.sha1(fh.read()).hexdigest()
            if h in seen:
                continue
            seen.add(h)
            rel = os.path.relpath(p, os.path.join(root, pat.split("*")[0]))
            out.append((f"{pre}/{os.path.splitext(rel)[0]}", p))
    return out
