"""The CLI answers fast, fails with one line, and exits non-zero on bad input."""

import time

from conftest import run_cli


def test_help_is_fast_and_lists_commands():
    start = time.perf_counter()
    res = run_cli("--help")
    elapsed = time.perf_counter() - start
    assert res.returncode == 0
    for cmd in ("ingest", "train", "ask", "eval", "models"):
        assert cmd in res.stdout
    assert elapsed < 5  # whole interpreter start; the heavy libraries must not be imported


def test_help_imports_no_heavy_library():
    import subprocess
    import sys

    code = ("import sys; from ragqa.cli import cli; "
            "heavy = [m for m in ('torch', 'transformers', 'llama_index', 'ragas', 'sentence_transformers') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_models_lists_registry():
    res = run_cli("models")
    assert res.returncode == 0
    assert "minilm" in res.stdout and "smollm2-135m" in res.stdout


def test_config_error_is_one_line():
    res = run_cli("ingest", "--set", "index.chunk_size=-1")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "index.chunk_size" in lines[0]


def test_unknown_config_key():
    res = run_cli("ingest", "--set", "index.nope=1")
    assert res.returncode == 2 and "unknown config key 'index.nope'" in res.stderr


def test_unknown_command_exits_nonzero():
    res = run_cli("frobnicate")
    assert res.returncode != 0 and "No such command" in res.stderr


def test_flag_values_reach_the_config_as_typed(tmp_path):
    """An option's value is set as click typed it, never turned into text and read as YAML again (which made
    --index 0123 the number 83, and yes, null or 1e5 a bool, None or a float, all refused by a text field)."""
    from ragqa.cli import NULL, _build_config

    cfg = _build_config(None, (), {"index.name": "0123", "train.output": "null", "model.base": "1e5",
                                   "train.data": ["yes"], "ask.disclaimer": False, "retrieval.k": 4,
                                   "judge.nli": NULL, "train.lr": None})
    assert (cfg.index.name, cfg.train.output, cfg.model.base, cfg.train.data) == ("0123", "null", "1e5", ["yes"])
    assert cfg.ask.disclaimer is False and cfg.retrieval.k == 4 and cfg.judge.nli is None
    assert cfg.train.lr == _build_config(None, (), {}).train.lr  # None: the flag was not given
    res = run_cli("ingest", "--stats", "--index", "0123", cwd=tmp_path)
    assert res.returncode == 2 and "no index at indexes/0123" in res.stderr, res.stderr
