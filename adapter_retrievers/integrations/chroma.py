"""Chroma: train from the vectors a collection already stores, and query it with adapted query vectors.

The adapter never goes into the collection's embedding function (Chroma uses that function for
documents too); it is applied to the query vector, which is then passed as ``query_embeddings``.
Works the same with an embedded ``PersistentClient`` and an ``HttpClient`` to a Chroma server.

Distance spaces: ``cosine`` ranks by angle, so the adapted vector's length does not matter (it is
re-normalised anyway). ``l2`` and ``ip`` rank like cosine when document vectors have unit length
(true for all-MiniLM-L6-v2, OpenAI and most sentence-transformers models); with unnormalised document
vectors, train the adapter with ``normalize=False`` semantics in mind, because the adapted query is
re-normalised and its length no longer carries meaning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from adapter_retrievers.adapters import QueryAdapter
from adapter_retrievers.data import Corpus
from adapter_retrievers.encoders import ChromaEncoder, as_encoder
from adapter_retrievers.registry import check_adapter_for


def collection_space(collection: Any) -> str:
    """The collection's distance space: ``cosine``, ``l2`` (Chroma's default) or ``ip``."""
    config = getattr(collection, "configuration", None) or {}
    for section in ("hnsw", "spann"):
        space = (config.get(section) or {}).get("space") if isinstance(config, dict) else None
        if space:
            return str(space)
    return str((collection.metadata or {}).get("hnsw:space", "l2"))


def corpus_from_collection(collection: Any, page_size: int = 1000) -> Corpus:
    """Read ids, documents, metadatas and stored embeddings page by page: nothing is re-embedded."""
    ids: list[str] = []
    texts: list[str] = []
    metadatas: list[dict] = []
    chunks: list[np.ndarray] = []
    total = collection.count()
    for offset in range(0, total, page_size):
        page = collection.get(include=["embeddings", "documents", "metadatas"], limit=page_size, offset=offset)
        ids += page["ids"]
        texts += [d or "" for d in page["documents"] or [""] * len(page["ids"])]
        metadatas += [m or {} for m in page["metadatas"] or [{}] * len(page["ids"])]
        chunks.append(np.asarray(page["embeddings"], dtype=np.float32))
    embeddings = np.concatenate(chunks) if chunks else None
    return Corpus(ids, texts, embeddings, metadatas, name=collection.name)


class AdaptedCollection:
    """Query a Chroma collection with adapted query vectors; everything else is the collection's own.

    ``encoder`` embeds query texts with the base model that embedded the documents: a LangChain
    ``Embeddings``, a LlamaIndex ``BaseEmbedding``, a ``SentenceTransformer``, a Chroma embedding function
    or one of ours. Without it, the collection's own embedding function is used, unless that is
    Chroma's default (it downloads a model): then pass ``encoder`` or ``query_embeddings``. The adapter
    is checked here against the encoder's model and dimension and the collection's stored vectors.

    >>> adapted = AdaptedCollection(collection, QueryAdapter.load("adapters/mine"), encoder)  # doctest: +SKIP
    >>> adapted.query(query_texts=["what causes X?"], n_results=5, where={"lang": "en"})    # doctest: +SKIP
    """

    def __init__(
        self, collection: Any, adapter: QueryAdapter, encoder: Any = None, model_id: str | None = None
    ) -> None:
        self.collection = collection
        self.adapter = adapter
        self.space = collection_space(collection)
        if encoder is None:
            function = getattr(collection, "_embedding_function", None)
            encoder = None if function is None or _is_chroma_default(function) else ChromaEncoder(function, model_id)
        self.encoder = as_encoder(encoder, model_id) if encoder is not None else None
        check_adapter_for(adapter, self.encoder, model_id)
        stored = _stored_dimension(collection)
        if stored is not None:
            adapter.check_compatible(dimension=stored)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Base-model query vectors for ``texts`` (before the adapter)."""
        if self.encoder is None:
            raise ValueError(
                f"collection {self.collection.name!r} has no embedding function of its own (none, or Chroma's "
                "default, which downloads a model): pass encoder=... (the model that embedded its documents) "
                "to AdaptedCollection, or query with query_embeddings=..."
            )
        return self.encoder.embed_queries(list(texts))

    def query(
        self,
        query_texts: Sequence[str] | str | None = None,
        query_embeddings: Any = None,
        n_results: int = 10,
        **kwargs: Any,
    ) -> Any:
        """Like ``collection.query``; ``where``, ``where_document`` and ``include`` pass through."""
        if (query_texts is None) == (query_embeddings is None):
            raise ValueError("pass exactly one of query_texts or query_embeddings")
        if query_texts is not None:
            vectors = self.embed_queries([query_texts] if isinstance(query_texts, str) else query_texts)
        else:
            vectors = np.atleast_2d(np.asarray(query_embeddings, dtype=np.float32))
        self.adapter.check_compatible(dimension=vectors.shape[1])
        adapted = self.adapter.transform(vectors)
        return self.collection.query(query_embeddings=adapted.tolist(), n_results=n_results, **kwargs)


def _is_chroma_default(function: Any) -> bool:
    name = getattr(function, "name", None)
    try:
        return type(function).__name__ == "DefaultEmbeddingFunction" or (callable(name) and name() == "default")
    except Exception:
        return False


def _stored_dimension(collection: Any) -> int | None:
    """The dimension of the vectors the collection holds (one row read), ``None`` when it is empty."""
    try:
        rows = collection.get(limit=1, include=["embeddings"])["embeddings"]
    except Exception:
        return None
    return len(rows[0]) if rows is not None and len(rows) else None
