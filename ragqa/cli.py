"""The `ragqa` command line: one click group, each subcommand a thin function over the library.

Heavy libraries (torch, transformers, llama-index, ragas) are imported inside the commands so that
`ragqa --help` and input errors answer immediately.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

from ragqa import __version__
from ragqa.errors import RagqaError
from ragqa.passage import RETRIEVAL_MODES, SEARCH_MODES
from ragqa.terminal import printable

CONFIG_HELP = "YAML recipe (configs/*.yaml); defaults are used for fields it leaves out."
SET_HELP = "Override one config field, e.g. --set train.lr=1e-4 (repeatable)."


def _config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)(fn)
    return click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)(fn)


NULL = object()
"""A flag value that sets its field to null (None in `flags` means the flag was not given)."""


def _build_config(config_path: str | None, overrides: tuple[str, ...], flags: dict[str, Any]):
    """Recipe + --set overrides + explicit flags (flags win; None means 'not given').

    Flag values are already typed by click and reach the config as they are: `--index 0123` names the index
    0123, never the number YAML would read in that text.
    """
    from ragqa.config import load_config

    typed = [(key, None if value is NULL else value) for key, value in flags.items() if value is not None]
    return load_config(config_path, [*overrides, *typed])


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ragqa")
def cli() -> None:
    """Offline-first dermatology question answering: retrieval + LoRA/QLoRA adapters.

    \b
    Typical run on the shipped starter corpus:
      ragqa ingest                 # build indexes/default from corpora/starter
      ragqa train --config configs/smollm2-135m_lora_cpu.yaml
      ragqa ask "How is scabies treated?" --adapter adapters/default
      ragqa eval --adapter adapters/default
      ragqa serve --adapter adapters/default   # web page and OpenAI-compatible API on 127.0.0.1:8000

    ragqa is a research tool, not medical advice.
    """


@cli.command("models")
def models_cmd() -> None:
    """List the model registry and where each model is found."""
    from ragqa.models import describe_registry

    describe_registry()


@cli.command("train")
@_config_options
@click.option("--data", multiple=True, help="Q&A file(s) (.jsonl/.json/.csv/.parquet with question, answer).")
@click.option("--output", help="Adapter directory to write (default: train.output).")
@click.option("--method", type=click.Choice(["qlora", "lora", "none"]), help="qlora, lora, or none (base only).")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint of --output.")
@click.option("--overwrite", is_flag=True, help="Replace --output even if it is not a ragqa adapter folder "
                                                 "(everything in it is deleted).")
@click.option("--no-cache", is_flag=True, help="Rebuild the tokenized training data instead of reusing the cache.")
@click.option("--search", "search_trials", type=click.IntRange(min=1), metavar="N",
              help="Optuna search: N short trials over lr, r, alpha, dropout, p; writes OUTPUT.best.yaml.")
@click.option("--launcher", type=click.Choice(["none", "accelerate"]), default="none", show_default=True,
              help="accelerate: re-run this command under `accelerate launch` (data parallel over GPUs).")
@click.option("--num-processes", type=click.IntRange(min=1), metavar="N",
              help="Processes for --launcher accelerate, one per GPU (default: all visible GPUs, 1 on CPU).")
@click.pass_context
def train_cmd(ctx, config_path, overrides, data, output, method, resume, overwrite, no_cache, search_trials, launcher,
              num_processes) -> None:
    """Fine-tune a LoRA/QLoRA adapter on Q&A pairs with retrieved context (RAFT-style).

    \b
    Multi-GPU (data parallel; effective batch = batch_size x grad_accum x processes):
      ragqa train --launcher accelerate --num-processes 4 --config RECIPE
      accelerate launch -m ragqa train --config RECIPE
    """
    cfg = _build_config(config_path, overrides, {
        "train.data": list(data) if data else None, "train.output": output, "train.method": method,
    })
    if num_processes is not None and launcher != "accelerate":
        raise RagqaError("--num-processes needs --launcher accelerate")
    if launcher == "accelerate":
        if search_trials:
            raise RagqaError("--search runs its trials in one process: drop --launcher")
        from ragqa.models import resolve_device
        from ragqa.train.launch import default_num_processes, launch

        device = resolve_device(cfg.model.device)
        sys.exit(launch(_command_line_args(ctx, skip={"launcher", "num_processes"}),
                        num_processes or default_num_processes(device), device))
    if search_trials:
        if resume:
            raise RagqaError("--search and --resume cannot be combined")
        from ragqa.train.search import run_search

        best, path = run_search(cfg, search_trials, use_cache=not no_cache)
        click.echo(f"best of {best.pop('trials')} trials: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float)
                                                                       else f"{k}={v}" for k, v in best.items()))
        click.echo(printable(f"best recipe written to {path}"))
        return
    from ragqa.train.trainer import train

    result = train(cfg, resume=resume, use_cache=not no_cache, overwrite=overwrite)
    if result.output is not None:
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        click.echo(printable(f"{cfg.train.method} run written to {result.output}: {result.steps} steps in "
                             f"{result.wall_s:.0f} s, val loss {fmt(result.val_loss)} "
                             f"(base {fmt(result.base_val_loss)})"))


def _command_line_args(ctx: click.Context, skip: set[str]) -> list[str]:
    """The options given on this command's command line, rebuilt from their parsed values (less `skip`)."""
    from click.core import ParameterSource

    args: list[str] = []
    for param in ctx.command.params:
        if param.name in skip or ctx.get_parameter_source(param.name) is not ParameterSource.COMMANDLINE:
            continue
        opt, value = param.opts[0], ctx.params[param.name]
        if getattr(param, "is_flag", False):
            args += [opt] if value else []
        else:
            args += [a for v in (value if param.multiple else [value]) for a in (opt, str(v))]
    return args


@cli.command("export")
@click.argument("adapters", nargs=-1, required=True, metavar="ADAPTER...", type=click.Path(file_okay=False))
@click.option("--merge", is_flag=True, required=True, help="Fold the LoRA weights into the base (required).")
@click.option("--output", required=True, type=click.Path(), help="Directory for the merged safetensors model.")
@click.option("--adapter-weights", metavar="W1,W2,...",
              help="One weight per ADAPTER, e.g. 0.7,0.3 (default: equal weights, 1/n each).")
@click.option("--base", help="Base model (default: the one in the first adapter's ragqa_card.json).")
@click.option("--overwrite", is_flag=True, help="Replace --output even if it is not a ragqa export folder "
                                                 "(everything in it is deleted).")
def export_cmd(adapters, merge, output, adapter_weights, base, overwrite) -> None:
    """Export an adapter merged into its base model as a standalone safetensors folder.

    Several ADAPTERs (of one base) are combined first, as `ask --adapter A --adapter B` does."""
    from ragqa.adapters import adapter_spec

    spec = adapter_spec(adapters, adapter_weights, adapter_flag="ADAPTER")
    if spec is None:
        raise RagqaError("ADAPTER none: give the adapter directory to merge")
    from ragqa.train.export import export_merged

    path = export_merged(spec, output, base=base, overwrite=overwrite)
    click.echo(printable(f"merged model written to {path}"))


ADAPTERS_HELP = ("LoRA adapter directory, or 'none'. Repeat it to combine adapters (peft add_weighted_adapter, "
                 "`cat`: the weighted sum of their updates).")
WEIGHTS_HELP = "One weight per --adapter, e.g. 0.7,0.3 (default: equal weights, 1/n each)."


def _adapter_spec(adapters: tuple[str, ...], weights: str | None):
    from ragqa.adapters import adapter_spec

    return adapter_spec(adapters, weights)


@cli.command("ask")
@click.argument("question", required=False)
@_config_options
@click.option("--index", "index_name", help="Index name (indexes/NAME) or directory.")
@click.option("--adapter", "adapters", multiple=True, help=ADAPTERS_HELP)
@click.option("--adapter-weights", metavar="W1,W2,...", help=WEIGHTS_HELP)
@click.option("--base-model", help="Generator: registry name, local folder or hub id.")
@click.option("--k", type=int, help="Passages to retrieve.")
@click.option("--retrieval", type=click.Choice(RETRIEVAL_MODES),
              help="Retrieval mode; none answers from the model alone.")
@click.option("--max-new-tokens", type=int, help="Longest answer, in tokens.")
@click.option("--temperature", type=float, help="0 (default) decodes greedily.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per answer (no streaming).")
@click.option("--no-disclaimer", is_flag=True, help="Leave out the medical disclaimer line.")
def ask_cmd(question, config_path, overrides, index_name, adapters, adapter_weights, base_model, k, retrieval,
            max_new_tokens, temperature, as_json, no_disclaimer) -> None:
    """Answer QUESTION with citations; without QUESTION, open an interactive session.

    \b
    Interactive commands: :k N, :mode dense|bm25|hybrid|none, :adapter NAME|off, :sources, :help, :quit
    (:adapter switches between the adapters loaded, or loads another directory, without reloading the base)
    Questions can also be piped in, one per line (with --json: one JSON object per line out).
    """
    adapter = _adapter_spec(adapters, adapter_weights)
    cfg = _build_config(config_path, overrides, {
        "index.name": index_name, "model.base": base_model, "retrieval.k": k, "retrieval.mode": retrieval,
        "ask.max_new_tokens": max_new_tokens, "ask.temperature": temperature,
        "ask.disclaimer": False if no_disclaimer else None,
    })
    from ragqa import ask

    ask.run(cfg, question, adapter=adapter, as_json=as_json)


@cli.command("serve")
@_config_options
@click.option("--index", "index_name", help="Index name (indexes/NAME) or directory.")
@click.option("--adapter", help="LoRA adapter directory, or 'none'.")
@click.option("--base-model", help="Generator: registry name, local folder or hub id.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 exposes the server to the network (set --api-key-env then).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option("--api-key-env", metavar="VAR",
              help="Require 'Authorization: Bearer KEY' on /v1/*, KEY read from environment variable VAR.")
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(min=1),
              help="Requests that may wait; more get 503 with Retry-After.")
# 8 = serve.DEFAULT_MAX_BATCH (not imported here: fastapi loads with ragqa.serve, and --help stays fast).
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(min=1),
              help="Most waiting requests (streaming or not) answered by one batched generate call; 1 answers "
                   "one request at a time.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Allow browser pages from ORIGIN to call the API (repeatable; CORS is off without it).")
def serve_cmd(config_path, overrides, index_name, adapter, base_model, host, port, api_key_env, max_queue,
              max_batch, cors_origins) -> None:
    """Serve an OpenAI-compatible API (/v1/chat/completions, /v1/models), /v1/ask and a web page at /.

    \b
    Also: GET /healthz (200 once the model and index are loaded), GET /metrics (Prometheus).
    ask.max_new_tokens is the default max_tokens of a request.
    """
    cfg = _build_config(config_path, overrides, {"index.name": index_name, "model.base": base_model})
    # Input checks before fastapi and the model load, so a mistake is reported at once.
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env, "").strip()
        if not api_key:
            raise RagqaError(f"--api-key-env {api_key_env}: the environment variable {api_key_env} is empty or unset")
    if adapter not in (None, "", "none") and not os.path.isdir(adapter):
        raise RagqaError(f"--adapter {adapter}: no such adapter directory")
    from ragqa.ask import _check_index

    _check_index(cfg)
    _check_port(host, port)
    from ragqa import serve

    serve.run(cfg, adapter, host, port, api_key, max_queue, max_batch, cors_origins)


def _check_port(host: str, port: int) -> None:
    """Refuse a port that is taken before loading a model for nothing (uvicorn would only find out after)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise RagqaError(f"--host {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(address)
        except OSError as exc:
            raise RagqaError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror}): "
                             f"pick another --port or stop the other server") from None


@cli.command("eval")
@_config_options
@click.option("--questions", type=click.Path(dir_okay=False),
              help="Q&A file (JSONL/JSON/CSV/Parquet: id/question/answer[/gold_passage_ids]); without any answer "
                   "only the reference-free metrics are scored. Default: the starter Q&A held-out split of "
                   "--adapter (all starter Q&A without one).")
@click.option("--index", "index_name", help="Index name (indexes/NAME) or directory.")
@click.option("--adapter", "adapters", multiple=True,
              help="LoRA adapter directory (needed by the lora configurations); repeat it to combine adapters.")
@click.option("--adapter-weights", metavar="W1,W2,...", help=WEIGHTS_HELP)
@click.option("--configs", default="base,lora,rag,rag+lora", show_default=True,
              help="Rows of the matrix, comma-separated: base, lora, rag, rag+lora; extra rows dense, bm25, hybrid "
                   "(+lora). Not a recipe: that is --config.")
@click.option("--limit", type=int, help="Evaluate only the first N questions.")
@click.option("--sample", type=int, help="Evaluate N questions drawn at random (seeded by --seed), in file order.")
@click.option("--output", default="eval/reports/default", show_default=True, type=click.Path(file_okay=False),
              help="Report folder (results.jsonl, report.md, report.html, matrix.png, summary.json).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of --sample and of the bootstrap resampling (answers are greedy).")
@click.option("--judge", help="LLM judge of ragas' LLM-judged metrics: local:NAME or openai:MODEL (default: none). "
                              "Not the NLI judge (--nli-judge).")
@click.option("--judge-base-url", help="Base URL of an OpenAI-compatible server (vLLM, Ollama) for --judge openai:.")
@click.option("--judge-api-key-env", metavar="VAR",
              help="Environment variable holding the API key for --judge-base-url (sent only over https or to "
                   "loopback). Default: none, except OPENAI_API_KEY for https://api.openai.com.")
@click.option("--nli-judge", help="Judge of each answer sentence (judge.name: an NLI judge from `ragqa judge "
                                  "train`, a folder, 'llm' or 'lexical'); 'none' to skip (default: the trained one).")
@click.option("--exclude-trained", is_flag=True, help="Drop questions in the adapter's training split "
                                                      "instead of refusing.")
@click.option("--fresh", is_flag=True, help="Discard earlier results in --output instead of resuming.")
@click.option("--rescore", is_flag=True, help="Generate nothing: score the stored answers of a finished run in "
                                              "--output again with the judges available now (after `ragqa judge "
                                              "train`, `rerank train` or with --judge); same options as that run.")
@click.option("--recheck", is_flag=True, help="With --rescore (implied): first run the answer check (ask.verify) "
                                               "again on the stored answers as generated, with the checker "
                                               "available now (e.g. a judge trained since); no generation.")
@click.option("--overwrite", is_flag=True, help="Write the report into --output even if it is not a ragqa eval "
                                                 "report folder (its report files are replaced, others kept).")
@click.option("--bootstrap", "n_resamples", type=int, help="Bootstrap resamples for CIs and p-values (2000).")
@click.option("--retrieval-only", is_flag=True, help="Only score retrieval (recall@k, MRR) on the questions' "
                                                     "gold passages; no generation.")
@click.option("--k", type=int, help="Passages to retrieve.")
@click.option("--retrieval", type=click.Choice(SEARCH_MODES), help="Retrieval mode of the rag rows.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_cmd(config_path, overrides, questions, index_name, adapters, adapter_weights, configs, limit, sample, output,
             seed, judge, judge_base_url, judge_api_key_env, nli_judge, exclude_trained, fresh, rescore, recheck,
             overwrite, n_resamples, retrieval_only, k, retrieval, quiet) -> None:
    """Run the ablation matrix base / lora / rag / rag+lora and write a report (resumable)."""
    adapter = _adapter_spec(adapters, adapter_weights)
    cfg = _build_config(config_path, overrides, {
        "index.name": index_name, "retrieval.k": k, "retrieval.mode": retrieval, "eval.bootstrap": n_resamples,
    })
    if retrieval_only:
        from ragqa.evaluate.ablation import retrieval_only_eval

        retrieval_only_eval(cfg, questions=questions, output=output, limit=limit, progress=not quiet,
                            overwrite=overwrite)
        return
    from ragqa.evaluate.ablation import evaluate

    summary = evaluate(cfg, questions=questions, adapter=adapter, configs=configs, limit=limit, sample=sample,
                       output=output, seed=seed, judge=judge, judge_base_url=judge_base_url,
                       judge_api_key_env=judge_api_key_env, nli_judge=nli_judge,
                       exclude_trained=exclude_trained, fresh=fresh, progress=not quiet, overwrite=overwrite,
                       rescore=rescore, recheck=recheck)
    click.echo(printable(f"{summary['questions']} questions x {len(summary['configs'])} configurations"
                         f"{' rechecked and rescored' if recheck else ' rescored' if rescore else ''} in "
                         f"{summary['wall_s']} s; report: "
                         f"{summary['paths']['report.md']} "
                         f"(also report.html, matrix.png, results.jsonl)"
                         + ("" if summary["reference_answers"] else
                            "; no reference answers: reference-free metrics only")))


@cli.command("ingest")
@_config_options
@click.option("--corpus", multiple=True, help="JSONL/CSV/Parquet file, folder of .md/.txt, or hf:owner/name[:split].")
@click.option("--index", "index_name", help="Index name (indexes/NAME) or directory (contains '/').")
@click.option("--embedder", help="Embedding model: registry name, local folder or hub id.")
@click.option("--chunk-size", type=int, help="Tokens per chunk.")
@click.option("--chunk-overlap", type=int, help="Tokens shared by neighbouring chunks.")
@click.option("--index-type", type=click.Choice(["flat", "hnsw", "ivf"]),
              help="flat (exact), hnsw, or ivf (FAISS only).")
@click.option("--store", help="Vector store: faiss (default, files in the index folder) or qdrant (index.store).")
@click.option("--store-url", help="Qdrant server or cluster URL (default: Qdrant local mode in the index folder); "
                                  "the API key comes from $QDRANT_API_KEY (index.store_api_key_env).")
@click.option("--text-field", help="Column holding the passage text (tabular inputs).")
@click.option("--id-field", help="Column holding the passage id.")
@click.option("--title-field", help="Column holding the passage title.")
@click.option("--device", help="auto, cpu, cuda, cuda:N.")
@click.option("--stats", is_flag=True, help="Print the index manifest and sizes instead of ingesting.")
@click.option("--overwrite", is_flag=True, help="Replace --index even if it is not a ragqa index folder "
                                                 "(everything in it is deleted).")
def ingest_cmd(config_path, overrides, corpus, index_name, embedder, chunk_size, chunk_overlap, index_type, store,
               store_url, text_field, id_field, title_field, device, stats, overwrite) -> None:
    """Load a corpus, chunk, embed and persist the vectors (FAISS or Qdrant) + BM25 index."""
    cfg = _build_config(config_path, overrides, {
        "index.corpus": list(corpus) if corpus else None, "index.name": index_name,
        "model.embedder": embedder, "index.chunk_size": chunk_size, "index.chunk_overlap": chunk_overlap,
        "index.index_type": index_type, "index.store": store, "index.store_url": store_url,
        "index.text_field": text_field, "index.id_field": id_field,
        "index.title_field": title_field, "model.device": device,
    })
    from ragqa import index

    if stats:
        index.print_stats(cfg.index.name)
    else:
        index.ingest(cfg, overwrite=overwrite)


@cli.group("judge")
def judge_group() -> None:
    """Train and use the offline faithfulness judge (an NLI cross-encoder)."""


@judge_group.command("train")
@_config_options
@click.option("--nli", help="NLI pairs JSONL {premise, hypothesis, label} "
                            "(default ../shared/data/nli/snli-train.jsonl); 'none' for in-domain pairs only.")
@click.option("--corpus", multiple=True,
              help="Passages JSONL for in-domain pairs (repeatable; default the starter corpus).")
@click.option("--output", help="Judge folder (default judges/default).")
@click.option("--base", help="Starting model: registry name (minilm), local folder or hub id.")
@click.option("--max-nli", type=int, help="At most this many NLI training pairs.")
@click.option("--max-domain", type=int, help="At most this many in-domain training pairs.")
@click.option("--epochs", type=float, help="Training epochs.")
@click.option("--lr", type=float, help="Learning rate.")
@click.option("--batch-size", type=int, help="Pairs per batch.")
@click.option("--max-length", type=int, help="Tokens per premise + hypothesis.")
@click.option("--seed", type=int, help="Random seed.")
@click.option("--overwrite", is_flag=True, help="Replace --output even if it is not a ragqa judge folder "
                                                 "(everything in it is deleted).")
@click.option("--device", help="auto, cpu, cuda, cuda:N.")
def judge_train_cmd(config_path, overrides, nli, corpus, output, base, max_nli, max_domain, epochs, lr, batch_size,
                    max_length, seed, overwrite, device) -> None:
    """Fine-tune a 3-way NLI judge on NLI pairs plus in-domain pairs made from the corpus."""
    cfg = _build_config(config_path, overrides, {
        "judge.nli": NULL if nli == "none" else nli, "judge.corpus": list(corpus) if corpus else None,
        "judge.output": output, "judge.base": base, "judge.max_nli": max_nli, "judge.max_domain": max_domain,
        "judge.epochs": epochs, "judge.lr": lr, "judge.batch_size": batch_size, "judge.max_length": max_length,
        "judge.seed": seed, "model.device": device,
    })
    from ragqa.judge.train import train_judge

    train_judge(cfg, overwrite=overwrite)


@judge_group.command("score")
@_config_options
@click.option("--premise", "premises", multiple=True, required=True,
              help="Passage text (repeatable: each is one passage).")
@click.option("--hypothesis", required=True, help="Claim or answer; each sentence is scored as one claim.")
@click.option("--judge", "judge_name", help="Judge of each sentence (judge.name): a trained NLI judge name, folder, "
                                            "hub NLI id, 'llm' (judge.llm_url) or 'lexical' (default: default).")
def judge_score_cmd(config_path, overrides, premises, hypothesis, judge_name) -> None:
    """Print, as JSON, how well the premises support each sentence of the hypothesis."""
    import json

    cfg = _build_config(config_path, overrides, {"judge.name": judge_name})
    from ragqa.judge import judge_from_config

    result = judge_from_config(cfg).support(hypothesis, list(premises))
    click.echo(json.dumps(result.to_dict(), indent=2))


@cli.group("rerank")
def rerank_group() -> None:
    """Train the cross-encoder reranker (retrieval.rerank=default) and calibrate its relevance abstention."""


@rerank_group.command("train")
@_config_options
@click.option("--data", multiple=True, help="Q&A file(s) with gold_passage_ids (default: train.data); the train/"
                                            "validation split is train.split_by, train.val_fraction, train.seed.")
@click.option("--index", "index_name", help="Index the passages and hard negatives come from (default index.name).")
@click.option("--output", help="Reranker folder (default rerankers/default).")
@click.option("--base", help="Starting model: registry name (minilm), local folder or hub id.")
@click.option("--negatives", type=int, help="Hard negatives per question.")
@click.option("--max-questions", type=int, help="Train on at most this many training questions.")
@click.option("--epochs", type=float, help="Training epochs.")
@click.option("--max-steps", type=int, help="Stop after this many steps (overrides --epochs).")
@click.option("--lr", type=float, help="Learning rate.")
@click.option("--batch-size", type=int, help="Pairs per batch.")
@click.option("--seed", type=int, help="Random seed (pairs, head initialisation, order).")
@click.option("--device", help="auto, cpu, cuda, cuda:N.")
def rerank_train_cmd(config_path, overrides, data, index_name, output, base, negatives, max_questions, epochs,
                     max_steps, lr, batch_size, seed, device) -> None:
    """Fine-tune a cross-encoder on the training questions: gold passage vs mined hard negatives."""
    cfg = _build_config(config_path, overrides, {
        "train.data": list(data) if data else None, "index.name": index_name, "rerank.output": output,
        "rerank.base": base, "rerank.negatives": negatives, "rerank.max_questions": max_questions,
        "rerank.epochs": epochs, "rerank.max_steps": max_steps, "rerank.lr": lr, "rerank.batch_size": batch_size,
        "rerank.seed": seed, "model.device": device,
    })
    from ragqa.rerank.train import train_reranker

    train_reranker(cfg)


@rerank_group.command("calibrate")
@_config_options
@click.option("--reranker", "name", default="default", show_default=True,
              help="Trained reranker to calibrate: a name from `ragqa models` or its folder.")
@click.option("--data", multiple=True, help="Q&A file(s) it was trained on (default: train.data); the split must be "
                                            "the one in its card.")
@click.option("--index", "index_name", help="Index whose first stage gives the candidates (default index.name).")
@click.option("--questions", type=int, help="In-domain training questions to calibrate on "
                                            "(rerank.calibration_questions).")
@click.option("--seed", type=int, help="Random seed (question sample, off-topic halves).")
@click.option("--device", help="auto, cpu, cuda, cuda:N.")
def rerank_calibrate_cmd(config_path, overrides, name, data, index_name, questions, seed, device) -> None:
    """Calibrate relevance-based abstention for a trained reranker, without retraining it (written to its card)."""
    cfg = _build_config(config_path, overrides, {
        "train.data": list(data) if data else None, "index.name": index_name,
        "rerank.calibration_questions": questions, "rerank.seed": seed, "model.device": device,
    })
    from ragqa.rerank.calibrate import calibrate_reranker

    calibrate_reranker(cfg, name)


@cli.group("query-encoder")
def query_encoder_group() -> None:
    """Tune the question side of the embedder on the index's fixed passage vectors (retrieval.query_encoder_weights)."""


@query_encoder_group.command("train")
@_config_options
@click.option("--data", multiple=True, help="Q&A file(s) with gold_passage_ids (default: train.data); the train/"
                                            "validation split is train.split_by, train.val_fraction, train.seed.")
@click.option("--index", "index_name", help="Index whose passage vectors the questions are tuned to (default "
                                            "index.name).")
@click.option("--output", help="Query encoder folder (default query_encoders/default).")
@click.option("--epochs", type=int, help="Passes over the training questions (default 3).")
@click.option("--lr", type=float, help="Learning rate (default 4e-5).")
@click.option("--temperature", type=float, help="Softmax temperature over the cosines (default 0.05).")
@click.option("--seed", type=int, help="Random seed (question order, dropout).")
@click.option("--device", help="auto, cpu, cuda, cuda:N.")
@click.option("--overwrite", is_flag=True, help="Replace --output even if it is not a ragqa query encoder folder "
                                                 "(everything in it is deleted).")
def query_encoder_train_cmd(config_path, overrides, data, index_name, output, epochs, lr, temperature, seed, device,
                            overwrite) -> None:
    """Fine-tune the embedder's question side so training questions land nearest their gold passages' vectors.

    \b
    Passages keep the vectors the index holds (no re-embedding, no extra query latency). Use the result with
      ragqa ask --set retrieval.query_encoder_weights=default "How is scabies treated?"
    """
    cfg = _build_config(config_path, overrides, {
        "train.data": list(data) if data else None, "index.name": index_name, "query_encoder.output": output,
        "query_encoder.epochs": epochs, "query_encoder.lr": lr, "query_encoder.temperature": temperature,
        "query_encoder.seed": seed, "model.device": device,
    })
    from ragqa.query_tuning.train import train_query_encoder

    train_query_encoder(cfg, overwrite=overwrite)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit, never a traceback."""
    try:
        cli.main(args=argv, prog_name="ragqa", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:  # one line too, e.g. "--output: Directory 'x' is a file"
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        click.echo(printable(f"error: {exc.format_message()}{hint}"), err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except RagqaError as exc:  # messages quote corpus values and paths: control characters shown escaped
        click.echo(printable(f"error: {exc}"), err=True)
        sys.exit(2)
    except OSError as exc:  # a file-system failure outside the atomic writers: the path and the reason
        if os.environ.get("RAGQA_DEBUG"):
            raise
        click.echo(printable(f"error: {f'{exc.filename}: ' if exc.filename else ''}{exc.strerror or exc}"), err=True)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - last line of defence: no traceback reaches the user
        if os.environ.get("RAGQA_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        click.echo(printable(f"error: {type(exc).__name__}: {first} (set RAGQA_DEBUG=1 for the traceback)"), err=True)
        sys.exit(1)

