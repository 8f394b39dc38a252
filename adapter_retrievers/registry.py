"""Many adapters on one corpus: one per user, tenant or task, picked per request.

Query-only adapters leave document vectors alone, so a single collection can serve any number of
them. The registry maps a key to an adapter, falls back to no adapter (the identity) for unknown
keys, and swaps in a newer version atomically: an adapter is fully loaded and checked before it is
published, and a request holds the adapter object it started with, so no request ever sees a
half-loaded one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from adapter_retrievers.adapters import CONFIG_FILE, QueryAdapter

ADAPTER_KEY = "adapter_key"


class AdapterRegistry:
    """Thread-safe ``key -> QueryAdapter`` map for one base model and dimension."""

    def __init__(
        self,
        base_model: str,
        dimension: int,
        adapters: Mapping[str, QueryAdapter] | None = None,
        default: QueryAdapter | None = None,
    ) -> None:
        self.base_model = base_model
        self.dimension = dimension
        self.default = default or QueryAdapter.identity(dimension, base_model)
        self.default.check_compatible(base_model, dimension)
        self._lock = threading.Lock()
        self._adapters: dict[str, QueryAdapter] = {}
        for key, adapter in (adapters or {}).items():
            self.register(key, adapter)

    def register(self, key: str, adapter: QueryAdapter) -> None:
        """Add or replace the adapter for ``key`` (readers see the old or the new one, never a mix)."""
        adapter.check_compatible(self.base_model, self.dimension)
        with self._lock:
            updated = dict(self._adapters)
            updated[key] = adapter
            self._adapters = updated  # one reference swap publishes the new map

    def load(self, key: str, path: os.PathLike | str) -> QueryAdapter:
        """Load an adapter folder (checked against this registry's model) and register it."""
        adapter = QueryAdapter.load(path, base_model=self.base_model, dimension=self.dimension)
        self.register(key, adapter)
        return adapter

    def remove(self, key: str) -> None:
        with self._lock:
            updated = dict(self._adapters)
            updated.pop(key, None)
            self._adapters = updated

    def get(self, key: str | None) -> QueryAdapter:
        """The adapter for ``key``; the default (identity unless set) for ``None`` or an unknown key."""
        if key is None:
            return self.default
        return self._adapters.get(key, self.default)

    def transform(self, query_vectors: Any, key: str | None = None) -> np.ndarray:
        return self.get(key).transform(query_vectors)

    def __contains__(self, key: object) -> bool:
        return key in self._adapters

    def __len__(self) -> int:
        return len(self._adapters)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._adapters))

    @property
    def nbytes(self) -> int:
        """Bytes held by the adapters' parameters."""
        return sum(a.nbytes for a in self._adapters.values())

    def check_compatible(self, base_model: str | None = None, dimension: int | None = None) -> None:
        """Raise :class:`~adapter_retrievers.AdapterMismatchError` for another base model or dimension."""
        self.default.check_compatible(base_model, dimension)

    @property
    def normalize(self) -> bool:
        return self.default.normalize

    @classmethod
    def from_folder(cls, folder: os.PathLike | str, base_model: str, dimension: int) -> AdapterRegistry:
        """One adapter per sub-folder, keyed by the sub-folder's name."""
        registry = cls(base_model, dimension)
        for child in sorted(Path(folder).iterdir()):
            if (child / CONFIG_FILE).exists():
                registry.load(child.name, child)
        return registry


def resolve_adapter(adapter: QueryAdapter | AdapterRegistry, key: str | None = None) -> QueryAdapter:
    """The adapter to use for one request: the adapter itself, or the registry's pick for ``key``."""
    if isinstance(adapter, AdapterRegistry):
        return adapter.get(key)
    return adapter


def check_adapter_for(adapter: QueryAdapter | AdapterRegistry, embeddings: Any, model_id: str | None = None) -> None:
    """Refuse, when a wrapper is built, an adapter for another model or dimension than ``embeddings``.

    Uses what the embeddings expose (model name, dimension) without embedding anything; ``model_id``
    overrides the exposed name. What the embeddings do not say is checked at the first query.
    """
    if not isinstance(adapter, (QueryAdapter, AdapterRegistry)):
        raise TypeError(f"adapter must be a QueryAdapter or an AdapterRegistry, not {type(adapter).__name__}")
    from adapter_retrievers.encoders import describe_embeddings

    exposed_id, dimension = describe_embeddings(embeddings) if embeddings is not None else (None, None)
    adapter.check_compatible(base_model=model_id or exposed_id, dimension=dimension)


def adapt_query_vector(adapter: QueryAdapter | AdapterRegistry, key: str | None, vector: Any) -> list[float]:
    """One framework query embedding (a list of floats) adapted for one request, as a list again."""
    return resolve_adapter(adapter, key).transform(np.asarray(vector, dtype=np.float32)).tolist()


def adapter_metadata(adapter: QueryAdapter | AdapterRegistry, key: str | None = None) -> dict[str, Any]:
    """What tracing (LangSmith, callbacks) should show about the adapter in use."""
    if isinstance(adapter, AdapterRegistry):
        return {
            "adapter": "registry",
            "adapter_base_model": adapter.base_model,
            "adapter_count": len(adapter),
            "adapter_default_key": key,
        }
    fingerprint = adapter.metadata.get("training_data", {}).get("fingerprint")
    return {"adapter": adapter.kind, "adapter_base_model": adapter.base_model, "adapter_data": fingerprint}
