"""Corpora larger than memory: vectors read in chunks, exact top-k in one pass, and the trainer's working set."""

import itertools

import numpy as np
import pytest

from adapter_retrievers import AdapterTrainer
from adapter_retrievers.working_set import ArrayVectors, NpyVectors, ParquetVectors, top_k, working_set
from conftest import make_rotation_task, rows_for


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def sources(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 8)).astype(np.float32)
    ids = [f"doc-{i}" for i in range(300)]
    np.save(tmp_path / "v.npy", vectors)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ids, "vector": list(vectors)}), tmp_path / "v.parquet", row_group_size=70)
    return (
        vectors,
        ids,
        [
            ArrayVectors(vectors, ids),
            NpyVectors(tmp_path / "v.npy", ids),
            ParquetVectors(tmp_path / "v.parquet"),
        ],
    )


def test_every_source_reads_the_same_rows_ids_and_chunks(sources):
    vectors, ids, all_sources = sources
    rows = np.array([0, 5, 77, 299])
    for source in all_sources:
        assert len(source) == 300 and source.dimension == 8
        np.testing.assert_array_equal(np.concatenate([block for _, block in source.chunks(64)]), vectors)
        starts = [(start, len(block)) for start, block in source.chunks(64)]
        assert all(n <= 64 for _, n in starts) and all(a + n == b for (a, n), (b, _) in itertools.pairwise(starts))
        np.testing.assert_array_equal(source.take(rows), vectors[rows])
        assert source.ids_at(rows) == [ids[r] for r in rows]
        assert source.positions_of({"doc-7", "doc-299", "nope"}) == {"doc-7": 7, "doc-299": 299}


def test_top_k_in_chunks_is_exact_search(sources):
    vectors, _, all_sources = sources
    queries = np.random.default_rng(1).standard_normal((12, 8)).astype(np.float32)
    expected = np.argsort(-(unit(queries) @ unit(vectors).T), axis=1, kind="stable")[:, :20]
    for source in all_sources:
        for chunk in (7, 64, 1000):  # chunks smaller than k, and the whole corpus in one
            rows, scores = top_k(source, queries, 20, rows=chunk)
            np.testing.assert_array_equal(rows, expected)
            assert (np.diff(scores, axis=1) <= 0).all()


def test_working_set_holds_positives_nearest_and_a_sample():
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((5000, 8)).astype(np.float32)
    queries = rng.standard_normal((10, 8)).astype(np.float32)
    source = ArrayVectors(vectors)
    chosen = working_set(source, queries, {"4999", "17"}, k=30, sample=200, seed=0)
    held = set(chosen.corpus.ids)
    nearest, _ = top_k(source, queries, 30)
    assert {"4999", "17"} <= held and {str(r) for r in nearest.ravel()} <= held
    assert chosen.n_random == 200 and len(held) == chosen.n_top_k + 200 + len(
        {"4999", "17"} - {str(r) for r in nearest.ravel()}
    )
    np.testing.assert_array_equal(chosen.corpus.embeddings[chosen.corpus.position("17")], vectors[17])
    again = working_set(source, queries, {"4999", "17"}, k=30, sample=200, seed=0)
    assert again.corpus.ids == chosen.corpus.ids  # seeded
    with pytest.raises(ValueError, match="not in the corpus"):
        working_set(source, queries, {"no-such-doc"}, k=5, sample=10)


def test_training_on_a_working_set_that_covers_the_corpus_is_training_on_the_corpus(tmp_path):
    """The working set keeps corpus order, so when it holds every document the fit is bit-identical."""
    corpus, queries, vectors = make_rotation_task(n_docs=240, dim=16, mix=0.35)
    options = {"learning_rate": 1e-2, "epochs": 8, "progress": False, "model_id": "m", "cv_below_queries": 0}
    train = queries
    exact = AdapterTrainer(**options).fit_vectors(train, rows_for(train, vectors), None, None, corpus)
    np.save(tmp_path / "docs.npy", corpus.embeddings.astype(np.float32))
    source = NpyVectors(tmp_path / "docs.npy", corpus.ids)
    whole = AdapterTrainer(**options, working_set_sample=10_000).fit_vectors(
        train, rows_for(train, vectors), None, None, source
    )
    assert whole.decision["working_set"]["documents"] == len(corpus)
    np.testing.assert_array_equal(whole.adapter.params["weight"], exact.adapter.params["weight"])
    few = train.subset(train.query_ids[:60])
    part = AdapterTrainer(**options, working_set_above=0, working_set_top_k=2, working_set_sample=10).fit_vectors(
        few, rows_for(few, vectors), None, None, corpus
    )
    held = part.decision["working_set"]
    assert held["documents"] < len(corpus) and held["of_corpus"] == len(corpus) and part.improved
    assert "working set" in part.describe_decision()
    assert part.adapter.metadata["training_data"]["n_documents"] == len(corpus)
