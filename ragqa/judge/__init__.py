"""The offline faithfulness judge: does a passage support a claim?

Public API (used by ask and eval):
    load_judge(name_or_path=None, ...) -> judge with `.name` and `.support(answer, passages)`
    default_judge(...)                 -> the trained default judge, or RagqaError saying how to train it
    support_scorer(cfg)                -> the configured judge, or the lexical scorer when no judge is trained
    judge.support(answer, passages)    -> SupportResult(judge, faithfulness, claims=[ClaimScore ...])
    judge.score_claims(claims, passages), judge.threshold, judge.can_contradict: used by ragqa.judge.check

`passages` are strings, ragqa Passages or dicts with 'text'. Heavy libraries load on first use only.
"""

from __future__ import annotations

from pathlib import Path

from ragqa.errors import RagqaError
from ragqa.files import recover
from ragqa.judge.registry import DEFAULT, TRAIN_COMMAND, find_judge, judge_roots

LEXICAL = "lexical"
"""The judge name of the lexical support scorer (ragqa.judge.lexical)."""


def default_judge(device: str = "cpu", window_overlap: int = 1):
    """The trained judge named 'default' (judges/default or <cache>/judges/default)."""
    path = find_judge(DEFAULT)
    if path is None:
        looked = " and ".join(str(root / DEFAULT) for root in judge_roots())
        raise RagqaError(f"no trained faithfulness judge (looked in {looked}); train it with `{TRAIN_COMMAND}`")
    return load_judge(str(path), device=device, window_overlap=window_overlap)


def load_judge(name_or_path: str | None = None, *, device: str = "cpu", window_overlap: int = 1,
               llm_url: str | None = None, llm_model: str | None = None, llm_api_key_env: str | None = None):
    """A judge by trained name, folder, hub NLI cross-encoder id, 'llm' (OpenAI-compatible endpoint) or 'lexical'.

    None means the default trained judge. The judge's `.name` says which judge scored.
    """
    if name_or_path is None or name_or_path == DEFAULT and find_judge(DEFAULT) is None:
        return default_judge(device, window_overlap)
    if name_or_path == LEXICAL:
        from ragqa.judge.lexical import LexicalJudge

        return LexicalJudge()
    if name_or_path == "llm":
        from ragqa.judge.llm import LLMJudge

        return LLMJudge(llm_url or "", llm_model or "", api_key_env=llm_api_key_env)
    from ragqa.judge.support import CrossEncoderJudge

    trained = find_judge(name_or_path)
    if trained is not None:
        return CrossEncoderJudge(str(trained), name_or_path, device, window_overlap=window_overlap)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        recover(path)  # a `judge train` killed while replacing it left it under its backup name
    if path.is_dir():
        return CrossEncoderJudge(str(path), path.name, device, window_overlap=window_overlap)
    if path.exists():
        raise RagqaError(f"judge {path} is a file; give a judge folder (with safetensors weights)")
    parts = name_or_path.split("/")
    if len(parts) == 2 and all(parts):
        return CrossEncoderJudge(name_or_path, name_or_path, device, window_overlap=window_overlap)
    raise RagqaError(f"unknown judge '{name_or_path}': a trained judge name (`ragqa models`), a folder, "
                     f"a hub NLI cross-encoder id owner/name, 'llm' or 'lexical'; train one with `{TRAIN_COMMAND}`")


def judge_from_config(cfg):
    """The judge a ragqa Config names (judge.name, judge.llm_*, judge.window_overlap)."""
    from ragqa.models import resolve_device

    j = cfg.judge
    return load_judge(j.name, device=resolve_device(cfg.model.device), window_overlap=j.window_overlap,
                      llm_url=j.llm_url, llm_model=j.llm_model, llm_api_key_env=j.llm_api_key_env)


def support_scorer(cfg):
    """What checks answers (ask.verify) and scores them against references (eval): the judge the config names,
    except that judge.name=default with no trained default judge falls back to the lexical scorer, so a fresh
    clone checks answers too. The scorer's `.name` says which one checked (`checked_by`). A judge named
    explicitly that cannot load is an error, never silently replaced."""
    if cfg.judge.name == DEFAULT and find_judge(DEFAULT) is None:
        from ragqa.judge.lexical import LexicalJudge

        return LexicalJudge()
    return judge_from_config(cfg)


__all__ = ["LEXICAL", "default_judge", "judge_from_config", "load_judge", "support_scorer"]
