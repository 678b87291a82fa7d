"""Embed throughput: previews per second per core for PSE + DHS, ONNX against torch, 1 and 2 workers.

1. Direct: :func:`msdmatch.stages.embed.embed_sequences` with the shipped audio nets
   (PSE and DHS together) on real 30 s previews of a featurized audio store,
   one onnxruntime thread; best of ``--repeats`` (CPU and wall seconds).
2. Torch: the same batches through the torch nets rebuilt from each
   model.json's architecture, with the weights read from the ONNX
   initializers whose names and shapes match (the count is printed; if any
   are missing the comparison is of speed only), one torch thread.
3. Stage: :func:`msdmatch.stages.embed.run` on fresh copies of the store, on a
   LocalCluster of 2 single-threaded workers, with the tasks pinned to one
   worker and then spread over both, alternately, ``--repeats`` times each
   (after a first run of each that is every worker's one-time start-up:
   imports, ONNX sessions), for the speed-up.

Usage: ``python benchmarks/embed.py [--store DB.zarr] [--n 256] [--quick]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from contextlib import nullcontext

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import numpy as np  # noqa: E402
from _timing import best  # noqa: E402


def torch_net(info, onnx_path):
    """Torch net of a model.json's architecture with the ONNX initializers loaded where they match."""
    import onnx
    import torch
    from onnx import numpy_helper

    from msdmatch.models.nets import NetConfig, build_net

    net = build_net(NetConfig.from_dict(info.raw["architecture"])).eval()
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(onnx_path)).graph.initializer}
    sd = {k: v for k, v in net.state_dict().items() if not k.startswith("aux.")}  # aux: training only
    hit = {k: torch.as_tensor(inits.pop(k).copy()) for k, v in list(sd.items())
           if k in inits and tuple(inits[k].shape) == tuple(v.shape)}
    for k, v in sd.items():  # the exporter stores some Linear weights transposed, as MatMul inputs
        same = [n for n, a in inits.items() if v.ndim == 2 and a.shape == tuple(v.shape)[::-1]]
        if k not in hit and len(same) == 1:
            hit[k] = torch.as_tensor(inits.pop(same[0]).T.copy())
    z = info.raw.get("zscore", {}).get("audio", {})
    for k, v in sd.items():  # z-score buffers are folded into the ONNX graph; model.json keeps them
        stat = k.rsplit(".", 1)[-1]
        if k not in hit and stat in ("mean", "std") and len(z.get(stat, ())) == v.numel():
            hit[k] = torch.as_tensor(np.asarray(z[stat], np.float32)).reshape(v.shape)
    net.load_state_dict({**net.state_dict(), **hit})
    return net, len(hit), len(sd)


def run_torch(nets, seqs, downsample):
    import torch

    from msdmatch.stages.embed import batches

    lengths = np.array([s.shape[0] for s in seqs])
    with torch.inference_mode():
        for idx in batches(lengths):
            T = int(lengths[idx].max())
            x = np.zeros((len(idx), T, seqs[0].shape[1]), np.float32)
            m = np.zeros((len(idx), T), np.float32)
            for b, i in enumerate(idx):
                x[b, : lengths[i]] = seqs[i]
                m[b, : lengths[i]] = 1
            for net in nets:
                net(torch.from_numpy(x), torch.from_numpy(m))


def stage(src: str, models, repeats: int) -> tuple[list[dict], list[dict]]:
    """The stage on fresh copies of ``src``, on one LocalCluster of 2 single-threaded workers.

    Runs alternate between the stage's tasks pinned to one worker and spread
    over both, so that a slow spell of the host falls on both sides; both
    worker processes are up in both cases.  A first run of each is every
    worker's one-time start-up (imports, ONNX sessions) and is dropped.
    """
    import dask

    from msdmatch.executor import client_for
    from msdmatch.stages.embed import run

    tmp = tempfile.mkdtemp(prefix="embed-bench-")
    runs: dict[int, list] = {1: [], 2: []}
    try:
        with client_for(None, n_workers=2, threads_per_worker=1, quiet=True, dashboard=False) as c:
            one = sorted(c.scheduler_info()["workers"])[:1]
            for k in range(1 + repeats):
                for n in (1, 2):
                    dst = os.path.join(tmp, f"db{k}-{n}.zarr")
                    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("pse", "dhs", "*.lock"))
                    pin = dask.annotate(workers=one, allow_other_workers=False) if n == 1 else nullcontext()
                    with pin:
                        runs[n].append(run(dst, models=models, client=c, partition_size=64, progress=False))
                    shutil.rmtree(dst, ignore_errors=True)
        return runs[1][1:], runs[2][1:]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="demo_out/db.zarr", help="featurized audio store (made by `make demo`)")
    ap.add_argument("--models", nargs="*", default=None, help="model dirs (default: shipped)")
    ap.add_argument("--n", type=int, default=256, help="previews in the direct batch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeats = 96, 2

    import torch

    from msdmatch.io.modelfile import check_compatible
    from msdmatch.io.store import Store
    from msdmatch.stages.embed import embed_sequences, resolve_models

    torch.set_num_threads(1)
    store = Store(args.store)
    infos = resolve_models(args.models, store.modality)
    seqs = store.sequences(0, min(args.n, len(store.ids)))
    n = len(seqs)
    paths = [check_compatible(i, store_params=store.params, store_modality=store.modality) for i in infos]
    print(f"# {n} previews of {np.mean([len(s) for s in seqs]):.0f} frames from {args.store}; models "
          + ", ".join(f"{i.name} ({i.kind}, {p.name})" for i, p in zip(infos, paths, strict=True)))

    def onnx_all():
        for i, p in zip(infos, paths, strict=True):
            embed_sequences(seqs, str(p), downsample=i.downsample, threads=1)

    onnx_all()
    c_o, w_o, _ = best(onnx_all, args.repeats)
    nets = []
    for i, p in zip(infos, paths, strict=True):
        net, got, tot = torch_net(i, p)
        nets.append(net)
        print(f"# torch {i.name}: {got}/{tot} tensors loaded from the ONNX initializers"
              + ("" if got == tot else " (the rest random: speed comparison only)"))
    run_torch(nets, seqs[:8], None)
    c_t, w_t, _ = best(lambda: run_torch(nets, seqs, None), args.repeats)
    print(f"\n{'one core, PSE + DHS':<28} {'previews/s (cpu)':>17} {'previews/s (wall)':>18}")
    print(f"{'onnxruntime':<28} {n / c_o:>17.1f} {n / w_o:>18.1f}")
    print(f"{'torch':<28} {n / c_t:>17.1f} {n / w_t:>18.1f}")
    print(f"ONNX / torch speed (cpu): {c_t / c_o:.2f}x  (target >= 1.5x)")
    print(f"previews/s/core (cpu): {n / c_o:.1f}  (target >= 20)")

    r1, r2 = stage(args.store, args.models, args.repeats)
    t1, t2 = (np.array([r["seconds"] for r in rs]) for rs in (r1, r2))
    n_items = r1[0]["items"]
    print(f"\nmsdmatch.embed.run on {n_items} previews, {len(t1)} alternating runs each "
          f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}):")
    print(f"  1 worker:  best {t1.min():.2f} s, median {np.median(t1):.2f} s ({n_items / t1.min():.0f} previews/s)")
    print(f"  2 workers: best {t2.min():.2f} s, median {np.median(t2):.2f} s ({n_items / t2.min():.0f} previews/s)")
    print(f"  speed-up: {t1.min() / t2.min():.2f}x best to best, {np.median(t1) / np.median(t2):.2f}x median "
          f"to median, {np.median(t1 / t2):.2f}x median of paired runs  (target >= 1.7x)")

if __name__ == "__main__":
    main()
