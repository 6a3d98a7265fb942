"""Write faults for every command that writes a result: a full disk, a read-only folder, a file in the way.

Each must end in one `error:` line naming the path and the fix, exit non-zero without a traceback, leave no
temp entries (names starting with '.') beside the output, and leave a previous result byte-for-byte intact.
A full disk is simulated with a file-size limit (ulimit -f): writes past it fail with EFBIG, as on a full disk.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, STARTER

from ragqa.cli import main

QA = STARTER / "qa.jsonl"
PASSAGES = STARTER / "passages.jsonl"
TRAIN = ["train.context_k=0", "train.max_seq_len=64", "train.max_examples=6", "train.max_val_examples=3",
         "train.batch_size=2", "train.eval_every=2", "train.save_every=2", "model.device=cpu", f"train.data=[{QA}]",
         "train.max_steps=1", "lora.r=4"]
JUDGE = ["--nli", "none", "--corpus", str(PASSAGES), "--max-domain", "16", "--epochs", "1", "--batch-size", "8",
         "--max-length", "64", "--device", "cpu"]
EVAL = ["--questions", str(QA), "--configs", "base", "--limit", "1", "--set", "ask.max_new_tokens=8",
        "--nli-judge", "none", "--bootstrap", "100", "--quiet"]


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def command(name: str, out: Path, work: Path) -> tuple[list[str], str]:
    """The argv of `ragqa NAME` writing `out` (inputs under `work`), and the option that names `out`."""
    if name == "ingest":
        return ["ingest", "--index", str(out), "--corpus", str(work / "docs.jsonl"), "--device", "cpu"], "--index"
    if name == "train":
        return ["train", "--output", str(out), *_sets(TRAIN)], "--output"
    if name == "eval":
        return ["eval", "--index", str(work / "index"), "--output", str(out), *EVAL], "--output"
    if name == "judge train":
        return ["judge", "train", "--output", str(out), *JUDGE], "--output"
    return ["export", str(work / "adapter"), "--merge", "--output", str(out)], "--output"


COMMANDS = ["ingest", "train", "eval", "judge train", "export"]


def invoke(argv: list[str], capsys=None) -> tuple[int, str]:
    """`ragqa ARGV` through the real entry point, in this process: (exit status, stderr if captured)."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err if capsys else ""


def run_with_file_size_limit(args: list[str], limit: int) -> subprocess.CompletedProcess:
    """`python ARGS` where no file can grow past `limit` bytes (SIGXFSZ ignored: writes fail EFBIG)."""
    def limit_writes():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return subprocess.run([sys.executable, *args], cwd=ROOT, preexec_fn=limit_writes, capture_output=True,
                          text=True, timeout=600)


def assert_one_line_error(code: int, stderr: str, path: Path, option: str, *reason: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code != 0 and len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr[-2000:]
    assert "Traceback" not in stderr
    line = errors[0]
    assert str(path) in line and option in line, line
    assert any(r in line for r in reason) if reason else True, line
    return line


def leftovers(parent: Path) -> list[str]:
    """Temp entries in `parent`; an index's lock file (.NAME.lock) stays beside it by design (flock needs one)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------ a file in the way (cheap: fails first)


@pytest.mark.parametrize("where", ["output", "parent"])
@pytest.mark.parametrize("name", COMMANDS)
def test_a_file_in_the_way_is_named_before_any_work(name, where, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder\n")
    out = blocker if where == "output" else blocker / "out"
    argv, option = command(name, out, tmp_path)
    code, err = invoke(argv, capsys)
    assert_one_line_error(code, err, out, option, "is a file", "in the way")
    assert blocker.read_text() == "not a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


# ------------------------------------------------------------------------ a read-only folder


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder this process cannot write in: chmod 0o555, or for root (who ignores modes) /sys if it refuses."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    probe = Path("/sys") / f".ragqa-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            pytest.skip(f"running as root and /sys gives {exc}: no read-only folder to test with")
        yield Path("/sys")
        return
    probe.rmdir()
    pytest.skip("running as root and /sys is writable: no read-only folder to test with")


@pytest.mark.parametrize("name", COMMANDS)
def test_a_read_only_folder_is_named_with_the_fix(name, read_only_dir, tmp_path, capsys):
    out = read_only_dir / "ragqa-fault-out"
    before = sorted(os.listdir(read_only_dir))
    argv, option = command(name, out, tmp_path)
    code, err = invoke(argv, capsys)
    line = assert_one_line_error(code, err, out, option, "Permission denied", "not permitted", "Read-only")
    assert f"make {read_only_dir} writable" in line
    assert sorted(os.listdir(read_only_dir)) == before


# ------------------------------------------------------------------------ a full disk


@pytest.fixture(scope="module")
def work(tmp_path_factory, embedder):
    """A tiny index, adapter, judge and eval report: the previous results the failing runs must not touch."""
    from ragqa import index
    from ragqa.config import load_config

    work = tmp_path_factory.mktemp("faults")
    rows = [json.loads(line) for line in PASSAGES.read_text().splitlines()[:6]]
    (work / "four.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    (work / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))  # two more: a real rewrite
    index.ingest(load_config(None, [f"index.name={work / 'index'}", f"index.corpus=[{work / 'four.jsonl'}]",
                                    "model.device=cpu"]), embedder=embedder)
    for name, out in (("train", work / "adapter"), ("judge train", work / "judge"), ("eval", work / "report")):
        argv, _ = command(name, out, work)
        assert invoke(argv)[0] == 0, f"ragqa {name} failed (its stderr is in the captured output)"
    return work


# Limits: above everything written before the result (lock file, cached data), below the result's files
# (index files ~10 KB; adapter, judge and merged weights MBs; the report's matrix.png ~20 KB).
FULL = {"ingest": ("index", 4096), "train": ("adapter", 65536), "judge train": ("judge", 65536),
        "eval": ("report", 4096), "export": ("merged", 65536)}


@pytest.mark.slow
@pytest.mark.parametrize("name", COMMANDS)
def test_a_full_disk_keeps_the_previous_result(name, work, embedder):
    folder, limit = FULL[name]
    out = work / folder
    before = tree_hashes(out) if out.exists() else None
    argv, option = command(name, out, work)
    res = run_with_file_size_limit(["-m", "ragqa", *argv], limit)
    line = assert_one_line_error(res.returncode, res.stderr, out, option, "File too large")
    assert f"free space or choose another {option}" in line
    assert leftovers(work) == []
    if before is None:
        assert not out.exists()
        return
    after = tree_hashes(out)
    if name == "eval":
        del before["run.json"], after["run.json"]  # records when the last run started; the report is untouched
    assert after == before
    _still_loads(name, out, embedder)


def _still_loads(name: str, out: Path, embedder) -> None:
    if name == "ingest":
        from ragqa.retrieve import Retriever

        assert Retriever.load(out, embedder_model=embedder).manifest["counts"]["documents"] == 4
    elif name == "train":
        from ragqa.adapters import check_adapter_dir

        assert check_adapter_dir(out, "smollm2-135m")["r"] == 4
    elif name == "judge train":
        assert json.loads((out / "judge.json").read_text())["kind"] == "judge"
    elif name == "eval":
        assert json.loads((out / "summary.json").read_text())["answers"] == {"base": 1}


def test_a_full_disk_mid_record_leaves_no_partial_line(tmp_path):
    results = tmp_path / "results.jsonl"
    code = """if True:
        import sys
        from ragqa.errors import RagqaError
        from ragqa.evaluate.ablation import ResultsLog
        log = ResultsLog(sys.argv[1])
        log.append({"qid": "q1", "config": "base", "answer": "short"})
        try:
            log.append({"qid": "q2", "config": "base", "answer": "x" * 5000})
        except RagqaError as exc:
            print(exc)
    """
    res = run_with_file_size_limit(["-c", code, str(results)], 1024)
    assert res.returncode == 0, res.stderr
    assert f"cannot write {results}: File too large" in res.stdout and "free space" in res.stdout
    assert [json.loads(line)["qid"] for line in results.read_text().splitlines()] == ["q1"]
