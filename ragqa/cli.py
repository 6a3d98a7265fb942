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

CONFIG_HELP = "YAML recipe (configs/*.yaml); defaults are used for fields it leaves out."
SET_HELP = "Override one config field, e.g. --set train.lr=1e-4 (repeatable)."


def _config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)(fn)
    return click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)(fn)


def _build_config(config_path: str | None, overrides: tuple[str, ...], flags: dict[str, Any]):
    """Recipe + --set overrides + explicit flags (flags win; None means 'not given')."""
    from ragqa.config import load_config

    flag_sets = [f"{key}={_yaml_value(value)}" for key, value in flags.items() if value is not None]
    return load_config(config_path, [*overrides, *flag_sets])


def _yaml_value(value: Any) -> str:
    import json

    return json.dumps(value) if isinstance(value, list | tuple | bool) else str(value)


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

    ragqa is a research tool, not medical advice.
    """


@cli.command("models")
def models_cmd() -> None:
    """List the model registry and where each model is found."""
    from ragqa.models import describe_registry

    describe_registry()


def _not_implemented(name: str) -> None:
    raise RagqaError(f"`ragqa {name}` is not implemented yet in this version")


@cli.command("train", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def train_cmd() -> None:
    """Fine-tune a LoRA/QLoRA adapter on Q&A pairs with retrieved context (RAFT-style)."""
    _not_implemented("train")


@cli.command("ask", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def ask_cmd() -> None:
    """Answer a question (or open an interactive session) with citations."""
    _not_implemented("ask")


@cli.command("eval", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def eval_cmd() -> None:
    """Run the ablation matrix base / lora / rag / rag+lora and write a report."""
    _not_implemented("eval")


@cli.command("ingest")
@_config_options
@click.option("--corpus", multiple=True, help="JSONL/CSV/Parquet file, folder of .md/.txt, or hf:owner/name[:split].")
@click.option("--index", "index_name", help="Index name (indexes/NAME) or directory (contains '/').")
@click.option("--embedder", help="Embedding model: registry name, local folder or hub id.")
@click.option("--chunk-size", type=int, help="Tokens per chunk.")
@click.option("--chunk-overlap", type=int, help="Tokens shared by neighbouring chunks.")
@click.option("--index-type", type=click.Choice(["flat", "hnsw", "ivf"]), help="FAISS index kind.")
@click.option("--text-field", help="Column holding the passage text (tabular inputs).")
@click.option("--id-field", help="Column holding the passage id.")
@click.option("--title-field", help="Column holding the passage title.")
@click.option("--device", help="auto, cpu, cuda, cuda:N.")
@click.option("--stats", is_flag=True, help="Print the index manifest and sizes instead of ingesting.")
def ingest_cmd(config_path, overrides, corpus, index_name, embedder, chunk_size, chunk_overlap, index_type,
               text_field, id_field, title_field, device, stats) -> None:
    """Load a corpus, chunk, embed and persist FAISS + BM25 indexes."""
    cfg = _build_config(config_path, overrides, {
        "index.corpus": list(corpus) if corpus else None, "index.name": index_name,
        "model.embedder": embedder, "index.chunk_size": chunk_size, "index.chunk_overlap": chunk_overlap,
        "index.index_type": index_type, "index.text_field": text_field, "index.id_field": id_field,
        "index.title_field": title_field, "model.device": device,
    })
    from ragqa import index

    if stats:
        index.print_stats(cfg.index.name)
    else:
        index.ingest(cfg)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit, never a traceback."""
    try:
        cli.main(args=argv, prog_name="ragqa", standalone_mode=False)
    except click.exceptions.Exit as exc:
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
    except RagqaError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - last line of defence: no traceback reaches the user
        if os.environ.get("RAGQA_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        click.echo(f"error: {type(exc).__name__}: {first} (set RAGQA_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)

