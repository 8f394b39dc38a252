import numpy as np
import pytest

from adapter_retrievers import AdapterMismatchError, QueryAdapter
from integrations.conftest import MODEL_ID, assert_adapter_wins

chromadb = pytest.importorskip("chromadb")
from adapter_retrievers.integrations.chroma import (  # noqa: E402
    AdaptedCollection,
    collection_space,
    corpus_from_collection,
)


def fill(client, task, name, space="cosine"):
    collection = client.create_collection(name, configuration={"hnsw": {"space": space}}, embedding_function=None)
    collection.add(
        ids=task.ids,
        documents=task.texts,
        embeddings=task.encoder.embed_documents(task.texts).tolist(),
        metadatas=[{"group": i % 2} for i in range(len(task.ids))],
    )
    return collection


def check_adapted_queries(collection, task):
    adapted = AdaptedCollection(collection, task.adapter, task.encoder)

    def top(query, use_adapter):
        if use_adapter:
            return adapted.query(query_texts=[query], n_results=1)["ids"][0][0]
        return collection.query(query_embeddings=task.encoder.embed_queries([query]).tolist(), n_results=1)["ids"][0][0]

    assert_adapter_wins(task, top)
    # metadata filters pass through
    result = adapted.query(query_texts=task.queries[:2], n_results=3, where={"group": 1})
    assert all(m["group"] == 1 for row in result["metadatas"] for m in row)


def test_embedded_persistent_client(tmp_path, task):
    client = chromadb.PersistentClient(path=str(tmp_path / "db"))
    collection = fill(client, task, "docs")
    check_adapted_queries(collection, task)
    assert collection._embedding_function is None  # the adapter never went into the collection


def test_server_http_client(chroma_server, task):
    collection = fill(chroma_server, task, "docs-http")
    check_adapted_queries(collection, task)


def test_read_stored_vectors_without_re_embedding(tmp_path, task):
    client = chromadb.PersistentClient(path=str(tmp_path / "db"))
    collection = fill(client, task, "docs")
    calls = task.encoder.calls
    corpus = corpus_from_collection(collection, page_size=5)  # several pages
    assert task.encoder.calls == calls
    assert sorted(corpus.ids) == sorted(task.ids) and corpus.embeddings.shape == (len(task.ids), 64)
    row = corpus.position("doc-rivers")
    np.testing.assert_allclose(corpus.embeddings[row], task.encoder.embed_documents([corpus.texts[row]])[0], atol=1e-6)
    assert corpus.metadatas[row]["group"] in (0, 1)


def test_distance_space_and_mismatch(tmp_path, task):
    client = chromadb.PersistentClient(path=str(tmp_path / "db"))
    assert collection_space(fill(client, task, "cos")) == "cosine"
    assert collection_space(fill(client, task, "ipspace", space="ip")) == "ip"
    l2 = client.create_collection("l2space", embedding_function=None)
    assert collection_space(l2) == "l2"
    with pytest.raises(AdapterMismatchError, match="expects 64-dimensional"):
        AdaptedCollection(l2, task.adapter).query(query_embeddings=np.ones((1, 32)), n_results=1)
    other = QueryAdapter.create("linear", 64, "other/model")
    with pytest.raises(AdapterMismatchError, match="not 'test/hashing-64'"):
        AdaptedCollection(l2, other, task.encoder)
    assert task.adapter.base_model == MODEL_ID


def test_collection_vectors_read_page_by_page_match_the_stored_corpus(tmp_path, task):
    """A collection as a VectorSource: the same rows, ids and top-k as the corpus read whole."""
    from adapter_retrievers.integrations.chroma import collection_vectors
    from adapter_retrievers.working_set import top_k

    client = chromadb.PersistentClient(path=str(tmp_path / "db"))
    collection = fill(client, task, "paged")
    whole = corpus_from_collection(collection)
    source = collection_vectors(collection, page_size=7)
    assert len(source) == len(whole) and source.dimension == whole.embeddings.shape[1]
    np.testing.assert_allclose(np.concatenate([b for _, b in source.chunks(5)]), whole.embeddings, atol=1e-6)
    rows = np.array([0, 3, len(whole) - 1])
    np.testing.assert_allclose(source.take(rows), whole.embeddings[rows], atol=1e-6)
    assert source.ids_at(rows) == [whole.ids[r] for r in rows]
    assert source.positions_of({whole.ids[2], "missing"}) == {whole.ids[2]: 2}
    queries = task.encoder.embed_queries(task.queries[:3])
    from adapter_retrievers.working_set import ArrayVectors

    (paged_rows, paged), (rows_whole, scores) = (
        top_k(source, queries, 4, rows=5),
        top_k(ArrayVectors(whole.embeddings), queries, 4),
    )
    np.testing.assert_allclose(paged, scores, atol=1e-6)  # the same best scores (tied documents may swap)
    np.testing.assert_array_equal(
        paged_rows[:, 0][paged[:, 0] > paged[:, 1]], rows_whole[:, 0][scores[:, 0] > scores[:, 1]]
    )
