"""Where tuned query encoders live: query_encoders/NAME (in the working directory) and <cache>/query_encoders/NAME.

A tuned query encoder is a sentence-transformers folder (safetensors weights, tokenizer, pooling) plus a
`query_encoder.json` card. Import-light (no torch): `ragqa models` and config checks use it.
"""

from __future__ import annotations

from pathlib import Path

from ragqa import trained

CARD = "query_encoder.json"
DEFAULT = "default"
FOLDER = "query_encoders"
TRAIN_COMMAND = "ragqa query-encoder train --output query_encoders/default"


def query_encoder_roots() -> list[Path]:
    return trained.roots(FOLDER)


def find_query_encoder(name: str) -> Path | None:
    """A tuned query encoder's folder by name, or None."""
    return trained.find(FOLDER, CARD, name)


def trained_query_encoders() -> list[tuple[str, Path, dict]]:
    """(name, folder, card) for every tuned query encoder found; a name found twice keeps the first."""
    return trained.listing(FOLDER, CARD)
