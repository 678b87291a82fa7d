"""Training report: one PNG per run.

Left: training loss per evaluation interval and validation Bhattacharyya
coefficient (BC) against steps.  Right: histograms of matched and unmatched
validation distances on a log x axis (Fig. 1 of the DHS and PSE papers).
The best BC is in the title.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["training_report"]


def training_report(
    history: dict[str, Sequence[float]],
    matched: np.ndarray,
    unmatched: np.ndarray,
    *,
    path: str | Path,
    title: str,
    bc: float,
    hamming: bool = False,
) -> Path:
    """Write the training report PNG.

    Parameters
    ----------
    history : dict
        ``step``/``loss`` and ``val_step``/``val_bc`` lists from training.
    matched, unmatched : np.ndarray [shape=(n,), (m,)]
        Validation distances of matched and unmatched pairs.
    path : path
        Output PNG.
    title : str
        Model name.
    bc : float
        Validation BC of the kept model.
    hamming : bool
        Distances are integer Hamming distances (bins per integer).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax3) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(history["step"], history["loss"], color="C0", label="training loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss", color="C0")
    ax2 = ax1.twinx()
    ax2.plot(history["val_step"], history["val_bc"], color="C3", marker="o", ms=3, label="validation BC")
    ax2.set_ylabel("validation BC", color="C3")
    m = np.asarray(matched, dtype=float)
    u = np.asarray(unmatched, dtype=float)
    lo = max(min(m.min(), u.min()), 0.5 if hamming else 1e-3)
    hi = max(m.max(), u.max(), lo * 1.5)
    edges = np.geomspace(lo, hi * 1.01, 40)
    ax3.hist(np.maximum(m, lo), bins=edges, density=True, alpha=0.6, label=f"matched (n={m.size})")
    ax3.hist(np.maximum(u, lo), bins=edges, density=True, alpha=0.6, label=f"unmatched (n={u.size})")
    ax3.set_xscale("log")
    ax3.set_xlabel("Hamming distance" if hamming else "embedding distance")
    ax3.legend()
    fig.suptitle(f"{title}: validation BC {bc:.3f} (lower is better)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
