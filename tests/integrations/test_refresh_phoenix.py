"""The nightly refresh reading a live Phoenix server: spans of a real LangChain chain over Chroma, sent by the
OpenInference instrumentor, clicks as Phoenix document annotations; incremental from the watermark."""

from datetime import datetime
from types import SimpleNamespace

import pytest

from adapter_retrievers import Corpus
from adapter_retrievers.refresh import RefreshConfig, refresh
from adapter_retrievers.sources import PhoenixSource, Watermarks
from adapter_retrievers.store import AdapterStore
from conftest import HashingEncoder
from integrations.conftest import TOPICS
from integrations.test_phoenix import _send_traffic, _stored_retriever_spans

PROJECT = "nightly-refresh"


def _click_first_results(client, spans, queries):
    """Each user marks the first retrieved paragraph relevant (a Phoenix document annotation)."""
    client.spans.log_document_annotations(
        document_annotations=[
            {
                "span_id": spans[q]["context"]["span_id"],
                "document_position": 0,
                "name": "relevance",
                "annotator_kind": "HUMAN",
                "result": {"label": "relevant", "score": 1.0},
            }
            for q in queries
        ],
        sync=True,
    )


def test_refresh_reads_phoenix_incrementally(phoenix_server, tmp_path):
    from phoenix.client import Client

    encoder = HashingEncoder(64, "test/hashing-64")
    ids = [f"doc-{t}" for t in TOPICS]
    texts = [f"notes on {t} and more {t}" for t in TOPICS]
    app = SimpleNamespace(encoder=encoder, ids=ids, texts=texts)
    corpus = Corpus(ids, texts)
    client = Client(base_url=phoenix_server)
    store = AdapterStore(tmp_path / "store")
    source = PhoenixSource(phoenix_server, PROJECT)
    config = RefreshConfig(min_queries=4)

    first = [f"tell me about {t}" for t in TOPICS[:8]]
    _send_traffic(phoenix_server, app, first, tmp_path / "db", PROJECT)
    spans = _stored_retriever_spans(client, set(first), PROJECT)
    _click_first_results(client, spans, first)
    night1 = refresh(store, [source], corpus, encoder, config)
    assert night1.record["new_pairs"] == 8 and night1.record["data"]["n_queries"] == 8
    assert night1.action in ("promoted", "kept")
    newest = Watermarks(store.state_dir / "watermarks.json").get(source.name)["newest"]
    started = [datetime.fromisoformat(s["start_time"].replace("Z", "+00:00")) for s in spans.values()]
    assert datetime.fromisoformat(newest) == max(started)  # the newest span read

    assert refresh(store, [source], corpus, encoder, config).action == "nothing_new"  # nothing new in Phoenix

    second = [f"what is known about {t}" for t in TOPICS[8:12]]
    _send_traffic(phoenix_server, app, second, tmp_path / "db", PROJECT)
    later = _stored_retriever_spans(client, set(second), PROJECT)
    _click_first_results(client, later, second)
    night3 = refresh(store, [source], corpus, encoder, config)
    assert night3.record["new_pairs"] == 4 and night3.record["data"]["n_queries"] == 12
    assert Watermarks(store.state_dir / "watermarks.json").get(source.name)["newest"] > newest


def test_phoenix_project_without_spans_is_an_empty_night(phoenix_server, tmp_path):
    pytest.importorskip("phoenix.client")
    corpus = Corpus(["d1"], ["text"])
    outcome = refresh(tmp_path / "store", [PhoenixSource(phoenix_server, "no-such-project")], corpus, None)
    assert outcome.action == "kept" and "0 queries with pairs" in outcome.reason


def test_more_annotated_spans_than_one_graphql_request_takes(phoenix_server, tmp_path):
    """Phoenix allows 50 aliases per GraphQL query: document annotations of a 60-span page take two requests."""
    from phoenix.client import Client

    encoder = HashingEncoder(64, "test/hashing-64")
    ids = [f"doc-{t}" for t in TOPICS]
    texts = [f"notes on {t} and more {t}" for t in TOPICS]
    app = SimpleNamespace(encoder=encoder, ids=ids, texts=texts)
    queries = [f"question {n} on {t}" for n in range(4) for t in TOPICS][:60]
    _send_traffic(phoenix_server, app, queries, tmp_path / "db", "many-spans")
    client = Client(base_url=phoenix_server)
    spans = _stored_retriever_spans(client, set(queries), "many-spans")
    _click_first_results(client, spans, queries)
    store = AdapterStore(tmp_path / "store")
    outcome = refresh(store, [PhoenixSource(phoenix_server, "many-spans")], Corpus(ids, texts), encoder)
    assert outcome.record["data"]["n_queries"] == len(queries)  # every click found, in one page of spans


def test_interleaved_traffic_through_phoenix_credits_each_click_to_its_ranker(phoenix_server, tmp_path):
    """A real chain interleaving live with the store's candidate, traced by OpenInference into a real Phoenix:
    the spans carry each document's ranker, the refresh reads them back and credits every click."""
    import json

    import chromadb
    import numpy as np
    from langchain_chroma import Chroma
    from phoenix.client import Client

    from adapter_retrievers import QueryAdapter
    from adapter_retrievers.integrations.langchain import AdapterRetriever, EncoderEmbeddings
    from adapter_retrievers.integrations.phoenix import trace_langchain
    from adapter_retrievers.registry import AdapterRegistry

    encoder = HashingEncoder(64, "test/hashing-64")
    ids = [f"doc-{t}" for t in TOPICS]
    texts = [f"notes on {t} and more {t}" for t in TOPICS]
    store = AdapterStore(tmp_path / "store")
    for seed in (1, 2):  # two adapters that rank differently
        adapter = QueryAdapter.create("linear", 64, encoder.model_id)
        adapter.params["weight"] = np.random.default_rng(seed).standard_normal((64, 64)).astype(np.float32)
        store.add_version(adapter, {})
    store.set_live("v0001", "promoted")
    store.set_candidate("v0002")
    vectorstore = Chroma(
        collection_name="interleaved",
        embedding_function=EncoderEmbeddings(encoder),
        client=chromadb.PersistentClient(path=str(tmp_path / "db")),
    )
    vectorstore.add_texts(texts, ids=ids, metadatas=[{"doc_id": i} for i in ids])
    registry = AdapterRegistry.from_store(store, encoder.model_id, 64, check_interval=0, interleave=1.0, seed=0)
    retriever = AdapterRetriever(vectorstore=vectorstore, embeddings=EncoderEmbeddings(encoder), adapter=registry, k=4)
    queries = [f"tell me about {t}" for t in TOPICS[:10]]
    with trace_langchain(phoenix_server, "interleaved"):
        shown = {q: retriever.invoke(q) for q in queries}
    client = Client(base_url=phoenix_server)
    spans = _stored_retriever_spans(client, set(queries), "interleaved")
    _click_first_results(client, spans, queries)  # each user clicks the top document

    corpus = Corpus(ids, texts)
    config = RefreshConfig(min_queries=1000)  # read and credit only: no training tonight
    refresh(store, [PhoenixSource(phoenix_server, "interleaved")], corpus, encoder, config)
    rows = [json.loads(line) for line in (store.state_dir / "interleaving.jsonl").read_text().splitlines()]
    assert len(rows) == len(queries) and {(r["live"], r["candidate"]) for r in rows} == {("v0001", "v0002")}
    by_span = {r["retrieval_id"]: r for r in rows}
    for q in queries:
        top = shown[q][0].metadata["adapter_ranker"]
        row = by_span[spans[q]["context"]["span_id"]]
        expected = {"live": (1, 0), "candidate": (0, 1), "shared": (0, 0)}[top]  # a shared pick credits neither
        assert (row["live_clicks"], row["candidate_clicks"]) == expected, q
    assert {shown[q][0].metadata["adapter_ranker"] for q in queries} >= {"live", "candidate"}
    pending = [json.loads(line) for line in (store.state_dir / "pending.jsonl").read_text().splitlines()]
    retrievals = [r for r in pending if r["type"] == "retrieval"]
    assert {r["adapter_version"] for r in retrievals} == {"v0001"}  # Phoenix flattens run metadata: still read
    rankers = ("live", "candidate", "shared")
    assert all(d["ranker"] in rankers and d["propensity"] for r in retrievals for d in r["documents"])
