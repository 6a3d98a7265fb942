"""What a writing command may replace, and what a killed one leaves behind (issue #22, data loss).

- An existing, non-empty --output (--index) that is not a ragqa artefact of the same kind (no card or manifest)
  is refused in one line before any work, byte-identical after, unless --overwrite is given.
- An artefact of the same kind is replaced without --overwrite.
- A kill between the two renames that swap a new result in (old one moved to `.NAME.old-PID`, new one renamed
  in) is undone: by the next run of the writer, and by the loaders of adapters and judges.
- An eval report is swapped in as one folder with its results.jsonl: a kill while it is published leaves the
  whole previous report or the whole new one, never a mix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_cli
from test_faults import JUDGE, PASSAGES, QA, _sets, assert_one_line_error, command, invoke, leftovers

from ragqa import files

NOTES = b"my own notes, not ragqa's\n"
KINDS = {"train": "adapter", "export": "export", "judge train": "judge", "eval": "eval report", "ingest": "index"}
MARKERS = {"train": "ragqa_card.json", "export": "ragqa_merged.json", "judge train": "judge.json",
           "eval": "run.json", "ingest": "manifest.json"}
# The cheapest real run of each command: the base model only (train), a few in-domain pairs (judge).
TRAIN_NONE = ["--method", "none", *_sets(["train.context_k=0", "train.max_seq_len=64", "train.max_examples=6",
                                           "train.max_val_examples=3", "model.device=cpu", f"train.data=[{QA}]"])]
JUDGE_SMALL = [*JUDGE[:JUDGE.index("--max-domain")], "--max-domain", "4", "--epochs", "1", "--batch-size", "4",
               "--max-length", "32", "--device", "cpu"]


def dead_pid() -> int:
    """The PID of a process that has exited (what a killed writer leaves in its backup's name)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_bytes(NOTES)
    return path


def crash_between_the_renames(path: Path) -> Path:
    """The state a kill between the two renames of files.atomic_dir leaves: the old result under its backup
    name, nothing at the target."""
    backup = path.with_name(f".{path.name}.old-{dead_pid()}")
    os.rename(path, backup)
    return backup


# ------------------------------------------------------------------------ refusals (cheap: before any model load)


@pytest.mark.parametrize("name", list(KINDS))
def test_a_folder_of_user_files_is_refused_before_any_work(name, tmp_path, capsys):
    (tmp_path / "docs.jsonl").write_bytes(PASSAGES.read_bytes())
    out = user_folder(tmp_path / "mine")
    argv, option = command(name, out, tmp_path)
    code, err = invoke(argv, capsys)
    line = assert_one_line_error(code, err, out, option, f"is not a ragqa {KINDS[name]} folder")
    assert code == 2 and MARKERS[name] in line and "--overwrite" in line
    assert sorted(os.listdir(out)) == ["notes.txt"] and (out / "notes.txt").read_bytes() == NOTES
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("name", "other"), [("train", "judge train"), ("judge train", "train"),
                                             ("export", "train"), ("eval", "judge train")])
def test_another_kind_of_ragqa_output_is_refused(name, other, tmp_path, capsys):
    out = user_folder(tmp_path / "out")
    (out / MARKERS[other]).write_text("{}")  # e.g. `ragqa train --output judges/default`
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    argv, option = command(name, out, tmp_path)
    code, err = invoke(argv, capsys)
    assert_one_line_error(code, err, out, option, f"is not a ragqa {KINDS[name]} folder")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_checkpoint_folder_of_user_files_is_refused(tmp_path, capsys):
    # A finished run removes OUTPUT.checkpoints: it must be ragqa's too.
    user_folder(tmp_path / "adapter.checkpoints")
    code, err = invoke(["train", "--output", str(tmp_path / "adapter"), *TRAIN_NONE], capsys)
    assert_one_line_error(code, err, tmp_path / "adapter.checkpoints", "--output", "not a ragqa checkpoint folder")
    assert (tmp_path / "adapter.checkpoints" / "notes.txt").read_bytes() == NOTES
    assert not (tmp_path / "adapter").exists()


def test_overwrite_never_replaces_the_folder_it_runs_in(tmp_path, capsys, monkeypatch):
    out = user_folder(tmp_path / "project")
    (out / "work").mkdir()
    monkeypatch.chdir(out / "work")
    code, err = invoke(["judge", "train", "--output", str(out), "--overwrite", *JUDGE], capsys)
    assert_one_line_error(code, err, out, "--output", "holds the current folder")
    assert (out / "notes.txt").read_bytes() == NOTES


# ------------------------------------------------------------------------ recovery after a kill between the renames


def test_recover_restores_removes_and_leaves_live_writers_alone(tmp_path):
    target = tmp_path / "out"
    backup = user_folder(tmp_path / f".out.old-{dead_pid()}")
    temp = user_folder(tmp_path / f".out.tmp-{dead_pid()}-abc")
    files.recover(target)
    assert (target / "notes.txt").read_bytes() == NOTES and not backup.exists() and not temp.exists()

    stale = user_folder(tmp_path / f".out.old-{dead_pid()}")  # the new result made it in: the backup goes
    files.recover(target)
    assert not stale.exists() and (target / "notes.txt").read_bytes() == NOTES

    os.rename(target, tmp_path / f".out.old-{os.getpid()}")  # a live writer (this process) is mid-swap
    live_temp = user_folder(tmp_path / f".out.tmp-{os.getpid()}-abc")
    files.recover(target)
    assert not target.exists() and (tmp_path / f".out.old-{os.getpid()}").is_dir() and live_temp.is_dir()


@pytest.mark.parametrize("loader", ["check_adapter_dir", "adapter_base"])  # ask/eval, and export
def test_adapter_loaders_restore_an_adapter_left_by_a_kill(loader, tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    from ragqa.adapters import check_adapter_dir
    from ragqa.train.export import adapter_base

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    save_file({"w": np.zeros(1, dtype=np.float32)}, adapter / "adapter_model.safetensors")  # a valid header
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4, "base_model_name_or_path": "smollm2-135m"}))
    (adapter / "ragqa_card.json").write_text(json.dumps({"base_model": "smollm2-135m", "method": "lora"}))
    crash_between_the_renames(adapter)
    if loader == "check_adapter_dir":
        assert check_adapter_dir(adapter, "smollm2-135m")["r"] == 4
    else:
        assert adapter_base(adapter) == "smollm2-135m"
    assert sorted(os.listdir(tmp_path)) == ["adapter"]


def test_judge_lookup_restores_a_judge_left_by_a_kill(tmp_path, monkeypatch):
    from ragqa.judge.registry import find_judge

    monkeypatch.chdir(tmp_path)
    judge = tmp_path / "judges" / "mine"
    judge.mkdir(parents=True)
    (judge / "judge.json").write_text(json.dumps({"kind": "judge"}))
    crash_between_the_renames(judge)
    assert find_judge("mine") == Path("judges") / "mine"
    assert sorted(os.listdir(tmp_path / "judges")) == ["mine"]


@pytest.mark.parametrize("name", ["train", "export", "judge train"])
def test_the_next_run_restores_a_result_left_by_a_kill(name, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKERS[name]).write_text('{"previous": true}')
    backup = crash_between_the_renames(out)
    # Each run fails on its input right after the output check, so no model is loaded.
    argv, _ = command(name, out, tmp_path)
    if name == "train":
        argv = [*argv, "--set", f"train.data=[{tmp_path / 'no-such.jsonl'}]"]
    elif name == "judge train":
        argv = [*argv, "--corpus", str(tmp_path / "no-such.jsonl")]
    code, err = invoke(argv, capsys)
    assert code != 0 and f"restored {out} from {backup.name}" in err
    assert json.loads((out / MARKERS[name]).read_text()) == {"previous": True}
    assert not backup.exists()


# ------------------------------------------------------------------------ real runs: replace, --overwrite


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, generator):
    """A real (untrained) LoRA adapter with a ragqa card: the cheapest input `ragqa export` accepts."""
    from peft import LoraConfig, get_peft_model

    from ragqa.models import generator_dir

    model, _ = generator
    path = tmp_path_factory.mktemp("outputs") / "adapter"
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    try:
        peft_model.save_pretrained(str(path), safe_serialization=True)
    finally:
        peft_model.unload()  # the session's generator stays the bare base model
    (path / "ragqa_card.json").write_text(json.dumps({"base_model": "smollm2-135m", "method": "lora",
                                                      "base_model_location": generator_dir("smollm2-135m")}))
    return path


def real_run(name: str, out: Path, adapter: Path, *extra: str):
    if name == "train":
        return run_cli("train", "--output", str(out), *TRAIN_NONE, *extra)
    if name == "judge train":
        return run_cli("judge", "train", "--output", str(out), *JUDGE_SMALL, *extra)
    return run_cli("export", str(adapter), "--merge", "--output", str(out), *extra)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["train", "judge train", "export"])
def test_overwrite_replaces_a_folder_of_user_files(name, tmp_path, adapter):
    out = user_folder(tmp_path / "out")
    res = real_run(name, out, adapter, "--overwrite")
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / MARKERS[name]).is_file() and not (out / "notes.txt").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", ["train", "judge train", "export"])
def test_a_previous_result_of_the_same_kind_is_replaced(name, tmp_path, adapter):
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKERS[name]).write_text('{"previous": true}')
    (out / "stale.safetensors").write_bytes(b"old weights")
    res = real_run(name, out, adapter)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((out / MARKERS[name]).read_text()) != {"previous": True}
    assert not (out / "stale.safetensors").exists()
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------ eval: the report folder is one unit


@pytest.fixture(scope="module")
def report(tmp_path_factory, embedder):
    """A tiny index and a finished one-answer eval report (later runs resume it: nothing left to answer)."""
    from ragqa import index
    from ragqa.config import load_config

    work = tmp_path_factory.mktemp("outputs-eval")
    rows = PASSAGES.read_text().splitlines()[:6]
    (work / "docs.jsonl").write_text("\n".join(rows) + "\n")
    index.ingest(load_config(None, [f"index.name={work / 'index'}", f"index.corpus=[{work / 'docs.jsonl'}]",
                                    "model.device=cpu"]), embedder=embedder)
    argv, _ = command("eval", work / "report", work)
    res = run_cli(*argv)
    assert res.returncode == 0, res.stderr[-2000:]
    return work


def copy_report(report: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(report / "report", to)
    return to


def eval_args(work: Path, out: Path, *extra: str) -> list[str]:
    return [*command("eval", out, work)[0], *extra]


def bootstraps(folder: Path) -> tuple[int, int]:
    """The resample count as summary.json and report.md each state it (they differ in a mixed report)."""
    md = (folder / "report.md").read_text()
    return json.loads((folder / "summary.json").read_text())["n_resamples"], int(md.split(" resamples, seed")[0]
                                                                                .rsplit("(", 1)[1])


@pytest.mark.slow
def test_eval_replaces_its_report_as_one_folder_and_keeps_other_files(report, tmp_path):
    out = copy_report(report, tmp_path / "report")
    (out / "notes.txt").write_bytes(NOTES)  # a note beside a report: ragqa did not write it, so it stays
    results = (out / "results.jsonl").read_bytes()
    inode = out.stat().st_ino
    res = run_cli(*eval_args(report, out, "--bootstrap", "200"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert out.stat().st_ino != inode  # a new folder renamed in, not files renamed one by one
    assert bootstraps(out) == (200, 200)
    assert (out / "results.jsonl").read_bytes() == results and (out / "notes.txt").read_bytes() == NOTES
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_eval_overwrite_writes_into_a_folder_of_user_files(report, tmp_path):
    out = user_folder(tmp_path / "mine")
    (out / "results.jsonl").write_bytes((report / "report" / "results.jsonl").read_bytes())  # nothing to answer
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    refused = run_cli(*eval_args(report, out))
    assert refused.returncode == 2 and "is not a ragqa eval report folder" in refused.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    res = run_cli(*eval_args(report, out, "--overwrite"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["answers"] == {"base": 1}
    assert (out / "notes.txt").read_bytes() == NOTES  # the report files are written; nothing else is removed


KILL_AT_RENAME = """if True:
    import os, runpy, signal, sys
    out, kill_at = os.path.abspath(sys.argv[1]), int(sys.argv[2])
    seen = 0

    def inside(p):
        p = os.path.abspath(p)
        return p == out or p.startswith(out + os.sep)

    def hooked(real):
        def rename(src, dst, *args, **kwargs):
            global seen
            if (inside(src) or inside(dst)) and os.path.basename(dst) != "run.json":
                seen += 1
                if seen == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst, *args, **kwargs)
        return rename

    os.rename, os.replace = hooked(os.rename), hooked(os.replace)
    sys.argv = ["ragqa", *sys.argv[3:]]
    runpy.run_module("ragqa", run_name="__main__")
"""


@pytest.mark.slow
def test_a_kill_while_the_report_is_published_leaves_it_whole(report, tmp_path):
    """SIGKILL right before the second rename that publishes the report (between the old report moving aside
    and the new one moving in; in a file-by-file publish, between the first and second file)."""
    out = copy_report(report, tmp_path / "report")
    results = (out / "results.jsonl").read_bytes()
    killed = subprocess.run([sys.executable, "-c", KILL_AT_RENAME, str(out), "2",
                             *eval_args(report, out, "--bootstrap", "200")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    # What a reader finds: the folder, or (the kill fell between the renames) its backup; old or new, never mixed.
    found = out if out.exists() else files.find_backup(out, "summary.json")
    assert found is not None and bootstraps(found) in ((100, 100), (200, 200))
    res = run_cli(*eval_args(report, out))  # the next run restores and resumes: nothing is answered again
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "results.jsonl").read_bytes() == results and bootstraps(out) == (100, 100)
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_eval_restores_a_report_left_by_a_kill(report, tmp_path):
    out = copy_report(report, tmp_path / "report")
    results = (out / "results.jsonl").read_bytes()
    backup = crash_between_the_renames(out)
    res = run_cli(*eval_args(report, out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"restored {out} from {backup.name}" in res.stderr
    assert (out / "results.jsonl").read_bytes() == results  # resumed: nothing answered again
    assert "1 questions x 1 configurations in 0.0 s" in res.stdout
    assert leftovers(tmp_path) == []
