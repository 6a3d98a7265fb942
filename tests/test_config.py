from pathlib import Path

import pytest

from ragqa.config import load_config
from ragqa.errors import RagqaError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    cfg = load_config(path)
    assert cfg.model.base == "smollm2-135m"
    assert cfg.train.method in {"lora", "qlora"}
    assert path.stem.split("_")[1].split("-")[0] == cfg.train.method  # name says the method (then any variant)


def test_recipe_names_cover_both_methods():
    assert {p.name for p in CONFIGS} >= {"smollm2-135m_lora_cpu.yaml", "smollm2-135m_qlora_cpu.yaml"}


def test_overrides_are_typed():
    cfg = load_config(None, ["train.lr=1e-4", "train.max_steps=2", "lora.target_modules=[q_proj, v_proj]",
                             "train.max_examples=null", "ask.disclaimer=false"])
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.max_steps == 2
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.ask.disclaimer is False


def test_set_keeps_text_in_text_fields():
    """A text field keeps the text YAML would read as a number, a bool or null; null still clears an optional one."""
    cfg = load_config(None, ["model.base=1e5", "index.name=0123", "train.output=null", "retrieval.rerank=yes",
                             "judge.llm_model=off", "model.embedder='quoted'"])
    assert (cfg.model.base, cfg.index.name, cfg.train.output) == ("1e5", "0123", "null")
    assert (cfg.retrieval.rerank, cfg.judge.llm_model, cfg.model.embedder) == ("yes", "off", "quoted")
    assert load_config(None, ["retrieval.rerank=yes", "retrieval.rerank=null"]).retrieval.rerank is None
    assert load_config(None, ["retrieval.abstain_below=5e-1"]).retrieval.abstain_below == 0.5  # not text: a number


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.lrr=1", "train.lrr"),
        ("nosuch.x=1", "nosuch.x"),
        ("train.lr=fast", "train.lr"),
        ("lora.r=0", "lora.r"),
        ("index.chunk_size=-5", "index.chunk_size"),
        ("index.chunk_overlap=300", "index"),
        ("train.method=full", "train.method"),
        ("lora.dropout=1.5", "lora.dropout"),
    ],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(RagqaError) as err:
        load_config(None, [override])
    msg = str(err.value)
    assert field in msg and "\n" not in msg


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(RagqaError, match="bad.yaml.*not valid YAML"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  learning_rate: 1\n")
    with pytest.raises(RagqaError, match="train.learning_rate: unknown key"):
        load_config(unknown)
    with pytest.raises(RagqaError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_malformed_set():
    with pytest.raises(RagqaError, match="SECTION.KEY=VALUE"):
        load_config(None, ["train.lr"])
