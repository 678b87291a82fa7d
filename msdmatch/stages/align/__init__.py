"""The align stage: a MIDI file aligned to its recording, one pair or a batch of matches.

- :mod:`~msdmatch.stages.align.pair`: features, DTW path, time map and retimed MIDI of one pair;
- :mod:`~msdmatch.stages.align.batch`: ``msdmatch align-matches``, resumable on a cluster.
"""
