import threading

import numpy as np
import pytest

pytest.importorskip("langchain_core")
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.runnables import RunnableLambda
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_tests.integration_tests import EmbeddingsIntegrationTests, RetrieversIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from adapter_retrievers import AdapterMismatchError, QueryAdapter
from adapter_retrievers.integrations.langchain import AdapterEmbeddings, AdapterRetriever
from adapter_retrievers.registry import AdapterRegistry
from integrations.conftest import MODEL_ID, assert_adapter_wins


class HashingEmbeddings(Embeddings):
    """A deterministic LangChain embeddings model (the tests' stand-in for a real one)."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.model = encoder.model_id

    def embed_documents(self, texts):
        return self.encoder.embed_documents(texts).tolist()

    def embed_query(self, text):
        return self.encoder.embed_queries([text])[0].tolist()


def _base():
    from conftest import HashingEncoder

    return HashingEmbeddings(HashingEncoder(64, MODEL_ID))


def _store(task, embeddings):
    store = InMemoryVectorStore(embedding=embeddings)
    store.add_documents(
        [Document(page_content=t, metadata={"group": i % 2}) for i, t in enumerate(task.texts)], ids=task.ids
    )
    return store


# ------------------------------------------------------------------------------ standard suites


class TestAdapterEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self):
        return AdapterEmbeddings

    @property
    def embedding_model_params(self):
        return {"base": _base(), "adapter": QueryAdapter.create("linear", 64, MODEL_ID)}


class TestAdapterEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self):
        return AdapterEmbeddings

    @property
    def embedding_model_params(self):
        return {"base": _base(), "adapter": QueryAdapter.create("low_rank", 64, MODEL_ID, rank=4)}


class TestAdapterRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self):
        return AdapterRetriever

    @property
    def retriever_constructor_params(self):
        from integrations.conftest import TOPICS

        base = _base()
        store = InMemoryVectorStore(embedding=base)
        store.add_texts([f"notes on {t}" for t in TOPICS])
        return {"vectorstore": store, "embeddings": base, "adapter": QueryAdapter.create("linear", 64, MODEL_ID)}

    @property
    def retriever_query_example(self):
        return "tell me about rivers"


# ------------------------------------------------------------------------------ behaviour


def test_embeddings_wrapper_in_a_vector_store(task):
    base = _base()
    plain, adapted = _store(task, base), _store(task, AdapterEmbeddings(base, task.adapter))
    # documents were embedded by the base model in both stores
    assert plain.store["doc-apples"]["vector"] == adapted.store["doc-apples"]["vector"]

    def top(query, use_adapter):
        return (adapted if use_adapter else plain).similarity_search(query, k=1)[0].id

    assert_adapter_wins(task, top)


async def test_retriever_sync_async_filters_and_lcel(task):
    base = _base()
    store = _store(task, base)
    retriever = AdapterRetriever(vectorstore=store, embeddings=base, adapter=task.adapter, k=1)
    plain = store.as_retriever(search_kwargs={"k": 1})

    def top(query, use_adapter):
        return (retriever if use_adapter else plain).invoke(query)[0].id

    assert_adapter_wins(task, top)
    assert [d.id for d in await retriever.ainvoke(task.queries[0])] == [task.targets[0]]
    assert len(retriever.invoke(task.queries[0], k=3)) == 3
    # metadata filters pass through to the store
    only_odd = AdapterRetriever(
        vectorstore=store,
        embeddings=base,
        adapter=task.adapter,
        k=5,
        search_kwargs={"filter": lambda doc: doc.metadata["group"] == 1},
    )
    assert {d.metadata["group"] for d in only_odd.invoke(task.queries[0])} == {1}
    mmr = AdapterRetriever(vectorstore=store, embeddings=base, adapter=task.adapter, k=3, search_type="mmr")
    assert mmr.invoke(task.queries[0])[0].id == task.targets[0]
    chain = retriever | RunnableLambda(lambda docs: "\n".join(d.page_content for d in docs))
    assert chain.invoke(task.queries[0]) == task.texts[task.ids.index(task.targets[0])]
    assert retriever.metadata["adapter"] == "linear" and retriever.metadata["adapter_base_model"] == MODEL_ID


def test_registry_picks_adapter_per_call_and_falls_back(task):
    base = _base()
    store = _store(task, base)
    registry = AdapterRegistry(MODEL_ID, 64, {"tenant-a": task.adapter})
    retriever = AdapterRetriever(vectorstore=store, embeddings=base, adapter=registry, k=1)
    query, target = task.queries[0], task.targets[0]
    assert retriever.invoke(query, adapter_key="tenant-a")[0].id == target
    assert retriever.invoke(query, config={"metadata": {"adapter_key": "tenant-a"}})[0].id == target
    no_adapter = store.similarity_search(query, k=1)[0].id
    assert no_adapter != target
    assert retriever.invoke(query, adapter_key="unknown-tenant")[0].id == no_adapter  # falls back to no adapter
    assert retriever.invoke(query)[0].id == no_adapter
    embeddings = AdapterEmbeddings(base, registry)
    assert np.allclose(
        embeddings.for_key("tenant-a").embed_query(query), task.adapter.transform(base.embed_query(query))
    )


def test_registry_swap_while_serving(task):
    registry = AdapterRegistry(MODEL_ID, 64, {"t": QueryAdapter.create("linear", 64, MODEL_ID)})
    versions = [QueryAdapter.create("linear", 64, MODEL_ID) for _ in range(2)]
    for i, v in enumerate(versions):
        v.params["weight"] *= i + 1.0  # scale: the output tells which version answered
        v.normalize = False
    registry.register("t", versions[0])
    x = np.ones(64, dtype=np.float32)
    seen, stop = set(), threading.Event()

    def serve():
        while not stop.is_set():
            seen.add(round(float(registry.transform(x, "t")[0]), 3))

    threads = [threading.Thread(target=serve) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(200):
        registry.register("t", versions[i % 2])
    stop.set()
    for t in threads:
        t.join()
    assert seen <= {1.0, 2.0}  # every answer came from one whole version


def test_mismatched_adapter_is_refused(task):
    base = _base()
    with pytest.raises(AdapterMismatchError, match="not 'other/model'"):
        AdapterEmbeddings(base, task.adapter, model_id="other/model")
    small = QueryAdapter.create("linear", 32, MODEL_ID)
    with pytest.raises(AdapterMismatchError, match="expects 32-dimensional"):  # at construction, not at a query
        AdapterEmbeddings(base, small)
    with pytest.raises(ValueError, match="trained on embeddings of 'test/hashing-64'"):  # pydantic wraps it
        AdapterRetriever(vectorstore=_store(task, base), embeddings=base, adapter=task.adapter, model_id="other/model")
