"""The match job end to end: `msdmatch match` on stores, on a 2-worker LocalCluster, at K = 10,000.

What it measures, through the CLI itself (``msdmatch match ... --workers N``,
the same code path a user runs):

* **per-query CPU-seconds of each stage** (prune, rerank, screen, verify and
  the total, including the span and row assembly), summed over the tasks'
  thread CPU time, as the summary line prints them;
* **the 2-worker speed-up**: the wall time of the same queries on 1 worker
  over that on 2 workers (cluster start and numba warm-up excluded);
* **peak RSS** of the client (the CLI process) and of each worker process,
  from ``VmHWM`` in ``/proc/<pid>/status`` polled every 2 s;
* **client peak RSS at Q and 10 Q queries** against a small DB: the client's
  memory is bounded by a few batches, so it should not grow with Q.

The stores are tiled from a real, embedded demo corpus (``--corpus`` holds
``db.zarr`` and ``q.zarr``, made by ``msdmatch demo-data``, ``featurize`` and
``embed``): DB item ``i`` is a copy of corpus preview ``i mod n`` (features,
hash words, screen frames and PSE embedding), query ``j`` a copy of corpus
MIDI query ``j mod m``.  Build the corpus with::

    msdmatch demo-data /tmp/bench_corpus --songs 60 --distractors 200
    msdmatch featurize audio /tmp/bench_corpus/audio --out /tmp/bench_corpus/db.zarr
    msdmatch featurize midi /tmp/bench_corpus/midi --out /tmp/bench_corpus/q.zarr
    msdmatch embed /tmp/bench_corpus/db.zarr && msdmatch embed /tmp/bench_corpus/q.zarr

Run::

    python benchmarks/match_e2e.py --corpus /tmp/bench_corpus --work /tmp/match_e2e --json match_e2e.json
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

MSDMATCH = str(Path(sys.executable).with_name("msdmatch"))
#: Seconds between reads of the processes' ``VmHWM`` (a high-water mark: sparse polling loses nothing
#: but the last seconds before a process exits, and leaves the cores to the job).
POLL_SECONDS = 2.0
#: Frames written per block when tiling ``features`` (a multiple of the chunk).
BLOCK_FRAMES = 16384 * 32


# ----------------------------------------------------------------------------- tiled stores


def _arrays(g, prefix: str = ""):
    import zarr

    for k, v in g.members():
        if k == "_parts":
            continue
        if isinstance(v, zarr.Group):
            yield from _arrays(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", v


def _tile_rows(src, idx: np.ndarray, dst, name: str, *, block: int = 1 << 16) -> None:
    """``dst[name][i] = src[name][idx[i]]`` for per-item arrays, block by block."""
    a = np.asarray(src[name][:])
    out = dst[name]
    for s in range(0, len(idx), block):
        e = min(len(idx), s + block)
        out[s:e] = a[idx[s:e]]


def _tile_ragged(src, dst, *, values: str, offsets: str, n: int) -> None:
    """Tile a flat array with offsets: item ``i`` of ``dst`` is item ``i mod n_src`` of ``src``."""
    off = np.asarray(src[offsets][:], np.int64)
    ns = len(off) - 1
    lens = np.diff(off)
    idx = np.arange(n) % ns
    new_off = np.concatenate([[0], np.cumsum(lens[idx])]).astype(np.int64)
    dst[offsets][:] = new_off
    vals = np.asarray(src[values][:])
    total = int(new_off[-1])
    out = dst[values]
    period = int(off[-1])  # the values repeat every whole tile, so value f is vals[f mod period]
    assert off[0] == 0
    chunk = out.chunks[0] * max(1, BLOCK_FRAMES // out.chunks[0])
    for s in range(0, total, chunk):
        e = min(total, s + chunk)
        out[s:e] = vals[np.arange(s, e) % period]


#: Relative jitter added to the PSE embeddings of every copy but the first: exact duplicates
#: would tie in the prune, and the ties would send every query's top R to the first shard.
JITTER = 1e-3


def tile_store(src_url: str, dst_url: str, n: int) -> None:
    """A store of ``n`` items tiled from ``src_url`` (every array, attribute and embedding).

    Copies after the first get their PSE embeddings jittered by :data:`JITTER`
    of the embeddings' RMS, so that distances are distinct, as between real previews.
    """
    import zarr

    src = zarr.open_group(src_url, mode="r")
    # the source's embedding key names its models' digests: new models re-tile
    stamp = {"n": n, "jitter": JITTER, "embedded": dict(src.attrs.get("embed_state", {})).get("key")}
    if Path(dst_url, ".tiled").exists() and json.loads(Path(dst_url, ".tiled").read_text()) == stamp:
        return
    dst = zarr.open_group(dst_url, mode="w", zarr_format=3)
    ns = src["ids"].shape[0]
    idx = np.arange(n) % ns
    flat = {"features": "offsets", "screen/frames": "screen/offsets"}
    for k, v in src.members(max_depth=None):
        if isinstance(v, zarr.Group) and k != "_parts" and not k.startswith("_parts/"):
            dst.require_group(k).attrs.update(dict(v.attrs))
    for dhs_words in (k for k, _ in _arrays(src) if k.endswith("/words")):
        flat[dhs_words] = dhs_words[: -len("words")] + "offsets"
    sizes = {}
    for vals, offs in flat.items():
        if vals in src:
            off = np.asarray(src[offs][:], np.int64)
            sizes[vals] = int(np.diff(off)[idx].sum())
    for name, a in _arrays(src):
        if name.startswith("failures/"):
            dst.create_array(name, shape=(0,), dtype=a.dtype, chunks=(1,))
            continue
        if name in flat:
            shape = (sizes[name],) + a.shape[1:]
        elif name in flat.values():
            shape = (n + 1,)
        else:
            shape = (n,) + a.shape[1:]
        chunks = (min(a.chunks[0] if name in flat else 65536, max(1, shape[0])),) + a.shape[1:]
        dst.create_array(name, shape=shape, dtype=a.dtype, chunks=chunks, attributes=dict(a.attrs))
    for vals, offs in flat.items():
        if vals in src:
            _tile_ragged(src, dst, values=vals, offsets=offs, n=n)
    tiles = idx // ns
    sid = np.asarray(src["ids"][:]).astype(object)
    dst["ids"][:] = np.asarray([f"{sid[i]}-t{t}" for i, t in zip(idx, tiles)], dtype=str)
    dst["sources"][:] = np.asarray([str(s) for s in np.asarray(src["sources"][:])[idx]], dtype=str)
    for name, a in _arrays(src):
        if name not in flat and name not in flat.values() and name not in ("ids", "sources") \
                and not name.startswith("failures/") and a.shape[:1] == (ns,):
            _tile_rows(src, idx, dst, name)  # the PSE embeddings and any other per-item array
            if name.startswith("pse/"):
                _jitter(dst[name], copy=tiles > 0, scale=JITTER)
    attrs = dict(src.attrs)
    attrs.update(n_items=n, n_frames=sizes["features"], n_failures=0)
    attrs.pop("plan", None)
    dst.attrs.update(attrs)
    Path(dst_url, ".tiled").write_text(json.dumps(stamp))


def _jitter(arr, *, copy: np.ndarray, scale: float, block: int = 1 << 16) -> None:
    """Add seeded Gaussian noise of ``scale`` x RMS to the rows of ``arr`` where ``copy`` is True."""
    rng = np.random.default_rng(0)
    for s in range(0, arr.shape[0], block):
        e = min(arr.shape[0], s + block)
        x = np.asarray(arr[s:e])
        rms = float(np.sqrt(np.nanmean(x.astype(np.float64) ** 2))) or 1.0
        noise = rng.normal(0.0, scale * rms, size=x.shape).astype(x.dtype)
        x[copy[s:e]] += noise[copy[s:e]]
        arr[s:e] = x


# ----------------------------------------------------------------------------- one CLI run, watched


def _hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid``, from the kernel's per-thread ``children`` lists."""
    found, frontier = set(), [pid]
    while frontier:
        p = frontier.pop()
        for kids in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                new = {int(c) for c in kids.read_text().split()} - found
            except (OSError, ValueError):
                continue
            found |= new
            frontier.extend(new)
    return found


def _is_worker(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"spawn_main" in cmd  # not the resource tracker


def run_match(q: str, db: str, out: str, *, workers: int, prune_k: int | None, extra: list[str]) -> dict:
    """``msdmatch match`` as a user runs it; its summary, and the peak RSS of the client and workers."""
    args = [MSDMATCH, "match", q, db, "--out", out, "--workers", str(workers), "--quiet", *extra]
    if prune_k:
        args += ["--prune-k", str(prune_k)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, int] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peaks[proc.pid] = max(peaks.get(proc.pid, 0), _hwm(proc.pid))
            for c in _children(proc.pid):
                if _is_worker(c):
                    peaks[c] = max(peaks.get(c, 0), _hwm(c))
            time.sleep(POLL_SECONDS)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    stdout, stderr = proc.communicate()
    stop.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"msdmatch match failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    line = stdout.strip().splitlines()[-1]
    m = re.search(r"in ([\d.]+) s on (\d+) threads; CPU per query prune ([\d.]+) ms, rerank ([\d.]+) ms, "
                  r"screen ([\d.]+) ms, verify ([\d.]+) ms, total ([\d.]+) ms", line)
    if not m:
        raise SystemExit(f"unexpected summary line: {line}")
    gib = 2.0**30
    client = peaks.pop(proc.pid, 0)
    workers_gib = sorted((v / gib for v in peaks.values()), reverse=True)
    print(f"  peak RSS: client {client / gib:.3f} GiB, workers {', '.join(f'{w:.3f}' for w in workers_gib)} GiB",
          flush=True)
    return {"line": line, "seconds": float(m[1]), "threads": int(m[2]),
            "per_query_cpu_s": {k: float(m[i]) / 1e3 for i, k in
                                zip(range(3, 8), ("prune", "rerank", "screen", "verify", "total"))},
            "client_rss_gib": client / gib,
            "worker_rss_gib": workers_gib}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default="/tmp/bench_corpus", help="Folder with embedded db.zarr and q.zarr.")
    ap.add_argument("--work", default="/tmp/match_e2e", help="Where the tiled stores and outputs go.")
    ap.add_argument("--db", type=int, default=200_000, help="Tiled DB entries.")
    ap.add_argument("--queries", type=int, default=2000, help="Tiled queries of the main run.")
    ap.add_argument("--prune-k", type=int, default=10_000)
    ap.add_argument("--speedup-queries", type=int, default=None,
                    help="Queries of the 1-worker vs 2-worker runs (default: --queries).")
    ap.add_argument("--mem-db", type=int, default=2000, help="DB entries of the Q vs 10 Q client-memory runs.")
    ap.add_argument("--mem-queries", type=int, default=None, help="Q of those runs (default: --queries).")
    ap.add_argument("--mem-extra", default="--rerank 20 --verify 2",
                    help="Extra `msdmatch match` options of the memory runs (cheaper stages, same batching).")
    ap.add_argument("--json", default=None, help="Write the figures here (merged into the file if it exists).")
    ap.add_argument("--parts", default="main,speedup,memory",
                    help="Which runs: main (per-query CPU, peak RSS), speedup (1 vs 2 workers), memory (Q vs 10 Q). "
                         "Time the speed-up on an otherwise idle machine: `--parts speedup` alone.")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus = Path(a.corpus)
    sq = a.speedup_queries or a.queries
    mq = a.mem_queries or a.queries
    t0 = time.perf_counter()
    stores = {"db": (corpus / "db.zarr", a.db), "q": (corpus / "q.zarr", max(a.queries, sq)),
              "mdb": (corpus / "db.zarr", a.mem_db), "mq": (corpus / "q.zarr", mq),
              "mq10": (corpus / "q.zarr", 10 * mq), "sq": (corpus / "q.zarr", sq)}
    for name, (src, n) in stores.items():
        tile_store(str(src), str(work / f"{name}.zarr"), n)
    print(f"tiled stores in {time.perf_counter() - t0:.0f} s: DB {a.db}, queries {a.queries}", flush=True)

    def out(name: str) -> str:
        p = work / name
        if p.exists():
            import shutil

            shutil.rmtree(p)
        return str(p)

    result: dict = {"db": a.db, "queries": a.queries, "prune_k": a.prune_k}
    if "main" in parts:
        main_run = run_match(str(work / "q.zarr"), str(work / "db.zarr"), out("main"), workers=2,
                             prune_k=a.prune_k, extra=[])
        print("main, 2 workers:", main_run["line"], flush=True)
        result.update(per_query_cpu_s=main_run["per_query_cpu_s"],
                      peak_rss_gib={"client": main_run["client_rss_gib"], "workers": main_run["worker_rss_gib"]},
                      wall_seconds_main_2_workers=main_run["seconds"])
    if "speedup" in parts:
        two = run_match(str(work / "sq.zarr"), str(work / "db.zarr"), out("sq2"), workers=2, prune_k=a.prune_k,
                        extra=[])
        print("2 workers:", two["line"], flush=True)
        one = run_match(str(work / "sq.zarr"), str(work / "db.zarr"), out("sq1"), workers=1, prune_k=a.prune_k,
                        extra=[])
        print("1 worker:", one["line"], flush=True)
        result.update(speedup_2_workers=one["seconds"] / two["seconds"], speedup_queries=sq,
                      speedup_wall_seconds={"1_worker": one["seconds"], "2_workers": two["seconds"]})
    if "memory" in parts:
        mem = {}
        for key, store in (("Q", "mq"), ("10Q", "mq10")):
            mem[key] = run_match(str(work / f"{store}.zarr"), str(work / "mdb.zarr"), out(f"mem-{key}"), workers=2,
                                 prune_k=None, extra=a.mem_extra.split())
            print(f"memory run {key}:", mem[key]["line"], f"client peak {mem[key]['client_rss_gib']:.3f} GiB",
                  flush=True)
        result.update(client_peak_rss_gib_by_queries={k: v["client_rss_gib"] for k, v in mem.items()},
                      memory_runs={"db": a.mem_db, "Q": mq, "10Q": 10 * mq, "options": a.mem_extra},
                      worker_rss_gib_memory_runs={k: v["worker_rss_gib"] for k, v in mem.items()})
    if a.json and Path(a.json).exists():
        old = json.loads(Path(a.json).read_text())
        if {k: old.get(k) for k in ("db", "queries", "prune_k")} == {k: result[k] for k in ("db", "queries", "prune_k")}:
            result = {**old, **result}
    print(json.dumps(result, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
