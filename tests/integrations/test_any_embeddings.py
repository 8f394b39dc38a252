"""Every wrapper takes what a user already has: a LangChain ``Embeddings``, a LlamaIndex ``BaseEmbedding``, a
``SentenceTransformer`` or a Chroma embedding function; and refuses an adapter for another model or dimension
when it is built, from what that object exposes."""

import numpy as np
import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")
chromadb = pytest.importorskip("chromadb")
from chromadb.api.types import EmbeddingFunction  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402
from llama_index.core import VectorStoreIndex  # noqa: E402
from llama_index.core.base.embeddings.base import BaseEmbedding  # noqa: E402
from llama_index.core.schema import TextNode  # noqa: E402

from adapter_retrievers import AdapterMismatchError, QueryAdapter  # noqa: E402
from adapter_retrievers.integrations.chroma import AdaptedCollection  # noqa: E402
from adapter_retrievers.integrations.langchain import (  # noqa: E402
    AdapterEmbeddings,
    AdapterRetriever,
    EncoderEmbeddings,
)
from adapter_retrievers.integrations.llamaindex import AdapterEmbedding, AdapterVectorRetriever  # noqa: E402
from conftest import HashingEncoder  # noqa: E402

MODEL = "test/hashing-16"
TEXTS = ["notes on apples and apples", "notes on rivers and rivers", "notes on engines and engines"]


class LangChainHashing(Embeddings):
    model = MODEL

    def embed_documents(self, texts):
        return HashingEncoder(16, MODEL).embed_documents(texts).tolist()

    def embed_query(self, text):
        return self.embed_documents([text])[0]


class LlamaIndexHashing(BaseEmbedding):
    def _get_query_embedding(self, query):
        return HashingEncoder(16, MODEL).embed_queries([query])[0].tolist()

    async def _aget_query_embedding(self, query):
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text):
        return self._get_query_embedding(text)


class ChromaHashing(EmbeddingFunction):
    def __init__(self):
        pass

    def __call__(self, input):
        return [np.asarray(v, dtype=np.float32) for v in HashingEncoder(16, MODEL).embed_documents(list(input))]

    @staticmethod
    def name():
        return "hashing"

    def get_config(self):
        return {"model_name": MODEL}

    @staticmethod
    def build_from_config(config):
        return ChromaHashing()


@pytest.fixture(scope="module")
def sentence_transformer():
    pytest.importorskip("all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    from adapter_retrievers.encoders import bundled_model_path

    return SentenceTransformer(str(bundled_model_path()), device="cpu")


@pytest.fixture(params=["langchain", "llamaindex", "sentence-transformers", "chroma"])
def base(request):
    """(what the user has, the adapter for its model, its plain query vector for a text)"""
    if request.param == "sentence-transformers":
        model = request.getfixturevalue("sentence_transformer")
        adapter = QueryAdapter.create("low_rank", 384, "sentence-transformers/all-MiniLM-L6-v2", rank=4, seed=1)
        adapter.params["up"] += 0.1  # not the identity, so the adapter visibly changes the vector
        return model, adapter, lambda text: model.encode([text])[0]
    obj = {
        "langchain": LangChainHashing(),
        "llamaindex": LlamaIndexHashing(model_name=MODEL),
        "chroma": ChromaHashing(),
    }
    adapter = QueryAdapter.create("low_rank", 16, MODEL, rank=4, seed=1)
    adapter.params["up"] += 0.1
    return obj[request.param], adapter, lambda text: HashingEncoder(16, MODEL).embed_queries([text])[0]


def test_every_wrapper_takes_it(base, tmp_path):
    obj, adapter, plain = base
    expected = adapter.transform(plain("tell me about rivers"))
    assert not np.allclose(expected, plain("tell me about rivers") / np.linalg.norm(plain("tell me about rivers")))

    np.testing.assert_allclose(AdapterEmbeddings(obj, adapter).embed_query("tell me about rivers"), expected, atol=1e-5)
    store = InMemoryVectorStore(embedding=EncoderEmbeddings(obj) if not isinstance(obj, Embeddings) else obj)
    store.add_texts(TEXTS)
    assert AdapterRetriever(vectorstore=store, embeddings=obj, adapter=adapter, k=1).invoke("rivers")

    wrapped = AdapterEmbedding(obj, adapter)
    np.testing.assert_allclose(wrapped.get_query_embedding("tell me about rivers"), expected, atol=1e-5)
    embed_model = obj if isinstance(obj, BaseEmbedding) else AdapterEmbedding(obj, adapter).base_embed_model
    index = VectorStoreIndex([TextNode(id_=f"n{i}", text=t) for i, t in enumerate(TEXTS)], embed_model=embed_model)
    assert AdapterVectorRetriever(index, adapter, embed_model=obj, similarity_top_k=1).retrieve("rivers")

    client = chromadb.PersistentClient(path=str(tmp_path / "db"))
    collection = client.create_collection("docs", embedding_function=None)
    vectors = [plain(t) for t in TEXTS]
    collection.add(ids=["a", "b", "c"], documents=TEXTS, embeddings=[list(map(float, v)) for v in vectors])
    found = AdaptedCollection(collection, adapter, obj).query(query_texts=["rivers"], n_results=1)
    assert found["ids"][0]


def test_every_wrapper_refuses_another_model_or_dimension_when_built(base, tmp_path):
    obj, adapter, _ = base
    other_model = QueryAdapter.create("linear", adapter.dimension, "other/model")
    client = chromadb.PersistentClient(path=str(tmp_path / "db"))
    collection = client.create_collection("docs", embedding_function=None)
    store = InMemoryVectorStore(embedding=EncoderEmbeddings(obj) if not isinstance(obj, Embeddings) else obj)
    builders = {
        "AdapterEmbeddings": lambda a: AdapterEmbeddings(obj, a),
        "AdapterRetriever": lambda a: AdapterRetriever(vectorstore=store, embeddings=obj, adapter=a),
        "AdapterEmbedding": lambda a: AdapterEmbedding(obj, a),
        "AdaptedCollection": lambda a: AdaptedCollection(collection, a, obj),
    }
    for build in builders.values():
        with pytest.raises((AdapterMismatchError, ValueError), match="trained on embeddings of 'other/model'"):
            build(other_model)
    exposes_dimension = not isinstance(obj, (LangChainHashing, LlamaIndexHashing, ChromaHashing))
    if exposes_dimension:
        small = QueryAdapter.create("linear", 8, adapter.base_model)
        for build in builders.values():
            with pytest.raises((AdapterMismatchError, ValueError), match="expects 8-dimensional"):
                build(small)


def test_adapted_collection_never_falls_back_to_chromas_downloading_default(tmp_path):
    client = chromadb.PersistentClient(path=str(tmp_path / "db"))
    client.create_collection("docs", embedding_function=None).add(ids=["a"], documents=["x"], embeddings=[[1.0] * 16])
    collection = client.get_collection("docs")  # what a user gets back: Chroma's default function attached
    adapted = AdaptedCollection(collection, QueryAdapter.create("linear", 16, MODEL))
    with pytest.raises(ValueError, match="pass encoder="):
        adapted.query(query_texts=["x"], n_results=1)
    assert adapted.query(query_embeddings=[[1.0] * 16], n_results=1)["ids"] == [["a"]]  # vectors need no encoder
    # the stored vectors' dimension: the error names the index side (a migration adapter's output meets it)
    with pytest.raises(AdapterMismatchError, match=r"index side: adapter outputs 8-dimensional .* dimension 16"):
        AdaptedCollection(collection, QueryAdapter.create("linear", 8, MODEL))
