import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adapter_retrievers import CachedEncoder, as_encoder
from adapter_retrievers.encoders import CallableEncoder, LangChainEncoder, LlamaIndexEncoder


def test_callable_encoder_batches_and_validates():
    seen = []

    def embed(texts):
        seen.append(len(texts))
        return [[float(len(t)), 1.0] for t in texts]

    enc = CallableEncoder(embed, "test/len", batch_size=4)
    assert enc.embed_documents([f"t{i}" for i in range(10)]).shape == (10, 2)
    assert seen == [4, 4, 2]
    with pytest.raises(ValueError, match="model_id"):
        as_encoder(embed)
    bad = CallableEncoder(lambda texts: [[np.nan, 1.0] for _ in texts], "test/nan")
    with pytest.raises(ValueError, match="NaN"):
        bad.embed_queries(["x"])


def test_cache_serves_repeat_texts_without_calling_the_model(tmp_path, hashing_encoder):
    cached = CachedEncoder(hashing_encoder, tmp_path)
    first = cached.embed_documents(["a b", "c d", "a b"])
    assert hashing_encoder.calls == 1 and cached.misses == 2
    again = CachedEncoder(hashing_encoder, tmp_path)  # a new process would see the same file
    np.testing.assert_array_equal(again.embed_documents(["c d", "a b"]), first[[1, 0]])
    assert hashing_encoder.calls == 1 and again.hits == 2
    again.embed_queries(["a b"])  # queries are cached apart from documents (some models embed them differently)
    assert hashing_encoder.calls == 2
    other = CachedEncoder(hashing_encoder, tmp_path, model_id="test/other-model")
    other.embed_documents(["a b"])
    assert hashing_encoder.calls == 3  # keyed by model id too


def test_langchain_embeddings():
    pytest.importorskip("langchain_core")
    from langchain_core.embeddings import DeterministicFakeEmbedding

    enc = as_encoder(DeterministicFakeEmbedding(size=12), model_id="fake/12")
    assert isinstance(enc, LangChainEncoder)
    q = enc.embed_queries(["hello", "world"])
    assert q.shape == (2, 12)
    np.testing.assert_allclose(q[0], DeterministicFakeEmbedding(size=12).embed_query("hello"), rtol=1e-6)


def test_llamaindex_embeddings_keep_their_own_batching():
    pytest.importorskip("llama_index.core")
    from llama_index.core.embeddings import MockEmbedding

    model = MockEmbedding(embed_dim=8, embed_batch_size=3)
    enc = as_encoder(model, model_id="mock/8")
    assert isinstance(enc, LlamaIndexEncoder)
    assert enc.embed_documents(["a", "b", "c", "d"]).shape == (4, 8)
    assert enc.embed_queries(["q"]).shape == (1, 8)


def test_bundled_minilm_loads_offline():
    pytest.importorskip("all_minilm_l6_v2")
    from adapter_retrievers.encoders import DEFAULT_MODEL_ID, minilm_encoder

    enc = minilm_encoder()
    vectors = enc.embed_queries(["a claim about cells", "a claim about cells", "stars are hot"])
    assert enc.model_id == DEFAULT_MODEL_ID and vectors.shape == (3, 384)
    assert vectors[0] @ vectors[1] > 0.99 > vectors[0] @ vectors[2]


def test_import_is_light():
    code = (
        "import sys, adapter_retrievers as ar; ar.Corpus; ar.QueryAdapter; ar.CachedEncoder; "
        "import adapter_retrievers.harvest; "
        "heavy = [m for m in ('torch', 'langchain_core', 'llama_index', 'chromadb', 'sentence_transformers', "
        "'matplotlib', 'ray', 'pyarrow') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_cache_commits_chunk_by_chunk(tmp_path, hashing_encoder):
    texts = [f"text number {i}" for i in range(25)]

    class FailsLate:
        model_id = hashing_encoder.model_id

        def __init__(self):
            self.calls = 0

        def embed_documents(self, batch):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("rate limited")
            return hashing_encoder.embed_documents(batch)

        embed_queries = embed_documents

    with pytest.raises(RuntimeError, match="rate limited"):
        CachedEncoder(FailsLate(), tmp_path, chunk_size=10, progress=False).embed_documents(texts)
    resumed = CachedEncoder(hashing_encoder, tmp_path, chunk_size=10, progress=False)
    resumed.embed_documents(texts)
    assert resumed.hits == 20 and resumed.misses == 5  # the two chunks paid for before the failure were kept


def test_one_model_has_one_id(tmp_path):
    from adapter_retrievers import QueryAdapter
    from adapter_retrievers.encoders import DEFAULT_MODEL_ID, canonical_model_id

    (tmp_path / "all-MiniLM-L6-v2").mkdir()
    same = [
        "all-MiniLM-L6-v2",
        "sentence-transformers/all-MiniLM-L6-v2",
        str(tmp_path / "all-MiniLM-L6-v2"),
        str(tmp_path / "all-MiniLM-L6-v2") + "/",
        "/hf/hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/8b3219a92973c328a8e22fadcfa821b5dc75636a",
    ]
    assert {canonical_model_id(name) for name in same} == {DEFAULT_MODEL_ID}
    for other in ("text-embedding-3-small", "intfloat/e5-small-v2", "all-MiniLM-L12-v2"):
        assert canonical_model_id(other) != DEFAULT_MODEL_ID
    adapter = QueryAdapter.create("linear", 8, "all-MiniLM-L6-v2")  # trained under the short name
    adapter.save(tmp_path / "a")
    QueryAdapter.load(tmp_path / "a", base_model=DEFAULT_MODEL_ID)  # loads under the Hub name
    with pytest.raises(ValueError, match="not 'all-MiniLM-L12-v2'"):
        QueryAdapter.load(tmp_path / "a", base_model="all-MiniLM-L12-v2")


def test_sentence_transformer_from_the_bundled_folder_is_the_hub_model(tmp_path):
    """The issue's path: SentenceTransformer(<bundled folder>) trains an adapter that loads under the Hub name."""
    pytest.importorskip("all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    from adapter_retrievers import QueryAdapter
    from adapter_retrievers.encoders import DEFAULT_MODEL_ID, bundled_model_path

    model = SentenceTransformer(str(bundled_model_path()), device="cpu")
    encoder = as_encoder(model)
    assert encoder.model_id == DEFAULT_MODEL_ID and encoder.dimension == 384
    QueryAdapter.identity(384, encoder.model_id).save(tmp_path / "a")
    QueryAdapter.load(tmp_path / "a", base_model="sentence-transformers/all-MiniLM-L6-v2", dimension=384)


def test_bundled_weights_are_kept_once(tmp_path):
    pytest.importorskip("all_minilm_l6_v2")
    from adapter_retrievers.encoders import _user_model_folder, bundled_model_path, minilm_encoder

    minilm_encoder(tmp_path / "cache")  # older callers still pass a cache folder: it must not get a copy
    assert not list(tmp_path.rglob("*"))
    folder = bundled_model_path()
    import all_minilm_l6_v2

    assert folder in (Path(all_minilm_l6_v2.__file__).parent / "all-MiniLM-L6-v2", _user_model_folder())
    assert (folder / "model.safetensors").is_file() and bundled_model_path() == folder


def test_cache_progress_is_plain_lines_when_stderr_is_not_a_terminal(tmp_path, hashing_encoder, capsys, monkeypatch):
    """Redirected (cron, ``make demo > log``): one plain line per step, no escape codes, no redrawn bars."""
    from adapter_retrievers import progress

    monkeypatch.setattr(progress, "PLAIN_AFTER", 0.0)  # this step is fast; a real one prints after 2 s
    inner = CallableEncoder(hashing_encoder.embed_documents, "test/hashing-64", batch_size=1)  # would show a bar
    cached = CachedEncoder(inner, tmp_path, chunk_size=2)
    cached.embed_queries(["a", "b", "c"])
    err = capsys.readouterr().err
    assert err.startswith("embedding queries: 3/3 texts, done in") and "querys" not in err
    assert "\x1b" not in err and "\r" not in err and len(err.splitlines()) == 1  # the inner bar stays quiet
    inner.embed_documents(["d", "e"])  # on its own, the encoder shows its progress
    assert capsys.readouterr().err.startswith("embedding documents: 2/2 texts, done in")


def test_describe_embeddings_without_embedding(hashing_encoder):
    from adapter_retrievers.encoders import describe_embeddings

    assert describe_embeddings(hashing_encoder) == ("test/hashing-64", 64)
    assert hashing_encoder.calls == 0

    class Anonymous:
        def embed_query(self, text):
            return [1.0]

        def embed_documents(self, texts):
            return [[1.0] for _ in texts]

    assert describe_embeddings(Anonymous()) == (None, None)
