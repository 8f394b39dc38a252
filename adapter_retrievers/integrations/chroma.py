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


class CollectionVectors:
    """A collection's stored vectors as a :class:`~adapter_retrievers.working_set.VectorSource`: read page by
    page (``page_size``), never all at once, so the trainer can hold a working set of a collection larger
    than memory (``AdapterTrainer(...).fit_vectors(train, vectors, None, None, collection_vectors(c))``).
    Only the ids are kept (rows are the collection's order)."""

    def __init__(self, collection: Any, page_size: int = 1000) -> None:
        self.collection, self.page_size = collection, page_size
        self.ids: list[str] = []
        for offset in range(0, collection.count(), page_size):
            self.ids += collection.get(include=[], limit=page_size, offset=offset)["ids"]
        self._position: dict[str, int] | None = None
        self.dimension = _stored_dimension(collection) or 0

    def __len__(self) -> int:
        return len(self.ids)

    def chunks(self, rows: int = 65_536) -> Any:
        step = max(1, min(rows, self.page_size))
        for offset in range(0, len(self.ids), step):
            page = self.collection.get(include=["embeddings"], limit=step, offset=offset)
            yield offset, np.asarray(page["embeddings"], dtype=np.float32)

    def take(self, positions: np.ndarray) -> np.ndarray:
        wanted = [self.ids[int(p)] for p in positions]
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(wanted), self.page_size):
            page = self.collection.get(ids=wanted[start : start + self.page_size], include=["embeddings"])
            found.update(zip(page["ids"], np.asarray(page["embeddings"], dtype=np.float32)))
        if not wanted:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([found[doc_id] for doc_id in wanted])

    def ids_at(self, positions: np.ndarray) -> list[str]:
        return [self.ids[int(p)] for p in positions]

    def positions_of(self, ids: Any) -> dict[str, int]:
        if self._position is None:
            self._position = {doc_id: i for i, doc_id in enumerate(self.ids)}
        return {doc_id: self._position[doc_id] for doc_id in ids if doc_id in self._position}


def collection_vectors(collection: Any, page_size: int = 1000) -> CollectionVectors:
    """A collection's vectors read page by page, for training on a working set (see :class:`CollectionVectors`)."""
    return CollectionVectors(collection, page_size)


class AdaptedCollection:
    """Query a Chroma collection with adapted query vectors; everything else is the collection's own.

    ``encoder`` embeds query texts with the base model that embedded the documents: a LangChain
    ``Embeddings``, a LlamaIndex ``BaseEmbedding``, a ``SentenceTransformer``, a Chroma embedding function
    or one of ours. Without it, the collection's own embedding function is used, unless that is
    Chroma's default (it downloads a model): then pass ``encoder`` or ``query_embeddings``. The adapter
    is checked here against the encoder's model and dimension and the collection's stored vectors. With a
    migration adapter, ``encoder`` is the new model and the collection keeps the old model's vectors.

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
        if stored is not None:  # the index side: a migration adapter outputs the stored (old) model's vectors
            adapter.check_compatible(output_dimension=stored)

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
