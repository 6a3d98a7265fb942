"""How well passages support an answer, claim by claim, with an NLI cross-encoder.

An answer is split into sentences (claims; citation markers removed). Each passage is cut into
sentence-aligned windows that fit the model with the claim. A claim's score is its best entailment
probability over all windows of all passages; the answer's faithfulness is the mean over its claims.

A claim that IS one of a passage's sentences, word for word (after SQuAD normalization: case, punctuation,
articles), is entailed by that passage without asking the model: identity is entailment. The small NLI model
misses it surprisingly often when the sentence sits inside a long window (on 200 held-out MedQuAD answers of
the RAFT adapter, 666 sentences were copies of a shown passage, and the model gave them a mean entailment
probability of 0.73 and put 18 % of them under 0.5). Only whole sentences count (one, or several in a row: a
list copied onto one line), and a list item or a line is a sentence (judge.text.split_sentences): a copied
clause can lose the context that negates or hedges it ("It is not known whether X causes Y" does not entail
"X causes Y"), so it goes to the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ragqa.errors import RagqaError, first_line
from ragqa.judge.pairs import LABELS
from ragqa.judge.text import normalize, split_sentences, windows
from ragqa.prompt import CITATION_RE


@dataclass
class ClaimScore:
    claim: str
    score: float
    """Best probability, over passages and windows, that the claim is entailed."""
    label: str
    """entailment / neutral / contradiction at the best window (for an LLM judge: entailment / neutral)."""
    passage: int | None
    """Index of the passage with the best window (None when there were no passages)."""
    probs: dict[str, float] = field(default_factory=dict)


@dataclass
class SupportResult:
    judge: str
    """Which judge scored (a trained judge's name, a hub id, or llm:MODEL@URL)."""
    faithfulness: float | None
    """Mean claim score in [0, 1]; None when the answer holds no claim."""
    claims: list[ClaimScore]

    def to_dict(self) -> dict:
        return asdict(self)


def split_claims(answer: str) -> list[str]:
    """The answer's sentences, citation markers like [1] removed; pieces without a word are dropped."""
    text = CITATION_RE.sub("", answer or "")
    return [s for s in (" ".join(c.split()) for c in split_sentences(text)) if any(ch.isalnum() for ch in s)]


def copied_from(claims: Sequence[str], passages: Sequence) -> list[int | None]:
    """For each claim, the index of the first passage it copies whole sentences of, word for word (None if none)."""
    sentences = [[n for n in map(normalize, split_sentences(passage_text(p))) if n] for p in passages]
    return [next((p for p, own in enumerate(sentences) if _is_run_of(normalize(claim), own)), None)
            for claim in claims]


def _is_run_of(said: str, sentences: list[str]) -> bool:
    """Whether `said` is one or more consecutive `sentences` joined."""
    for start in range(len(sentences) if said else 0):
        run = sentences[start]
        for following in sentences[start + 1 :]:
            if len(run) >= len(said):
                break
            run = f"{run} {following}"
        if run == said:
            return True
    return False


def passage_text(passage) -> str:
    """A passage given as a string, a ragqa Passage or a dict with 'text'."""
    if isinstance(passage, str):
        return passage
    if isinstance(passage, dict):
        return str(passage.get("text", ""))
    return str(getattr(passage, "text", ""))


class CrossEncoderJudge:
    """A 3-way NLI cross-encoder (a trained ragqa judge or a hub model) used as a faithfulness judge."""

    def __init__(self, location: str, name: str, device: str = "cpu", max_length: int | None = None,
                 window_overlap: int = 1, batch_size: int = 32):
        from sentence_transformers import CrossEncoder

        local = Path(location).is_dir()
        if local and not any(Path(location).glob("*.safetensors")):
            raise RagqaError(f"judge {location}: no safetensors weights (ragqa never loads pickle .bin files); "
                             "retrain it with `ragqa judge train`")
        try:
            self.model = CrossEncoder(location, device=device, max_length=max_length, trust_remote_code=False,
                                      local_files_only=local, model_kwargs={"use_safetensors": True})
        except (OSError, ValueError) as exc:
            first = first_line(exc)
            raise RagqaError(f"could not load judge '{name}': {first}") from None
        id2label = {int(k): str(v).lower() for k, v in self.model.model.config.id2label.items()}
        if sorted(id2label.values()) != sorted(LABELS):
            raise RagqaError(f"judge '{name}': its labels {sorted(id2label.values())} are not "
                             "entailment/neutral/contradiction; use an NLI cross-encoder")
        self.order = [id2label[i] for i in range(len(id2label))]
        self.name = name
        self.threshold = 0.5
        """A claim is supported when its entailment probability is at least this (the argmax of 3 labels can
        still be entailment below it, but then the judge is far from sure)."""
        self.can_contradict = True
        self.window_overlap = window_overlap
        self.batch_size = batch_size

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def max_length(self) -> int:
        return int(self.model.max_seq_length)

    def probs(self, pairs: Sequence[tuple[str, str]]) -> list[dict[str, float]]:
        """(premise, hypothesis) pairs -> {label: probability} each."""
        if not pairs:
            return []
        out = self.model.predict(list(pairs), batch_size=self.batch_size, apply_softmax=True,
                                 show_progress_bar=False, convert_to_numpy=True)
        return [{label: float(row[i]) for i, label in enumerate(self.order)} for row in out]

    def window_budget(self, claims: Sequence[str]) -> int:
        """Premise tokens left beside the longest claim (claims beyond half the length are truncated)."""
        longest = max((len(self.tokenizer.tokenize(c)) for c in claims), default=0)
        return max(32, self.max_length - 3 - min(longest, self.max_length // 2))

    def support(self, answer: str, passages: Sequence) -> SupportResult:
        """Per-claim support of `answer` by `passages` and the answer's overall faithfulness."""
        scored = self.score_claims(split_claims(answer), passages)
        return SupportResult(self.name, sum(c.score for c in scored) / len(scored) if scored else None, scored)

    def score_claims(self, claims: Sequence[str], passages: Sequence) -> list[ClaimScore]:
        """Each claim's best entailment probability over all windows of all passages (1 for a copied sentence)."""
        if not claims:
            return []
        copies = copied_from(claims, passages)
        asked = [c for c, copy in zip(claims, copies, strict=True) if copy is None]
        scored = iter(self._model_scores(asked, passages))
        certain = {"entailment": 1.0, "neutral": 0.0, "contradiction": 0.0}
        return [next(scored) if copy is None else ClaimScore(claim, 1.0, "entailment", copy, dict(certain))
                for claim, copy in zip(claims, copies, strict=True)]

    def _model_scores(self, claims: Sequence[str], passages: Sequence) -> list[ClaimScore]:
        if not claims:
            return []
        budget = self.window_budget(claims)
        spans = [(p, w) for p, passage in enumerate(passages)
                 for w in windows(passage_text(passage), self.tokenizer, budget, self.window_overlap)]
        probs = self.probs([(w, c) for c in claims for _, w in spans])
        scored = []
        for i, claim in enumerate(claims):
            rows = probs[i * len(spans) : (i + 1) * len(spans)]
            if not rows:
                scored.append(ClaimScore(claim, 0.0, "neutral", None))
                continue
            best = max(range(len(rows)), key=lambda j: rows[j]["entailment"])
            label = max(rows[best], key=rows[best].get)
            scored.append(ClaimScore(claim, rows[best]["entailment"], label, spans[best][0], rows[best]))
        return scored
