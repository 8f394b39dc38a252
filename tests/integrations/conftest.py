"""A small task shared by the framework tests: base retrieval prefers the wrong document for each
query; an adapter trained on the right (query, document) pairs must make every framework prefer the
right one."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from adapter_retrievers import AdapterTrainer, Corpus, QueryAdapter, TrainingSet
from conftest import HashingEncoder
from integrations.phoenix_fixture import phoenix_server  # noqa: F401 - a session fixture shared by Phoenix tests

TOPICS = [
    "apples",
    "rivers",
    "engines",
    "violins",
    "planets",
    "peppers",
    "glaciers",
    "compilers",
    "tigers",
    "volcanoes",
    "bridges",
    "orchids",
    "satellites",
    "cheeses",
    "deserts",
    "pianos",
]
MODEL_ID = "test/hashing-64"


@dataclass
class Task:
    ids: list[str]
    texts: list[str]
    queries: list[str]
    targets: list[str]  # the document each query should get
    decoys: list[str]  # the document the base model prefers instead
    encoder: HashingEncoder
    adapter: QueryAdapter


@pytest.fixture(scope="session")
def task() -> Task:
    encoder = HashingEncoder(64, MODEL_ID)
    ids = [f"doc-{t}" for t in TOPICS]
    texts = [f"notes on {t} and more {t}" for t in TOPICS]
    n = 12
    queries = [f"tell me about {TOPICS[(i + 1) % len(TOPICS)]}" for i in range(n)]  # words of the *next* doc
    targets, decoys = ids[:n], [ids[(i + 1) % len(TOPICS)] for i in range(n)]
    corpus = Corpus(ids, texts, embeddings=encoder.embed_documents(texts))
    train = TrainingSet.from_pairs(zip(queries, targets))
    vectors = encoder.embed_queries([train.queries[q] for q in train.query_ids])
    # a memorising adapter on purpose (bias, no consistency term, no blend): these tests need the base model to
    # miss every target and the adapter to find it, not an adapter that generalises
    trainer = AdapterTrainer(
        model_id=MODEL_ID,
        progress=False,
        learning_rate=2e-2,
        epochs=150,
        patience=150,
        bias=True,
        consistency_weight=0.0,
        blend=(1.0,),
    )
    # The wrappers are tested here, not generalisation: the adapter is selected on its own training queries
    # (under other ids: the trainer refuses a query that is on both sides).
    same = TrainingSet({f"v{q}": t for q, t in train.queries.items()}, {f"v{q}": r for q, r in train.relevant.items()})
    adapter = trainer.fit_vectors(train, vectors, same, vectors, corpus).adapter
    assert adapter.kind == "linear"
    return Task(ids, texts, queries, targets, decoys, encoder, adapter)


def assert_adapter_wins(task: Task, search) -> None:
    """``search(query, use_adapter) -> top doc id``: the base model must miss the trained targets and the
    adapter must find them (approximate indexes may flip a near-tie, hence 90%)."""
    base = np.mean([search(q, False) == t for q, t in zip(task.queries, task.targets)])
    adapted = np.mean([search(q, True) == t for q, t in zip(task.queries, task.targets)])
    assert base <= 0.1 and adapted >= 0.9, f"top-1 hit rate without adapter {base:.2f}, with adapter {adapted:.2f}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    """A real Chroma server (`chroma run`) on localhost, stopped after the session."""
    chromadb = pytest.importorskip("chromadb")
    executable = shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")
    if executable is None:
        pytest.skip("the chroma CLI is not installed")
    port = _free_port()
    path = tmp_path_factory.mktemp("chroma-server")
    log = open(path / "server.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [executable, "run", "--path", str(path / "db"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "CHROMA_SERVER_NOFILE": "4096"},
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                client = chromadb.HttpClient(host="127.0.0.1", port=port)
                client.heartbeat()
                break
            except Exception as exc:
                if time.time() > deadline or process.poll() is not None:
                    tail = (path / "server.log").read_text()[-2000:]
                    raise RuntimeError(f"chroma server did not start: {tail}") from exc
                time.sleep(0.3)
        yield client
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
