"""Per-answer metrics for the ablation: reference overlap, retrieval, faithfulness, optional LLM judge.

Offline by default. Reference metrics use ragas' non-LLM metrics (ROUGE-L, string presence, semantic
similarity with the local embedder) plus token F1 and a BERTScore-style greedy token match; retrieval
metrics use ragas' id-based context precision/recall on the gold document ids; faithfulness comes from
the local NLI judge (ragqa.judge) when one is trained. Correctness (ref_support, ref_contradiction) scores
each answer sentence against the reference answer with the support scorer (NLI judge, else lexical), so
closed-book rows are measured for hallucination too. Checked answers (ask.verify) also get token_f1_raw
and nli_faithfulness_raw of the answer before the check; failure modes come from ragqa.judge.failures.
Without an NLI judge, lexical_faithfulness scores the same support with the lexical scorer
(ragqa.judge.lexical). A question without a reference answer (a file of real user questions) gets only the
reference-free metrics: NEEDS_REFERENCE lists the others. Answer relevance comes from the cross-encoder
reranker (ragqa.rerank: the question and the answer scored as a query and a passage), when one is trained.
LLM-judged ragas metrics (faithfulness, answer relevancy, context precision/recall) run only when a judge
is configured (`local:NAME` or `openai:MODEL`). Every metric that should have run but gave no number is
recorded in `failures` with the reason (nan, parse, error), never silently dropped.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ragqa.judge.text import normalize

os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")


@dataclass(frozen=True)
class MetricInfo:
    name: str
    family: str
    """reference | retrieval | faithfulness | llm-judge | answer"""
    source: str
    """Which implementation produced the number (shown in the report)."""
    higher_is_better: bool = True


METRICS: dict[str, MetricInfo] = {m.name: m for m in [
    MetricInfo("token_f1", "reference", "SQuAD-style token F1 vs the reference answer"),
    MetricInfo("rouge_l", "reference", "ragas RougeScore (rougeL F-measure)"),
    MetricInfo("bertscore", "reference", "BERTScore-style greedy token match, local embedder"),
    MetricInfo("semantic_similarity", "reference", "ragas SemanticSimilarity, local embedder"),
    MetricInfo("string_similarity", "reference", "ragas NonLLMStringSimilarity (Levenshtein)"),
    MetricInfo("contains_answer", "reference", "ragas StringPresence on normalized text"),
    MetricInfo("context_precision", "retrieval", "ragas IDBasedContextPrecision (gold doc ids)"),
    MetricInfo("context_recall", "retrieval", "ragas IDBasedContextRecall (gold doc ids) = recall@k"),
    MetricInfo("mrr", "retrieval", "ragqa.evaluate.retrieval rank_metrics: 1/rank of the first gold passage"),
    MetricInfo("nli_faithfulness", "faithfulness", "ragqa NLI judge (answer sentences entailed by passages)"),
    MetricInfo("lexical_faithfulness", "faithfulness", "ragqa lexical support scorer (share of each answer "
               "sentence's content words found in one passage), scored when no NLI judge runs"),
    MetricInfo("answer_relevance", "answer", "ragqa cross-encoder reranker: P(answer is relevant to the question)"),
    MetricInfo("llm_faithfulness", "llm-judge", "ragas Faithfulness with the configured LLM judge"),
    MetricInfo("llm_answer_relevancy", "llm-judge", "ragas AnswerRelevancy with the configured LLM judge"),
    MetricInfo("llm_context_precision", "llm-judge", "ragas ContextPrecisionWithReference, LLM judge"),
    MetricInfo("llm_context_recall", "llm-judge", "ragas ContextRecall with the configured LLM judge"),
    MetricInfo("token_f1_raw", "reference", "token_f1 of the answer as generated, before the check (ask.verify)"),
    MetricInfo("nli_faithfulness_raw", "faithfulness", "nli_faithfulness of the answer before the check"),
    MetricInfo("ref_support", "correctness", "share of answer sentences the reference answer supports"),
    MetricInfo("ref_contradiction", "correctness", "share of answer sentences the reference answer contradicts "
               "(NLI judge only)", higher_is_better=False),
    MetricInfo("abstained", "answer", "share of questions the pipeline abstained on", higher_is_better=False),
    MetricInfo("withdrawn", "answer", "share of questions abstained on because the check left no supported "
               "sentence (included in abstained)", higher_is_better=False),
    MetricInfo("check_removed", "answer", "share of the generated sentences the check removed",
               higher_is_better=False),
    MetricInfo("echo_or_short", "failure-mode", "answers under 5 words outside yes/no questions, or mostly the "
               "question (ragqa.judge.failures; answers given)", higher_is_better=False),
    MetricInfo("repetition", "failure-mode", "answers in a repetition loop: a word 3-gram 4+ times "
               "(ragqa.judge.failures; answers given)", higher_is_better=False),
    MetricInfo("cites", "failure-mode", "answers citing at least one passage [n] (answers given, with passages)"),
    MetricInfo("cites_raw", "failure-mode", "cites, of the answer as generated (the check corrects and adds "
               "markers, so `cites` of a checked answer is the check's work as much as the model's)"),
    MetricInfo("check_recited", "answer", "share of the sentences the check kept whose citation it corrected "
               "(they cited another passage) or added (they cited none)", higher_is_better=False),
]}

NEEDS_REFERENCE = tuple(m for m, info in METRICS.items() if info.family in ("reference", "correctness")) + (
    "llm_context_precision", "llm_context_recall")
"""The metrics that compare an answer with the reference answer: not run on a question file without answers."""

FAILURE_TARGETS = {"echo_or_short": ("<=", 0.02), "repetition": ("<=", 0.01), "cites": (">=", 0.95)}
"""Issue #21's bounds on the failure-mode rates (shown beside them in the report)."""


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token-overlap F1 (hand-written: the official script is these ten lines, not a package)."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def local_embeddings(model):
    """The local sentence-transformers embedder behind ragas' modern embedding interface, with a cache."""
    from ragas.embeddings.base import BaseRagasEmbedding

    class LocalEmbeddings(BaseRagasEmbedding):
        def __init__(self):
            super().__init__()
            self._cache: dict[str, list[float]] = {}

        def embed_text(self, text: str, **kwargs: Any) -> list[float]:
            if text not in self._cache:
                self._cache[text] = model.encode(text, normalize_embeddings=True).tolist()
            return self._cache[text]

        async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
            return self.embed_text(text)

    return LocalEmbeddings()


def bertscore_f1(embedder, prediction: str, reference: str) -> float:
    """BERTScore F1 (Zhang et al. 2020) with the local embedder's contextual token vectors.

    Hand-written: the bert-score package downloads roberta-large from the hub; this is the same greedy
    cosine matching (no idf weighting, no baseline rescaling) over the offline embedder.
    """
    if not prediction.strip() or not reference.strip():
        return float(prediction.strip() == reference.strip())
    import torch

    pred, ref = embedder.encode([prediction, reference], output_value="token_embeddings")
    pred, ref = pred[1:-1], ref[1:-1]  # drop [CLS] and [SEP]
    if len(pred) == 0 or len(ref) == 0:
        return 0.0
    sim = torch.nn.functional.normalize(pred, dim=-1) @ torch.nn.functional.normalize(ref, dim=-1).T
    precision, recall = sim.max(dim=1).values.mean().item(), sim.max(dim=0).values.mean().item()
    return 0.0 if precision + recall <= 0 else 2 * precision * recall / (precision + recall)


def _extract_json(text: str) -> str:
    """The first balanced {...} block of a model's output (small models wrap JSON in prose)."""
    start = text.find("{")
    depth = 0
    for i in range(max(start, 0), len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if start >= 0 and depth == 0:
            return text[start:i + 1]
    raise ValueError("no JSON object in the judge's output")


def local_judge_llm(name: str, device: str = "auto", max_new_tokens: int = 512):
    """A ragas InstructorBaseRagasLLM over a local transformers model (greedy, JSON parsed strictly)."""
    from ragas.llms.base import InstructorBaseRagasLLM

    from ragqa.models import load_generator

    class LocalJudge(InstructorBaseRagasLLM):
        def __init__(self):
            self.model, self.tokenizer = load_generator(name, device=device)

        def generate(self, prompt: str, response_model):
            import torch

            from ragqa.prompt import defuse_special, special_token_strings

            schema = json.dumps(response_model.model_json_schema())
            # ragas' prompt quotes answers and passages: no special token may come from them (as in ask).
            prompt = defuse_special(prompt, special_token_strings(self.tokenizer))
            messages = [{"role": "user", "content": f"{prompt}\n\nReply with one JSON object only, matching "
                                                    f"this JSON schema:\n{schema}"}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.model.device)
            with torch.inference_mode():
                out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                          temperature=None, top_p=None, top_k=None,
                                          pad_token_id=self.tokenizer.pad_token_id)
            reply = self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            return response_model.model_validate_json(_extract_json(reply))

        async def agenerate(self, prompt: str, response_model):
            return self.generate(prompt, response_model)

    return LocalJudge()


def openai_endpoint(base_url: str | None = None, api_key_env: str | None = None) -> tuple[str, str | None]:
    """(URL, API key or None) of `--judge openai:MODEL`; refuses, before any connection, a key that would
    leak (see ragqa.judge.llm.api_key_for). No URL means OPENAI_BASE_URL, else OpenAI's own endpoint."""
    from ragqa.judge.llm import OPENAI_URL, api_key_for

    url = base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL
    return url, api_key_for(url, api_key_env, url_option="--judge-base-url", key_option="--judge-api-key-env")


def make_llm_judge(spec: str, base_url: str | None = None, device: str = "auto", max_new_tokens: int = 512,
                   api_key_env: str | None = None):
    """`local:NAME` (a registry name or folder) or `openai:MODEL` (+ base_url, api_key_env) -> a ragas LLM."""
    from ragqa.errors import RagqaError

    kind, _, model = spec.partition(":")
    if kind == "local" and model:
        return local_judge_llm(model, device=device, max_new_tokens=max_new_tokens)
    if kind == "openai" and model:
        url, key = openai_endpoint(base_url, api_key_env)
        from openai import AsyncOpenAI
        from ragas.llms.base import llm_factory

        # Explicit values: given None, the client would read OPENAI_API_KEY itself and send it anywhere; an
        # empty key makes it send no Authorization header at all.
        client = AsyncOpenAI(base_url=url, api_key=key or "")
        return llm_factory(model, provider="openai", client=client, temperature=0.0)
    raise RagqaError(f"--judge {spec!r}: use local:NAME (e.g. local:smollm2-135m) or openai:MODEL "
                     "with --judge-base-url URL")


def nli_support_score(result: Any) -> float:
    """The overall faithfulness of a ragqa.judge SupportResult (NaN when the answer holds no claim)."""
    if not hasattr(result, "faithfulness"):
        raise ValueError(f"judge result {type(result).__name__} has no faithfulness")
    return math.nan if result.faithfulness is None else float(result.faithfulness)


def answer_relevance(reranker, question: str, answer: str) -> float:
    """How relevant the answer is to the question, offline: the reranker's P(relevant) for (question, answer).

    The no-LLM stand-in for ragas' answer relevancy (which has an LLM write questions back from the answer): the
    reranker was trained to score whether a text answers a question, and an answer is such a text. Citation
    markers are dropped so that they do not count as content."""
    return float(reranker.scores([(question, re.sub(r"\[\d+\]", " ", answer or "").strip())])[0])


def _failure_reason(exc: BaseException) -> str:
    from pydantic import ValidationError

    kind = type(exc).__name__
    if isinstance(exc, ValidationError | json.JSONDecodeError) or "Instructor" in kind or "Retry" in kind:
        return "parse"
    if "JSON" in str(exc) or "parse" in str(exc).lower():
        return "parse"
    return f"error: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"


class Scorer:
    """Scores one answer record against its question row; all models loaded once."""

    def __init__(self, embedder, nli_judge=None, llm=None, llm_metrics: Sequence[str] | None = None,
                 ref_judge=None, reranker=None, lexical_judge=None):
        """llm_metrics: which LLM-judged metrics to run with `llm` (default: all four). ref_judge: the support
        scorer for ref_support / ref_contradiction (ragqa.judge.support_scorer; None: not run). reranker: a
        ragqa.rerank Reranker for answer_relevance (None: the metric is not run). lexical_judge: the lexical
        support scorer behind lexical_faithfulness, for when no NLI judge scores faithfulness (None: not run).

        A row whose reference answer is blank (a question file without answers) gets no NEEDS_REFERENCE metric."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from ragas.metrics import IDBasedContextPrecision, IDBasedContextRecall
            from ragas.metrics.collections import (
                NonLLMStringSimilarity,
                RougeScore,
                SemanticSimilarity,
                StringPresence,
            )

        self.embedder = embedder
        self.nli_judge = nli_judge
        self.ref_judge = ref_judge
        self.reranker = reranker
        self.lexical_judge = lexical_judge
        embeddings = local_embeddings(embedder)
        self._rouge = RougeScore(rouge_type="rougeL", mode="fmeasure")
        self._presence = StringPresence()
        self._similarity = SemanticSimilarity(embeddings=embeddings)
        self._string = NonLLMStringSimilarity()
        self._id_precision = IDBasedContextPrecision()
        self._id_recall = IDBasedContextRecall()
        self._llm_metrics: dict[str, Any] = {}
        if llm is not None:
            from ragas.metrics.collections import (
                AnswerRelevancy,
                ContextPrecisionWithReference,
                ContextRecall,
                Faithfulness,
            )

            makers = {
                "llm_faithfulness": lambda: Faithfulness(llm=llm),
                "llm_answer_relevancy": lambda: AnswerRelevancy(llm=llm, embeddings=embeddings),
                "llm_context_precision": lambda: ContextPrecisionWithReference(llm=llm),
                "llm_context_recall": lambda: ContextRecall(llm=llm),
            }
            unknown = sorted(set(llm_metrics or ()) - set(makers))
            if unknown:
                from ragqa.errors import RagqaError

                raise RagqaError(f"eval.judge_metrics: unknown {', '.join(unknown)} (known: {', '.join(makers)})")
            self._llm_metrics = {name: makers[name]() for name in (llm_metrics or makers)}

    def score(self, row: dict, record: dict) -> tuple[dict[str, float | None], dict[str, str]]:
        """(scores, failures) for one answer; metrics that do not apply (no passages, no gold) are absent."""
        return asyncio.run(self._ascore(row, record))

    async def _ascore(self, row: dict, record: dict):
        answer, reference, question = record.get("answer") or "", row.get("answer") or "", row["question"]
        passages = record.get("passages") or []
        contexts = [p.get("text", "") for p in passages]
        gold = [str(g) for g in row.get("gold_passage_ids") or []]
        abstained = bool(record.get("abstained"))
        raw = record.get("raw_answer")
        """The answer before the check (ask.verify); None when it was not checked."""
        scores: dict[str, float | None] = {"abstained": float(abstained)}
        failures: dict[str, str] = {}
        if passages:  # retrieval rows: retrieval abstentions count as not withdrawn
            scores["withdrawn"] = float(abstained and raw is not None)
        if raw is not None:
            sentences = record.get("sentences") or []
            if sentences:
                scores["check_removed"] = sum(not s.get("supported") for s in sentences) / len(sentences)
                kept = [s for s in sentences if s.get("supported")]
                if kept:
                    scores["check_recited"] = sum(s.get("citation", "model") != "model" for s in kept) / len(kept)
        if not abstained and not record.get("error"):
            from ragqa.judge.failures import cites, echo_or_short, repetition

            scores["echo_or_short"] = float(echo_or_short(question, answer))
            scores["repetition"] = float(repetition(answer))
            if passages:
                scores["cites"] = float(cites(answer))
                if raw is not None:
                    scores["cites_raw"] = float(cites(raw))

        async def run(name: str, fn) -> None:
            try:
                value = fn()
                if inspect.isawaitable(value):
                    value = await value
                value = getattr(value, "value", value)
                value = float(value)
            except Exception as exc:  # noqa: BLE001 - recorded per metric and reported, never dropped
                scores[name], failures[name] = None, _failure_reason(exc)
                return
            if math.isnan(value):
                scores[name], failures[name] = None, "nan"
            else:
                scores[name] = value

        has_reference = bool(reference.strip())
        """False for a question file without answers: the reference metrics do not apply (absent, not failed)."""
        norm_answer, norm_ref = normalize(answer), normalize(reference)
        if has_reference:
            await run("token_f1", lambda: token_f1(answer, reference))
            if raw is not None:
                await run("token_f1_raw", lambda: token_f1(raw, reference))
            await run("rouge_l", lambda: self._rouge.ascore(reference=reference, response=answer))
            await run("bertscore", lambda: bertscore_f1(self.embedder, answer, reference))
            pair = dict(reference=reference, response=answer)
            await run("semantic_similarity", lambda: self._similarity.ascore(**pair))
            await run("string_similarity", lambda: self._string.ascore(**pair))
            await run("contains_answer", lambda: (self._presence.ascore(reference=norm_ref, response=norm_answer)
                                                  if norm_ref else math.nan))
        if passages and gold:
            from ragas.dataset_schema import SingleTurnSample

            from ragqa.evaluate.retrieval import rank_metrics

            ids = [str(p.get("doc_id", "")) for p in passages]
            sample = SingleTurnSample(retrieved_context_ids=ids, reference_context_ids=gold)
            await run("context_precision", lambda: self._id_precision.single_turn_ascore(sample))
            await run("context_recall", lambda: self._id_recall.single_turn_ascore(sample))
            await run("mrr", lambda: rank_metrics(ids, gold, ks=())["mrr@10"])
        if passages and not abstained and self.nli_judge is not None:
            await run("nli_faithfulness", lambda: self._nli(answer, passages))
        if passages and raw is not None and self.nli_judge is not None:
            # Withdrawn answers too: how faithful was what the model wrote, before the check?
            known = scores.get("nli_faithfulness") if raw == answer else None
            await run("nli_faithfulness_raw", lambda: known if known is not None else self._nli(raw, passages))
        if passages and not abstained and self.nli_judge is None and self.lexical_judge is not None:
            await run("lexical_faithfulness",
                      lambda: nli_support_score(self.lexical_judge.support(answer, passages)))
        if self.ref_judge is not None and not abstained and has_reference:
            try:
                claims = self.ref_judge.support(answer, [reference]).claims
            except Exception as exc:  # noqa: BLE001 - recorded per metric and reported, never dropped
                claims, error = None, exc
            shares = {"ref_support": lambda c: c.score >= self.ref_judge.threshold,
                      "ref_contradiction": lambda c: c.label == "contradiction"}
            if not getattr(self.ref_judge, "can_contradict", False):  # a lexical or yes/no scorer cannot say it
                del shares["ref_contradiction"]
            for name, counts in shares.items():
                if claims is None:
                    scores[name], failures[name] = None, _failure_reason(error)
                else:
                    await run(name, lambda f=counts: sum(map(f, claims)) / len(claims) if claims else math.nan)
        if self.reranker is not None and not abstained:
            # No passages needed: the base configuration's answers are scored the same way. An empty answer
            # scores what the model gives it, not a failure: it answered nothing relevant.
            await run("answer_relevance", lambda: answer_relevance(self.reranker, question, answer))
        if passages and not abstained:
            for name, metric in self._llm_metrics.items():
                if name in NEEDS_REFERENCE and not has_reference:
                    continue
                kwargs = {
                    "llm_faithfulness": dict(user_input=question, response=answer,
                                             retrieved_contexts=contexts),
                    "llm_answer_relevancy": dict(user_input=question, response=answer),
                    "llm_context_precision": dict(user_input=question, reference=reference,
                                                  retrieved_contexts=contexts),
                    "llm_context_recall": dict(user_input=question, retrieved_contexts=contexts,
                                               reference=reference),
                }[name]
                await run(name, lambda m=metric, kw=kwargs: m.ascore(**kw))
        return scores, failures

    def _nli(self, answer: str, passages: list[dict]) -> float:
        return nli_support_score(self.nli_judge.support(answer, passages))
