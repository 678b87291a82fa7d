"""benchmarks/pse_transcription.py's framing, against a direct computation (no model file needed)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))

import pse_transcription as pt  # noqa: E402


@pytest.mark.parametrize("n", [1, pt.HOP - pt.OVERLAP // 2, 30 * pt.SR + 17])
def test_windows_cover_the_audio_once_shifted(n):
    y = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    x = pt.windows(y)
    assert x.shape[1:] == (pt.WINDOW, 1)
    padded = np.concatenate([np.zeros(pt.OVERLAP // 2, np.float32), y])
    assert len(x) == -(-len(padded) // pt.HOP)
    for j, w in enumerate(x[:, :, 0]):
        seg = padded[j * pt.HOP : j * pt.HOP + pt.WINDOW]
        np.testing.assert_array_equal(w[: len(seg)], seg)
        assert not w[len(seg) :].any()


def test_unwrap_drops_half_the_overlap_at_each_end_and_trims():
    w, frames, bins = 5, 172, 3
    out = np.arange(w * frames * bins, dtype=np.float32).reshape(w, frames, bins)
    n = 7 * pt.SR
    got = pt.unwrap(out, n)
    want = np.concatenate([o[15:-15] for o in out])[: n * pt.FPS // pt.SR]
    np.testing.assert_array_equal(got, want)


def test_note_frames_pool_cut_and_normalise():
    rng = np.random.default_rng(0)
    post = rng.random((4 * 10 + 3, 88)).astype(np.float32)
    post[8:12] = 0.0  # one all-quiet output frame
    got = pt.note_frames(post)
    assert got.shape == (10, 48)
    for t in range(10):
        v = post[4 * t : 4 * t + 4, 15:63].max(axis=0)
        want = v / np.linalg.norm(v) if np.linalg.norm(v) > 1e-3 else np.zeros(48)
        np.testing.assert_allclose(got[t], want, rtol=1e-6, atol=1e-7)
    assert not got[2].any()


def test_frames_files_round_trip(tmp_path):
    seqs = [np.random.default_rng(i).random((n, 48)).astype(np.float32) for i, n in enumerate([3, 0, 5])]
    pt.save(str(tmp_path / "a.npz"), ["x", "y", "z"], seqs)
    ids, back = pt.load([str(tmp_path / "a.npz")])
    assert ids == ["x", "y", "z"]
    for s, b in zip(seqs, back):
        np.testing.assert_allclose(b, s.astype(np.float16).astype(np.float32))
