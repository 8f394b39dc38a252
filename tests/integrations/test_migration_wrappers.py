"""A migration adapter served by the three wrappers: queries embedded by the new model, the old index unchanged.

The "old model" is the 64-d hashing encoder that embedded the index; the "new model" a 48-d hashing encoder
(another model and dimension). The migration adapter is fitted on every document embedded by both, saved and
loaded back (safetensors) before it serves.
"""

from __future__ import annotations

import numpy as np
import pytest

from adapter_retrievers import AdapterMismatchError, QueryAdapter
from adapter_retrievers.registry import AdapterRegistry
from adapter_retrievers.training.migration import fit_migration
from conftest import HashingEncoder
from integrations.conftest import MODEL_ID, TOPICS

NEW_ID = "test/hashing-48"
IDS = [f"doc-{t}" for t in TOPICS]
TEXTS = [f"notes on {t} and more {t}" for t in TOPICS]
QUERIES = [f"{t}" for t in TOPICS]


@pytest.fixture(scope="module")
def old_encoder():
    return HashingEncoder(64, MODEL_ID)


@pytest.fixture(scope="module")
def new_encoder():
    return HashingEncoder(48, NEW_ID)


@pytest.fixture(scope="module")
def migration(tmp_path_factory, old_encoder, new_encoder):
    fitted = fit_migration(
        new_encoder.embed_documents(TEXTS), old_encoder.embed_documents(TEXTS), NEW_ID, MODEL_ID
    ).adapter
    path = fitted.save(tmp_path_factory.mktemp("migration") / "adapter")
    return QueryAdapter.load(path, base_model=NEW_ID, dimension=48, output_model=MODEL_ID, output_dimension=64)


def nearest(migration, old_encoder, new_encoder, query: str) -> set[str]:
    """The documents the old index holds nearest to the new model's query mapped by the adapter (several when
    hashing gave two documents one vector)."""
    adapted = migration.transform(new_encoder.embed_queries([query])[0])
    old = old_encoder.embed_documents(TEXTS)
    scores = old / np.linalg.norm(old, axis=1, keepdims=True) @ adapted
    return {i for i, s in zip(IDS, scores) if s >= scores.max() - 1e-5}


def assert_served_like_numpy(found, migration, old_encoder, new_encoder) -> None:
    assert all(f in nearest(migration, old_encoder, new_encoder, q) for f, q in zip(found, QUERIES)), found
    assert np.mean([f == d for f, d in zip(found, IDS)]) >= 0.8, found


def test_the_migration_finds_each_topic_in_the_old_index(migration, old_encoder, new_encoder):
    hits = [d in nearest(migration, old_encoder, new_encoder, q) for q, d in zip(QUERIES, IDS)]
    assert np.mean(hits) >= 0.9, hits
    with pytest.raises(AdapterMismatchError, match="query side"):  # raw 64-d old-model queries are refused
        migration.transform(old_encoder.embed_queries([QUERIES[0]]))


def test_chroma_embedded_collection_of_the_old_model(tmp_path, migration, old_encoder, new_encoder):
    chromadb = pytest.importorskip("chromadb")
    from adapter_retrievers.integrations.chroma import AdaptedCollection

    client = chromadb.PersistentClient(path=str(tmp_path / "db"))
    collection = client.create_collection("old", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None)
    collection.add(ids=IDS, documents=TEXTS, embeddings=old_encoder.embed_documents(TEXTS).tolist())
    adapted = AdaptedCollection(collection, migration, new_encoder)
    found = [adapted.query(query_texts=[q], n_results=1)["ids"][0][0] for q in QUERIES]
    assert_served_like_numpy(found, migration, old_encoder, new_encoder)
    ordinary = QueryAdapter.create("linear", 48, NEW_ID)  # outputs 48-d: not this 64-d index
    with pytest.raises(AdapterMismatchError, match="index side"):
        AdaptedCollection(collection, ordinary, new_encoder)
    with pytest.raises(AdapterMismatchError, match="query side"):  # the old model as the query encoder
        AdaptedCollection(collection, migration, old_encoder)


def test_langchain_retriever_over_the_old_store(migration, old_encoder, new_encoder):
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore

    from adapter_retrievers.integrations.langchain import AdapterEmbeddings, AdapterRetriever, EncoderEmbeddings

    store = InMemoryVectorStore(embedding=EncoderEmbeddings(old_encoder))
    store.add_documents([Document(page_content=t) for t in TEXTS], ids=IDS)
    retriever = AdapterRetriever(vectorstore=store, embeddings=new_encoder, adapter=migration, k=1)
    found = [retriever.invoke(q)[0].id for q in QUERIES]
    assert_served_like_numpy(found, migration, old_encoder, new_encoder)
    registry = AdapterRegistry(NEW_ID, 48, default=migration)  # a registry of migrations into this index
    by_registry = AdapterRetriever(vectorstore=store, embeddings=new_encoder, adapter=registry, k=1)
    assert [by_registry.invoke(q, adapter_key="anyone")[0].id for q in QUERIES] == found
    embeddings = AdapterEmbeddings(new_encoder, migration)
    assert len(embeddings.embed_query(QUERIES[0])) == 64
    with pytest.raises(ValueError, match="Add documents with 'test/hashing-64'"):
        embeddings.embed_documents(["a new document"])  # would put new-model vectors into the old index


def test_llamaindex_retriever_over_the_old_index(migration, old_encoder, new_encoder):
    pytest.importorskip("llama_index.core")
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode

    from adapter_retrievers.integrations.llamaindex import AdapterEmbedding, AdapterVectorRetriever, EncoderEmbedding

    nodes = [TextNode(id_=i, text=t) for i, t in zip(IDS, TEXTS)]
    index = VectorStoreIndex(nodes, embed_model=EncoderEmbedding(old_encoder))
    retriever = AdapterVectorRetriever(index, migration, embed_model=EncoderEmbedding(new_encoder), similarity_top_k=1)
    found = [retriever.retrieve(q)[0].node.node_id for q in QUERIES]
    assert_served_like_numpy(found, migration, old_encoder, new_encoder)
    wrapped = AdapterEmbedding(EncoderEmbedding(new_encoder), migration)
    assert len(wrapped.get_query_embedding(QUERIES[0])) == 64
    with pytest.raises(ValueError, match="Add documents with"):
        wrapped.get_text_embedding("a new document")
