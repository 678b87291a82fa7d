"""The stages, each a plan plus functions run by :mod:`msdmatch.executor`.

- :mod:`~msdmatch.stages.featurize`: audio and MIDI files to a feature store.
- :mod:`~msdmatch.stages.embed`: PSE embeddings, DHS hash words and screen frames into a store.
- :mod:`~msdmatch.stages.match`: prune, rerank, screen, verify and fusion, batch by batch.
- :mod:`~msdmatch.stages.calibrate`: fit the fusion on validation matches.
- :mod:`~msdmatch.stages.report`: score a MATCHES table against the truth, with baselines.
- :mod:`~msdmatch.stages.align`: align matched MIDI to its recording and retime it.
"""
