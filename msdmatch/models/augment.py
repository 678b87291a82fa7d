"""Recording-condition augmentation of audio features, for training.

Real renditions mix drums loudly, add noise and colour the spectrum with
other instruments and engines; the training corpus's previews are clean
fluidsynth renderings.  :func:`augment_audio` imitates those conditions on
stored audio features, so the nets can learn to ignore them without a
slower synthesis of new training audio.

Conventions
-----------
* Input and output are audio features as stored: ``(frames, n_bins)``
  float32, each frame the L2-normalised dB level above a floor
  (:mod:`msdmatch.kernels.features`), bin ``j`` one semitone above bin
  ``j - 1``.
* Frames are rescaled to a dB scale (each frame's largest bin at ``level``
  dB above the floor), the effects are applied there (sources add in
  power, equalisation adds in dB) and the frames are normalised again.
  Silent (all-zero) frames stay silent unless noise or a drum hit fills them.
* Every random choice comes from the ``rng`` passed in.
"""
from __future__ import annotations

import numpy as np

__all__ = ["augment_audio"]

#: Natural-log units per dB of power: ``10 ** (x / 10) == exp(x * _NEPER_PER_DB)``.
_NEPER_PER_DB = np.log(10.0) / 10.0


def _smooth_curve(n_bins: int, rng: np.random.Generator, *, tilt: float, ripple: float) -> np.ndarray:
    """A random spectral shape in dB ``(n_bins,)``: a linear tilt plus one slow ripple."""
    f = np.linspace(-1.0, 1.0, n_bins)
    phase = rng.uniform(0.0, 2.0 * np.pi)
    cycles = rng.uniform(0.5, 2.0)
    return rng.uniform(-tilt, tilt) * f + ripple * rng.uniform(0.0, 1.0) * np.sin(np.pi * cycles * f + phase)


def _power_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Level in dB of two sources added in power."""
    return np.logaddexp(a * _NEPER_PER_DB, b * _NEPER_PER_DB) / _NEPER_PER_DB


def _drum_track(n_frames: int, n_bins: int, rng: np.random.Generator, level: float) -> np.ndarray:
    """Levels in dB ``(n_frames, n_bins)`` of a drum part: broadband hits on a jittered beat grid."""
    out = np.full((n_frames, n_bins), -np.inf)
    period = rng.uniform(4.0, 14.0)  # frames between hits: 0.19-0.65 s
    t = rng.uniform(0.0, period)
    kinds = [_smooth_curve(n_bins, rng, tilt=15.0, ripple=6.0) for _ in range(3)]
    while t < n_frames:
        if rng.random() < 0.8:
            start = int(t + rng.normal(0.0, 0.3))
            shape = kinds[int(rng.integers(len(kinds)))] + rng.normal(0.0, 3.0, n_bins)
            hit = level + rng.uniform(-6.0, 3.0) + shape
            for d, decay in enumerate((0.0, 8.0, 18.0)):
                if 0 <= start + d < n_frames:
                    out[start + d] = np.maximum(out[start + d], hit - decay)
        t += period
    return out


def _overtones(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add the octave, twelfth and double octave of every bin, a few to 20 dB down."""
    out = y.copy()
    for shift in (12, 19, 24):
        src = np.full_like(y, -np.inf)
        src[:, shift:] = y[:, :-shift] - rng.uniform(3.0, 20.0)
        out = _power_sum(out, src)
    return out


def augment_audio(
    x: np.ndarray,
    rng: np.random.Generator,
    *,
    drums: float = 0.5,
    noise: float = 0.4,
    eq: float = 0.6,
    overtones: float = 0.3,
) -> np.ndarray:
    """Audio features as if recorded with loud drums, noise, another timbre and EQ.

    Parameters
    ----------
    x : np.ndarray [shape=(n_frames, n_bins), dtype=float32]
        Stored audio features (unit frames of dB above the floor).
    rng : np.random.Generator
        Source of every random choice.
    drums, noise, eq, overtones : float in [0, 1]
        Probability of each effect: a drum part on a beat grid mixed at
        -6 to +3 dB of the music's level; a stationary coloured noise floor
        15-40 dB below it; a random equalisation of up to +-10 dB tilt with a
        slow ripple; added overtones (octave, twelfth, double octave) as a
        brighter instrument would have.

    Returns
    -------
    y : np.ndarray [shape=(n_frames, n_bins), dtype=float32]
        Augmented features, each frame L2-normalised (zero frames stay zero
        unless an effect filled them).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.abs(np.random.default_rng(0).normal(size=(100, 48))).astype(np.float32)
    >>> x /= np.linalg.norm(x, axis=1, keepdims=True)
    >>> augment_audio(x, np.random.default_rng(1)).shape
    (100, 48)
    """
    x = np.asarray(x, dtype=np.float64)
    n, b = x.shape
    if n == 0:
        return x.astype(np.float32)
    level = rng.uniform(50.0, 75.0)
    peak = x.max(axis=1, keepdims=True)
    live = peak[:, 0] > 0
    with np.errstate(divide="ignore"):
        y = np.where(live[:, None] & (x > 0), x / np.maximum(peak, 1e-12) * level, -np.inf)
    if rng.random() < overtones:
        y = _overtones(y, rng)
    if rng.random() < drums:
        y = _power_sum(y, _drum_track(n, b, rng, level))
    if rng.random() < noise:
        floor = level - rng.uniform(15.0, 40.0) + _smooth_curve(b, rng, tilt=10.0, ripple=4.0)
        y = _power_sum(y, floor[None, :] + rng.normal(0.0, 2.0, (n, b)))
    if rng.random() < eq:
        y = y + _smooth_curve(b, rng, tilt=10.0, ripple=5.0)[None, :]
    y = np.clip(np.nan_to_num(y, neginf=0.0), 0.0, None)
    norm = np.linalg.norm(y, axis=1, keepdims=True)
    return np.where(norm > 0, y / np.maximum(norm, 1e-12), 0.0).astype(np.float32)
