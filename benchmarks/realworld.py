"""Real-material evaluation set: real MIDI compositions against real renditions and produced music.

``build DIR`` downloads Debian packages (``apt-get download`` + ``dpkg -x``, no
install) and writes::

    DIR/midi/<query_id>.mid     the queries: freedoom's MIDI lumps and freedink's .mid files (>= 30 s)
    DIR/audio/<track_id>.mp3    30 s previews: one recording per query plus the distractors
    DIR/truth.csv               query_id,track_id (as the demo's)
    DIR/plan.json               every rendering decision, from --seed
    DIR/build.json              counts, failures and seconds

A query's recording is rendered by adplay's OPL3 FM emulator or by fluidsynth
with GeneralUser GS, the OPL-3 FM sound bank, csound's sf_GMbank or denemo's
A320U; none of them renders queries (TimGM6mb) or training recordings
(FluidR3_GM, MuseScore General).  See ``_realworld/plan.py`` for the rest.

``run DIR`` featurizes (synth and piano-roll queries), embeds, matches and
reports with the ``msdmatch`` CLI and the shipped models, then writes
``DIR/realworld.json``: PSE recall at 0.1-10 % of the database against the
mean/std baseline, the cascade's top-1 at the default K (and with K = 1 % of
the database), and brute-force cosine DTW top-1 from ``msdmatch report
--brute-force``.  This set is for evaluation only: never train, calibrate or
tune on it.

``openset DIR`` (after ``run``) matches both query modalities once against
every preview and once against a database without the true previews of a
seeded half of the queries, scores both runs (and the two pooled) with
``msdmatch report`` and open-set truth, and writes ``DIR/openset/openset.json``:
false and true accepts of ``matched`` at the shipped threshold, the AUC and
ECE of the top-1 confidence, and the thesis's c >= 0.5 from the same rows
(see ``_realworld/openset.py``).  It writes only into its ``--out`` folder.

Usage::

    python benchmarks/realworld.py build DIR [--seed 0] [--debs CACHE]
    python benchmarks/realworld.py run DIR [--mode synth|pianoroll|both] [--json PATH]
    python benchmarks/realworld.py openset DIR [--models MODELDIR] [--seed 0] [--out DIR/openset]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _realworld import debian, evaluate, midi, plan, render  # noqa: E402
from _realworld import openset as oset  # noqa: E402

MODES = ("synth", "pianoroll")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- build


def collect_queries(root: str) -> list[tuple[str, bytes]]:
    """(query_id, MIDI bytes): freedoom's distinct MIDI lumps, then freedink's .mid files."""
    import glob

    lumps = []
    for wad in debian.WADS:
        with open(os.path.join(root, wad), "rb") as fh:
            lumps += [(f"doom-{name.lower()}", b) for name, b in midi.midi_lumps(fh.read())]
    for p in sorted(glob.glob(os.path.join(root, debian.DINK_MIDI))):
        with open(p, "rb") as fh:
            lumps.append((f"dink-{os.path.splitext(os.path.basename(p))[0].lower()}", fh.read()))
    return midi.dedupe(lumps)


def _write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _make(job: tuple) -> tuple[str, float, str]:
    """Render one preview (a worker process); returns (track_id, seconds, error)."""
    kind, tid, out, spec, ctx = job
    t0 = time.perf_counter()
    if os.path.exists(out):
        return tid, 0.0, ""
    try:
        if kind == "query":
            with open(ctx["midi"], "rb") as fh:
                pm = midi.load_midi(fh.read())
            data = render.query_recording(pm, spec, soundfonts=ctx["soundfonts"], adplay=ctx["adplay"],
                                          lib_dir=ctx["lib_dir"])
        else:
            data = render.distractor_preview(ctx["path"], spec)
        _write(out, data)
        return tid, time.perf_counter() - t0, ""
    except Exception as e:  # a bad item is recorded and the build goes on
        return tid, time.perf_counter() - t0, f"{type(e).__name__}: {e}"


def build(out: str, *, seed: int = 0, debs: str | None = None, workers: int = 2,
          distractors: int = 1100) -> dict:
    import soundfile as sf

    t0 = time.perf_counter()
    root = os.path.join(out, "root")
    src_midi = os.path.join(out, "sources", "midi")
    for d in (root, src_midi, os.path.join(out, "midi"), os.path.join(out, "audio")):
        os.makedirs(d, exist_ok=True)
    debian.extract(debian.download(debs or os.path.join(out, "debs"), log=log), root, log=log)
    t_fetch = time.perf_counter() - t0
    adplay, libs = debian.check_adplay(root), debian.lib_dir(root)
    soundfonts = {k: os.path.join(root, v) for k, v in debian.SOUNDFONTS.items()}

    infos, skipped = [], []
    for qid, data in collect_queries(root):
        try:
            info = midi.describe(midi.load_midi(data))
        except Exception as e:
            skipped.append({"query_id": qid, "reason": f"unreadable MIDI: {e}"})
            continue
        if info["seconds"] < plan.PREVIEW_SECONDS:
            skipped.append({"query_id": qid, "reason": f"{info['seconds']:.1f} s < {plan.PREVIEW_SECONDS:.0f} s"})
            continue
        _write(os.path.join(src_midi, f"{qid}.mid"), data)
        infos.append({"query_id": qid, **info})
    tracks = [(s, p, sf.info(p).duration) for s, p in debian.music_tracks(root)]
    tracks = [t for t in tracks if t[2] >= plan.PREVIEW_SECONDS]
    qplans = plan.plan_queries(infos, seed=seed)
    dplans = plan.plan_distractors([(s, d) for s, _, d in tracks], seed=seed, target=distractors)
    ids = plan.assign_ids(len(qplans) + len(dplans), seed=seed)
    for p, tid in zip(qplans + dplans, ids):
        p["track_id"] = tid
    with open(os.path.join(out, "plan.json"), "w", encoding="utf-8") as fh:
        json.dump({"seed": seed, "renderers": list(plan.RENDERERS), "queries": qplans,
                   "distractors": dplans, "skipped_queries": skipped}, fh, indent=1)

    path_of = {s: p for s, p, _ in tracks}
    jobs = [("query", p["track_id"], os.path.join(out, "audio", f"{p['track_id']}.mp3"), p,
             {"midi": os.path.join(src_midi, f"{p['query_id']}.mid"), "soundfonts": soundfonts,
              "adplay": adplay, "lib_dir": libs}) for p in qplans]
    jobs += [("distractor", p["track_id"], os.path.join(out, "audio", f"{p['track_id']}.mp3"), p,
              {"path": path_of[p["source"]]}) for p in dplans]
    log(f"rendering {len(qplans)} query recordings and {len(dplans)} distractor previews on {workers} processes")
    t1 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as ex:
        results = list(ex.map(_make, jobs, chunksize=4))
    t_render = time.perf_counter() - t1
    failed = {tid: err for tid, _, err in results if err}
    truth = [(p["query_id"], p["track_id"]) for p in qplans if p["track_id"] not in failed]
    for q, _ in truth:
        shutil.copyfile(os.path.join(src_midi, f"{q}.mid"), os.path.join(out, "midi", f"{q}.mid"))
    with open(os.path.join(out, "truth.csv"), "w", encoding="utf-8") as fh:
        fh.write("query_id,track_id\n")
        fh.writelines(f"{q},{t}\n" for q, t in truth)
    by_renderer: dict[str, int] = {}
    for p in qplans:
        if p["track_id"] not in failed:
            by_renderer[p["renderer"]] = by_renderer.get(p["renderer"], 0) + 1
    summary = {
        "seed": seed, "queries": len(truth), "distractors": sum(1 for p in dplans if p["track_id"] not in failed),
        "distractor_tracks": len(tracks), "skipped_queries": skipped,
        "failures": [{"track_id": t, "reason": e} for t, e in sorted(failed.items())],
        "by_renderer": by_renderer,
        "dropped_parts": sum(1 for p in qplans if p["drop"] >= 0 and p["track_id"] not in failed),
        "dropped_melody": sum(1 for p in qplans if p["drop_is_melody"] and p["track_id"] not in failed),
        "seconds": {"fetch": t_fetch, "render": t_render, "total": time.perf_counter() - t0},
        "render_worker_seconds": float(sum(s for _, s, _ in results)),  # wall time inside the processes
    }
    with open(os.path.join(out, "build.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1)
    return summary


# ----------------------------------------------------------------------------- run


def _msdmatch() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "msdmatch")
    return exe if os.path.exists(exe) else "msdmatch"


def _step(name: str, args: list[str], *, done: str, times: dict, logdir: str) -> None:
    """Run one ``msdmatch`` command unless its marker says it finished before."""
    if os.path.exists(done):
        log(f"{name}: done before, skipped")
        return
    log(f"{name}: msdmatch {' '.join(args)}")
    t = time.perf_counter()
    with open(os.path.join(logdir, f"{name}.log"), "w") as fh:
        r = subprocess.run([_msdmatch(), *args], stdout=fh, stderr=subprocess.STDOUT)
    times[name] = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{name} failed (exit {r.returncode}); see {logdir}/{name}.log")
    open(done, "w").close()


def run(out: str, *, modes=MODES, brute_force: int | None = 20, workers: int | None = None) -> dict:
    t0 = time.perf_counter()
    stores, logdir = os.path.join(out, "stores"), os.path.join(out, "logs")
    os.makedirs(stores, exist_ok=True)
    os.makedirs(logdir, exist_ok=True)
    truth_csv = os.path.join(out, "truth.csv")
    truth = evaluate.read_truth(truth_csv)
    wk = ["--workers", str(workers)] if workers else []
    times: dict = {}
    db = os.path.join(stores, "db.zarr")
    _step("featurize-audio", ["featurize", "audio", os.path.join(out, "audio"), "--out", db, *wk],
          done=db + ".done", times=times, logdir=logdir)
    _step("embed-db", ["embed", db, *wk], done=db + ".embedded", times=times, logdir=logdir)
    res: dict = {"pse_recall": {}, "baseline_recall": {}, "pse_mean_rank": {}, "baseline_mean_rank": {},
                 "top1": {}, "top1_prune_1pct": {}, "brute_force_top1": {}, "brute_force_std_top1": {},
                 "cascade_top1_brute_force_queries": {}, "brute_force_queries": {}, "failed_queries": {}}
    for mode in modes:
        q = os.path.join(stores, f"queries-{mode}.zarr")
        _step(f"featurize-{mode}", ["featurize", "midi", os.path.join(out, "midi"), "--out", q, "--mode", mode, *wk],
              done=q + ".done", times=times, logdir=logdir)
        _step(f"embed-{mode}", ["embed", q, *wk], done=q + ".embedded", times=times, logdir=logdir)
        r = evaluate.store_ranks(q, db, truth, model=f"pse-midi-{mode}")
        n_db = r["n_db"]
        res["pse_recall"][mode] = evaluate.recall_curve(r["pse"], n_db=n_db, n_queries=len(truth))
        res["baseline_recall"][mode] = evaluate.recall_curve(r["baseline"], n_db=n_db, n_queries=len(truth))
        res["pse_mean_rank"][mode] = float(r["pse"].mean())
        res["baseline_mean_rank"][mode] = float(r["baseline"].mean())
        res["failed_queries"][mode] = len(truth) - len(r["query_ids"])
        m = os.path.join(out, f"matches-{mode}.csv")
        _step(f"match-{mode}", ["match", q, db, "--out", m, "--quiet", *wk], done=m + ".done", times=times,
              logdir=logdir)
        res["top1"][mode] = evaluate.top1(m, truth)
        k1 = max(1, math.ceil(0.01 * n_db))
        m1 = os.path.join(out, f"matches-{mode}-k{k1}.csv")
        _step(f"match-{mode}-k{k1}", ["match", q, db, "--out", m1, "--prune-k", str(k1), "--quiet", *wk],
              done=m1 + ".done", times=times, logdir=logdir)
        res["top1_prune_1pct"][mode] = evaluate.top1(m1, truth)
        rep = os.path.join(out, f"report-{mode}")
        n_bf = len(truth) if brute_force is None or brute_force < 0 else brute_force
        _step(f"report-{mode}", ["report", m, "--truth", truth_csv, "--out", rep, "--queries", q, "--db", db,
                                 "--brute-force", str(n_bf), *wk], done=rep + ".done", times=times, logdir=logdir)
        with open(os.path.join(rep, "metrics.json"), encoding="utf-8") as fh:
            met = json.load(fh)
        res["brute_force_top1"][mode] = met.get("brute_force_top_1")
        res["brute_force_std_top1"][mode] = met.get("brute_force_std_top_1")
        res["cascade_top1_brute_force_queries"][mode] = met.get("cascade_top_1_same_queries")
        res["brute_force_queries"][mode] = met.get("brute_force_queries")
        res["report_top1"] = {**res.get("report_top1", {}), mode: met.get("top_1")}
    res.update({"queries": len(truth), "db": n_db, "prune_k_default": min(n_db, max(math.ceil(0.01 * n_db), 1000)),
                "prune_k_1pct": k1, "seconds": {**times, "total": time.perf_counter() - t0}})
    return res


def table(res: dict) -> str:
    modes = list(res["pse_recall"])
    head = "share of db  " + "  ".join(f"{'PSE ' + m:>14} {'mean/std ' + m:>18}" for m in modes)
    lines = [f"queries {res['queries']}, db {res['db']}", head]
    for s in evaluate.SHARES:
        k = str(s)
        lines.append(f"{100 * s:>10.1f}%  " + "  ".join(
            f"{res['pse_recall'][m][k]:>14.3f} {res['baseline_recall'][m][k]:>18.3f}" for m in modes))

    def fmt(x):
        return "   n/a" if x is None else f"{x:6.3f}"

    lines.append("")
    lines.append(f"{'top-1':<46}" + "".join(f"{m:>10}" for m in modes))
    for key, name in (("top1", f"cascade, default K = {res['prune_k_default']}"),
                      ("top1_prune_1pct", f"cascade, K = 1% of db = {res['prune_k_1pct']}"),
                      ("cascade_top1_brute_force_queries", "cascade, on the brute-force queries"),
                      ("brute_force_top1", "brute-force cosine DTW (CQT as stored)"),
                      ("brute_force_std_top1", "brute-force cosine DTW (bin-standardised)")):
        lines.append(f"{name:<46}" + "".join(f"{fmt(res[key].get(m)):>10}" for m in modes))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- openset


def _copy_store(src: str, dst: str) -> None:
    """Copy a store once (through a temporary name), so that embedding never touches ``src``."""
    if os.path.exists(dst):
        return
    tmp = dst + ".copying"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    os.replace(tmp, dst)


def _figures(report_dir: str) -> dict:
    with open(os.path.join(report_dir, "metrics.json"), encoding="utf-8") as fh:
        return oset.figures(json.load(fh))


def openset(src: str, *, out: str | None = None, models: str | None = None, seed: int = 0, modes=MODES,
            workers: int | None = None) -> dict:
    """Match with every true preview and with a seeded half removed; score with open-set truth.

    Parameters
    ----------
    src : str
        A set built and run by ``build`` and ``run`` (``truth.csv``, ``audio/``,
        ``stores/``); only read.
    out : str, optional
        Every output goes here (default ``src/openset``); finished steps are
        skipped on a re-run.
    models : str, optional
        Model directory for ``embed`` and ``match`` (default: the shipped
        models); its ``fusion-midi-<mode>.json``, when present, is the fusion.
    seed : int
        Picks the removed half.
    modes : tuple of str
    workers : int, optional
        LocalCluster workers of each ``msdmatch`` command.

    Returns
    -------
    res : dict
        ``plan`` (:func:`_realworld.openset.write_plan`), ``models``,
        ``figures[mode][run]`` for the runs ``all``, ``half`` and ``pooled``
        (:func:`_realworld.openset.figures`) and ``seconds``.
    """
    from msdmatch.evaluation.metrics import read_truth
    from msdmatch.evaluation.openset import truth_sets
    from msdmatch.io.sources import AUDIO_EXTENSIONS, resolve_sources

    t0 = time.perf_counter()
    out = out or os.path.join(src, "openset")
    logdir = os.path.join(out, "logs")
    os.makedirs(logdir, exist_ok=True)
    models = os.path.abspath(models) if models else None
    plan_path = os.path.join(out, "plan.json")
    if os.path.exists(plan_path):
        with open(plan_path, encoding="utf-8") as fh:
            before = json.load(fh)
        if (before["seed"], before["models"]) != (seed, models):
            raise SystemExit(f"{out} holds an open-set run with seed {before['seed']} and models "
                             f"{before['models'] or 'shipped'}; choose another --out for seed {seed} and "
                             f"models {models or 'shipped'}")
    tr = read_truth(os.path.join(src, "truth.csv"))
    truth = truth_sets(tr["query_id"].tolist(), tr["track_id"].tolist())
    previews = [it.source for it in resolve_sources(os.path.join(src, "audio"), extensions=AUDIO_EXTENSIONS)]
    split = oset.write_plan(truth, previews, out_dir=out, seed=seed)
    with open(plan_path, "w", encoding="utf-8") as fh:
        json.dump({**split, "models": models}, fh, indent=1)
    log(f"{len(split['removed'])} of {split['queries']} queries lose their previews: "
        f"db {split['db_all']} -> {split['db_half']} previews")

    times: dict = {}
    mk = ["--models", models] if models else []
    wk = ["--workers", str(workers)] if workers else []

    def step(name: str, args: list[str], done: str) -> None:
        _step(name, args, done=done, times=times, logdir=logdir)

    db = {"all": os.path.join(out, "db-all.zarr"), "half": os.path.join(out, "db-half.zarr")}
    _copy_store(os.path.join(src, "stores", "db.zarr"), db["all"])
    step("embed-db-all", ["embed", db["all"], *mk, *wk], db["all"] + ".embedded")
    step("featurize-db-half", ["featurize", "audio", os.path.join(out, "db-half.txt"), "--out", db["half"], *wk],
         db["half"] + ".done")
    step("embed-db-half", ["embed", db["half"], *mk, *wk], db["half"] + ".embedded")
    truths = {run: os.path.join(out, f"truth-{run}.csv") for run in oset.RUNS}
    truths["pooled"] = os.path.join(out, "truth-pooled.csv")
    oset.pool({run: truths[run] for run in oset.RUNS}, truths["pooled"])
    res: dict = {"plan": split, "models": models or "shipped", "figures": {}}
    for mode in modes:
        q = os.path.join(out, f"queries-{mode}.zarr")
        _copy_store(os.path.join(src, "stores", f"queries-{mode}.zarr"), q)
        step(f"embed-{mode}", ["embed", q, *mk, *wk], q + ".embedded")
        fusion = os.path.join(models, f"fusion-midi-{mode}.json") if models else ""
        fu = ["--fusion", fusion] if fusion and os.path.isfile(fusion) else []
        matches = {run: os.path.join(out, f"matches-{mode}-{run}.csv") for run in oset.RUNS}
        for run in oset.RUNS:
            step(f"match-{mode}-{run}", ["match", q, db[run], "--out", matches[run], *mk, *fu, "--quiet", *wk],
                 matches[run] + ".done")
        matches["pooled"] = os.path.join(out, f"matches-{mode}-pooled.csv")
        if not os.path.exists(matches["pooled"]):
            oset.pool({run: matches[run] for run in oset.RUNS}, matches["pooled"])
        res["figures"][mode] = {}
        for run in (*oset.RUNS, "pooled"):
            rep = os.path.join(out, f"report-{mode}-{run}")
            step(f"report-{mode}-{run}", ["report", matches[run], "--truth", truths[run], "--out", rep], rep + ".done")
            res["figures"][mode][run] = _figures(rep)
    res["seconds"] = {**times, "total": time.perf_counter() - t0}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="download, extract and render the set into DIR")
    b.add_argument("dir")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--debs", help="directory of .deb files to reuse (default DIR/debs)")
    b.add_argument("--workers", type=int, default=2, help="rendering processes")
    b.add_argument("--distractors", type=int, default=1100, help="distractor previews wanted")
    r = sub.add_parser("run", help="featurize, embed, match and report the set in DIR")
    r.add_argument("dir")
    r.add_argument("--mode", choices=("synth", "pianoroll", "both"), default="both")
    r.add_argument("--json", help="also write the figures here (default: DIR/realworld.json only)")
    r.add_argument("--brute-force", type=int, default=20,
                   help="queries (drawn by msdmatch report) also matched by brute-force DTW against the "
                        "whole db, per mode; about 20-40 core-seconds each; 0 skips, -1 takes all")
    r.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default: one per core)")
    o = sub.add_parser("openset", help="match with every true preview and with half removed; open-set rates")
    o.add_argument("dir")
    o.add_argument("--models", help="model directory for embed and match (default: the shipped models)")
    o.add_argument("--seed", type=int, default=0, help="picks the half of the queries whose previews are removed")
    o.add_argument("--mode", choices=("synth", "pianoroll", "both"), default="both")
    o.add_argument("--out", help="output folder (default DIR/openset); nothing else is written")
    o.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default: one per core)")
    a = ap.parse_args(argv)
    if a.cmd == "build":
        s = build(a.dir, seed=a.seed, debs=a.debs, workers=a.workers, distractors=a.distractors)
        log(f"built {s['queries']} queries, {s['distractors']} distractors, {len(s['failures'])} failures "
            f"in {s['seconds']['total']:.0f} s ({s['seconds']['fetch']:.0f} s download + extract)")
        return 0
    if not os.path.exists(os.path.join(a.dir, "truth.csv")):
        print(f"error: {a.dir}/truth.csv not found; run `python benchmarks/realworld.py build {a.dir}` first",
              file=sys.stderr)
        return 2
    modes = MODES if a.mode == "both" else (a.mode,)
    if a.cmd == "openset":
        missing = [p for p in ["db.zarr"] + [f"queries-{m}.zarr" for m in modes]
                   if not os.path.exists(os.path.join(a.dir, "stores", p + ".done"))]
        if missing:
            print(f"error: {a.dir}/stores lacks {', '.join(missing)}; run `python benchmarks/realworld.py run "
                  f"{a.dir}` first", file=sys.stderr)
            return 2
        out = a.out or os.path.join(a.dir, "openset")
        res = openset(a.dir, out=out, models=a.models, seed=a.seed, modes=modes, workers=a.workers)
        with open(os.path.join(out, "openset.json"), "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=1)
        print(oset.table(res))
        log(f"openset took {res['seconds']['total']:.0f} s")
        return 0
    res = run(a.dir, modes=modes, brute_force=a.brute_force, workers=a.workers)
    for path in [os.path.join(a.dir, "realworld.json")] + ([a.json] if a.json else []):
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=1)
    print(table(res))
    log(f"run took {res['seconds']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
