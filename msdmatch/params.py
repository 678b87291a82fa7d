"""Feature geometry: the single source of truth.

Every stage, the model input shape, the ONNX axes and the CLI defaults read
:data:`DEFAULT_PARAMS`.  Stores and models record ``FeatureParams.to_dict()``
and refuse to mix with a different one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: Integer version of the on-disk store and model format.
FORMAT_VERSION = 1

#: Shortest input accepted, in seconds: audio shorter than this, and MIDI whose
#: notes span less, are failures ("too short").  Shorter items carry too few
#: frames to tell one song from another, yet an item of a few frames can
#: align with anything at a low DTW cost and win every query.
MIN_SECONDS = 10.0

#: Hamming-DTW of the DHS rerank: penalty added to every non-diagonal step (in bits).
DHS_PENALTY = 15
#: Hamming-DTW gully: the share of either sequence a path may skip at its ends.
DHS_GULLY = 0.9
#: Cosine-DTW gully of the screen and the verify stage.
COSINE_GULLY = 0.96

#: Hub penalty of the PSE prune (a CSLS-style correction): the squared distance
#: of a preview to a query is raised by ``HUB_WEIGHT`` times the mean cosine of
#: the preview's PSE vector to its ``HUB_K`` nearest reference MIDI vectors (the
#: PSE's own training queries), so that previews near every MIDI file stop
#: crowding the top K.  A PSE model records its own values in ``model.json``.
HUB_K = 5
HUB_WEIGHT = 1.5

#: Hub correction of the DHS rerank (the same idea with DHS ratios): each
#: candidate's ratio is lowered by ``DHS_HUB_WEIGHT`` times the preview's mean
#: ratio against its ``DHS_HUB_K`` best-aligned reference queries, the first
#: ``DHS_HUB_N`` training queries of the DHS model, so that previews that align
#: cheaply with every MIDI file stop leading the rerank.  A DHS model records
#: its own values in ``model.json``.
DHS_HUB_K = 5
DHS_HUB_WEIGHT = 1.5
DHS_HUB_N = 150

#: Names of the modalities a store or model can hold.
MODALITIES = ("audio", "midi-synth", "midi-pianoroll")


@dataclass(frozen=True)
class FeatureParams:
    """Constant-Q feature parameters (the thesis / Lakh MIDI settings).

    Parameters
    ----------
    sr : int
        Sample rate in Hz that audio is resampled to.
    hop_length : int
        Hop between frames in samples.
    fmin_midi : int
        MIDI note number of the lowest CQT bin.
    n_bins : int
        Number of CQT bins (rows of the piano roll).
    bins_per_octave : int
        CQT resolution.
    top_db : float
        Floor of the dB scale below the clip's maximum.
    max_frames : int
        Longest sequence accepted; longer inputs are failures (the thesis
        skipped MIDI files longer than 10,000 frames).
    beat_sync : bool
        Aggregate frames per beat instead of the fixed frame rate.
    """

    sr: int = 22050
    hop_length: int = 1024
    fmin_midi: int = 36
    n_bins: int = 48
    bins_per_octave: int = 12
    top_db: float = 80.0
    max_frames: int = 10000
    beat_sync: bool = False

    @property
    def frame_rate(self) -> float:
        """Frames per second (about 21.53)."""
        return self.sr / self.hop_length

    @property
    def frame_seconds(self) -> float:
        """Seconds per frame (about 0.0464)."""
        return self.hop_length / self.sr

    @property
    def fmin_hz(self) -> float:
        """Centre frequency of the lowest bin in Hz."""
        return 440.0 * 2.0 ** ((self.fmin_midi - 69) / 12.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form recorded in store and model attributes."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureParams:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            from msdmatch.errors import FormatMismatchError

            raise FormatMismatchError(
                f"unknown feature parameters {sorted(unknown)}; was this written "
                "by a newer msdmatch? Upgrade msdmatch or re-run `msdmatch featurize`."
            )
        return cls(**d)

    def diff(self, other: FeatureParams) -> list[str]:
        """Human-readable differences, e.g. ``['n_bins: 36 != 48']``."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} != {b[k]!r}" for k in a if a[k] != b[k]]


DEFAULT_PARAMS = FeatureParams()


@dataclass(frozen=True)
class FeaturizeOptions:
    """How ``featurize`` splits its work; the one source of its defaults (CLI, job specs, ``run``).

    Parameters
    ----------
    partition_size : int
        Input files per task.
    """

    partition_size: int = 100


@dataclass(frozen=True)
class EmbedOptions:
    """How ``embed`` splits its work; the one source of its defaults.

    Parameters
    ----------
    partition_size : int
        Items per task, also the chunk length of the ``pse/<model>`` arrays.
    """

    partition_size: int = 256


@dataclass(frozen=True)
class MatchOptions:
    """The match job's defaults (CLI, job specs, ``run``).

    Parameters
    ----------
    rerank : int
        DHS survivors R, all screened.
    verify : int
        Candidates verified with full DTW, V.
    keep : {'rerank', 'all'}
        Rows per query: the R reranked, or all K pruned.
    batch_size : int
        Queries per batch, the unit of work and of commit.
    """

    rerank: int = 300
    verify: int = 10
    keep: str = "rerank"
    batch_size: int = 256


FEATURIZE = FeaturizeOptions()
EMBED = EmbedOptions()
MATCH = MatchOptions()
