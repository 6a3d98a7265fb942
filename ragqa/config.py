"""Typed configuration: a YAML recipe (configs/*.yaml) plus `--set section.key=value` overrides.

Every field has a default, so a recipe only states what differs. Unknown keys, wrong types and
inconsistent values are rejected with the dotted name of the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ragqa.errors import RagqaError
from ragqa.passage import RETRIEVAL_MODES
from ragqa.qa import MAX_QUESTION_CHARS


DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


class _Section(BaseModel):
    # allow_inf_nan=False: no float setting has a meaning at NaN or +-inf (NaN compares False with every
    # threshold, so abstain_below=nan silently turned abstention off; lr=inf trains to NaN).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Section):
    base: str = "smollm2-135m"
    """Generator: a registry name (`ragqa models`), a local folder or a Hugging Face id."""
    embedder: str = "minilm"
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda, cuda:N or mps."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto: float32 on CPU (bf16 matmuls are ~10x slower on typical CPUs), bfloat16 on CUDA."""

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        # Checked here, not left to torch: torch's refusal lists 20 device types ragqa cannot use, and comes
        # only after the model has loaded. Whether the named GPU exists is checked by models.resolve_device.
        if not DEVICE_RE.fullmatch(value):
            raise ValueError("expected auto, cpu, cuda, cuda:N (N = GPU number) or mps")
        return value


class IndexConfig(_Section):
    name: str = "default"
    """A bare name means indexes/NAME/; a value containing '/' is the index directory itself."""
    corpus: list[str] = Field(default_factory=lambda: ["corpora/starter/passages.jsonl"])
    text_field: str = "text"
    id_field: str = "id"
    title_field: str = "title"
    chunk_size: int = Field(256, gt=0)
    """Tokens of the embedder's tokenizer per chunk (capped at the embedder's max sequence length)."""
    chunk_overlap: int = Field(32, ge=0)
    index_type: Literal["flat", "hnsw", "ivf"] = "flat"
    embed_batch_size: int = Field(64, gt=0)
    max_doc_chars: int = Field(1_000_000, gt=0)
    """Records with longer text are skipped with a warning (a 50 MB line is a broken export, not a passage)."""
    hnsw_m: int = Field(32, gt=1)
    """HNSW graph degree (index_type=hnsw)."""
    hnsw_ef_construction: int = Field(80, gt=0)
    hnsw_ef_search: int = Field(64, gt=0)
    """HNSW candidates per search: higher = better recall, slower (stored in the manifest)."""
    ivf_nlist: int = Field(1024, gt=0)
    """IVF lists (index_type=ivf); capped at chunks/39 for small corpora."""
    ivf_nprobe: int = Field(16, gt=0)
    """IVF lists visited per search."""
    store: str = "faiss"
    """Where the vectors live (ragqa/store/): `faiss` (faiss.index in the index folder, the default) or
    `qdrant` (qdrant-client: local mode in the index folder with no server, or the server at `store_url`).
    With qdrant, index_type `flat` is exact search and `hnsw` Qdrant's HNSW (hnsw_m, hnsw_ef_construction,
    hnsw_ef_search); `ivf` is FAISS only. The manifest records the store: ask, serve and eval need no flag."""
    store_url: str | None = None
    """Qdrant server or cluster, e.g. http://localhost:6333 or https://HOST:6333; None = local mode in the
    index folder (one process at a time; its storage pickles points, so open only indexes you built or trust).
    Each ingest writes a new collection and removes the replaced one once the new manifest is in."""
    store_api_key_env: str = "QDRANT_API_KEY"
    """Name of the environment variable holding the Qdrant API key (unset or empty: no key). The key itself is
    never written anywhere, and is sent only over https or to this machine."""
    qdrant_collection: str | None = None
    """Collection name prefix on the server (default `ragqa-NAME`, NAME the index folder's name); each ingest
    writes PREFIX-<12 hex>, recorded in the manifest."""
    qdrant_shards: int = Field(1, gt=0)
    """Cluster: shards of the collection (spread over the nodes; more shards, more parallel search)."""
    qdrant_replication_factor: int = Field(1, gt=0)
    """Cluster: copies of each shard (2 keeps the collection searchable when a node is down)."""
    qdrant_write_consistency: int = Field(1, gt=0)
    """Cluster: replicas that must confirm each write (at most qdrant_replication_factor)."""
    qdrant_on_disk: bool = False
    """Keep the vectors on the server's disk (memory-mapped) instead of in RAM; HNSW graph and payload too."""

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        from ragqa.store import backends

        if value not in backends():
            raise ValueError(f"expected one of {', '.join(backends())}")
        return value

    @model_validator(mode="after")
    def _overlap_below_size(self) -> IndexConfig:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})"
            )
        return self


class RetrievalConfig(_Section):
    mode: Literal[RETRIEVAL_MODES] = "hybrid"
    k: int = Field(3, gt=0, le=100)
    rerank: str | None = None
    """None, or a cross-encoder that rescores the first `rerank_candidates` results: `default` (the reranker
    `ragqa rerank train` writes to rerankers/default), another trained reranker name, a folder or a hub id."""
    rrf_k: int = Field(60, gt=0)
    """The constant of reciprocal rank fusion: score = sum 1 / (rrf_k + rank)."""
    abstain_below: float | Literal["auto"] = "auto"
    """Abstain when the best dense cosine similarity (in [-1, 1]) is below this; -1 never abstains. `auto`: with
    `rerank` set to a reranker calibrated for it (`ragqa rerank calibrate`, or trained since), abstain when its
    calibrated probability of the best passage is below the cut in its card (relevance-based, on any index);
    otherwise the cosine threshold `ragqa ingest` calibrated for the index (in the manifest; see ragqa/abstain.py),
    or with a tuned query encoder the one calibrated with it (in its card); 0.30 for an index without one."""

    @field_validator("abstain_below", mode="before")
    @classmethod
    def _auto_or_cosine(cls, value: Any) -> Any:
        # One message for the union (pydantic would report each member's error under its own name).
        if value == "auto":
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, bool) or not -1.0 <= number <= 1.0:
            raise ValueError("must be 'auto' or a cosine similarity in [-1, 1]")
        return number
    fusion_candidates: int = Field(50, gt=0)
    """Hybrid: how many dense and BM25 results each enter reciprocal rank fusion."""
    rerank_candidates: int = Field(20, gt=0)
    """Cross-encoder reranking: how many first-stage results are rescored."""
    query_encoder: Literal["auto", "onnx", "torch"] = "auto"
    """How queries are embedded: onnx (ONNX Runtime, exported once from the embedder and checked against torch;
    ~3x sooner on CPU), torch, or auto = onnx on CPU where it works, torch otherwise."""
    rerank_backend: Literal["auto", "onnx", "onnx-int8", "openvino-int8", "torch"] = "auto"
    """How the cross-encoder runs: the same choice as query_encoder (onnx checked against torch before use), or
    onnx-int8: its int8 twin (ONNX Runtime dynamic quantization; faster where the CPU has AVX-512 VNNI, scores
    within 0.1 of torch's on the probes), or openvino-int8: weights and activations int8 (NNCF post-training
    quantization, OpenVINO; needs ragqa[fast]), the fastest on those CPUs, checked the same way."""
    # Typed str | None only so that `--set retrieval.query_encoder_weights=null` reads as null (a text field keeps
    # the text "null"); _none_is_off turns null into "none", so the value is always a string.
    query_encoder_weights: str | None = "none"
    """Which weights embed the QUESTIONS: none (the index's embedder), or a query encoder tuned on the index's
    fixed passage vectors by `ragqa query-encoder train` (`default` = query_encoders/default, another name from
    `ragqa models`, or its folder). Passages keep the vectors the index holds; refused unless it was tuned from
    the weights that built the index. abstain_below=auto then uses the cut calibrated with the tuned encoder."""

    @field_validator("query_encoder_weights", mode="before")
    @classmethod
    def _none_is_off(cls, value: Any) -> Any:
        return "none" if value is None or (isinstance(value, str) and not value.strip()) else value


class LoraConfig(_Section):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class TrainConfig(_Section):
    method: Literal["qlora", "lora", "none"] = "lora"
    """qlora = lora on a 4-bit NF4 base (bitsandbytes); none = the base model, for the ablation."""
    data: list[str] = Field(default_factory=lambda: ["corpora/starter/qa.jsonl"])
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    max_examples: int | None = Field(None, gt=0)
    raft_gold_prob: float = Field(0.8, ge=0.0, le=1.0)
    """RAFT: probability that the gold passage is among the k context passages."""
    raft_absent: Literal["answer", "decline"] = "answer"
    """Target when the gold passage is left out: `answer` (RAFT: the reference answer anyway) or `decline`
    (say the passages do not answer and cite the nearest one)."""
    same_document_negatives: int = Field(1, ge=0, le=19)
    """Hard negatives: how many of the distractors are other passages of the gold passage's document (same
    condition, other question type), when the Q&A rows carry a `doc_id`. The rest are retrieved neighbours."""
    split_by: Literal["auto", "question", "document"] = "auto"
    """Validation split unit. `document` keeps all questions of one `doc_id` on one side, so no condition's
    passages are trained on and then scored; `auto` uses it when every row has a `doc_id`."""
    target_tokens: int | None = Field(None, gt=0)
    """Training targets keep the whole sentences of the answer that fit in this many tokens (the generation
    budget), so the adapter learns answers it can finish; None keeps the whole answer."""
    citations: Literal["end", "sentence"] = "end"
    """Where a RAFT target cites the gold passage: `end` (one [n] before the final full stop) or `sentence`
    (every sentence, so an answer cut at the token budget still cites, and each sentence names the passage the
    answer check scores it against)."""
    context_k: int = Field(3, ge=0, le=20)
    lr: float = Field(2e-4, gt=0.0, lt=1.0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int | None = Field(None, gt=0)
    """If set, overrides epochs."""
    batch_size: int = Field(4, gt=0)
    grad_accum: int = Field(1, gt=0)
    max_seq_len: int = Field(512, gt=16)
    optim: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"] = "adamw"
    """The optimizer: `adamw` (torch), or bitsandbytes' AdamW with 8-bit state (`adamw_8bit`, ~1/4 of the state
    memory; tensors under 4096 elements keep 32-bit state) or paged state (`paged_adamw_8bit`, `paged_adamw_32bit`:
    the state moves to CPU memory when the GPU runs short, QLoRA's third part; CUDA only)."""
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    eval_every: int = Field(25, gt=0)
    save_every: int = Field(25, gt=0)
    seed: int = 0
    output: str = "adapters/default"
    max_val_examples: int | None = Field(64, gt=0)
    """Validation loss uses at most this many held-out examples (all held-out ids stay out of training)."""
    group_by_length: bool = True
    """Batch examples of similar length together, so little compute goes to padding."""
    gradient_checkpointing: bool = False
    """Trade compute for memory (worth it for long sequences on GPU; slower on CPU)."""
    share_prefix: bool = True
    """On CPU, run the prefix all examples of a batch share (system prompt, template) once per batch, not per
    row. Same loss; in training the LoRA dropout mask of that prefix is shared by the batch's rows. Not used
    on GPUs (slower there) or with gradient checkpointing."""
    keep_checkpoints: int = Field(2, gt=0)
    """How many of the latest checkpoints to keep while training (all are removed after success)."""


class AskConfig(_Section):
    max_new_tokens: int = Field(160, gt=0, le=4096)
    temperature: float = Field(0.0, ge=0.0)
    """0 = greedy decoding."""
    max_question_chars: int = Field(MAX_QUESTION_CHARS, gt=0, le=100_000)
    """Longer questions are refused with a message (`ask`), or name the file and id (`eval`, `train`)."""
    disclaimer: bool = True
    context_tokens: int = Field(768, gt=16)
    """Token budget for the retrieved passages in the prompt (shared equally among them)."""
    threads: int | None = Field(None, gt=0)
    static_cache: bool = True
    """Preallocated KV cache while generating: same greedy tokens, faster decode than the growing default."""
    verify: bool = True
    """Check answers: each sentence is scored against the passages it cites (all shown passages when it cites
    none) by the judge (judge.name; the lexical scorer while no default judge is trained); unsupported
    sentences are removed, and an answer left with none abstains. Closed-book answers are not checked."""
    engine: Literal["auto", "torch", "openvino"] = "torch"
    """What generates: torch (the reference path), openvino (the generator converted once to an OpenVINO model with
    ask.engine_weights weights and run by OpenVINO GenAI on CPU: faster decoding, see ragqa/engine.py), or auto =
    openvino on CPU when it is installed (`pip install 'ragqa[fast]'`), torch otherwise (with one line saying why)."""
    engine_weights: Literal["int8", "int4", "fp32"] = "int8"
    """Weight format of the openvino engine: int8 (per-channel), int4 (groups of 64: faster, answers move more),
    or fp32 (the same greedy tokens as torch, for checking)."""
    quantize: Literal["none", "int8"] = "none"
    """int8: dynamic int8 Linear layers on CPU: ~1.5x faster prefill, ~1.3x decode, but the answers change and
    were worse on the 5 questions checked (benchmarks/ask.py row base_int8), so it is off by default."""


class JudgeConfig(_Section):
    """The judge of answer sentences: it says whether the passages support each one (ask.verify, eval's
    nli_faithfulness, `ragqa judge train|score`). Not the LLM judge of eval's ragas metrics (`ragqa eval --judge`,
    the eval.judge_* settings)."""

    name: str = "default"
    """Judge that scores: a trained judge name (judges/NAME or the cache), a folder, a hub NLI cross-encoder
    id, 'llm' (an OpenAI-compatible endpoint, see llm_url) or 'lexical' (content-word overlap). Checking answers
    (ask.verify) falls back to 'lexical' while no judge named 'default' is trained."""
    base: str = "minilm"
    """Starting weights for `ragqa judge train`: registry name, local folder or hub id."""
    nli: str | None = "../shared/data/nli/snli-train.jsonl"
    """JSONL of {premise, hypothesis, label} general NLI pairs; null trains on in-domain pairs only."""
    corpus: list[str] = Field(default_factory=lambda: ["corpora/starter/passages.jsonl"])
    """JSONL passages ({text, condition|title}) the in-domain pairs are made from."""
    output: str = "judges/default"
    max_nli: int | None = Field(None, gt=0)
    """Use at most this many NLI training pairs (None: all but the dev slice)."""
    max_domain: int | None = Field(None, gt=0)
    """Use at most this many in-domain training pairs (None: all)."""
    holdout_fraction: float = Field(0.2, gt=0.0, lt=0.9)
    """Conditions held out of training (stable hash split), for the benchmark."""
    epochs: float = Field(1.0, gt=0.0)
    lr: float = Field(1e-4, gt=0.0, lt=1.0)
    batch_size: int = Field(32, gt=0)
    max_length: int = Field(160, gt=16, le=512)
    """Tokens per premise + hypothesis pair; longer passages are scored in windows."""
    window_words: int = Field(60, ge=10)
    """Training premises: passage windows of up to this many words around the hypothesis sentence."""
    window_overlap: int = Field(1, ge=0)
    """Sentences shared by neighbouring passage windows."""
    seed: int = 0
    llm_url: str | None = None
    """OpenAI-compatible base URL (e.g. http://localhost:8000/v1) for name=llm."""
    llm_model: str | None = None
    """Model name sent to the LLM endpoint."""
    llm_api_key_env: str | None = None
    """Environment variable holding the endpoint's API key. Without it no key is sent (OPENAI_API_KEY only to
    https://api.openai.com); a named key goes only over https or to a loopback address."""


class RerankConfig(_Section):
    """`ragqa rerank train`: a cross-encoder reranker trained on (question, passage) pairs from the index.

    Questions and their split come from the train section (train.data, train.split_by, train.val_fraction,
    train.seed), so a recipe's reranker is trained on exactly the questions its adapter is, never on the
    validation ones; the hard negatives come from the index (index.name) and its retrieval.mode (with
    retrieval.query_encoder_weights: the first stage the reranker will sit on)."""

    base: str = "minilm"
    """Starting weights: registry name, local folder or hub id (a fresh one-logit head is added)."""
    output: str = "rerankers/default"
    loss: Literal["softmax", "bce"] = "softmax"
    """softmax: listwise, the cross-entropy of the gold passage in a softmax over its question's list (gold +
    hard negatives); bce: pointwise binary cross-entropy per pair (does not learn at MedQuAD's scale on CPU)."""
    first_stage_temperature: float | None = Field(0.05, gt=0.0)
    """Ranking: the cross-encoder's logit + the candidate's dense cosine / this (the first stage's score on the
    query encoder's own softmax scale, temperature 0.05), stored in the card and used at inference; training is
    the cross-encoder alone. None: rank by the cross-encoder alone."""
    negatives: int = Field(3, ge=1, le=50)
    """Hard negatives per question: top retrieved passages that are not gold, plus same-document ones."""
    same_document_negatives: int = Field(1, ge=0, le=50)
    """Of those, at most this many other passages of the question's document (same condition, other question
    type: its treatment when the question asks its symptoms), when the Q&A rows carry a doc_id."""
    candidates: int = Field(30, gt=0)
    """How deep in the retrieved list the hard negatives are mined."""
    max_questions: int | None = Field(None, gt=0)
    """Train on at most this many (seeded) of the training questions (None: all)."""
    eval_questions: int = Field(200, ge=0)
    """Validation questions scored for the card (first-stage vs reranked recall@1, @3, @5 and MRR@10 over the top
    retrieval.rerank_candidates); 0 skips it."""
    dev_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of the training questions (split as train.split_by) held out of training as dev questions: the
    first_stage_temperature is then fitted on them (the best reranked MRR@10 among 0.02-0.1, in the card) and the
    abstention calibrated on them. 0: no dev questions, first_stage_temperature as given."""
    calibration_questions: int = Field(300, ge=0)
    """In-domain (training-split) questions the relevance abstention is calibrated on, against half the shipped
    off-topic questions (ragqa.rerank.calibrate; stored in the card's `abstention`); 0 skips it."""
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int | None = Field(None, gt=0)
    """If set, overrides epochs."""
    lr: float = Field(1e-4, gt=0.0)
    """The encoder's learning rate (linear decay after 10 % warmup)."""
    head_lr: float | None = Field(3e-3, gt=0.0)
    """The fresh one-logit head's (`classifier`) learning rate; None: lr. At the encoder's rate the random head
    hardly moves in the steps a CPU run has, and nothing is learned."""
    batch_size: int = Field(32, gt=0)
    """Pairs per step; with the softmax loss, batch_size // (negatives + 1) questions' lists."""
    layers: int | None = Field(None, ge=1, le=48)
    """Keep the first this many of rerank.base's transformer layers (a smaller, faster cross-encoder: its cost is
    linear in layers), then train as usual; None keeps them all. Starting from a trained reranker (rerank.base:
    default) with rerank.teacher set is the shrink-and-distil recipe."""
    teacher: str | None = None
    """A reranker (name or folder) whose per-question score lists the training also matches (listwise loss only):
    the loss becomes (1 - distill_weight) x the gold passage's cross-entropy + distill_weight x the KL divergence
    from the teacher's softmax over the same list. None: no distillation."""
    distill_weight: float = Field(0.5, ge=0.0, le=1.0)
    """The weight of the teacher's term (with rerank.teacher)."""
    max_length: int = Field(64, gt=16, le=512)
    """Tokens per question + title line + passage: passages are cut to their opening, which says what they are
    about (the index's chunks are 256 embedder tokens; 64 keeps a CPU step about half the cost of 128)."""
    seed: int = 0

    @model_validator(mode="after")
    def _teacher_needs_lists(self) -> RerankConfig:
        if self.teacher and self.loss != "softmax":
            raise ValueError("teacher needs loss: softmax (the teacher's scores are matched per question's list)")
        return self


class QueryEncoderConfig(_Section):
    """`ragqa query-encoder train`: fine-tune the QUESTION side of the index's embedder against the index's fixed
    passage vectors (used with retrieval.query_encoder_weights).

    Questions and their split come from the train section (train.data, train.split_by, train.val_fraction,
    train.seed), so the validation questions are never trained on. Loss: a softmax over ALL chunk vectors of the
    index (index.name), with the chunks of each question's gold documents as positives."""

    output: str = "query_encoders/default"
    epochs: int = Field(3, gt=0)
    lr: float = Field(4e-5, gt=0.0, lt=1.0)
    temperature: float = Field(0.05, gt=0.0, le=1.0)
    """Softmax temperature over the cosines (0.05: a cosine gap of 0.05 is a factor e in probability)."""
    batch_size: int = Field(32, gt=0)
    weight_decay: float = Field(0.01, ge=0.0)
    max_questions: int | None = Field(None, gt=0)
    """Train on at most this many (seeded) of the training questions (None: all)."""
    eval_questions: int = Field(200, ge=0)
    """Validation questions scored for the card (base vs tuned recall@1 and MRR@10, dense and hybrid); 0 skips."""
    seed: int = 0


class EvalSettings(_Section):
    """The recipe's `eval` section: settings of `ragqa eval` shared by every row of its matrix (the rows themselves
    are `--configs`, ragqa.evaluate.ablation.MatrixRow)."""

    judge_max_new_tokens: int = Field(512, gt=0)
    """Longest reply of a local LLM judge (`--judge local:NAME`, the judge of ragas' metrics, not judge.name) per
    ragas prompt."""
    judge_metrics: list[str] = Field(default_factory=lambda: [
        "llm_faithfulness", "llm_answer_relevancy", "llm_context_precision", "llm_context_recall"])
    """LLM-judged ragas metrics to run when --judge is given (fewer = faster with a slow local judge)."""
    bootstrap: int = Field(2000, ge=100)
    """Bootstrap resamples for the 95% CIs and the paired p-values."""
    batch_size: int = Field(16, gt=0)
    """Questions generated together (left-padded): ~2.6x the answers per second of one at a time on 2 CPU
    cores (160 new tokens, RAG prompts); 1 gives `ragqa ask`'s tokens exactly."""


class Config(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    ask: AskConfig = Field(default_factory=AskConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    rerank: RerankConfig = Field(default_factory=RerankConfig)
    query_encoder: QueryEncoderConfig = Field(default_factory=QueryEncoderConfig)
    eval: EvalSettings = Field(default_factory=EvalSettings)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _known_keys(section: type[BaseModel]) -> str:
    return ", ".join(section.model_fields)


def parse_override(item: str) -> tuple[list[str], str]:
    """`train.lr=1e-4` -> (["train", "lr"], "1e-4"): the key's parts and the value's text (read_value types it)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise RagqaError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. --set train.lr=1e-4")
    return key.strip().split("."), raw


def _is_text(annotation: Any) -> bool:
    """A field typed str or str | None."""
    return annotation is str or (get_origin(annotation) in (Union, UnionType)
                                 and str in get_args(annotation) and set(get_args(annotation)) <= {str, type(None)})


def read_value(raw: str, annotation: Any) -> Any:
    """The value of `--set KEY=TEXT` for a field typed `annotation`, read as YAML (numbers, lists, null, booleans).

    A text field keeps text that YAML would read as something else (a model named 1e5, an index named 0123 or
    yes, a folder named null), except that null still clears an optional one. Elsewhere 1e-4 is the number
    meant (YAML 1.1 reads it as a string).
    """
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if _is_text(annotation):
        if isinstance(value, str) or (value is None and annotation is not str):
            return value
        return raw.strip()
    if isinstance(value, str) and "e" in value.lower():
        try:
            value = float(value)
        except ValueError:
            pass
    return value


def apply_override(data: dict[str, Any], path: list[str], value: Any, text: bool = False) -> None:
    """Set data[path] = value, refusing keys the schema does not know. text=True: `value` is the text of a
    `--set`, typed by the field it sets (read_value)."""
    schema: type[BaseModel] = Config
    node = data
    for depth, part in enumerate(path):
        if part not in schema.model_fields:
            where = ".".join(path[:depth]) or "top level"
            raise RagqaError(
                f"unknown config key '{'.'.join(path)}' ({where} knows: {_known_keys(schema)})"
            )
        annotation = schema.model_fields[part].annotation
        if depth == len(path) - 1:
            node[part] = read_value(value, annotation) if text else value
            return
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            raise RagqaError(f"config key '{'.'.join(path[: depth + 1])}' is a value, not a section")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RagqaError(f"config key '{'.'.join(path[: depth + 1])}' must be a mapping")
        schema = annotation


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "config"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    got = first.get("input")
    detail = f" (got {got!r})" if first["type"] != "extra_forbidden" and not isinstance(got, dict) else ""
    more = f" [+{len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
    return f"{source}: {field}: {msg}{detail}{more}"


def load_config(path: str | Path | None = None, overrides: Sequence[str | tuple[str, Any]] = ()) -> Config:
    """Read a YAML recipe (or the defaults when path is None), apply overrides in order, validate.

    An override is the text of a `--set` ('section.key=value', typed by read_value), or a pair (dotted key,
    value) whose value is already typed, as the command line's own options give it: set as it is.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise RagqaError(
                f"config file {p} not found (recipes live in configs/, e.g. configs/smollm2-135m_lora_cpu.yaml)"
            )
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f" line {line + 1}" if line is not None else ""
            raise RagqaError(f"{p}{where}: not valid YAML; fix the syntax") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise RagqaError(f"{p}: top level must be a mapping of sections (model, index, train, ...)")
        data = loaded
    for item in overrides:
        if isinstance(item, str):
            keys, raw = parse_override(item)
            apply_override(data, keys, raw, text=True)
        else:
            key, value = item
            apply_override(data, key.split("."), value)
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        suffix = " (or --set)" if overrides else ""
        raise RagqaError(_format_validation_error(err, source + suffix)) from None
