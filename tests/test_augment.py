"""Recording-condition augmentation of audio features (training only)."""
import numpy as np
import pytest

from msdmatch.models.augment import augment_audio


def _features(n=300, seed=0):
    """Unit frames of a few held notes, dB-like levels, with a silent stretch."""
    r = np.random.default_rng(seed)
    x = np.zeros((n, 48))
    for start in range(0, n, 20):
        notes = r.choice(48, 3, replace=False)
        x[start:start + 20, notes] = r.uniform(30, 60, 3)
    x[100:120] = 0.0
    n2 = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(n2 > 0, x / np.maximum(n2, 1e-12), 0).astype(np.float32)


def test_no_effect_is_the_identity():
    x = _features()
    y = augment_audio(x, np.random.default_rng(0), drums=0, noise=0, eq=0, overtones=0)
    np.testing.assert_allclose(y, x, atol=1e-6)


def test_same_seed_same_output_and_unit_frames():
    x = _features()
    a = augment_audio(x, np.random.default_rng(3), drums=1, noise=1, eq=1, overtones=1)
    b = augment_audio(x, np.random.default_rng(3), drums=1, noise=1, eq=1, overtones=1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)  # noise fills silent frames


@pytest.mark.parametrize("seed", range(5))
def test_drums_are_broadband_hits_on_some_frames(seed):
    x = _features()
    y = augment_audio(x, np.random.default_rng(seed), drums=1, noise=0, eq=0, overtones=0)
    cos = (x * y).sum(1)
    live = np.linalg.norm(x, axis=1) > 0
    hit = cos[live] < 0.95
    assert 0.05 < hit.mean() < 0.9  # some frames, not all
    # a hit spreads energy over the spectrum: more bins above 10% of the frame's peak
    wide = lambda f: (f > 0.1 * f.max(axis=1, keepdims=True)).sum(1)  # noqa: E731
    assert np.median(wide(y[live][hit])) > np.median(wide(x[live][hit]))
    # silent frames stay silent unless a hit falls on them
    assert np.all((np.linalg.norm(y[~live], axis=1) == 0) | (np.linalg.norm(y[~live], axis=1) > 0.99))


def test_eq_and_overtones_keep_silence_and_notes():
    x = _features()
    y = augment_audio(x, np.random.default_rng(1), drums=0, noise=0, eq=1, overtones=1)
    live = np.linalg.norm(x, axis=1) > 0
    assert np.all(y[~live] == 0)
    # the played notes stay the loudest bins of most frames
    top = np.argmax(y[live], axis=1)
    assert np.mean(x[live][np.arange(top.size), top] > 0) > 0.8
