"""LlamaIndex: an adapter-aware ``BaseEmbedding`` and a ``BaseRetriever`` over a ``VectorStoreIndex``.

Change one line:

    retriever = index.as_retriever(embed_model=AdapterEmbedding(embed_model, adapter))

or wrap the index and keep everything else:

    retriever = AdapterVectorRetriever(index, adapter, similarity_top_k=5, filters=filters)

The wrapped model is called through its public methods (``get_query_embedding``,
``get_text_embedding_batch``), so its embeddings cache, rate limiter and instrumentation events keep
working; texts are passed through in batches, untouched.

Metadata: LlamaIndex embeds a node's metadata with its text (``"lang: es\n\n<text>"``) unless the keys are
listed in ``excluded_embed_metadata_keys``. An adapter learns from the vectors of the texts it was trained
on: trained on the plain texts (``Corpus.from_beir``, a Chroma collection's documents, a capture log, which
records ``node.get_content()`` without metadata), its nodes must embed the plain text too::

    TextNode(text=t, metadata={"lang": "es"}, excluded_embed_metadata_keys=["lang"],
             excluded_llm_metadata_keys=["lang"])

or train it on what the index embeds: ``node.get_content(metadata_mode=MetadataMode.EMBED)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.instrumentation.dispatcher import active_instrument_tags, instrument_tags
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.retrieval import RetrievalEndEvent, RetrievalStartEvent
from llama_index.core.instrumentation.events.span import SpanDropEvent
from llama_index.core.schema import NodeWithScore, QueryBundle
from pydantic import Field, PrivateAttr

from adapter_retrievers.adapters import QueryAdapter
from adapter_retrievers.capture import RetrievalLog
from adapter_retrievers.encoders import as_encoder
from adapter_retrievers.interleaving import CANDIDATE_VERSION, PROPENSITY_KEY, RANKER_KEY
from adapter_retrievers.registry import (
    ADAPTER_VERSION,
    AdapterRegistry,
    PinnedAdapter,
    adapt_query_vector,
    adapter_metadata,
    check_adapter_for,
    check_documents_for,
    interleaved_results,
    pin_adapter,
    pinned_for,
)


class EncoderEmbedding(BaseEmbedding):
    """A LlamaIndex ``BaseEmbedding`` over any encoder: a ``SentenceTransformer``, a LangChain ``Embeddings``,
    a Chroma embedding function, or one of ours. With no argument: the bundled all-MiniLM-L6-v2, offline."""

    _encoder: Any = PrivateAttr()

    def __init__(self, encoder: Any = None, model_id: str | None = None, **kwargs: Any) -> None:
        if encoder is None:
            from adapter_retrievers.encoders import minilm_encoder

            encoder = minilm_encoder()
        encoder = as_encoder(encoder, model_id)
        kwargs.setdefault("model_name", encoder.model_id)
        super().__init__(**kwargs)
        self._encoder = encoder

    @classmethod
    def class_name(cls) -> str:
        return "EncoderEmbedding"

    @property
    def encoder(self) -> Any:
        return self._encoder

    @property
    def dimension(self) -> int | None:
        return getattr(self._encoder, "dimension", None)

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._encoder.embed_queries([query])[0].tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._encoder.embed_documents([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._encoder.embed_documents(list(texts)).tolist()


def as_llamaindex_embedding(embed_model: Any, model_id: str | None = None) -> BaseEmbedding:
    """``embed_model`` if it is a LlamaIndex ``BaseEmbedding``, else wrapped in :class:`EncoderEmbedding`."""
    return embed_model if isinstance(embed_model, BaseEmbedding) else EncoderEmbedding(embed_model, model_id)


# Set while AdapterVectorRetriever runs the index's own retriever: that inner retrieval is the same
# retrieval as the wrapper's, so RetrievalEventLogger records the wrapper's only (one record per query).
_delegated_retrieval: ContextVar[bool] = ContextVar("adapter_retrievers_delegated_retrieval", default=False)


@contextmanager
def _delegating() -> Iterator[None]:
    token = _delegated_retrieval.set(True)
    try:
        yield
    finally:
        _delegated_retrieval.reset(token)


class AdapterEmbedding(BaseEmbedding):
    """Adapted query embeddings, untouched text embeddings (sync and async).

    The documents' vectors must be those of the texts the adapter was trained on: see the module's note on
    metadata (``excluded_embed_metadata_keys``).

    ``base_embed_model``: a LlamaIndex ``BaseEmbedding``, or anything :class:`EncoderEmbedding` takes.
    The adapter is checked here against the model name and dimension the base exposes; ``model_id``
    names the base model when it does not.
    """

    base_embed_model: BaseEmbedding = Field(description="the wrapped embedding model (documents use it as is)")
    adapter: Any = Field(description="QueryAdapter or AdapterRegistry applied to query embeddings", exclude=True)
    adapter_key: str | None = Field(default=None, description="registry key, when adapter is a registry")

    def __init__(
        self,
        base_embed_model: Any,
        adapter: QueryAdapter | AdapterRegistry,
        adapter_key: str | None = None,
        model_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        base_embed_model = as_llamaindex_embedding(base_embed_model, model_id)
        check_adapter_for(adapter, base_embed_model, model_id)
        kwargs.setdefault("model_name", base_embed_model.model_name)
        kwargs.setdefault("embed_batch_size", base_embed_model.embed_batch_size)
        super().__init__(base_embed_model=base_embed_model, adapter=adapter, adapter_key=adapter_key, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "AdapterEmbedding"

    def to_payload(self) -> dict[str, Any]:
        return {**super().to_payload(), **adapter_metadata(self.adapter, self.adapter_key)}

    def _get_query_embedding(self, query: str) -> Embedding:
        return adapt_query_vector(self.adapter, self.adapter_key, self.base_embed_model.get_query_embedding(query))

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return adapt_query_vector(
            self.adapter, self.adapter_key, await self.base_embed_model.aget_query_embedding(query)
        )

    def _get_text_embedding(self, text: str) -> Embedding:
        check_documents_for(self.adapter)
        return self.base_embed_model.get_text_embedding(text)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        check_documents_for(self.adapter)
        return await self.base_embed_model.aget_text_embedding(text)

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        check_documents_for(self.adapter)
        return self.base_embed_model.get_text_embedding_batch(texts)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        check_documents_for(self.adapter)
        return await self.base_embed_model.aget_text_embedding_batch(texts)


class AdapterVectorRetriever(BaseRetriever):
    """Pre-fill the adapted query embedding and delegate to the index's own retriever.

    Returns ``NodeWithScore`` as usual; ``similarity_top_k``, ``filters`` and other keyword
    arguments go to ``index.as_retriever``. ``embed_model`` is the base model (default: the index's),
    anything :class:`AdapterEmbedding` takes; the adapter is checked against it here.

    With a registry that interleaves (``AdapterRegistry(..., interleave=0.1)`` or ``from_store(...,
    interleave=0.1)``), that fraction of retrievals returns a team-draft interleaving of live's and the
    challenger's nodes: copies whose metadata carries ``adapter_ranker`` and ``adapter_propensity``, with
    ``adapter_candidate_version`` in the instrumentation tags (the retrieval events and our log name both).
    """

    def __init__(
        self,
        index: Any,
        adapter: QueryAdapter | AdapterRegistry,
        embed_model: Any = None,
        adapter_key: str | None = None,
        model_id: str | None = None,
        **retriever_kwargs: Any,
    ) -> None:
        super().__init__(verbose=retriever_kwargs.pop("verbose", False))
        embed_model = as_llamaindex_embedding(embed_model, model_id) if embed_model is not None else index._embed_model
        check_adapter_for(adapter, embed_model, model_id)
        self._adapter = adapter
        self._adapter_key = adapter_key
        self._embed_model = embed_model
        self._inner = index.as_retriever(**retriever_kwargs)

    @contextlib.contextmanager
    def _pinned(self) -> Iterator[PinnedAdapter]:
        """One adapter for the whole retrieval (a registry following a store may swap meanwhile); its
        version goes into the instrumentation tags, so the retrieval events name it."""
        pin = pin_adapter(self._adapter, self._adapter_key)
        named = {ADAPTER_VERSION: pin.version, CANDIDATE_VERSION: pin.candidate_version}
        named = {k: v for k, v in named.items() if v is not None}
        tags = {**active_instrument_tags.get(), **named} if named else None
        with pin, instrument_tags(tags) if tags else contextlib.nullcontext():
            yield pin

    def retrieve(self, str_or_query_bundle: Any) -> list[NodeWithScore]:
        with self._pinned():
            return super().retrieve(str_or_query_bundle)

    async def aretrieve(self, str_or_query_bundle: Any) -> list[NodeWithScore]:
        with self._pinned():
            return await super().aretrieve(str_or_query_bundle)

    def _adapted_bundle(self, query_bundle: QueryBundle, vector: Embedding) -> QueryBundle:
        return QueryBundle(
            query_str=query_bundle.query_str,
            custom_embedding_strs=query_bundle.custom_embedding_strs,
            embedding=adapt_query_vector(self._adapter, self._adapter_key, vector),
        )

    def _challenger_bundle(self, pin: PinnedAdapter, query_bundle: QueryBundle, vector: Embedding) -> QueryBundle:
        adapted = pin.challenger.transform(np.asarray(vector, dtype=np.float32)).tolist()  # type: ignore[union-attr]
        return QueryBundle(
            query_bundle.query_str, custom_embedding_strs=query_bundle.custom_embedding_strs, embedding=adapted
        )

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        vector = query_bundle.embedding or self._embed_model.get_query_embedding(query_bundle.query_str)
        bundle = self._adapted_bundle(query_bundle, vector)
        pin = pinned_for(self._adapter, self._adapter_key)
        with _delegating():
            nodes = self._inner.retrieve(bundle)
            if pin is None or not pin.interleaved:
                return nodes
            other = self._inner.retrieve(self._challenger_bundle(pin, query_bundle, vector))
        return _interleaved(pin, nodes, other, self._inner.similarity_top_k)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        vector = query_bundle.embedding or await self._embed_model.aget_query_embedding(query_bundle.query_str)
        bundle = self._adapted_bundle(query_bundle, vector)
        pin = pinned_for(self._adapter, self._adapter_key)
        with _delegating():
            nodes = await self._inner.aretrieve(bundle)
            if pin is None or not pin.interleaved:
                return nodes
            other = await self._inner.aretrieve(self._challenger_bundle(pin, query_bundle, vector))
        return _interleaved(pin, nodes, other, self._inner.similarity_top_k)


def _interleaved(pin: PinnedAdapter, live: list[NodeWithScore], candidate: list[NodeWithScore], k: int) -> list:
    """Team draft of live's and the challenger's nodes: copies (the index's nodes are left as they are) whose
    metadata names the ranker and the propensity."""
    drafted = []
    for item, ranker, propensity in interleaved_results(pin, live, candidate, k, lambda n: n.node.node_id):
        node = item.node.model_copy()
        node.metadata = {**item.node.metadata, RANKER_KEY: ranker, PROPENSITY_KEY: round(propensity, 6)}
        drafted.append(NodeWithScore(node=node, score=item.score))
    return drafted


class RetrievalEventLogger(BaseEventHandler):
    """Instrumentation event handler that records each retrieval to a :class:`RetrievalLog` (JSONL).

    ``get_dispatcher().add_event_handler(RetrievalEventLogger("rag-log.jsonl"))``; the record's ``id``
    is the retrieval's span id. A ``session_id`` tag (``instrument_tags({"session_id": ...})``) is kept.
    A retrieval that fails is forgotten (its span's drop event), so memory stays bounded however many fail.
    """

    log: Any = Field(default=None, exclude=True)
    pending: dict = Field(default_factory=dict, exclude=True)

    def __init__(self, log: RetrievalLog | str | Any, **kwargs: Any) -> None:
        super().__init__(log=log if isinstance(log, RetrievalLog) else RetrievalLog(log), **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "RetrievalEventLogger"

    def handle(self, event: Any, **kwargs: Any) -> None:
        if _delegated_retrieval.get():
            return
        if isinstance(event, RetrievalStartEvent):
            self.pending[event.span_id] = event.timestamp.isoformat()
        elif isinstance(event, SpanDropEvent):
            self.pending.pop(event.span_id, None)
        elif isinstance(event, RetrievalEndEvent):
            started = self.pending.pop(event.span_id, None)
            query = event.str_or_query_bundle
            query = query if isinstance(query, str) else query.query_str
            docs = [
                {
                    "id": n.node.node_id,
                    "content": n.node.get_content(),
                    "score": n.score,
                    "metadata": dict(n.node.metadata),
                }
                for n in event.nodes
            ]
            tags = event.tags or {}
            self.log.log_retrieval(
                query,
                docs,
                retrieval_id=str(event.span_id),
                session=tags.get("session_id"),
                user=tags.get("user_id"),
                source="llamaindex",
                timestamp=started,
                adapter_version=tags.get(ADAPTER_VERSION),
                candidate_version=tags.get(CANDIDATE_VERSION),
            )
