"""Shared fixtures: a deterministic text encoder and a synthetic retrieval task an adapter can learn."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re

import numpy as np
import pytest

from adapter_retrievers import Corpus, TrainingSet


class HashingEncoder:
    """Deterministic bag-of-words encoder (signed feature hashing): no model download, stable across runs."""

    def __init__(self, dimension: int = 64, model_id: str = "test/hashing-64") -> None:
        self.dimension = dimension
        self.model_id = model_id
        self.calls = 0

    def _vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dimension, dtype=np.float32)
        for token in re.findall(r"\w+", text.lower()):
            h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
            v[h % self.dimension] += 1.0 if (h >> 32) & 1 else -1.0
        return v

    def embed_queries(self, texts):
        self.calls += 1
        return np.stack([self._vector(t) for t in texts]) if texts else np.zeros((0, self.dimension), np.float32)

    def embed_documents(self, texts):
        return self.embed_queries(texts)


@pytest.fixture
def hashing_encoder() -> HashingEncoder:
    return HashingEncoder()


def make_rotation_task(n_docs: int = 400, dim: int = 32, noise: float = 0.3, mix: float = 0.25, seed: int = 0):
    """Queries are their document's vector, mostly turned by a fixed hidden rotation, plus noise.

    The base model retrieves poorly (the rotation scrambles similarity); an adapter that learns the
    inverse rotation retrieves well. Every document has exactly one query, so splits are clean.
    """
    rng = np.random.default_rng(seed)
    docs = rng.standard_normal((n_docs, dim)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    mixed = mix * docs + (1 - mix) * docs @ rotation.T.astype(np.float32)
    queries = mixed + noise * rng.standard_normal((n_docs, dim)).astype(np.float32) / np.sqrt(dim)
    ids = [f"d{i}" for i in range(n_docs)]
    corpus = Corpus(ids, [f"document {i}" for i in range(n_docs)], embeddings=docs)
    all_queries = TrainingSet(
        {f"q{i}": f"query {i}" for i in range(n_docs)}, {f"q{i}": {f"d{i}": 1.0} for i in range(n_docs)}
    )
    return corpus, all_queries, queries.astype(np.float32)


@pytest.fixture(scope="session")
def rotation_task():
    return make_rotation_task()


def rows_for(queries: TrainingSet, all_vectors: np.ndarray) -> np.ndarray:
    return all_vectors[[int(q[1:]) for q in queries.query_ids]]


@pytest.fixture(scope="session")
def embedding_cache(request, tmp_path_factory):
    """An embedding cache kept across test runs (pytest's cache folder): the bundled model embeds the bundled
    data once per machine, not once per run."""
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("embeddings") if cache is not None else tmp_path_factory.mktemp("embeddings")


@contextlib.contextmanager
def langchain_spans():
    """Real OpenInference spans of every LangChain run in the block, kept in memory: yields the exporter."""
    pytest.importorskip("openinference.instrumentation.langchain")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from adapter_retrievers.integrations.phoenix import instrument_langchain

    exporter = InMemorySpanExporter()
    with instrument_langchain(exporter):
        yield exporter


def write_spans(spans, path) -> None:
    """Spans as the OpenTelemetry SDK serialises them, one JSON object a line."""
    path.write_text("".join(json.dumps(json.loads(s.to_json())) + "\n" for s in spans))
