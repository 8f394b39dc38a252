"""LangChain: an adapter-aware ``Embeddings`` and a ``BaseRetriever`` over any ``VectorStore``.

Change one line of an existing chain:

    embeddings = AdapterEmbeddings(OpenAIEmbeddings(), QueryAdapter.load("adapters/mine"))
    vectorstore = Chroma(collection_name="docs", embedding_function=embeddings)   # documents untouched

or keep the vector store as it is and wrap it:

    retriever = AdapterRetriever(vectorstore=vectorstore, embeddings=base_embeddings, adapter=adapter, k=5)
    chain = retriever | format_docs | prompt | llm

With an :class:`~adapter_retrievers.registry.AdapterRegistry` as ``adapter``, the key is taken per
call from ``retriever.invoke(q, adapter_key="tenant-a")`` or from the run config
``{"metadata": {"adapter_key": "tenant-a"}}``, and unknown keys fall back to no adapter.

A registry with ``interleave=0.1`` (``AdapterRegistry.from_store(store, ..., interleave=0.1)``) makes the
retriever show, for 10% of calls, a team-draft interleaving of live's and the store candidate's results:
each returned ``Document`` then carries ``adapter_ranker`` (``"live"``/``"candidate"``, or ``"shared"``
where both would have picked it) and ``adapter_propensity`` in its metadata and the run metadata names
``adapter_candidate_version``, so the capture handler and OpenInference spans record who contributed each document.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Literal
from uuid import UUID

import numpy as np
from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    BaseCallbackHandler,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig, ensure_config
from langchain_core.vectorstores import VectorStore
from pydantic import ConfigDict, Field, field_validator, model_validator

from adapter_retrievers.adapters import QueryAdapter
from adapter_retrievers.capture import RetrievalLog
from adapter_retrievers.encoders import as_encoder
from adapter_retrievers.interleaving import CANDIDATE_VERSION, PROPENSITY_KEY, RANKER_KEY
from adapter_retrievers.registry import (
    ADAPTER_KEY,
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

AdapterLike = QueryAdapter | AdapterRegistry


class EncoderEmbeddings(Embeddings):
    """A LangChain ``Embeddings`` over any encoder: a ``SentenceTransformer``, a LlamaIndex ``BaseEmbedding``,
    a Chroma embedding function, or one of ours. With no argument: the bundled all-MiniLM-L6-v2, offline.

    So a model you already load elsewhere (or the bundled one) plugs into LangChain vector stores as is.
    """

    def __init__(self, encoder: Any = None, model_id: str | None = None) -> None:
        if encoder is None:
            from adapter_retrievers.encoders import minilm_encoder

            encoder = minilm_encoder()
        self.encoder = as_encoder(encoder, model_id)
        self.model_id = self.encoder.model_id

    @property
    def dimension(self) -> int | None:
        return getattr(self.encoder, "dimension", None)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encoder.embed_documents(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.encoder.embed_queries([text])[0].tolist()


def as_langchain_embeddings(embeddings: Any, model_id: str | None = None) -> Embeddings:
    """``embeddings`` if it is a LangChain ``Embeddings``, else wrapped in :class:`EncoderEmbeddings`."""
    return embeddings if isinstance(embeddings, Embeddings) else EncoderEmbeddings(embeddings, model_id)


class AdapterEmbeddings(Embeddings):
    """Adapted query embeddings, untouched document embeddings.

    ``base``: a LangChain ``Embeddings``, or anything :class:`EncoderEmbeddings` takes (a
    ``SentenceTransformer``, a LlamaIndex ``BaseEmbedding``, ...). The adapter is checked here against
    the model name and dimension the base exposes; ``model_id`` names the base model when it does not.
    """

    def __init__(
        self,
        base: Any,
        adapter: AdapterLike,
        adapter_key: str | None = None,
        model_id: str | None = None,
    ) -> None:
        base = as_langchain_embeddings(base, model_id)
        check_adapter_for(adapter, base, model_id)
        self.base = base
        self.adapter = adapter
        self.adapter_key = adapter_key
        self.model_id = model_id

    def for_key(self, adapter_key: str | None) -> AdapterEmbeddings:
        """The same base embeddings with another registry key (cheap; nothing is copied)."""
        return AdapterEmbeddings(self.base, self.adapter, adapter_key, self.model_id)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        check_documents_for(self.adapter)
        return self.base.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return adapt_query_vector(self.adapter, self.adapter_key, self.base.embed_query(text))

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        check_documents_for(self.adapter)
        return await self.base.aembed_documents(texts)

    async def aembed_query(self, text: str) -> list[float]:
        return adapt_query_vector(self.adapter, self.adapter_key, await self.base.aembed_query(text))


class AdapterRetriever(BaseRetriever):
    """Embed the query with the base embeddings, adapt it, search the vector store by vector.

    ``search_type``: ``"similarity"`` or ``"mmr"``; ``search_kwargs`` pass through to the store
    (``filter``, ``fetch_k``, ``lambda_mult``, ...). ``k`` can also be given per call. ``embeddings``
    may be anything :class:`AdapterEmbeddings` takes as its base.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    vectorstore: VectorStore
    embeddings: Embeddings
    adapter: Any
    adapter_key: str | None = None
    k: int = 4
    search_type: Literal["similarity", "mmr"] = "similarity"
    search_kwargs: dict[str, Any] = Field(default_factory=dict)
    model_id: str | None = None

    @field_validator("embeddings", mode="before")
    @classmethod
    def _as_embeddings(cls, value: Any) -> Embeddings:
        return as_langchain_embeddings(value)

    @model_validator(mode="after")
    def _check(self) -> AdapterRetriever:
        check_adapter_for(self.adapter, self.embeddings, self.model_id)
        self.metadata = {**adapter_metadata(self.adapter, self.adapter_key), **(self.metadata or {})}
        return self

    def _key(self, kwargs: dict[str, Any], run_manager: Any) -> str | None:
        return kwargs.pop(ADAPTER_KEY, None) or (run_manager.metadata or {}).get(ADAPTER_KEY) or self.adapter_key

    def _pinned(self, config: RunnableConfig | None, kwargs: dict[str, Any]) -> tuple[PinnedAdapter, RunnableConfig]:
        """Resolve the adapter once per call (a registry following a store may swap meanwhile) and name
        its version in the run metadata, where the capture handler and tracers read it."""
        config = ensure_config(config)
        metadata = dict(config.get("metadata") or {})
        pin = pin_adapter(self.adapter, kwargs.get(ADAPTER_KEY) or metadata.get(ADAPTER_KEY) or self.adapter_key)
        if pin.version is not None:
            metadata[ADAPTER_VERSION] = pin.version
        if pin.candidate_version is not None:
            metadata[CANDIDATE_VERSION] = pin.candidate_version
        if pin.version is not None or pin.candidate_version is not None:
            config = {**config, "metadata": metadata}
        return pin, config

    def invoke(self, input: str, config: RunnableConfig | None = None, **kwargs: Any) -> list[Document]:
        pin, config = self._pinned(config, kwargs)
        with pin:
            return super().invoke(input, config, **kwargs)

    async def ainvoke(self, input: str, config: RunnableConfig | None = None, **kwargs: Any) -> list[Document]:
        pin, config = self._pinned(config, kwargs)
        with pin:
            return await super().ainvoke(input, config, **kwargs)

    def _search_params(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**self.search_kwargs, **kwargs, "k": kwargs.get("k", self.k)}

    def _search(self, vector: list[float], params: dict[str, Any]) -> list[Document]:
        if self.search_type == "mmr":
            return self.vectorstore.max_marginal_relevance_search_by_vector(vector, **params)
        return self.vectorstore.similarity_search_by_vector(vector, **params)

    async def _asearch(self, vector: list[float], params: dict[str, Any]) -> list[Document]:
        if self.search_type == "mmr":
            return await self.vectorstore.amax_marginal_relevance_search_by_vector(vector, **params)
        return await self.vectorstore.asimilarity_search_by_vector(vector, **params)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        key = self._key(kwargs, run_manager)
        base = self.embeddings.embed_query(query)
        params = self._search_params(kwargs)
        documents = self._search(adapt_query_vector(self.adapter, key, base), params)
        pin = pinned_for(self.adapter, key)
        if pin is None or not pin.interleaved:
            return documents
        return _interleaved(pin, documents, self._search(_challenged(pin, base), params), params["k"])

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        key = self._key(kwargs, run_manager)
        base = await self.embeddings.aembed_query(query)
        params = self._search_params(kwargs)
        documents = await self._asearch(adapt_query_vector(self.adapter, key, base), params)
        pin = pinned_for(self.adapter, key)
        if pin is None or not pin.interleaved:
            return documents
        return _interleaved(pin, documents, await self._asearch(_challenged(pin, base), params), params["k"])


def _challenged(pin: PinnedAdapter, base: list[float]) -> list[float]:
    return pin.challenger.transform(np.asarray(base, dtype=np.float32)).tolist()  # type: ignore[union-attr]


def _document_key(document: Document) -> Any:
    return document.id if document.id is not None else (document.page_content, document.metadata.get("id"))


def _interleaved(pin: PinnedAdapter, live: list[Document], candidate: list[Document], k: int) -> list[Document]:
    """Team draft of live's and the challenger's documents; copies marked with their ranker and propensity."""
    return [
        Document(
            page_content=doc.page_content,
            metadata={**doc.metadata, RANKER_KEY: ranker, PROPENSITY_KEY: round(propensity, 6)},
            id=doc.id,
        )
        for doc, ranker, propensity in interleaved_results(pin, live, candidate, k, _document_key)
    ]


class RetrievalLogger(BaseCallbackHandler):
    """Callback handler that records every retrieval of a chain to a :class:`RetrievalLog` (JSONL).

    Pass it in the run config: ``chain.invoke(q, config={"callbacks": [logger], "run_id": run_id,
    "metadata": {"session_id": "..."}})``. Each record's ``id`` is the retriever run id and its
    ``trace_id`` the root run id, so feedback can be attached to either later.

    It holds only the runs still in progress (a run is forgotten when it ends or fails), under a lock,
    so one logger can serve concurrent chains for as long as the application runs.
    """

    def __init__(self, log: RetrievalLog | str | Any) -> None:
        self.log = log if isinstance(log, RetrievalLog) else RetrievalLog(log)
        self._lock = threading.Lock()
        self._parents: dict[UUID, UUID | None] = {}  # runs in progress that may have a retriever below them
        self._pending: dict[UUID, tuple[str, dict[str, Any], UUID]] = {}  # retriever run -> query, metadata, root

    def _start(self, run_id: UUID, parent_run_id: UUID | None) -> None:
        with self._lock:
            self._parents[run_id] = parent_run_id

    def _forget(self, run_id: UUID) -> None:
        with self._lock:
            self._parents.pop(run_id, None)

    def on_chain_start(
        self, serialized: Any, inputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        self._start(run_id, parent_run_id)

    def on_tool_start(
        self, serialized: Any, input_str: str, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        self._start(run_id, parent_run_id)  # agents call retrievers inside tools

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._forget(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._forget(run_id)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._forget(run_id)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._forget(run_id)

    def on_retriever_start(
        self,
        serialized: Any,
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        with self._lock:
            root = run_id if parent_run_id is None else parent_run_id
            while self._parents.get(root) is not None:
                root = self._parents[root]  # type: ignore[assignment]
            self._parents[run_id] = parent_run_id
            self._pending[run_id] = (query, metadata or {}, root)

    def on_retriever_end(self, documents: Sequence[Document], *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            self._parents.pop(run_id, None)
            pending = self._pending.pop(run_id, None)
        if pending is None:
            return
        query, metadata, root = pending
        docs = [
            {
                "id": d.id or d.metadata.get("id"),
                "content": d.page_content,
                "score": d.metadata.get("score"),
                "metadata": d.metadata,
            }
            for d in documents
        ]
        session = metadata.get("session_id") or metadata.get("thread_id") or metadata.get("user_id")
        self.log.log_retrieval(
            query,
            docs,
            retrieval_id=str(run_id),
            trace_id=str(root),
            session=session,
            user=metadata.get("user_id"),
            source="langchain",
            adapter_version=metadata.get(ADAPTER_VERSION),
            candidate_version=metadata.get(CANDIDATE_VERSION),
        )

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            self._parents.pop(run_id, None)
            self._pending.pop(run_id, None)
