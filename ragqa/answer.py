"""The answer pipeline shared by `ask` and `eval`: retrieve -> prompt -> generate (streaming) -> citations
-> check (ask.verify: sentences the passages do not support are removed; ragqa.judge.check).

Model, adapter and index are loaded once per Pipeline; every later question pays only for retrieval
and generation. When retrieval finds nothing close enough, or the check leaves no supported sentence, the
pipeline abstains instead of letting the model improvise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ragqa.adapters import AdapterSpec
from ragqa.config import Config
from ragqa.errors import RagqaError
from ragqa.passage import RETRIEVAL_MODES, Passage
from ragqa import abstain
from ragqa.prompt import clean_citations, fit_passages, render_prompt
from ragqa.qa import clean_question  # in ragqa.qa: Q&A files for eval are held to the same rule

DISCLAIMER = "ragqa is a research tool, not medical advice: see a qualified clinician about any skin problem."
ABSTAIN_TEXT = (
    "I could not find a grounded answer in the indexed sources, so I will not guess. "
    "The nearest sources are listed below."
)
log = logging.getLogger(__name__)

CLOSED_BOOK_NOTE = "Answered from the model alone, without retrieved sources."


@dataclass
class Answer:
    question: str
    answer: str
    passages: list[Passage]
    citations: list[int]
    """1-based numbers of the passages the answer cites."""
    removed_citations: int
    abstained: bool
    retrieval: str
    adapter: str | None
    timings: dict[str, float] = field(default_factory=dict)
    disclaimer: str | None = None
    raw_answer: str | None = None
    """The answer as generated (citations cleaned) before the check; None when it was not checked."""
    sentences: list[dict] | None = None
    """Per sentence of raw_answer: {text, supported, score, passage, label} (ragqa.judge.check.SentenceCheck)."""
    checked_by: str | None = None
    """The scorer that checked the answer (a judge's name, or 'lexical'); None when not checked."""
    engine: str | None = None
    """What generated the answer: torch or openvino (ask.engine); None when nothing was generated (abstained)."""

    @property
    def withdrawn(self) -> bool:
        """Abstained because the check found no supported sentence (the model did answer)."""
        return self.abstained and self.raw_answer is not None

    def to_dict(self) -> dict:
        cited = [
            {"n": n, "chunk_id": p.chunk_id, "title": p.title, "source": p.source, "url": p.url}
            for n, p in ((n, self.passages[n - 1]) for n in self.citations)
        ]
        return {
            "question": self.question,
            "answer": self.answer,
            "citations": cited,
            "removed_citations": self.removed_citations,
            "abstained": self.abstained,
            "retrieval": self.retrieval,
            "adapter": self.adapter,
            "passages": [p.to_dict() for p in self.passages],
            "timings": self.timings,
            "disclaimer": self.disclaimer,
            "raw_answer": self.raw_answer,
            "sentences": self.sentences,
            "checked_by": self.checked_by,
            "engine": self.engine,
        }


def check(answer: Answer, checker, shown: Sequence[Passage], cut_off: bool = False) -> None:
    """Check `answer` in place (ask.verify): keep its sentences that the passages as shown support
    (ragqa.judge.check); none left -> abstain with the nearest sources. The text as generated stays in
    raw_answer, each sentence's verdict in sentences. `ragqa eval --recheck` calls it on stored answers."""
    from ragqa.judge.check import check_answer

    raw = answer.raw_answer if answer.raw_answer is not None else answer.answer
    checked = check_answer(checker, raw, shown, cut_off, answer.question)
    answer.raw_answer, answer.checked_by = raw, checked.checked_by
    answer.sentences = [s.to_dict() for s in checked.sentences]
    if checked.supported:
        answer.answer, answer.abstained = checked.text, False
        answer.citations = clean_citations(checked.text, len(answer.passages)).cited
    else:
        answer.answer, answer.citations, answer.abstained = ABSTAIN_TEXT, [], True


def quantize_int8(model):
    """Dynamic int8 quantization of the model's Linear layers (CPU only; LoRA layers stay float)."""
    import warnings

    import torch

    if model.device.type != "cpu":
        raise RagqaError("ask.quantize=int8 runs on CPU only: set model.device=cpu or ask.quantize=none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

        spec = {name: default_dynamic_qconfig for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear) and "lora_" not in name}
        return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)


def _per_row(on_token, n: int, name: str) -> list | None:
    """None, or one callable-or-None per row: a bare callable streams a single row."""
    if on_token is None:
        return None
    if callable(on_token):
        if n != 1:
            raise ValueError(f"{name} streams one answer: pass a single question (or one callback per question)")
        return [on_token]
    rows = list(on_token)
    if len(rows) != n:
        raise ValueError(f"{name} needs one callback (or None) per question")
    return rows if any(cb is not None for cb in rows) else None


def _budgets(max_new_tokens: int | Sequence[int], n: int) -> list[int]:
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * n
    budgets = [int(b) for b in max_new_tokens]
    if len(budgets) != n or min(budgets, default=1) < 1:
        raise ValueError("max_new_tokens needs one budget >= 1 per question")
    return budgets


class Pipeline:
    """Generator (+ optional LoRA adapter) and retriever, loaded once, answering many questions."""

    def __init__(self, cfg: Config, adapter: str | AdapterSpec | None = None):
        """adapter: a directory, or an AdapterSpec of several combined (ragqa.adapters.adapter_spec)."""
        start = time.perf_counter()
        import torch

        from ragqa.models import load_generator

        if cfg.ask.threads:
            torch.set_num_threads(cfg.ask.threads)
        self.cfg = cfg
        spec = AdapterSpec.of(adapter)
        if spec:
            from ragqa.adapters import check_adapters, load_adapters

            check_adapters(spec, cfg.model.base)  # a refused adapter fails before the model loads
        self.model, self.tokenizer = load_generator(cfg.model.base, cfg.model.device, cfg.model.dtype)
        from ragqa.engine import choose, note

        self.engine_name, why = choose(cfg.ask.engine, self.model.device.type, cfg.ask.quantize,
                                       combined=bool(spec and spec.combined))
        if why:
            note(why)
        base_sha = None
        if self.engine_name == "openvino":
            from ragqa.engine import weights_digest

            base_sha = weights_digest(self.model)  # the cache key of the converted model (before the adapter)
        self.adapters: dict[str, str] = {}
        """Loaded adapters: label (directory, or the combination's label) -> peft adapter name."""
        if spec:
            self.model, self.adapters = load_adapters(self.model, spec, cfg.model.base)
        self.adapter = spec.label if spec else None
        """The label of the active adapter; None answers with the base model."""
        if cfg.ask.quantize == "int8":
            self.model = quantize_int8(self.model)
        self.engine = None
        """The openvino engine (ragqa.engine.OpenVINOEngine) when ask.engine chose it; None: torch generates."""
        if self.engine_name == "openvino":
            from ragqa.engine import OpenVINOEngine

            self.engine = OpenVINOEngine(cfg, self.model, self.tokenizer, base_sha, self.adapter)
        self._retriever = None
        self._checker = None
        self._warned_uncalibrated: set[str] = set()
        self._unreported_load_s = time.perf_counter() - start
        """Load time not yet attributed to an answer's timings (reported once, by the next answer)."""

    def switch_adapter(self, name: str) -> str | None:
        """`:adapter NAME|off` in `ragqa ask`: answer with another loaded adapter (its directory, the directory's
        folder name, or `combined`), load a new adapter directory onto the same base, or `off` (the base model);
        the base model is never reloaded. Returns the active adapter's label (None: off)."""
        from ragqa.adapters import COMBINED, load_adapter

        name = name.strip()
        if self.engine is not None:  # its converted variants are the start-up adapter merged, and the base
            raise RagqaError(":adapter needs ask.engine=torch (the openvino engine converted one adapter at start)")
        if name in ("off", "none"):
            if self.adapters:
                self.model.base_model.disable_adapter_layers()  # until the next switch (peft's in-place switch)
            self.adapter = None
            return None
        label = self._find_adapter(name, COMBINED)
        if label is None:
            if not Path(name).is_dir():
                loaded = ", ".join([*self.adapters, "off"])
                raise RagqaError(f":adapter {name}: no such adapter directory, and not a loaded adapter ({loaded})")
            if self.cfg.ask.quantize == "int8":
                raise RagqaError(f":adapter {name}: ask.quantize=int8 quantized the base model when it loaded; "
                                 "give the adapter at start (--adapter) to use it with int8")
            label, peft_name = name, f"adapter{len(self.adapters)}"  # unlike every name loaded before
            self.model = load_adapter(self.model, name, self.cfg.model.base, peft_name)
            self.adapters[label] = peft_name
        self.model.set_adapter(self.adapters[label], inference_mode=True)
        self.model.base_model.enable_adapter_layers()
        self.adapter = label
        return label

    def _find_adapter(self, name: str, combined: str) -> str | None:
        """The label of the loaded adapter `name` means: a label, the same directory, its folder name, `combined`."""
        if name in self.adapters:
            return name
        by_name = [label for label, peft_name in self.adapters.items()
                   if (peft_name == combined and name == combined)
                   or (peft_name != combined and (Path(label).name == name
                                                  or Path(label).resolve() == Path(name).resolve()))]
        if len(by_name) > 1:
            raise RagqaError(f":adapter {name}: more than one loaded adapter is called that; give its directory")
        return by_name[0] if by_name else None

    @property
    def retriever(self):
        """The index, loaded on first use (closed-book questions never need it)."""
        if self._retriever is None:
            from ragqa.retrieve import Retriever

            start = time.perf_counter()
            self._retriever = Retriever.from_config(self.cfg)
            self._unreported_load_s += time.perf_counter() - start
        return self._retriever

    @property
    def checker(self):
        """The support scorer that checks answers (ask.verify), loaded on first use."""
        if self._checker is None:
            from ragqa.judge import support_scorer

            start = time.perf_counter()
            self._checker = support_scorer(self.cfg)
            # One-time set-up (tokenizers, sentence splitter tables, the judge's first forward) is load time,
            # so verify_s measures checking alone.
            self._checker.score_claims(["Skin is an organ."], ["Skin is an organ."])
            self._unreported_load_s += time.perf_counter() - start
        return self._checker

    def retrieve(self, question: str, mode: str, k: int) -> list[Passage]:
        if mode == "none":
            return []
        return self.retriever.retrieve(question, k=k, mode=mode, rerank=self.cfg.retrieval.rerank)

    def should_abstain(self, passages: list[Passage]) -> bool:
        """No passage; or, reranking with a relevance-calibrated reranker and abstain_below auto, its calibrated
        probability of the best passage below its cut (ragqa.rerank.calibrate); or else the best dense cosine
        similarity below the calibrated cosine threshold (ragqa.abstain)."""
        if not passages:
            return True
        calibration = self.relevance_calibration()
        if calibration is not None:
            best_logit = max(p.scores.get("rerank_logit", float("-inf")) for p in passages)
            return float(abstain.relevance(calibration, best_logit)) < calibration["threshold"]
        best = max(p.scores.get("dense", p.score) for p in passages)
        return best < abstain.threshold(self.cfg.retrieval.abstain_below, self.retriever.manifest,
                                       self.retriever.query_card)

    def relevance_calibration(self) -> dict | None:
        """The reranker's relevance calibration when it decides abstention (retrieval.rerank set, abstain_below
        auto), else None; a reranker without one falls back to the cosine cut, with a warning once."""
        name = self.cfg.retrieval.rerank
        if not name or self.cfg.retrieval.abstain_below != "auto":
            return None
        reranker = self.retriever.reranker(name)
        if reranker.abstention is None and name not in self._warned_uncalibrated:
            self._warned_uncalibrated.add(name)
            log.warning("reranker %s has no relevance calibration (`ragqa rerank calibrate --config RECIPE`); "
                        "abstention uses the dense cosine cut", name)
        return reranker.abstention

    def prompt_for(self, question: str, passages: list[Passage], mode: str) -> str:
        """The exact prompt text generation starts from (passages trimmed to the context budget)."""
        return render_prompt(self.tokenizer, question, self.shown(passages, mode))

    def shown(self, passages: list[Passage], mode: str) -> list[Passage] | None:
        """The passages as the prompt shows them (trimmed to the context budget); None when closed-book."""
        return None if mode == "none" else fit_passages(self.tokenizer, passages, self.cfg.ask.context_tokens)

    def answer(
        self,
        question: str,
        retrieval: str | None = None,
        k: int | None = None,
        use_adapter: bool = True,
        disclaimer: bool | None = None,
        on_token: Callable[[str], None] | None = None,
        max_new_tokens: int | None = None,
        stop: threading.Event | None = None,
    ) -> Answer:
        """Answer one question; on_token receives text pieces as they are generated. Setting `stop` (from any
        thread) ends generation at the next token (`ragqa serve` sets it when the client goes away)."""
        return self.answer_batch([question], retrieval, k, use_adapter, disclaimer, on_token, max_new_tokens,
                                 None if stop is None else [stop])[0]

    def answer_batch(
        self,
        questions: list[str],
        retrieval: str | None = None,
        k: int | None = None,
        use_adapter: bool = True,
        disclaimer: bool | None = None,
        on_token: Callable[[str], None] | Sequence[Callable[[str], None] | None] | None = None,
        max_new_tokens: int | Sequence[int] | None = None,
        stops: list[threading.Event] | None = None,
    ) -> list[Answer]:
        """Answer several questions: retrieval one by one, then one left-padded `generate` call for all that
        do not abstain (eval and `ragqa serve` use it: ~2.6x the answers per second of one at a time on 2 CPU
        cores at 16). Greedy tokens can differ from a lone question's where padding changes float rounding.
        on_token streams text pieces: a callable for a single question, or one callable (or None) per question.
        max_new_tokens overrides ask.max_new_tokens, for all or per question; stops, one event per question,
        end that question's generation early when set (the rest of a batch goes on)."""
        mode = retrieval or self.cfg.retrieval.mode
        if mode not in RETRIEVAL_MODES:
            raise RagqaError(f"retrieval mode '{mode}' is not one of {', '.join(RETRIEVAL_MODES)}")
        callbacks = _per_row(on_token, len(questions), "on_token")
        budgets = _budgets(max_new_tokens or self.cfg.ask.max_new_tokens, len(questions))
        if stops is not None and len(stops) != len(questions):
            raise ValueError("stops needs one event per question")
        k = k or self.cfg.retrieval.k
        questions = [clean_question(q, self.cfg.ask.max_question_chars) for q in questions]
        verify = self.cfg.ask.verify and mode != "none"  # closed-book answers have no passages to check against
        if mode != "none":
            self.retriever  # noqa: B018 - load before timing retrieval, so load time is reported apart
        if verify:
            self.checker  # noqa: B018 - likewise: a judge's load time is not checking time
        load_s, self._unreported_load_s = self._unreported_load_s, 0.0
        adapter = self.adapter if use_adapter and self.adapter is not None else None
        add_disclaimer = self.cfg.ask.disclaimer if disclaimer is None else disclaimer
        note = DISCLAIMER if add_disclaimer else None

        answers: list[Answer | None] = [None] * len(questions)
        to_generate: list[tuple[int, list[Passage], dict[str, float]]] = []
        for i, question in enumerate(questions):
            start = time.perf_counter()
            passages = self.retrieve(question, mode, k)
            timings = {"load_s": round(load_s if i == 0 else 0.0, 4),
                       "retrieve_s": round(time.perf_counter() - start, 4)}
            if mode != "none" and self.should_abstain(passages):
                timings["total_s"] = timings["retrieve_s"]
                answers[i] = Answer(question, ABSTAIN_TEXT, passages, [], 0, True, mode, adapter, timings, note)
            else:
                to_generate.append((i, passages, timings))
        if to_generate:
            prompts = [self.prompt_for(questions[i], passages, mode) for i, passages, _ in to_generate]
            row_stops = None if stops is None else [stops[i] for i, _, _ in to_generate]
            row_callbacks = None if callbacks is None else [callbacks[i] for i, _, _ in to_generate]
            generated = self._generate(prompts, adapter is not None, row_callbacks,
                                       [budgets[i] for i, _, _ in to_generate], row_stops)
            for (i, passages, timings), (raw, gen_timings) in zip(to_generate, generated, strict=True):
                timings.update(gen_timings)
                cleaned = clean_citations(raw, len(passages))
                answer = Answer(questions[i], cleaned.text, passages, cleaned.cited, cleaned.removed, False,
                                mode, adapter, timings, note, engine=self.engine_name)
                if verify:
                    self._check(answer, mode, cut_off=timings.get("new_tokens", 0) >= budgets[i])
                timings["total_s"] = round(timings["retrieve_s"] + timings["generate_s"]
                                           + timings.get("verify_s", 0.0), 4)
                answers[i] = answer
        return answers

    def _check(self, answer: Answer, mode: str, cut_off: bool = False) -> None:
        """Keep the answer's supported sentences (ask.verify); none left -> abstain with the nearest sources.
        cut_off: generation stopped at its token budget (an unfinished last sentence is dropped)."""
        start = time.perf_counter()
        check(answer, self.checker, self.shown(answer.passages, mode), cut_off)
        answer.timings["verify_s"] = round(time.perf_counter() - start, 4)

    def _generate(self, prompts: list[str], use_adapter: bool, on_token=None,
                  max_new_tokens: int | Sequence[int] | None = None,
                  stops: list[threading.Event] | None = None) -> list[tuple[str, dict[str, float]]]:
        """Generate for the prompts in one left-padded `generate` call (one prompt is a batch of one).

        on_token: a callable (one prompt), or one callable or None per prompt: text pieces as they are generated.
        max_new_tokens: one budget for all, or one per prompt (a row ends at its own; the call at the largest).
        stops: one event per prompt; a row whose event is set ends at the next token (the others go on).
        Returns (text, timings) per prompt; a batch's generate_s is each answer's share of the call."""
        callbacks = _per_row(on_token, len(prompts), "on_token")
        budgets = _budgets(max_new_tokens or self.cfg.ask.max_new_tokens, len(prompts))
        if self.engine is not None:
            return self._generate_openvino(prompts, use_adapter, callbacks, budgets, stops)
        import contextlib

        import torch
        from transformers import StoppingCriteriaList

        from ragqa.rows import RowState, row_control

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left",
                             add_special_tokens=False).to(self.model.device)
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        width = enc["input_ids"].shape[1]
        state = RowState(self.tokenizer, width, budgets, eos, stops, callbacks)
        criterion, streamer = row_control(state)
        temperature = self.cfg.ask.temperature
        kwargs = dict(
            **enc,
            max_new_tokens=max(budgets),
            do_sample=temperature > 0,
            pad_token_id=self.tokenizer.pad_token_id,
            repetition_penalty=1.1,
            stopping_criteria=StoppingCriteriaList([criterion]),
            # generate calls put() after every step, in this thread: each row's pieces go to its own callback.
            streamer=streamer,
        )
        if self.cfg.ask.static_cache:
            kwargs["cache_implementation"] = "static"
        if temperature > 0:
            kwargs["temperature"] = temperature
            torch.manual_seed(self.cfg.train.seed)
        else:
            # Explicit greedy: override sampling defaults a model's generation_config may carry.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        adapter_off = (
            self.model.disable_adapter() if (self.adapter and not use_adapter) else contextlib.nullcontext()
        )
        start = state.start = time.perf_counter()
        with torch.inference_mode(), adapter_off:
            ids = self.model.generate(**kwargs)
        elapsed = time.perf_counter() - start
        rows = [(state.new_tokens(row, ids[row, width:].tolist()), int(enc["attention_mask"][row].sum()))
                for row in range(len(prompts))]
        total_new = sum(len(new) for new, _ in rows)
        first = state.first_token_s[0] if len(prompts) == 1 else None
        if first is not None:  # one answer: decode speed after the first token
            speed = max(total_new - 1, 0) / max(elapsed - first, 1e-9)
        else:  # batch: generated tokens per second of the whole call
            speed = total_new / max(elapsed, 1e-9)
        shared = {"generate_s": round(elapsed / len(prompts), 4), "tokens_per_s": round(speed, 3),
                  "batch_size": len(prompts)}
        out = []
        for row, (new, prompt_tokens) in enumerate(rows):
            timings = {"prompt_tokens": prompt_tokens, "new_tokens": len(new), **shared}
            # Time to this row's first token: in a batch, every row waits for the whole batch's prefill.
            ttft = state.first_token_s[row]
            timings["ttft_s"] = round(ttft if ttft is not None else elapsed, 4)
            out.append((self.tokenizer.decode(new, skip_special_tokens=True).strip(), timings))
        return out

    def _generate_openvino(self, prompts: list[str], use_adapter: bool, callbacks: list | None, budgets: list[int],
                           stops: list[threading.Event] | None = None) -> list[tuple[str, dict[str, float]]]:
        """_generate on the openvino engine: the same token ids (ragqa's tokenizer, left-padded), the same decoding
        settings and the same timings. A lone prompt streams, checking its stop event after every token; a batch
        runs to its end with one budget and does not stream (the engine cannot finish one row of a batch early)."""
        if len(prompts) > 1 and (callbacks is not None or len(set(budgets)) > 1):
            raise ValueError("the openvino engine streams and takes per-row budgets only for a single prompt")
        on_token = callbacks[0] if callbacks is not None else None
        max_new_tokens = budgets[0]
        generator = self.engine.variant(use_adapter)
        enc = self.tokenizer(prompts, return_tensors="np", padding=True, padding_side="left",
                             add_special_tokens=False)
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        stop = stops[0] if stops is not None and len(prompts) == 1 else None
        start = time.perf_counter()
        first = None
        streamed: list[int] = []
        shown = ""

        def on_ids(ids: list[int]) -> bool:
            nonlocal first, shown
            if first is None:
                first = time.perf_counter() - start
            streamed.extend(ids)
            if on_token is not None:
                text = self.tokenizer.decode(streamed, skip_special_tokens=True)
                # A piece ends on a whole character: a multi-byte one split across tokens waits for its rest.
                if text.startswith(shown) and len(text) > len(shown) and not text.endswith("\ufffd"):
                    on_token(text[len(shown):])
                    shown = text
            return stop is not None and stop.is_set()

        rows = generator.generate(
            enc["input_ids"].astype("int64"), enc["attention_mask"].astype("int64"),
            max_new_tokens=max_new_tokens, eos=eos, repetition_penalty=1.1,
            temperature=self.cfg.ask.temperature, seed=self.cfg.train.seed,
            on_ids=on_ids if len(prompts) == 1 else None)
        elapsed = time.perf_counter() - start
        if on_token is not None:
            text = self.tokenizer.decode(streamed, skip_special_tokens=True)
            if text.startswith(shown) and len(text) > len(shown):
                on_token(text[len(shown):])
        rows = [new[:next((j + 1 for j, token in enumerate(new) if token in eos), len(new))] for new in rows]
        total_new = sum(len(new) for new in rows)
        if first is not None:
            speed = max(total_new - 1, 0) / max(elapsed - first, 1e-9)
        else:
            speed = total_new / max(elapsed, 1e-9)
        shared = {"generate_s": round(elapsed / len(prompts), 4), "tokens_per_s": round(speed, 3),
                  "batch_size": len(prompts)}
        if len(prompts) == 1:
            shared["ttft_s"] = round(first if first is not None else elapsed, 4)
        prompt_tokens = enc["attention_mask"].sum(axis=1).tolist()
        return [(self.tokenizer.decode(new, skip_special_tokens=True).strip(),
                 {"prompt_tokens": int(n), "new_tokens": len(new), **shared}) for new, n in zip(rows, prompt_tokens,
                                                                                                strict=True)]
