"""Layering: no module outside ragqa/train/ imports training code (issue #18).

Inference, evaluation, serving, the judge, the reranker, the query encoder, the stores and the index must load
without ragqa.train. Every module is parsed with `ast` (nothing is imported), and every import counts, those
inside functions (lazy imports) included. Shared pieces live in neutral modules (ragqa.qa: Q&A loading, the
train/val split and the gold passage; ragqa.adapters: adapters).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ragqa"
TRAIN = "ragqa.train"

ALLOWED = {
    # The command line is the entry point of every command, `ragqa train` and `ragqa export` included: it
    # dispatches to ragqa.train lazily, inside those commands' functions, so other commands never load it.
    "ragqa.cli",
}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, relative ones resolved; `from M import x` gives M and M.x."""
    name = module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def is_training(module: str) -> bool:
    return module == TRAIN or module.startswith(TRAIN + ".")


def violations(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        if is_training(name) or name in ALLOWED:
            continue
        for line, module in imported_modules(path, root):
            if is_training(module):
                found.append(f"{path.relative_to(root.parent)}:{line} imports {module}")
                break
    return found


def test_no_module_outside_train_imports_training_code():
    assert violations() == [], "move the shared piece to a neutral module (e.g. ragqa/qa.py)"


def test_the_check_sees_every_kind_of_import(tmp_path):
    """The checker itself: top-level, lazy, relative and `import ragqa.train` forms are all caught."""
    pkg = tmp_path / "ragqa"
    (pkg / "train").mkdir(parents=True)
    (pkg / "rerank").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "train" / "__init__.py").write_text("from ragqa.qa import x\n")  # train may import anything
    (pkg / "rerank" / "__init__.py").write_text("")
    (pkg / "answer.py").write_text("def f():\n    from ragqa.train.data import x\n")
    (pkg / "serve.py").write_text("import ragqa.train.trainer\n")
    (pkg / "rerank" / "pairs.py").write_text("from ..train import data\n")
    (pkg / "prompt.py").write_text("from ragqa import train\n")
    (pkg / "qa.py").write_text("from ragqa.training_notes import x\nimport ragqa.trained\n")
    found = [v.split(":")[0] for v in violations(pkg)]
    assert found == ["ragqa/answer.py", "ragqa/prompt.py", "ragqa/rerank/pairs.py", "ragqa/serve.py"]
