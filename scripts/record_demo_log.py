"""Record the RAG log bundled for the demo: a LangChain chain over Chroma with the capture handler on.

Questions from the bundled XQuAD-es set arrive in a random (seeded) order, the chain retrieves the top
3 paragraphs, and each user clicks the paragraph that answered them. The log is written gzipped to
``adapter_retrievers/datasets/xquad_es/rag-log.jsonl.gz``. Run once; the demo only reads it.

    HF_HUB_OFFLINE=1 python scripts/record_demo_log.py
"""

from __future__ import annotations

import gzip
import random
import shutil
import tempfile
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import chromadb
from langchain_chroma import Chroma
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import FakeListLLM
from langchain_core.runnables import RunnableLambda

from adapter_retrievers import Corpus, TrainingSet
from adapter_retrievers.demo import bundled_dataset_path
from adapter_retrievers.encoders import minilm_encoder
from adapter_retrievers.integrations.langchain import RetrievalLogger


def main() -> None:
    folder = bundled_dataset_path("xquad_es")
    corpus, questions = Corpus.from_beir(folder), TrainingSet.from_beir(folder, "test")
    encoder = minilm_encoder()

    class MiniLM(Embeddings):
        def embed_documents(self, texts):
            return encoder.embed_documents(texts).tolist()

        def embed_query(self, text):
            return encoder.embed_queries([text])[0].tolist()

    store = Chroma(
        client=chromadb.EphemeralClient(),
        collection_name="xquad-es",
        embedding_function=MiniLM(),
        collection_configuration={"hnsw": {"space": "cosine"}},
    )
    store.add_texts(corpus.texts, ids=corpus.ids)
    chain = store.as_retriever(search_kwargs={"k": 3}) | RunnableLambda(lambda d: "ctx") | FakeListLLM(responses=["a"])
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "rag-log.jsonl"
        logger = RetrievalLogger(log_path)
        start = datetime(2026, 1, 1, tzinfo=timezone.utc)
        order = random.Random(0).sample(questions.query_ids, len(questions))
        for i, qid in enumerate(order):
            run_id = uuid.uuid4()
            chain.invoke(
                questions.queries[qid],
                config={"callbacks": [logger], "run_id": run_id, "metadata": {"session_id": f"user-{i % 300}"}},
            )
            logger.log.add_click(str(run_id), next(iter(questions.relevant[qid])))
        # fixed, increasing timestamps so the time split is reproducible
        lines = log_path.read_text().splitlines()
        import json

        rows = [json.loads(line) for line in lines]
        for n, row in enumerate(rows):
            row["timestamp"] = (start + timedelta(minutes=n)).isoformat()
        target = folder / "rag-log.jsonl.gz"
        with gzip.open(target, "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        shutil.copystat(folder / "corpus.jsonl.gz", target)
    print(f"wrote {target} ({target.stat().st_size / 1024:.0f} KB, {len(rows)} records)")


if __name__ == "__main__":
    main()
