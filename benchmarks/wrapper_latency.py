"""Benchmark: latency an adapter adds to LangChain and LlamaIndex retrieval over Chroma, and registry memory.

SciFact's 5,183 abstracts in an embedded Chroma collection (cosine, vectors from the cache), queries
embedded live by all-MiniLM-L6-v2 on the CPU, top 10. For each query the plain and the adapted
retriever run back to back (order alternating), so both see the same machine state; we report the
median per query of each and the ratio. Then the memory of 1,000 low-rank adapters in a registry.

    python benchmarks/wrapper_latency.py [--queries 300]

Results: ``benchmarks/results/wrapper_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from datetime import datetime, timezone

import numpy as np

from adapter_retrievers import AdapterTrainer, QueryAdapter
from adapter_retrievers.encoders import DEFAULT_MODEL_ID
from adapter_retrievers.registry import AdapterRegistry
from common import CACHE, RESULTS, encoder, machine, scifact


def build_collection(corpus):
    import chromadb

    client = chromadb.PersistentClient(path=str(CACHE / "chroma-scifact"))
    name = "scifact"
    if name in [c.name for c in client.list_collections()]:
        collection = client.get_collection(name)
        if collection.count() == len(corpus):
            return client, collection
        client.delete_collection(name)
    collection = client.create_collection(name, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None)
    for start in range(0, len(corpus), 1000):
        collection.add(
            ids=corpus.ids[start : start + 1000],
            documents=corpus.texts[start : start + 1000],
            embeddings=corpus.embeddings[start : start + 1000].tolist(),
        )
    return client, collection


def paired_medians(plain, adapted, queries):
    """Median seconds per query of two callables, run back to back per query in alternating order."""
    times = {"plain": [], "adapted": []}
    for q in queries[:5]:  # warm-up
        plain(q)
        adapted(q)
    for i, q in enumerate(queries):
        order = [("plain", plain), ("adapted", adapted)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn(q)
            times[name].append(time.perf_counter() - start)
    p, a = statistics.median(times["plain"]), statistics.median(times["adapted"])
    return {
        "plain_ms": round(p * 1e3, 3),
        "adapted_ms": round(a * 1e3, 3),
        "added_percent": round((a / p - 1) * 100, 2),
    }


def langchain_latency(client, model, adapter, queries):
    from langchain_chroma import Chroma
    from langchain_core.embeddings import Embeddings

    from adapter_retrievers.integrations.langchain import AdapterRetriever

    class MiniLM(Embeddings):
        def embed_documents(self, texts):
            return model.encode(texts).tolist()

        def embed_query(self, text):
            return model.encode([text])[0].tolist()

    base = MiniLM()
    store = Chroma(client=client, collection_name="scifact", embedding_function=base)
    plain = store.as_retriever(search_kwargs={"k": 10})
    adapted = AdapterRetriever(vectorstore=store, embeddings=base, adapter=adapter, k=10)
    return paired_medians(plain.invoke, adapted.invoke, queries)


def llamaindex_latency(collection, model, adapter, queries):
    from llama_index.core import VectorStoreIndex
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.vector_stores.chroma import ChromaVectorStore

    from adapter_retrievers.integrations.llamaindex import AdapterEmbedding, AdapterVectorRetriever

    class MiniLM(BaseEmbedding):
        def _get_query_embedding(self, query):
            return model.encode([query])[0].tolist()

        async def _aget_query_embedding(self, query):
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text):
            return model.encode([text])[0].tolist()

    base = MiniLM(model_name=DEFAULT_MODEL_ID)
    index = VectorStoreIndex.from_vector_store(ChromaVectorStore(chroma_collection=collection), embed_model=base)
    plain = index.as_retriever(similarity_top_k=10)
    wrapped_model = index.as_retriever(similarity_top_k=10, embed_model=AdapterEmbedding(base, adapter))
    wrapped_index = AdapterVectorRetriever(index, adapter, similarity_top_k=10)
    return {
        "as_retriever(embed_model=AdapterEmbedding)": paired_medians(plain.retrieve, wrapped_model.retrieve, queries),
        "AdapterVectorRetriever": paired_medians(plain.retrieve, wrapped_index.retrieve, queries),
    }


def registry_memory(dimension, rank, n=1000):
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    registry = AdapterRegistry(DEFAULT_MODEL_ID, dimension)
    rng = np.random.default_rng(0)
    for i in range(n):
        adapter = QueryAdapter.create("low_rank", dimension, DEFAULT_MODEL_ID, rank=rank, seed=i)
        adapter.params["up"] = rng.standard_normal(adapter.params["up"].shape).astype(np.float32) * 0.01
        registry.register(f"tenant-{i}", adapter)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    traced = sum(s.size_diff for s in after.compare_to(before, "filename"))
    full = dimension * dimension * 4 + dimension * 4
    return {
        "dimension": dimension,
        "rank": rank,
        "adapters": n,
        "parameter_bytes": registry.nbytes,
        "traced_bytes": traced,
        "bytes_per_adapter": round(traced / n),
        "linear_adapter_bytes": full,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()

    enc = encoder()
    corpus, train, test = scifact(enc)
    adapter = AdapterTrainer(enc, progress=False).fit(train, corpus).adapter
    client, collection = build_collection(corpus)
    model = enc.encoder.model
    queries = list(test.queries.values())[: args.queries]
    results = {
        "setup": f"SciFact corpus ({len(corpus)} docs) in an embedded Chroma collection (cosine), top 10, "
        f"{len(queries)} SciFact test queries embedded live by {enc.model_id} on the CPU",
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "adapter": f"{adapter.kind} d={adapter.dimension}",
        "langchain": langchain_latency(client, model, adapter, queries),
        "llamaindex": llamaindex_latency(collection, model, adapter, queries),
        "registry_memory": [
            registry_memory(384, 8),
            registry_memory(384, 16),
            registry_memory(1536, 8),
            registry_memory(1536, 16),
        ],
    }
    vector = enc.embed_queries(queries[:1])[0]
    start = time.perf_counter()
    for _ in range(5000):
        adapter.transform(vector)
    transform_ms = (time.perf_counter() - start) / 5000 * 1e3
    results["adapter_transform_ms"] = round(transform_ms, 4)
    plain = results["langchain"]["plain_ms"]
    results["transform_share_of_langchain_query_percent"] = round(transform_ms / plain * 100, 3)
    print(json.dumps(results, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "wrapper_latency.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
