import numpy as np
import pytest

pytest.importorskip("llama_index.core")
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.embedding import EmbeddingStartEvent
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores import ExactMatchFilter, MetadataFilters

from adapter_retrievers import AdapterMismatchError, QueryAdapter
from adapter_retrievers.integrations.llamaindex import AdapterEmbedding, AdapterVectorRetriever
from adapter_retrievers.registry import AdapterRegistry
from integrations.conftest import MODEL_ID, assert_adapter_wins

BATCHES: list[int] = []


class HashingEmbedding(BaseEmbedding):
    """A deterministic LlamaIndex embedding model that records its batch calls."""

    @classmethod
    def class_name(cls):
        return "HashingEmbedding"

    def _vec(self, texts):
        from conftest import HashingEncoder

        return HashingEncoder(64, MODEL_ID).embed_documents(texts).tolist()

    def _get_query_embedding(self, query):
        return self._vec([query])[0]

    async def _aget_query_embedding(self, query):
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text):
        return self._vec([text])[0]

    def _get_text_embeddings(self, texts):
        BATCHES.append(len(texts))
        return self._vec(texts)


def _nodes(task):
    return [TextNode(id_=i, text=t, metadata={"group": n % 2}) for n, (i, t) in enumerate(zip(task.ids, task.texts))]


@pytest.fixture
def base():
    return HashingEmbedding(model_name=MODEL_ID, embed_batch_size=5)


def test_as_retriever_with_wrapped_embed_model(task, base):
    index = VectorStoreIndex(_nodes(task), embed_model=base)
    wrapped = AdapterEmbedding(base, task.adapter)
    plain = index.as_retriever(similarity_top_k=1)
    adapted = index.as_retriever(similarity_top_k=1, embed_model=wrapped)

    def top(query, use_adapter):
        return (adapted if use_adapter else plain).retrieve(query)[0].node.node_id

    assert_adapter_wins(task, top)


async def test_text_embeddings_pass_through_in_batches(task, base):
    wrapped = AdapterEmbedding(base, task.adapter)
    BATCHES.clear()
    vectors = wrapped.get_text_embedding_batch(task.texts)
    assert vectors == base.get_text_embedding_batch(task.texts)  # documents untouched
    assert BATCHES[:4] == [5, 5, 5, 1]  # the base model saw batches, not one text at a time
    assert await wrapped.aget_text_embedding_batch(task.texts[:3]) == vectors[:3]
    query = task.queries[0]
    expected = task.adapter.transform(np.array(base.get_query_embedding(query)))
    np.testing.assert_allclose(wrapped.get_query_embedding(query), expected, atol=1e-6)
    np.testing.assert_allclose(await wrapped.aget_query_embedding(query), expected, atol=1e-6)
    payload = wrapped.to_payload()
    assert payload["class_name"] == "AdapterEmbedding" and payload["adapter"] == "linear"


def test_base_model_events_still_fire(task, base):
    events = []

    class Recorder(BaseEventHandler):
        def handle(self, event, **kwargs):
            if isinstance(event, EmbeddingStartEvent):
                events.append(event.model_dict.get("class_name"))

    dispatcher = get_dispatcher()
    recorder = Recorder()
    dispatcher.add_event_handler(recorder)
    try:
        AdapterEmbedding(base, task.adapter).get_query_embedding("hello")
    finally:
        dispatcher.event_handlers.remove(recorder)
    assert "AdapterEmbedding" in events and "HashingEmbedding" in events


async def test_vector_retriever_with_filters_and_async(task, base):
    index = VectorStoreIndex(_nodes(task), embed_model=base)
    retriever = AdapterVectorRetriever(index, task.adapter, similarity_top_k=1)
    plain = index.as_retriever(similarity_top_k=1)

    def top(query, use_adapter):
        return (retriever if use_adapter else plain).retrieve(query)[0].node.node_id

    assert_adapter_wins(task, top)
    hits = await retriever.aretrieve(task.queries[0])
    assert hits[0].node.node_id == task.targets[0] and hits[0].score is not None
    filtered = AdapterVectorRetriever(
        index,
        task.adapter,
        similarity_top_k=4,
        filters=MetadataFilters(filters=[ExactMatchFilter(key="group", value=1)]),
    )
    assert {h.node.metadata["group"] for h in filtered.retrieve(task.queries[0])} == {1}


def test_chroma_vector_store(tmp_path, task, base):
    chromadb = pytest.importorskip("chromadb")
    chroma_store = pytest.importorskip("llama_index.vector_stores.chroma")
    from llama_index.core import StorageContext

    collection = chromadb.PersistentClient(path=str(tmp_path / "db")).create_collection(
        "docs", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
    )
    store = chroma_store.ChromaVectorStore(chroma_collection=collection)
    index = VectorStoreIndex(
        _nodes(task), storage_context=StorageContext.from_defaults(vector_store=store), embed_model=base
    )
    retriever = AdapterVectorRetriever(index, task.adapter, similarity_top_k=1)
    plain = index.as_retriever(similarity_top_k=1)

    def top(query, use_adapter):
        return (retriever if use_adapter else plain).retrieve(query)[0].node.node_id

    assert_adapter_wins(task, top)


def test_registry_and_mismatch(task, base):
    registry = AdapterRegistry(MODEL_ID, 64, {"a": task.adapter})
    index = VectorStoreIndex(_nodes(task), embed_model=base)
    query, target = task.queries[0], task.targets[0]
    assert (
        AdapterVectorRetriever(index, registry, adapter_key="a", similarity_top_k=1).retrieve(query)[0].node.node_id
        == target
    )
    assert (
        AdapterVectorRetriever(index, registry, adapter_key="zzz", similarity_top_k=1).retrieve(query)[0].node.node_id
        != target
    )
    with pytest.raises(AdapterMismatchError, match="not 'other/model'"):
        AdapterEmbedding(base, task.adapter, model_id="other/model")
    with pytest.raises(AdapterMismatchError, match="expects dimension 8"):
        AdapterEmbedding(base, QueryAdapter.create("linear", 8, MODEL_ID)).get_query_embedding("x")
