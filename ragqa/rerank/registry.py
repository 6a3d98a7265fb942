"""Where trained rerankers live: rerankers/NAME (in the working directory) and <cache>/rerankers/NAME.

A trained reranker is a folder holding safetensors weights and a `reranker.json` card. Import-light (no torch):
`ragqa models`, the model registry and config checks use it.
"""

from __future__ import annotations

from pathlib import Path

from ragqa import trained

CARD = "reranker.json"
DEFAULT = "default"
FOLDER = "rerankers"
TRAIN_COMMAND = "ragqa rerank train --output rerankers/default"


def reranker_roots() -> list[Path]:
    return trained.roots(FOLDER)


def find_reranker(name: str) -> Path | None:
    """A trained reranker's folder by name, or None."""
    return trained.find(FOLDER, CARD, name)


def trained_rerankers() -> list[tuple[str, Path, dict]]:
    """(name, folder, card) for every trained reranker found; a name found twice keeps the first."""
    return trained.listing(FOLDER, CARD)
