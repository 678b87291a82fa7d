"""Storage and input at the edges: stores, sources, decoding, synthesis, models, locks, outputs.

- :mod:`~msdmatch.io.store`: the Zarr v3 feature store (local or fsspec URL).
- :mod:`~msdmatch.io.sources`, :mod:`~msdmatch.io.decode`: listing and decoding input files.
- :mod:`~msdmatch.io.synth`: MIDI to audio with fluidsynth.
- :mod:`~msdmatch.io.modelfile`: ONNX model folders, their format and the shipped models.
- :mod:`~msdmatch.io.lock`: leases that fence a stage's writers.
- :mod:`~msdmatch.io.outputs`: where a stage may write (never over what msdmatch did not make).
- :mod:`~msdmatch.io.matches_table`: the MATCHES table as a file, a Parquet dataset or a Zarr group.
"""
