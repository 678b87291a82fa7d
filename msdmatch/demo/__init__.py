"""Demo corpus: music21 and generated songs as MIDI queries, 30 s MP3 previews as recordings."""
from msdmatch.demo.corpus import build_corpus
from msdmatch.demo.recording import load_preview, preview_seconds

__all__ = ["build_corpus", "load_preview", "preview_seconds"]
