"""Serving follows the store: promotions and rollbacks are picked up without restart, atomically,
and every logged retrieval names the version that served it."""

import json
import threading

import numpy as np
import pytest

from adapter_retrievers import QueryAdapter
from adapter_retrievers.data import ReadReport
from adapter_retrievers.harvest import harvest, read_traces
from adapter_retrievers.registry import AdapterRegistry, StoreFollower
from adapter_retrievers.store import AdapterStore
from conftest import langchain_spans, write_spans

MODEL = "test/fake-16"
DIM = 16
TEXTS = {f"d{i}": f"paragraph {i} on subject {i % 7} and detail {i * 13 % 11}" for i in range(40)}


def random_linear(seed):
    adapter = QueryAdapter.create("linear", DIM, MODEL)
    rng = np.random.default_rng(seed)
    adapter.params["weight"] = rng.standard_normal((DIM, DIM)).astype(np.float32)
    return adapter


@pytest.fixture
def store(tmp_path):
    store = AdapterStore(tmp_path / "store")
    for seed in (1, 2, 3):
        store.add_version(random_linear(seed), {})
    store.set_live("v0001", "promoted")
    return store


def test_follower_picks_up_promotions_and_rollbacks_on_check(store):
    follower = StoreFollower(store, MODEL, DIM, check_interval=3600)
    x = np.ones(DIM, dtype=np.float32)
    assert follower.version == "v0001"
    np.testing.assert_array_equal(follower.current().transform(x), store.load("v0001").transform(x))
    store.promote("v0002")
    assert follower.current().metadata["store_version"] == "v0001"  # not due for a check yet
    assert follower.check() and follower.version == "v0002"
    store.rollback()
    store.rollback()  # down to the base model
    assert follower.check() and follower.version == "base" and follower.current().is_identity
    assert not follower.check()  # nothing changed


def test_a_version_that_cannot_load_leaves_the_old_one_serving(store, caplog):
    follower = StoreFollower(store, MODEL, DIM, check_interval=0)
    (store.version_path("v0003") / "model.safetensors").write_bytes(b"broken")
    store.promote("v0003")
    assert follower.current().metadata["store_version"] == "v0001"
    assert "cannot load live version v0003" in caplog.text
    store.promote("v0002")
    assert follower.current().metadata["store_version"] == "v0002"


def test_registry_follows_a_store_for_the_default_and_for_a_key(store, tmp_path):
    registry = AdapterRegistry.from_store(store, MODEL, DIM, check_interval=0)
    other = AdapterStore(tmp_path / "tenant-b")
    other.set_live(other.add_version(random_linear(9), {}), "promoted")
    registry.follow(other, "tenant-b", check_interval=0)
    registry.register("fixed", random_linear(5))
    assert registry.get().metadata["store_version"] == "v0001"
    assert registry.get("unknown").metadata["store_version"] == "v0001"
    assert registry.get("tenant-b").metadata["store_version"] == "v0001"  # the other store's v0001
    assert registry.get("fixed").metadata.get("store_version") is None
    store.promote("v0003")
    assert registry.get().metadata["store_version"] == "v0003"


def _fake_embeddings():
    from langchain_core.embeddings import DeterministicFakeEmbedding

    return DeterministicFakeEmbedding(size=DIM)


def _vectorstore():
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore

    vectorstore = InMemoryVectorStore(_fake_embeddings())
    vectorstore.add_documents([Document(page_content=t, metadata={"id": i}) for i, t in TEXTS.items()], ids=list(TEXTS))
    return vectorstore


def test_concurrent_queries_during_100_promotions_and_rollbacks(store):
    """0 errors, and every result equals what one version alone returns."""
    pytest.importorskip("langchain_core")
    from adapter_retrievers.integrations.langchain import AdapterRetriever

    vectorstore = _vectorstore()
    queries = [f"question about subject {i}" for i in range(8)]
    registry = AdapterRegistry.from_store(store, MODEL, DIM, check_interval=0)
    retriever = AdapterRetriever(vectorstore=vectorstore, embeddings=_fake_embeddings(), adapter=registry, k=5)
    alone = {}  # version -> query -> (document ids, adapted vector) with that version alone
    for version in ("base", "v0001", "v0002", "v0003"):
        adapter = QueryAdapter.identity(DIM, MODEL) if version == "base" else store.load(version)
        fixed = AdapterRetriever(vectorstore=vectorstore, embeddings=_fake_embeddings(), adapter=adapter, k=5)
        alone[version] = {
            q: ([d.id for d in fixed.invoke(q)], adapter.transform(np.asarray(_fake_embeddings().embed_query(q))))
            for q in queries
        }
    assert len({tuple(alone[v][queries[0]][0]) for v in alone}) > 1  # the versions really differ

    errors, results = [], []
    done = threading.Event()

    def serve(worker):
        i = worker
        while not done.is_set():
            q = queries[i % len(queries)]
            i += 1
            try:
                ids = [d.id for d in retriever.invoke(q)]
                vector = registry.transform(np.asarray(_fake_embeddings().embed_query(q), dtype=np.float32))
                results.append((q, ids, vector))
            except Exception as exc:  # every error counts
                errors.append(repr(exc))

    threads = [threading.Thread(target=serve, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    switches = 0
    try:
        for n in range(50):
            store.promote(("v0002", "v0003")[n % 2])  # 50 promotions ...
            switches += 1
            store.rollback("v0001" if n % 3 else None)  # ... and 50 rollbacks
            switches += 1
    finally:
        done.set()
        for t in threads:
            t.join()
    assert switches == 100 and errors == []
    served = set()
    for q, ids, vector in results:
        matching = [v for v in alone if alone[v][q][0] == ids]
        assert matching, f"{q!r} got {ids}, which no version returns alone"
        assert any(np.array_equal(vector, alone[v][q][1]) for v in alone)
        served.update(matching)
    assert len(results) > 100 and len(served) > 1
    final = store.live or "base"
    assert [d.id for d in retriever.invoke(queries[0])] == alone[final][queries[0]][0]  # ends on the live one


def test_capture_records_the_serving_version_and_harvest_keeps_it(store, tmp_path):
    pytest.importorskip("langchain_core")
    from langchain_core.runnables import RunnableLambda

    from adapter_retrievers import Corpus
    from adapter_retrievers.integrations.langchain import AdapterRetriever, RetrievalLogger

    registry = AdapterRegistry.from_store(store, MODEL, DIM, check_interval=0)
    retriever = AdapterRetriever(vectorstore=_vectorstore(), embeddings=_fake_embeddings(), adapter=registry, k=3)
    chain = retriever | RunnableLambda(lambda docs: docs[0].page_content)
    logger = RetrievalLogger(tmp_path / "log.jsonl")
    chain.invoke("first question", config={"callbacks": [logger]})
    store.promote("v0002")
    chain.invoke("second question", config={"callbacks": [logger]})
    store.rollback()
    store.rollback()
    chain.invoke("third question", config={"callbacks": [logger]})
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["adapter_version"] for r in records] == ["v0001", "v0002", "base"]
    for record in records:
        logger.log.add_click(record["id"], record["documents"][0]["id"])
    result = harvest(tmp_path / "log.jsonl", Corpus(list(TEXTS), list(TEXTS.values())))
    by_query = {result.training_set.queries[q]: info for q, info in result.query_info.items()}
    assert {q: info["adapter_version"] for q, info in by_query.items()} == {
        "first question": "v0001",
        "second question": "v0002",
        "third question": "base",
    }
    # a log written before the field existed still reads, without a version
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({k: v for k, v in records[0].items() if k != "adapter_version"}) + "\n")
    (item,) = read_traces([old], "ours", ReadReport())
    assert item.adapter_version is None and item.query == "first question"


def test_openinference_spans_carry_the_serving_version(store):
    from adapter_retrievers.harvest.records import LoggedRetrieval
    from adapter_retrievers.integrations.langchain import AdapterRetriever

    registry = AdapterRegistry.from_store(store, MODEL, DIM, check_interval=0)
    retriever = AdapterRetriever(vectorstore=_vectorstore(), embeddings=_fake_embeddings(), adapter=registry, k=2)
    with langchain_spans() as exporter:
        retriever.invoke("what about subject 3")
        store.promote("v0003")
        retriever.invoke("what about subject 4")
    path = store.root / "spans.jsonl"
    write_spans(exporter.get_finished_spans(), path)
    items = [i for i in read_traces([path], "openinference", ReadReport()) if isinstance(i, LoggedRetrieval)]
    assert [(i.query, i.adapter_version) for i in items] == [
        ("what about subject 3", "v0001"),
        ("what about subject 4", "v0003"),
    ]


def test_llamaindex_retriever_follows_the_store_and_logs_the_version(store, tmp_path):
    pytest.importorskip("llama_index.core")
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.schema import TextNode

    from adapter_retrievers.integrations.llamaindex import AdapterVectorRetriever, RetrievalEventLogger

    embed = MockEmbedding(embed_dim=DIM)
    index = VectorStoreIndex([TextNode(id_=i, text=t) for i, t in TEXTS.items()], embed_model=embed)
    registry = AdapterRegistry.from_store(store, MODEL, DIM, check_interval=0)
    retriever = AdapterVectorRetriever(index, registry, embed_model=embed, similarity_top_k=2)
    handler = RetrievalEventLogger(tmp_path / "log.jsonl")
    get_dispatcher().add_event_handler(handler)
    try:
        retriever.retrieve("first")
        store.promote("v0002")
        retriever.retrieve("second")
    finally:
        get_dispatcher().event_handlers.remove(handler)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    # (the wrapper and the index retriever it delegates to each emit retrieval events: both are logged)
    assert {(r["query"], r["adapter_version"]) for r in records} == {("first", "v0001"), ("second", "v0002")}
