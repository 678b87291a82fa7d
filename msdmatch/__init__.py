"""msdmatch: match MIDI files to the audio recordings they transcribe.

Raffel & Ellis's cascade (CQT features, attention-embedding pruning,
Hamming-DTW reranking of learned hashes, cosine-DTW verification) as Dask jobs
over Zarr stores.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]
