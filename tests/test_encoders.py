import subprocess
import sys

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
        "import sys, adapter_retrievers as ar; ar.Corpus; ar.QueryAdapter; "
        "heavy = [m for m in ('torch', 'langchain_core', 'llama_index', 'chromadb', 'sentence_transformers', "
        "'matplotlib') if m in sys.modules]; print(','.join(heavy))"
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
