"""``adapter-retrievers``: train, evaluate and plot query adapters from the command line."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from adapter_retrievers._files import atomic_write_text
from adapter_retrievers.adapters import AdapterFileError
from adapter_retrievers.data import DataFormatError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Fit query-only embedding adapters that make RAG retrieval more accurate, without re-indexing.",
)

BeirOption = Annotated[Path | None, typer.Option(help="BEIR folder (corpus.jsonl[.gz], queries.jsonl, qrels/)")]
PairsOption = Annotated[Path | None, typer.Option(help="JSONL of {query, doc_id[, label]} pairs (needs --corpus)")]
QaJsonOption = Annotated[
    Path | None, typer.Option(help="LlamaIndex/sentence-transformers {queries, corpus, relevant_docs} JSON")
]
CorpusOption = Annotated[Path | None, typer.Option(help="BEIR folder whose corpus.jsonl to search (default: --beir)")]
ModelOption = Annotated[str, typer.Option(help="'bundled' (all-MiniLM-L6-v2, offline) or a sentence-transformers path")]
CacheOption = Annotated[Path, typer.Option(help="on-disk embedding cache")]
LenientOption = Annotated[bool, typer.Option("--lenient", help="skip and count bad rows instead of stopping")]

DEFAULT_CACHE = Path.home() / ".cache" / "adapter-retrievers"


def _friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input ends with one clear line and exit code 2, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (DataFormatError, AdapterFileError, FileNotFoundError, ValueError) as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None

    return wrapper


def _encoder(model: str, cache_dir: Path) -> Any:
    from adapter_retrievers.encoders import CachedEncoder, SentenceTransformerEncoder, minilm_encoder

    if model == "bundled":
        return CachedEncoder(minilm_encoder(cache_dir / "models"), cache_dir)
    from sentence_transformers import SentenceTransformer

    return CachedEncoder(SentenceTransformerEncoder(SentenceTransformer(model), model_id=model), cache_dir)


def _load(beir: Path | None, split: str, pairs: Path | None, qa_json: Path | None, corpus: Path | None, lenient: bool):
    from adapter_retrievers.data import Corpus, TrainingSet

    errors = "skip" if lenient else "raise"
    given = [x for x in (beir, pairs, qa_json) if x is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of --beir, --pairs or --qa-json")
    if qa_json is not None:
        return TrainingSet.from_llamaindex_json(qa_json), Corpus.from_llamaindex_json(qa_json)
    corpus_folder = corpus or beir
    if corpus_folder is None:
        raise ValueError("--pairs needs --corpus FOLDER (a BEIR folder with corpus.jsonl)")
    documents = Corpus.from_beir(corpus_folder, errors=errors)
    queries = TrainingSet.from_beir(beir, split, errors=errors) if beir else TrainingSet.from_pairs_jsonl(pairs, errors)
    for report in (documents.read_report, queries.read_report):
        if report.n_skipped:
            typer.echo(f"skipped: {report}", err=True)
    return queries.check_against(documents, errors), documents


@app.command()
@_friendly_errors
def train(
    output: Annotated[Path, typer.Option("--output", "-o", help="adapter folder to write")],
    beir: BeirOption = None,
    split: Annotated[str, typer.Option(help="qrels split to train on")] = "train",
    pairs: PairsOption = None,
    qa_json: QaJsonOption = None,
    corpus: CorpusOption = None,
    model: ModelOption = "bundled",
    kind: Annotated[str, typer.Option(help="linear | low_rank | orthogonal | residual_mlp")] = "linear",
    loss: Annotated[str, typer.Option(help="infonce | triplet | mse_cosine")] = "infonce",
    negatives: Annotated[str, typer.Option(help="random negatives per query, or 'all'")] = "all",
    epochs: int = 100,
    learning_rate: float = 1e-3,
    seed: int = 0,
    cache_dir: CacheOption = DEFAULT_CACHE,
    lenient: LenientOption = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Train an adapter and save it (safetensors + JSON).

    Example: adapter-retrievers train --beir ../shared/data/scifact --split train -o adapters/scifact
    """
    from adapter_retrievers.training import AdapterTrainer

    queries, documents = _load(beir, split, pairs, qa_json, corpus, lenient)
    n_neg: int | str = negatives if negatives == "all" else int(negatives)
    trainer = AdapterTrainer(
        _encoder(model, cache_dir),
        kind=kind,
        loss=loss,
        negatives=n_neg,
        epochs=epochs,
        learning_rate=learning_rate,
        seed=seed,
        progress=progress,
    )
    result = trainer.fit(queries, documents)
    result.adapter.save(output)
    typer.echo(str(result.report))
    typer.echo(result.describe_decision())
    verdict = "kept" if result.improved else "no epoch beat the base model: saved the identity adapter"
    typer.echo(f"{verdict}; best epoch {result.best_epoch}, {result.train_seconds:.1f}s -> {output}")


@app.command()
@_friendly_errors
def capture(
    logs: Annotated[list[Path], typer.Argument(help="capture logs written by the LangChain/LlamaIndex handlers")],
    json_out: Annotated[Path | None, typer.Option("--json", help="write the summary as JSON here")] = None,
) -> None:
    """Inspect a capture log: retrievals, signals by kind, sessions, time range, bad lines.

    Example: adapter-retrievers capture adapter_retrievers/datasets/xquad_es/rag-log.jsonl.gz
    """
    from collections import Counter

    from adapter_retrievers.data import ReadReport
    from adapter_retrievers.harvest import LoggedRetrieval, read_traces

    report = ReadReport()
    kinds: Counter = Counter()
    sessions: set[str] = set()
    ids: set[str] = set()
    targets: set[str] = set()
    times: list[str] = []
    n_docs = n_retrievals = 0
    for item in read_traces(logs, "ours", report):
        if isinstance(item, LoggedRetrieval):
            n_retrievals += 1
            ids.update(filter(None, (item.retrieval_id, item.trace_id)))
            n_docs += len(item.documents)
            if item.session:
                sessions.add(item.session)
            if item.timestamp:
                times.append(item.timestamp)
        else:
            kinds[item.kind] += 1
            targets.add(item.target)
    summary = {
        "records": report.rows_read,
        "retrievals": n_retrievals,
        "documents_per_retrieval": round(n_docs / n_retrievals, 2) if n_retrievals else 0,
        "signals": dict(kinds),
        "signals_for_unknown_retrievals": len(targets - ids),
        "sessions": len(sessions),
        "first": min(times) if times else None,
        "last": max(times) if times else None,
        "skipped": dict(report.skipped),
    }
    for key, value in summary.items():
        typer.echo(f"{key:<32} {value}")
    if json_out:
        atomic_write_text(json_out, json.dumps(summary, indent=2) + "\n")


@app.command()
@_friendly_errors
def harvest(
    traces: Annotated[list[Path], typer.Argument(help="trace files (JSONL, or a JSON array), any number")],
    corpus: Annotated[Path, typer.Option(help="BEIR folder whose corpus.jsonl the documents are matched to")],
    output: Annotated[Path, typer.Option("--output", "-o", help="pairs JSONL to write (train split)")],
    trace_format: Annotated[
        str, typer.Option("--format", help="ours | openinference | langsmith | langfuse | llamaindex")
    ] = "ours",
    held_out: Annotated[Path | None, typer.Option(help="also write the newest queries here (evaluation)")] = None,
    split_by: Annotated[str, typer.Option(help="time | session: how --held-out queries are chosen")] = "time",
    held_out_fraction: float = 0.2,
    feedback_threshold: Annotated[float, typer.Option(help="answer feedback at or above this is positive")] = 0.5,
    feedback_top_k: Annotated[int, typer.Option(help="retrieved documents that answer feedback applies to")] = 1,
) -> None:
    """Turn exported traces and feedback into training pairs, with a summary of what was skipped and why.

    Example: adapter-retrievers harvest adapter_retrievers/datasets/xquad_es/rag-log.jsonl.gz --corpus adapter_retrievers/datasets/xquad_es -o pairs.jsonl --held-out held-out.jsonl
    """
    from adapter_retrievers.data import Corpus
    from adapter_retrievers.harvest import SignalPolicy
    from adapter_retrievers.harvest import harvest as run_harvest

    documents = Corpus.from_beir(corpus)
    policy = SignalPolicy(feedback_threshold=feedback_threshold, feedback_top_k=feedback_top_k)
    result = run_harvest(traces, documents, fmt=trace_format, policy=policy)
    typer.echo(str(result.report))
    if len(result.training_set) == 0:
        raise ValueError("no training pairs: no retrieval had a positive signal (see the summary above)")
    if held_out is not None:
        train_set, test_set = result.split(split_by, held_out_fraction)  # type: ignore[arg-type]
        train_set.to_pairs_jsonl(output)
        test_set.to_pairs_jsonl(held_out)
        typer.echo(f"wrote {train_set.n_pairs} pairs to {output} and {test_set.n_pairs} newer ones to {held_out}")
    else:
        result.training_set.to_pairs_jsonl(output)
        typer.echo(f"wrote {result.training_set.n_pairs} pairs to {output}")


PROVIDERS = {
    "openai": ("langchain_openai", "ChatOpenAI", "langchain-openai"),
    "anthropic": ("langchain_anthropic", "ChatAnthropic", "langchain-anthropic"),
    "google": ("langchain_google_genai", "ChatGoogleGenerativeAI", "langchain-google-genai"),
    "mistral": ("langchain_mistralai", "ChatMistralAI", "langchain-mistralai"),
    "ollama": ("langchain_ollama", "ChatOllama", "langchain-ollama"),
}


def _chat_model(spec: str) -> Any:
    if spec == "extractive":
        from adapter_retrievers.synth import extractive_llm

        return extractive_llm
    provider, _, model = spec.partition(":")
    if provider not in PROVIDERS or not model:
        raise ValueError(
            f"--llm must be 'extractive' (offline) or PROVIDER:MODEL with PROVIDER one of {sorted(PROVIDERS)}, "
            f"got {spec!r}"
        )
    module_name, class_name, package = PROVIDERS[provider]
    try:
        module = __import__(module_name, fromlist=[class_name])
    except ImportError:
        raise ValueError(f"--llm {provider}:... needs the {package} package: pip install {package}") from None
    return getattr(module, class_name)(model=model)


@app.command()
@_friendly_errors
def synth(
    corpus: Annotated[Path, typer.Option(help="BEIR folder with corpus.jsonl")],
    output: Annotated[Path, typer.Option("--output", "-o", help="pairs JSONL (appended; a rerun resumes)")],
    llm: Annotated[
        str, typer.Option(help="PROVIDER:MODEL (openai:gpt-4o-mini, ollama:llama3.1, ...) or 'extractive' (offline)")
    ],
    queries_per_chunk: int = 2,
    max_chunks: Annotated[int, typer.Option(help="cost cap: documents to generate queries for")] = 200,
    description: Annotated[str, typer.Option(help="what the application does (steers the prompt)")] = "",
    examples: Annotated[Path | None, typer.Option(help="text file of real queries, one per line")] = None,
    concurrency: int = 4,
    requests_per_second: float = 2.0,
) -> None:
    """Generate synthetic queries for documents with an LLM (for corpora without logs).

    Example: adapter-retrievers synth --corpus adapter_retrievers/datasets/xquad_es -o synth.jsonl --llm extractive --max-chunks 20

    With a provider: --llm openai:gpt-4o-mini (needs langchain-openai and OPENAI_API_KEY).
    """
    from adapter_retrievers.data import Corpus
    from adapter_retrievers.synth import generate_queries

    model = _chat_model(llm)
    documents = Corpus.from_beir(corpus)
    example_lines = [ln.strip() for ln in examples.read_text().splitlines() if ln.strip()] if examples else []
    pairs, report = generate_queries(
        documents,
        model,
        output,
        queries_per_chunk,
        max_chunks,
        description,
        example_lines,
        concurrency,
        requests_per_second,
    )
    typer.echo(f"{report}\n{pairs.n_pairs} pairs in {output}")


@app.command("eval")
@_friendly_errors
def evaluate(
    adapter: Annotated[Path, typer.Argument(help="adapter folder")],
    beir: BeirOption = None,
    split: Annotated[str, typer.Option(help="qrels split to evaluate on")] = "test",
    pairs: PairsOption = None,
    qa_json: QaJsonOption = None,
    corpus: CorpusOption = None,
    model: ModelOption = "bundled",
    json_out: Annotated[Path | None, typer.Option("--json", help="write the full report (per query) here")] = None,
    plot: Annotated[Path | None, typer.Option(help="write a before/after PNG chart here")] = None,
    seen_split: Annotated[
        str | None,
        typer.Option(help="BEIR qrels split the adapter was trained on: report seen vs new documents"),
    ] = None,
    seen_pairs: Annotated[
        Path | None, typer.Option(help="pairs JSONL the adapter was trained on: report seen vs new documents")
    ] = None,
    cache_dir: CacheOption = DEFAULT_CACHE,
    lenient: LenientOption = False,
) -> None:
    """Compare base vs adapted retrieval on held-out queries (table, JSON, chart).

    With --seen-split/--seen-pairs (the training data), the report also gives the gain on held-out
    queries about documents seen in training and on those about new documents.

    Example: adapter-retrievers eval adapters/scifact --beir ../shared/data/scifact --split test --seen-split train
    """
    from adapter_retrievers.adapters import QueryAdapter
    from adapter_retrievers.evaluation import evaluate_adapter

    queries, documents = _load(beir, split, pairs, qa_json, corpus, lenient)
    encoder = _encoder(model, cache_dir)
    loaded = QueryAdapter.load(adapter, base_model=encoder.model_id)
    seen = _seen_documents(loaded, beir, seen_split, seen_pairs, lenient)
    report = evaluate_adapter(loaded, queries, documents, encoder, seen_documents=seen)
    typer.echo(str(report))
    if json_out:
        report.save_json(json_out)
    if plot:
        from adapter_retrievers.plots import plot_comparison

        plot_comparison(report, plot)


def _seen_documents(
    adapter: Any, beir: Path | None, split: str | None, pairs: Path | None, lenient: bool
) -> set[str] | None:
    """The training positives named on the command line, checked against the adapter's recorded fingerprint."""
    from adapter_retrievers.data import TrainingSet, documents_fingerprint

    if split is None and pairs is None:
        return None
    if split is not None and beir is None:
        raise typer.BadParameter("--seen-split needs --beir")
    mode = "skip" if lenient else "raise"
    data = TrainingSet.from_beir(beir, split, errors=mode) if split else TrainingSet.from_pairs_jsonl(pairs, mode)
    seen = data.documents
    recorded = adapter.metadata.get("training_data", {})
    known = {recorded.get("documents_fingerprint"), recorded.get("data_documents_fingerprint")} - {None}
    if known and documents_fingerprint(seen) not in known:
        typer.echo(
            "note: these training documents differ from the ones recorded in the adapter file; "
            "seen/new below is relative to the data given here",
            err=True,
        )
    return seen


@app.command()
@_friendly_errors
def curve(
    beir: Annotated[Path, typer.Option(help="BEIR folder with train and test qrels")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG to write (a .json with the numbers beside it)")],
    train_split: str = "train",
    test_split: str = "test",
    sizes: Annotated[str, typer.Option(help="comma-separated numbers of training pairs")] = "25,50,100,200,400,800",
    seeds: Annotated[int, typer.Option(help="runs per size (mean and spread)")] = 2,
    model: ModelOption = "bundled",
    cache_dir: CacheOption = DEFAULT_CACHE,
) -> None:
    """Learning curve: held-out nDCG@10 against number of training pairs, overall and on seen/new documents.

    Example: adapter-retrievers curve --beir ../shared/data/scifact -o curve.png --sizes 50,200,800
    """
    from adapter_retrievers.data import Corpus, TrainingSet
    from adapter_retrievers.plots import plot_learning_curve
    from adapter_retrievers.training import AdapterTrainer, learning_curve

    documents = Corpus.from_beir(beir)
    train_set, test_set = TrainingSet.from_beir(beir, train_split), TrainingSet.from_beir(beir, test_split)
    size_list = [int(s) for s in sizes.split(",") if s.strip()]
    trainer = AdapterTrainer(_encoder(model, cache_dir), progress=False)
    rows = learning_curve(trainer, train_set, documents, test_set, size_list, seeds=range(seeds))
    plot_learning_curve(rows, output, title=f"{beir.name} {test_split}, {trainer.model_id}")
    atomic_write_text(output.with_suffix(".json"), json.dumps(rows, indent=2) + "\n")
    for row in rows:
        typer.echo(
            f"{row['pairs']:>8.0f} pairs  nDCG@10 {row['ndcg@10']:.4f} ± {row['std']:.4f}  (base {row['baseline']:.4f})"
            f"  gain {row['gain']:+.4f}: seen documents {row['seen_gain']:+.4f} (n={row['n_seen']:.0f}),"
            f" new documents {row['new_gain']:+.4f} (n={row['n_new']:.0f})"
        )


@app.command()
@_friendly_errors
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for the adapter, report and chart")] = Path(
        "demo-output"
    ),
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Run the whole loop offline on bundled data: Chroma, training, before/after table and chart.

    Example: adapter-retrievers demo --output demo-output
    """
    from adapter_retrievers.demo import run_demo

    run_demo(output, progress=progress, echo=typer.echo)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
