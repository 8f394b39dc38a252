"""From RAG traffic to a better retriever: capture -> feedback -> harvest -> train -> adapted retrieval.

Users ask with words ("betaN") that documents never use ("alphaN"): the base model cannot connect them,
users click the right document, and an adapter trained on the harvested clicks must rank the right
documents higher for *new* users' questions (held out by time), in LangChain and in LlamaIndex.
"""

import itertools
import uuid

import numpy as np
import pytest

from adapter_retrievers import AdapterTrainer
from adapter_retrievers.harvest import harvest
from conftest import HashingEncoder

chromadb = pytest.importorskip("chromadb")

N_TOPICS = 12
MODEL_ID = "test/hashing-256"
PAIRS = list(itertools.combinations(range(N_TOPICS), 2))[:48]


def doc_id(pair):
    return f"doc-{pair[0]}-{pair[1]}"


def doc_text(pair):
    return f"notes alpha{pair[0]} alpha{pair[1]} archive"


def question(pair, user):
    return f"question from user{user} beta{pair[0]} beta{pair[1]}"


def hit_rate(search, pairs, users):
    hits = [doc_id(p) in search(question(p, u)) for p, u in zip(pairs, users)]
    return float(np.mean(hits))


def train_adapter(log_path, collection, encoder):
    from adapter_retrievers.integrations.chroma import corpus_from_collection

    corpus = corpus_from_collection(collection)  # stored vectors, no re-embedding
    result = harvest(log_path, corpus)
    train, held_out = result.split("time", 0.25)
    trainer = AdapterTrainer(encoder, model_id=MODEL_ID, progress=False, learning_rate=1e-2, epochs=60)
    fitted = trainer.fit(train, corpus)
    assert fitted.improved, str(fitted.report)
    return fitted.adapter, held_out


def simulate_traffic(run_query, log, n_queries=160):
    """Users ask about random pairs and click the right document; time order = list order."""
    rng = np.random.default_rng(0)
    asked = [PAIRS[i] for i in rng.integers(0, len(PAIRS), n_queries)]
    users = rng.integers(0, 10_000, n_queries).tolist()
    for pair, user in zip(asked, users):
        retrieval_id = run_query(question(pair, user), user)
        log.add_click(retrieval_id, doc_id(pair))
    n_new = n_queries // 4  # the newest quarter is held out by the time split
    return asked[-n_new:], users[-n_new:]


def test_langchain_rag_chain_over_chroma(tmp_path):
    pytest.importorskip("langchain_chroma")
    from langchain_chroma import Chroma
    from langchain_core.embeddings import Embeddings
    from langchain_core.language_models import FakeListLLM
    from langchain_core.runnables import RunnableLambda

    from adapter_retrievers.integrations.langchain import AdapterRetriever, RetrievalLogger

    encoder = HashingEncoder(256, MODEL_ID)

    class HashingEmbeddings(Embeddings):
        def embed_documents(self, texts):
            return encoder.embed_documents(texts).tolist()

        def embed_query(self, text):
            return encoder.embed_queries([text])[0].tolist()

    client = chromadb.PersistentClient(path=str(tmp_path / "db"))
    store = Chroma(
        client=client,
        collection_name="docs",
        embedding_function=HashingEmbeddings(),
        collection_configuration={"hnsw": {"space": "cosine"}},
    )
    store.add_texts([doc_text(p) for p in PAIRS], ids=[doc_id(p) for p in PAIRS])
    retriever = store.as_retriever(search_kwargs={"k": 5})
    llm = FakeListLLM(responses=["an answer"])
    chain = retriever | RunnableLambda(lambda docs: "\n".join(d.page_content for d in docs)) | llm
    logger = RetrievalLogger(tmp_path / "rag-log.jsonl")

    def run_query(text, user):
        run_id = uuid.uuid4()
        chain.invoke(text, config={"callbacks": [logger], "run_id": run_id, "metadata": {"session_id": f"u{user}"}})
        return str(run_id)

    new_pairs, new_users = simulate_traffic(run_query, logger.log)
    adapter, held_out = train_adapter(tmp_path / "rag-log.jsonl", client.get_collection("docs"), encoder)
    assert {question(p, u) for p, u in zip(new_pairs, new_users)} == set(held_out.queries.values())

    adapted = AdapterRetriever(vectorstore=store, embeddings=HashingEmbeddings(), adapter=adapter, k=5)
    before = hit_rate(lambda q: [d.id for d in retriever.invoke(q)], new_pairs, new_users)
    after = hit_rate(lambda q: [d.id for d in adapted.invoke(q)], new_pairs, new_users)
    assert after >= before + 0.4, (before, after)


def test_llamaindex_retriever_over_chroma(tmp_path):
    pytest.importorskip("llama_index.vector_stores.chroma")
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.chroma import ChromaVectorStore

    from adapter_retrievers.integrations.llamaindex import AdapterVectorRetriever, RetrievalEventLogger

    encoder = HashingEncoder(256, MODEL_ID)

    class HashingEmbedding(BaseEmbedding):
        def _get_query_embedding(self, query):
            return encoder.embed_queries([query])[0].tolist()

        async def _aget_query_embedding(self, query):
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text):
            return encoder.embed_documents([text])[0].tolist()

    client = chromadb.PersistentClient(path=str(tmp_path / "db"))
    collection = client.create_collection("docs", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None)
    index = VectorStoreIndex(
        [TextNode(id_=doc_id(p), text=doc_text(p)) for p in PAIRS],
        storage_context=StorageContext.from_defaults(vector_store=ChromaVectorStore(chroma_collection=collection)),
        embed_model=HashingEmbedding(),
    )
    retriever = index.as_retriever(similarity_top_k=5)
    handler = RetrievalEventLogger(tmp_path / "rag-log.jsonl")
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(handler)
    ids: list[str] = []

    def run_query(text, user):
        before = (tmp_path / "rag-log.jsonl").read_text().count("\n") if (tmp_path / "rag-log.jsonl").exists() else 0
        retriever.retrieve(text)
        lines = (tmp_path / "rag-log.jsonl").read_text().splitlines()
        assert len(lines) == before + 1
        import json

        ids.append(json.loads(lines[-1])["id"])
        return ids[-1]

    try:
        new_pairs, new_users = simulate_traffic(run_query, handler.log)
    finally:
        dispatcher.event_handlers.remove(handler)
    adapter, _ = train_adapter(tmp_path / "rag-log.jsonl", collection, encoder)
    adapted = AdapterVectorRetriever(index, adapter, similarity_top_k=5)
    before = hit_rate(lambda q: [n.node.node_id for n in retriever.retrieve(q)], new_pairs, new_users)
    after = hit_rate(lambda q: [n.node.node_id for n in adapted.retrieve(q)], new_pairs, new_users)
    assert after >= before + 0.4, (before, after)
