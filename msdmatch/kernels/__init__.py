"""Pure kernels: numpy in, numpy out, with no Dask, Zarr, Click or file I/O.

- :mod:`~msdmatch.kernels.features`: CQT and piano-roll features, tuning, standardisation.
- :mod:`~msdmatch.kernels.prune`: exact top-K by squared Euclidean distance (the PSE prune).
- :mod:`~msdmatch.kernels.dtw`: Hamming DTW (the rerank) and cosine DTW (the verify).
- :mod:`~msdmatch.kernels.screen`: the coarse cosine DTW between rerank and verify.
- :mod:`~msdmatch.kernels.fusion`: the logistic fusion of the scores into one confidence.
- :mod:`~msdmatch.kernels.align_dtw` and :mod:`~msdmatch.kernels.retime`: alignment paths and tempo maps.
"""
