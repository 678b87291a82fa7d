"""Training and export of the DHS and PSE models (needs the ``train`` extra).

Importing this package does not import torch; the entry points below do when
called.  Use :func:`train_models` to train and export both models for one
MIDI modality, and :func:`export_model` / :func:`check_parity` directly when
you hold trained torch nets.
"""
from __future__ import annotations

from typing import Any

__all__ = ["train_models", "export_model", "check_parity"]


def __getattr__(name: str) -> Any:
    if name == "train_models":
        from msdmatch.models.train import train_models

        return train_models
    if name in ("export_model", "check_parity"):
        from msdmatch.models import export

        return getattr(export, name)
    raise AttributeError(name)
