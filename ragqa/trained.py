"""Where models ragqa trains itself live: FOLDER/NAME (in the working directory) and <cache>/FOLDER/NAME.

Shared by the faithfulness judges (judges/, judge.json) and the rerankers (rerankers/, reranker.json): a trained
model is a folder holding safetensors weights and a JSON card. Import-light: `ragqa models` and the model
registry use it without loading torch.
"""

from __future__ import annotations

import json
from pathlib import Path


def roots(folder: str) -> list[Path]:
    """Folders searched for trained models of one family, in order."""
    from ragqa.models import cache_dir

    return [Path(folder), cache_dir() / folder]


def find(folder: str, card: str, name: str) -> Path | None:
    """A trained model's folder by bare name (no '/', not hidden), or None."""
    if not name or "/" in name or name.startswith("."):
        return None
    from ragqa.files import recover

    for root in roots(folder):
        if not (root / name).exists():
            recover(root / name)  # a training run killed while replacing it left it under its backup name
        if (root / name / card).is_file():
            return root / name
    return None


def listing(folder: str, card: str) -> list[tuple[str, Path, dict]]:
    """(name, folder, card) for every trained model of one family; a name found twice keeps the first."""
    found: dict[str, tuple[str, Path, dict]] = {}
    for root in roots(folder):
        for path in sorted(root.glob(f"*/{card}")) if root.is_dir() else []:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                data = {}
            found.setdefault(path.parent.name, (path.parent.name, path.parent, data if isinstance(data, dict) else {}))
    return list(found.values())
