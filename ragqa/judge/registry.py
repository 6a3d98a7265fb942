"""Where trained judges live: judges/NAME (in the working directory) and <cache>/judges/NAME.

A trained judge is a folder holding safetensors weights and a `judge.json` card. This module is
import-light: `ragqa models` and the model registry use it without loading torch.
"""

from __future__ import annotations

import json
from pathlib import Path

CARD = "judge.json"
DEFAULT = "default"
TRAIN_COMMAND = "ragqa judge train --output judges/default"


def judge_roots() -> list[Path]:
    """Folders searched for trained judges, in order."""
    from ragqa.models import cache_dir

    return [Path("judges"), cache_dir() / "judges"]


def find_judge(name: str) -> Path | None:
    """A trained judge's folder by name, or None."""
    if not name or "/" in name or name.startswith("."):
        return None
    from ragqa.files import recover

    for root in judge_roots():
        if not (root / name).exists():
            recover(root / name)  # a `judge train` killed while replacing it left it under its backup name
        if (root / name / CARD).is_file():
            return root / name
    return None


def trained_judges() -> list[tuple[str, Path, dict]]:
    """(name, folder, card) for every trained judge found; a name found twice keeps the first."""
    found: dict[str, tuple[str, Path, dict]] = {}
    for root in judge_roots():
        for card in sorted(root.glob(f"*/{CARD}")) if root.is_dir() else []:
            try:
                data = json.loads(card.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                data = {}
            found.setdefault(card.parent.name, (card.parent.name, card.parent, data))
    return list(found.values())
