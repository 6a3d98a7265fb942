"""Where trained judges live: judges/NAME (in the working directory) and <cache>/judges/NAME.

A trained judge is a folder holding safetensors weights and a `judge.json` card (ragqa.trained holds the
lookup shared with the rerankers). This module is import-light: `ragqa models` and the model registry use it
without loading torch.
"""

from __future__ import annotations

from pathlib import Path

from ragqa import trained

CARD = "judge.json"
DEFAULT = "default"
FOLDER = "judges"
TRAIN_COMMAND = "ragqa judge train --output judges/default"


def judge_roots() -> list[Path]:
    """Folders searched for trained judges, in order."""
    return trained.roots(FOLDER)


def find_judge(name: str) -> Path | None:
    """A trained judge's folder by name, or None."""
    return trained.find(FOLDER, CARD, name)


def trained_judges() -> list[tuple[str, Path, dict]]:
    """(name, folder, card) for every trained judge found; a name found twice keeps the first."""
    return trained.listing(FOLDER, CARD)
