"""Helpers of ``benchmarks/realworld.py``: the real-material evaluation set.

- :mod:`.midi`: WAD lump extraction, MIDI facts and the merge to format 0;
- :mod:`.plan`: the pure, seeded rendering and distractor plans;
- :mod:`.render`: the performance, the renderers (adplay, fluidsynth), effects, MP3;
- :mod:`.debian`: ``apt-get download`` + ``dpkg -x`` and the files the set is made of;
- :mod:`.evaluate`: the prune recall curve and top-1 figures from the stores and MATCHES;
- :mod:`.openset`: the removed half, its truth and database list, pooled runs and the open-set table.

The set is for evaluation only: nothing here trains, calibrates or tunes.
"""
