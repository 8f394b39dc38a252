"""Benchmark: the wrappers, the logging handlers and the retrieval log under load.

1. **Swaps under load.** 8 threads query one real Chroma collection (embedded ``PersistentClient``, cosine)
   through the LangChain ``AdapterRetriever`` and the LlamaIndex ``AdapterVectorRetriever``, both reading
   the registry key ``tenant``, while another thread swaps that key's adapter 1,000 times (alternately
   ``register`` of adapter A and ``load`` of adapter B from disk). Both answers of every query are computed
   beforehand with A alone and B alone; every answer under load must equal one of them.
2. **Handlers over many chain runs.** ``RetrievalLogger`` (LangChain callback) and ``RetrievalEventLogger``
   (LlamaIndex instrumentation) across 100,000 chain runs each, from 4 threads, where some runs fail before
   the retrieval, inside it (the embedding call raises) or after it. Memory is traced with ``tracemalloc``
   (size after a warm-up vs. at the end); the log must hold exactly one line per completed retrieval.
3. **Concurrent appends.** 4 processes append to one ``RetrievalLog`` at once (lines from 200 bytes to
   ~200 KB); every line must parse, carry exactly the payload its writer wrote (none interleaved), and
   every line must be there (none lost).

The test suite runs the same functions at small sizes (``tests/integrations/test_load.py``).

    python benchmarks/load.py [--swaps 1000] [--runs 100000] [--lines 25000]

Results: ``benchmarks/results/load.json``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import multiprocessing
import tempfile
import threading
import time
import traceback
import tracemalloc
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from adapter_retrievers import QueryAdapter
from adapter_retrievers.adapters import LinearAdapter
from adapter_retrievers.capture import RetrievalLog
from adapter_retrievers.registry import AdapterRegistry

MODEL = "load/table"
KEY = "tenant"


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _frameworks() -> tuple[type, type]:
    """Embedding models that look vectors up in a table (the stand-in for a hosted model), per framework."""
    from langchain_core.embeddings import Embeddings
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from pydantic import Field

    class TableEmbeddings(Embeddings):
        def __init__(self, table: dict[str, list[float]], fail: frozenset[str] = frozenset()) -> None:
            self.table, self.fail = table, fail

        def embed_query(self, text: str) -> list[float]:
            if text in self.fail:
                raise ConnectionError(f"embedding service unavailable for {text!r}")
            return self.table[text]

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [self.table[t] for t in texts]

    class TableEmbedding(BaseEmbedding):
        table: dict = Field(default_factory=dict)
        fail: frozenset = frozenset()

        def _get_query_embedding(self, query: str) -> list[float]:
            if query in self.fail:
                raise ConnectionError(f"embedding service unavailable for {query!r}")
            return self.table[query]

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return self.table[text]

    return TableEmbeddings, TableEmbedding


# ------------------------------------------------------------------------------------ 1. swaps under load


def swap_under_load(
    folder: Path,
    n_docs: int = 10_000,
    dim: int = 384,
    n_queries: int = 1_000,
    n_threads: int = 8,
    n_swaps: int = 1_000,
    k: int = 5,
    queries_per_swap: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Query through both wrappers from ``n_threads`` threads while the registry swaps ``n_swaps`` times."""
    import chromadb
    from langchain_chroma import Chroma
    from llama_index.core import VectorStoreIndex
    from llama_index.vector_stores.chroma import ChromaVectorStore

    from adapter_retrievers.integrations.langchain import AdapterRetriever
    from adapter_retrievers.integrations.llamaindex import AdapterVectorRetriever

    TableEmbeddings, TableEmbedding = _frameworks()
    rng = np.random.default_rng(seed)
    docs, query_vectors = unit_rows(rng, n_docs, dim), unit_rows(rng, n_queries, dim)
    queries = [f"query {i}" for i in range(n_queries)]
    table = {q: v.tolist() for q, v in zip(queries, query_vectors)}
    client = chromadb.PersistentClient(path=str(folder / "chroma"))
    collection = client.create_collection("load", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None)
    for start in range(0, n_docs, 5000):
        stop = min(n_docs, start + 5000)
        collection.add(
            ids=[f"d{i}" for i in range(start, stop)],
            embeddings=docs[start:stop],
            documents=[f"document {i}" for i in range(start, stop)],
            metadatas=[{"n": i} for i in range(start, stop)],
        )

    def rotation() -> np.ndarray:
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        return q.astype(np.float32)

    adapter_a = LinearAdapter(dim, MODEL, {"weight": rotation(), "bias": np.zeros(dim, np.float32)})
    adapter_b = LinearAdapter(dim, MODEL, {"weight": rotation(), "bias": np.zeros(dim, np.float32)})
    path_b = adapter_b.save(folder / "adapter-b")
    registry = AdapterRegistry(MODEL, dim, {KEY: adapter_a})

    lc_embeddings = TableEmbeddings(table)
    store = Chroma(client=client, collection_name="load", embedding_function=lc_embeddings)
    index = VectorStoreIndex.from_vector_store(
        ChromaVectorStore(chroma_collection=collection), embed_model=TableEmbedding(table=table)
    )

    def langchain(adapter: Any) -> Any:
        retriever = AdapterRetriever(vectorstore=store, embeddings=lc_embeddings, adapter=adapter, adapter_key=KEY, k=k)
        return lambda q: [d.id for d in retriever.invoke(q)]

    def llamaindex(adapter: Any) -> Any:
        retriever = AdapterVectorRetriever(index, adapter, adapter_key=KEY, similarity_top_k=k)
        return lambda q: [n.node.node_id for n in retriever.retrieve(q)]

    frameworks = {"langchain": langchain, "llamaindex": llamaindex}
    expected = {
        name: {q: (make(adapter_a)(q), make(adapter_b)(q)) for q in queries} for name, make in frameworks.items()
    }
    under_load = {name: make(registry) for name, make in frameworks.items()}
    counts = {name: Counter() for name in frameworks}
    done_per_thread = [0] * n_threads
    errors: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def serve(thread: int) -> None:
        i = thread
        while not stop.is_set():
            name = "langchain" if i % 2 == 0 else "llamaindex"
            query = queries[(i * 7919) % n_queries]
            try:
                got = under_load[name](query)
                old, new = expected[name][query]
                outcome = "as A" if got == old else "as B" if got == new else "neither"
            except Exception:
                outcome = "error"
                with lock:
                    if len(errors) < 5:
                        errors.append(traceback.format_exc())
            with lock:
                counts[name][outcome] += 1
            done_per_thread[thread] += 1
            i += n_threads

    threads = [threading.Thread(target=serve, args=(t,)) for t in range(n_threads)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    try:
        for swap in range(n_swaps):
            if swap % 2 == 0:
                registry.load(KEY, path_b)  # a fresh object from disk
            else:
                registry.register(KEY, adapter_a)
            target = sum(done_per_thread) + queries_per_swap  # let queries run between swaps
            while sum(done_per_thread) < target and all(t.is_alive() for t in threads):
                time.sleep(0.0002)
    finally:
        stop.set()
        for t in threads:
            t.join()
    seconds = time.perf_counter() - started
    differ = {name: float(np.mean([a != b for a, b in expected[name].values()])) for name in frameworks}
    total = sum(sum(c.values()) for c in counts.values())
    return {
        "documents": n_docs,
        "dimension": dim,
        "threads": n_threads,
        "swaps": n_swaps,
        "queries_run": total,
        "seconds": round(seconds, 2),
        "queries_per_second": round(total / seconds, 1),
        "errors": sum(c["error"] for c in counts.values()),
        "mismatches": sum(c["neither"] for c in counts.values()),
        "outcomes": {name: dict(c) for name, c in counts.items()},
        "answers_differ_between_a_and_b": differ,
        "error_examples": errors,
    }


# ------------------------------------------------------------------------------- 2. handlers under many runs


def _count_log(path: Path) -> tuple[int, int, int]:
    """``(lines, lines that parse as a retrieval record, distinct ids)``."""
    lines = parsed = 0
    ids = set()
    if path.exists():
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                lines += 1
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("type") == "retrieval":
                    parsed += 1
                    ids.add(record["id"])
    return lines, parsed, len(ids)


def _traced_runs(run_one: Any, n_runs: int, n_threads: int, warmup: int) -> dict[str, Any]:
    """Run ``run_one(i)`` for ``i < n_runs`` from ``n_threads`` threads; traced memory after warm-up and at the end."""
    tracemalloc.start()
    try:
        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(run_one, range(warmup)))
            gc.collect()
            after_warmup = tracemalloc.get_traced_memory()[0]
            started = time.perf_counter()
            list(pool.map(run_one, range(warmup, n_runs), chunksize=64))
            seconds = time.perf_counter() - started
        gc.collect()
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {
        "runs": n_runs,
        "threads": n_threads,
        "traced_after_warmup_kib": round(after_warmup / 1024, 1),
        "traced_at_end_kib": round(end / 1024, 1),
        "growth_bytes_per_run": round((end - after_warmup) / (n_runs - warmup), 2),
        "traced_peak_kib": round(peak / 1024, 1),
        "runs_per_second_traced": round((n_runs - warmup) / seconds, 1),
    }


def _outcome(i: int) -> str:
    """Which runs fail, and where: 1 in 10 before the retrieval, 1 in 10 inside it, 1 in 10 after it."""
    return {3: "fail before", 5: "fail inside", 7: "fail after"}.get(i % 10, "ok")


def langchain_logger_runs(
    folder: Path, n_runs: int = 100_000, n_threads: int = 4, warmup: int = 2_000, log: bool = True
) -> dict:
    """``RetrievalLogger`` on an LCEL chain ``prepare | retriever | answer`` over a real vector store.

    ``log=False`` runs the same chain without the logger: the framework's own memory growth, for comparison.
    """
    from langchain_core.documents import Document
    from langchain_core.runnables import RunnableLambda, RunnablePassthrough
    from langchain_core.vectorstores import InMemoryVectorStore

    from adapter_retrievers.integrations.langchain import AdapterRetriever, RetrievalLogger

    TableEmbeddings, _ = _frameworks()
    rng = np.random.default_rng(0)
    dim, n_docs, distinct = 16, 20, 500
    texts = [f"document {i}" for i in range(n_docs)] + [f"question {i}" for i in range(distinct)]
    table = {t: v.tolist() for t, v in zip(texts, unit_rows(rng, len(texts), dim))}
    embeddings = TableEmbeddings(table, fail=frozenset(f"question {i}" for i in range(distinct) if i % 10 == 5))
    store = InMemoryVectorStore(embedding=embeddings)
    store.add_documents([Document(page_content=t) for t in texts[:n_docs]], ids=[f"d{i}" for i in range(n_docs)])
    retriever = AdapterRetriever(
        vectorstore=store, embeddings=embeddings, adapter=QueryAdapter.identity(dim, MODEL), k=3
    )

    def prepare(i: int) -> str:
        if _outcome(i) == "fail before":
            raise ValueError("bad input")
        return f"question {i % distinct}"

    def answer(step: dict) -> str:
        if _outcome(step["i"]) == "fail after":
            raise RuntimeError("LLM timeout")  # after the retrieval completed
        return step["docs"][0].page_content

    chain = {"docs": RunnableLambda(prepare) | retriever, "i": RunnablePassthrough()} | RunnableLambda(answer)
    path = folder / "langchain-log.jsonl"
    logger = RetrievalLogger(path)
    failures = Counter()

    def run_one(i: int) -> None:
        try:
            callbacks = [logger] if log else []
            chain.invoke(i, config={"callbacks": callbacks, "metadata": {"session_id": f"s{i % 97}"}})
        except Exception as exc:
            failures[type(exc).__name__] += 1

    result = _traced_runs(run_one, n_runs, n_threads, warmup)
    lines, parsed, ids = _count_log(path)
    expected = sum(_outcome(i) in ("ok", "fail after") for i in range(n_runs))
    result.update(
        {
            "failed_runs": dict(failures),
            "expected_records": expected,
            "lines": lines,
            "records": parsed,
            "distinct_ids": ids,
            "in_progress_left": len(logger._parents) + len(logger._pending),
        }
    )
    return result


def llamaindex_logger_runs(
    folder: Path, n_runs: int = 100_000, n_threads: int = 4, warmup: int = 2_000, log: bool = True
) -> dict:
    """``RetrievalEventLogger`` on a ``RetrieverQueryEngine`` (retrieve, then a node postprocessor).

    ``log=False`` runs the same engine without the handler: the framework's own memory growth, for comparison.
    """
    from llama_index.core import VectorStoreIndex
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.llms import MockLLM
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.response_synthesizers.no_text import NoText
    from llama_index.core.schema import TextNode

    from adapter_retrievers.integrations.llamaindex import AdapterVectorRetriever, RetrievalEventLogger

    _, TableEmbedding = _frameworks()
    rng = np.random.default_rng(0)
    dim, n_docs, distinct = 16, 20, 500
    texts = [f"document {i}" for i in range(n_docs)] + [f"question {i}" for i in range(distinct)]
    table = {t: v.tolist() for t, v in zip(texts, unit_rows(rng, len(texts), dim))}
    embed = TableEmbedding(table=table, fail=frozenset(f"question {i}" for i in range(distinct) if i % 10 == 5))
    index = VectorStoreIndex([TextNode(id_=f"d{i}", text=texts[i]) for i in range(n_docs)], embed_model=embed)
    retriever = AdapterVectorRetriever(index, QueryAdapter.identity(dim, MODEL), similarity_top_k=3)

    class Rerank(BaseNodePostprocessor):
        def _postprocess_nodes(self, nodes, query_bundle=None):
            if query_bundle is not None and int(query_bundle.query_str.split()[-1]) % 10 == 7:
                raise RuntimeError("reranker timeout")
            return nodes

    engine = RetrieverQueryEngine(retriever, NoText(llm=MockLLM()), node_postprocessors=[Rerank()])
    path = folder / "llamaindex-log.jsonl"
    handler = RetrievalEventLogger(path)
    dispatcher = get_dispatcher()
    if log:
        dispatcher.add_event_handler(handler)
    failures = Counter()

    def run_one(i: int) -> None:
        try:
            if _outcome(i) == "fail before":
                raise ValueError("bad input")
            engine.query(f"question {i % distinct}")
        except Exception as exc:
            failures[type(exc).__name__] += 1

    try:
        result = _traced_runs(run_one, n_runs, n_threads, warmup)
    finally:
        if log:
            dispatcher.event_handlers.remove(handler)
    lines, parsed, ids = _count_log(path)
    expected = sum(_outcome(i) in ("ok", "fail after") for i in range(n_runs))
    result.update(
        {
            "failed_runs": dict(failures),
            "expected_records": expected,
            "lines": lines,
            "records": parsed,
            "distinct_ids": ids,
            "in_progress_left": len(handler.pending),
        }
    )
    return result


# ------------------------------------------------------------------------------------ 3. concurrent appends


def _payload(writer: int, i: int) -> str:
    """Deterministic content of line ``i`` of ``writer``: 200 bytes to ~200 KB (larger than a pipe buffer)."""
    size = (200, 3_000, 70_000, 200_000)[(i * 7 + writer) % 4] if i % 5 == 0 else 200
    seed = hashlib.sha256(f"{writer}/{i}".encode()).hexdigest()
    return (seed * (size // len(seed) + 1))[:size]


def _append_worker(path: str, writer: int, n_lines: int, start: Any) -> None:
    log = RetrievalLog(path)
    start.wait()
    for i in range(n_lines):
        log.log_retrieval(
            f"writer {writer} line {i}",
            [{"id": f"{writer}-{i}", "content": _payload(writer, i), "score": 1.0}],
            retrieval_id=f"{writer}-{i}",
            source="load",
        )


def concurrent_appends(folder: Path, n_processes: int = 4, n_lines: int = 25_000) -> dict[str, Any]:
    """``n_processes`` processes append ``n_lines`` each to one log; check every line of the result."""
    path = folder / "shared-log.jsonl"
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [context.Process(target=_append_worker, args=(str(path), w, n_lines, start)) for w in range(n_processes)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    began = time.perf_counter()
    start.set()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - began
    lines = unparsable = wrong_payload = 0
    seen: Counter = Counter()
    with open(path, "rb") as handle:
        for raw in handle:
            lines += 1
            try:
                record = json.loads(raw)
                writer, i = map(int, record["id"].split("-"))
            except (ValueError, KeyError, AttributeError):
                unparsable += 1
                continue
            if record["documents"][0]["content"] != _payload(writer, i):
                wrong_payload += 1
            seen[(writer, i)] += 1
    expected = n_processes * n_lines
    return {
        "processes": n_processes,
        "lines_per_process": n_lines,
        "exit_codes": [w.exitcode for w in workers],
        "file_mib": round(path.stat().st_size / 2**20, 1),
        "seconds": round(seconds, 2),
        "lines_per_second": round(expected / seconds),
        "lines": lines,
        "unparsable": unparsable,
        "wrong_payload": wrong_payload,
        "duplicated": sum(n - 1 for n in seen.values() if n > 1),
        "missing": expected - len(seen),
    }


def main() -> None:
    from datetime import datetime, timezone

    from common import RESULTS, machine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--swaps", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--lines", type=int, default=25_000)
    parser.add_argument("--baseline-runs", type=int, default=20_000, help="runs without a logger, for comparison")
    parser.add_argument(
        "--parts",
        nargs="+",
        default=[
            "swaps",
            "appends",
            "langchain",
            "langchain_without_logger",
            "llamaindex",
            "llamaindex_without_logger",
        ],
    )
    parser.add_argument("--out", default=str(RESULTS / "load.json"), help="results file (parts are merged into it)")
    args = parser.parse_args()
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    results.update({"machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for part in args.parts:
            if part == "swaps":
                results[part] = swap_under_load(folder, n_swaps=args.swaps)
            elif part == "langchain":
                results[part] = langchain_logger_runs(folder, n_runs=args.runs)
            elif part == "llamaindex":
                results[part] = llamaindex_logger_runs(folder, n_runs=args.runs)
            elif part == "langchain_without_logger":
                results[part] = langchain_logger_runs(folder, n_runs=args.baseline_runs, log=False)
            elif part == "llamaindex_without_logger":
                results[part] = llamaindex_logger_runs(folder, n_runs=args.baseline_runs, log=False)
            elif part == "appends":
                results[part] = concurrent_appends(folder, n_lines=args.lines)
            print(part, json.dumps(results[part], indent=1), flush=True)
            RESULTS.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
