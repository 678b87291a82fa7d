"""Evaluation: metrics of a MATCHES table against the truth, and open-set evaluation sets.

- :mod:`~msdmatch.evaluation.metrics`: rank table, MRR, calibration, open-set rates, plots;
- :mod:`~msdmatch.evaluation.openset`: evaluation sets with half of the true previews removed.
"""
