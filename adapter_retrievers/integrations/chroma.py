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
from adapter_retrievers.encoders import as_encoder


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

    ``encoder`` embeds query texts with the base model (defaults to the collection's embedding
    function, called through its query method); its model id (or ``model_id``) must be the adapter's.

    >>> adapted = AdaptedCollection(collection, QueryAdapter.load("adapters/mine"), encoder)  # doctest: +SKIP
    >>> adapted.query(query_texts=["what causes X?"], n_results=5, where={"lang": "en"})    # doctest: +SKIP
    """

    def __init__(
        self, collection: Any, adapter: QueryAdapter, encoder: Any = None, model_id: str | None = None
    ) -> None:
        self.collection = collection
        self.adapter = adapter
        self.space = collection_space(collection)
        self.encoder = as_encoder(encoder, model_id) if encoder is not None else None
        if self.encoder is not None:
            adapter.check_compatible(base_model=self.encoder.model_id)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Base-model query vectors for ``texts`` (before the adapter)."""
        if self.encoder is not None:
            return self.encoder.embed_queries(list(texts))
        function = getattr(self.collection, "_embedding_function", None)
        if function is None:
            raise ValueError("the collection has no embedding function: pass encoder=... or query_embeddings")
        embed = getattr(function, "embed_query", None) or function
        return np.asarray(embed(input=list(texts)), dtype=np.float32)

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
