"""Many adapters on one corpus: one per user, tenant or task, picked per request.

Query-only adapters leave document vectors alone, so a single collection can serve any number of
them. The registry maps a key to an adapter, falls back to no adapter (the identity) for unknown
keys, and swaps in a newer version atomically: an adapter is fully loaded and checked before it is
published, and a request holds the adapter object it started with, so no request ever sees a
half-loaded one.

A registry can also *follow* an :class:`~adapter_retrievers.store.AdapterStore` (:meth:`AdapterRegistry.follow`,
:meth:`AdapterRegistry.from_store`): it serves the store's live version and picks up a promotion or a
rollback without a restart, checking the store's ``LIVE`` pointer (one ``stat``) at most every
``check_interval`` seconds. The wrappers pin one adapter per request (:func:`pin_adapter`), so a
request that straddles a swap uses one version throughout and the capture handlers can record which.

**Interleaving.** With ``interleave=0.1`` a registry sends 10% of requests, chosen at random, to a
team-draft interleaving of the live adapter's results and a *challenger*'s (the store's ``CANDIDATE``
when it follows a store, or one set with :meth:`AdapterRegistry.set_challenger`); the LangChain and
LlamaIndex retrievers then search with both and show one merged list whose documents name the ranker
that picked them (:mod:`adapter_retrievers.interleaving`). The other requests are served as before.

**Population check.** Each adapter with a guard that a registry serves has a
:class:`~adapter_retrievers.guards.PopulationCheck`: the mean guard weight of its last 50 queries. While fewer
than half of recent queries' weight says "training-like", the population has changed and the registry serves
the base model for that slot (traces name version ``"base"``), until the traffic looks trained-for again;
``population=None`` turns it off. It sees the queries adapted through :func:`adapt_query_vector` and
:meth:`AdapterRegistry.transform` (every wrapper's path; a batch is served one query after the other, each
decided from the queries before it). A new adapter in a slot (a promotion, :meth:`~AdapterRegistry.register`)
starts a fresh check.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from adapter_retrievers.adapters import CONFIG_FILE, QueryAdapter
from adapter_retrievers.guards import PopulationCheck

ADAPTER_KEY = "adapter_key"
#: the run-metadata / event-tag / log field naming the store version that served a retrieval
ADAPTER_VERSION = "adapter_version"
BASE_VERSION = "base"  # what a store serves when no version is live: the base model

logger = logging.getLogger(__name__)


def adapter_version(adapter: QueryAdapter) -> str | None:
    """The store version an adapter was loaded from (``"base"`` for a store's no-adapter), else None."""
    version = adapter.metadata.get("store_version")
    return str(version) if version is not None else None


class StoreFollower:
    """The live adapter of a store, re-read when the store's ``LIVE`` pointer changes.

    :meth:`current` costs one clock read, plus one ``stat`` of the pointer file when ``check_interval``
    seconds have passed (0: every call). A changed pointer loads the new version completely, checks it
    against the base model and dimension, then publishes it with one reference swap; if loading fails
    (a version pruned meanwhile, a bad file) the old adapter keeps serving and the next check retries.
    """

    def __init__(
        self,
        store: Any,
        base_model: str,
        dimension: int,
        check_interval: float = 5.0,
        fallback: QueryAdapter | None = None,
    ) -> None:
        from adapter_retrievers.store import AdapterStore

        self.store = store if isinstance(store, AdapterStore) else AdapterStore(store)
        self.base_model, self.dimension = base_model, dimension
        # what "no version live" serves: the identity, or for a migration registry its migration adapter
        self.fallback = fallback if fallback is not None and fallback.is_migration else None
        self.check_interval = check_interval
        self._checking = threading.Lock()
        self._signature: tuple | None = None
        self._next_check = 0.0
        self._adapter = self._base()
        self._candidate: QueryAdapter | None = None  # the store's CANDIDATE, for interleaving
        self.check()

    def _base(self) -> QueryAdapter:
        if self.fallback is not None:
            return replace(self.fallback, metadata={**self.fallback.metadata, "store_version": BASE_VERSION})
        adapter = QueryAdapter.identity(self.dimension, self.base_model)
        adapter.metadata = {"store_version": BASE_VERSION}
        return adapter

    def _sides(self) -> tuple[str | None, int | None]:
        if self.fallback is None:
            return None, None
        return self.fallback.output_model, self.fallback.output_dimension

    @property
    def version(self) -> str | None:
        return adapter_version(self._adapter)

    def current(self) -> QueryAdapter:
        if time.monotonic() >= self._next_check:
            self.check()
        return self._adapter

    def candidate(self) -> QueryAdapter | None:
        """The store's candidate under online comparison (None: none, or it is live already)."""
        if time.monotonic() >= self._next_check:
            self.check()
        return self._candidate

    @staticmethod
    def _stat(path: Path) -> tuple[tuple | None, bool]:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None, True
        # a pointer rewritten within the timestamp granularity can reuse the inode, time and size of the
        # one before: trust the stat only for a pointer that is not brand new
        return (st.st_ino, st.st_mtime_ns, st.st_size), time.time() - st.st_mtime > 2.0

    def check(self) -> bool:
        """Look at the pointers now; returns True when another live version was swapped in."""
        if not self._checking.acquire(blocking=False):
            return False  # another thread is checking: serve the current adapter meanwhile
        try:
            self._next_check = time.monotonic() + self.check_interval
            (live_sig, live_settled), (cand_sig, cand_settled) = (
                self._stat(self.store.live_path),
                self._stat(self.store.candidate_path),
            )
            signature = (live_sig, cand_sig)
            if signature == self._signature and live_settled and cand_settled:
                return False
            swapped, live_loaded = self._check_live()
            if self._check_candidate() and live_loaded:  # else the next check tries again
                self._signature = signature
            return swapped
        finally:
            self._checking.release()

    def _load(self, version: str, what: str) -> QueryAdapter | None:
        try:
            adapter = self.store.load(version, self.base_model, self.dimension)
            adapter.check_compatible(None, None, *self._sides())
            return adapter
        except (OSError, ValueError, RuntimeError) as exc:
            logger.warning(
                "cannot load %s version %s of %s (%s); still serving %s",
                what,
                version,
                self.store.root,
                exc,
                self.version,
            )
            return None

    def _check_live(self) -> tuple[bool, bool]:
        """Follow the LIVE pointer: (swapped, loaded); a version that cannot be loaded leaves the old one serving."""
        version = self.store.live
        if (version or BASE_VERSION) == self.version:
            return False, True
        adapter = self._base() if version is None else self._load(version, "live")
        if adapter is None:
            return False, False
        self._adapter = adapter  # one reference swap publishes it
        return True, True

    def _check_candidate(self) -> bool:
        """Follow the CANDIDATE pointer; False when it names a version that cannot be loaded (retried)."""
        version = self.store.candidate
        if version == self.version:
            version = None  # promoted: nothing left to compare
        if version == (adapter_version(self._candidate) if self._candidate is not None else None):
            return True
        adapter = None if version is None else self._load(version, "candidate")
        self._candidate = adapter
        return version is None or adapter is not None


class _Watch(NamedTuple):
    """A slot's guarded adapter, its population check and what serves while the check has stepped aside."""

    adapter: QueryAdapter
    check: PopulationCheck
    aside: QueryAdapter  # the base model, normalised as the adapter normalises


class AdapterRegistry:
    """Thread-safe ``key -> QueryAdapter`` map for one base model and dimension.

    A registry serves one index. For an index embedded by another model than the queries' (a migration,
    :func:`~adapter_retrievers.training.migration.fit_migration`), pass the migration adapter as ``default``:
    its output model and dimension are then the registry's, and every adapter registered (per tenant,
    challengers, a followed store's versions) is checked on both sides, the query encoder and the index.

    ``population``: the settings of the population check every guarded adapter gets in its slot (module
    docstring; :meth:`population_check` shows its state); None: adapters serve every query their guard admits.
    """

    def __init__(
        self,
        base_model: str,
        dimension: int,
        adapters: Mapping[str, QueryAdapter] | None = None,
        default: QueryAdapter | None = None,
        interleave: float = 0.0,
        seed: int | None = None,
        population: PopulationCheck | None = PopulationCheck(),  # noqa: B008 (a template: copied per slot)
    ) -> None:
        self.base_model = base_model
        self.dimension = dimension
        self.default = default or QueryAdapter.identity(dimension, base_model)
        self.default.check_compatible(base_model, dimension)
        #: the model and dimension of the index's vectors (the default's output: base_model for an ordinary one)
        self.output_model, self.output_dimension = self.default.output_model, self.default.output_dimension
        self._lock = threading.Lock()
        self._adapters: dict[str, QueryAdapter] = {}
        self._followers: dict[str | None, StoreFollower] = {}
        self._challengers: dict[str | None, QueryAdapter] = {}
        self.interleave = interleave
        self.random = random.Random(seed)  # which requests are interleaved, and the drafts' coins
        self._watches: dict[str | None, _Watch] = {}  # per slot
        self.population = population
        for key, adapter in (adapters or {}).items():
            self.register(key, adapter)

    @property
    def population(self) -> PopulationCheck | None:
        """The population check's settings (each served adapter gets a fresh check like it); None: no check.
        Setting it starts every slot afresh."""
        return self._population

    @population.setter
    def population(self, settings: PopulationCheck | None) -> None:
        with self._lock:
            self._population = settings.fresh() if settings is not None else None
            self._watches = {}

    @property
    def interleave(self) -> float:
        """Fraction of requests served as an interleaving of live and challenger (when there is a challenger)."""
        return self._interleave

    @interleave.setter
    def interleave(self, fraction: float) -> None:
        if not 0.0 <= float(fraction) <= 1.0:
            raise ValueError(f"interleave is a fraction of traffic in [0, 1], got {fraction!r}")
        self._interleave = float(fraction)

    def set_challenger(self, key: str | None, adapter: QueryAdapter | None) -> None:
        """Compare ``adapter`` with ``key``'s adapter (None: the default) on the interleaved fraction of its
        requests; ``adapter=None`` ends the comparison. Overrides a followed store's candidate for that key."""
        if adapter is not None:
            self._check(adapter)
        with self._lock:
            updated = dict(self._challengers)
            if adapter is None:
                updated.pop(key, None)
            else:
                updated[key] = adapter
            self._challengers = updated

    def challenger(self, key: str | None = None) -> QueryAdapter | None:
        """What ``key``'s requests are compared with when interleaved: a challenger set for the key, else the
        candidate of the store the key follows (the default's for unknown keys), else None."""
        challengers, followers = self._challengers, self._followers
        if key in challengers:
            return challengers[key]
        if key in followers:
            return followers[key].candidate()
        if key is not None and key in self._adapters:
            return None
        if None in challengers:
            return challengers[None]
        return followers[None].candidate() if None in followers else None

    def follow(self, store: Any, key: str | None = None, check_interval: float = 5.0) -> StoreFollower:
        """Serve ``store``'s live version for ``key`` (None: as the default), following promotions and rollbacks."""
        follower = StoreFollower(store, self.base_model, self.dimension, check_interval, self.default)
        with self._lock:
            self._followers = {**self._followers, key: follower}
        return follower

    @classmethod
    def from_store(
        cls,
        store: Any,
        base_model: str,
        dimension: int,
        check_interval: float = 5.0,
        interleave: float = 0.0,
        seed: int | None = None,
        population: PopulationCheck | None = PopulationCheck(),  # noqa: B008 (a template: copied per slot)
    ) -> AdapterRegistry:
        """A registry whose default adapter is the store's live version, swapped without restart.

        ``interleave``: the fraction of requests that show a team-draft interleaving of live's and the store
        candidate's results (while the store has a candidate), so that ``refresh`` can compare them on clicks.
        ``population``: the population check's settings (module docstring); None: none.
        """
        registry = cls(base_model, dimension, interleave=interleave, seed=seed, population=population)
        registry.follow(store, None, check_interval)
        return registry

    def register(self, key: str, adapter: QueryAdapter) -> None:
        """Add or replace the adapter for ``key`` (readers see the old or the new one, never a mix)."""
        self._check(adapter)
        with self._lock:
            updated = dict(self._adapters)
            updated[key] = adapter
            self._adapters = updated  # one reference swap publishes the new map

    def load(self, key: str, path: os.PathLike | str) -> QueryAdapter:
        """Load an adapter folder (checked against this registry's model) and register it."""
        adapter = QueryAdapter.load(path, self.base_model, self.dimension, self.output_model, self.output_dimension)
        self.register(key, adapter)
        return adapter

    def remove(self, key: str) -> None:
        with self._lock:
            updated = dict(self._adapters)
            updated.pop(key, None)
            self._adapters = updated
            self._watches = {slot: w for slot, w in self._watches.items() if slot != key}

    def get(self, key: str | None = None) -> QueryAdapter:
        """The adapter to serve ``key``'s next query with: its own, else the default (identity unless set) for
        ``None`` or an unknown key; the base model while that adapter's population check has stepped aside."""
        slot, adapter = self._resolve(key)
        watch = self._watch(slot, adapter)
        return watch.aside if watch is not None and watch.check.stepped_aside else adapter

    def transform(self, query_vectors: Any, key: str | None = None) -> np.ndarray:
        """``query_vectors`` adapted for ``key`` as served, and recorded by its population check: one vector, or
        a batch served one query after the other (each decided from the queries before it)."""
        slot, adapter = self._resolve(key)
        watch = self._watch(slot, adapter)
        if watch is None:
            return adapter.transform(query_vectors)
        x = np.asarray(query_vectors, dtype=np.float32)
        served = self._serve(watch, slot, x)
        if x.ndim == 1:
            return (adapter if served[0] else watch.aside).transform(x)
        adapted = adapter.transform(x)
        if not served.all():
            adapted[~served] = watch.aside.transform(x[~served])
        return adapted

    def observe(self, query_vectors: Any, key: str | None = None) -> None:
        """Record served queries (base vectors, one or a batch in serving order) in the population check of
        ``key``'s adapter; the wrappers' path does this for every query (call it when you serve :meth:`get`'s
        adapter yourself)."""
        slot, adapter = self._resolve(key)
        watch = self._watch(slot, adapter)
        if watch is not None:
            self._serve(watch, slot, np.asarray(query_vectors, dtype=np.float32))

    def current(self, key: str | None = None) -> QueryAdapter:
        """The adapter in ``key``'s slot now (its own, or the default), whether or not its population check
        has stepped aside (:meth:`get`: what is served)."""
        return self._resolve(key)[1]

    def population_check(self, key: str | None = None) -> PopulationCheck | None:
        """A copy of the population check of the adapter ``key`` is served by (None when unchecked): its
        ``recent_weight``, whether it has ``stepped_aside`` and how often, and ``replay`` for what-if traffic."""
        watch = self._watch(*self._resolve(key))
        return watch.check.copy() if watch is not None else None

    def _resolve(self, key: str | None) -> tuple[str | None, QueryAdapter]:
        """The slot that serves ``key`` (its own key, or None for the default) and the adapter in it now."""
        followers = self._followers
        if key in followers:
            return key, followers[key].current()
        if key is not None and key in self._adapters:
            return key, self._adapters[key]
        return None, followers[None].current() if None in followers else self.default

    def _watch(self, slot: str | None, adapter: QueryAdapter) -> _Watch | None:
        """The population check of ``adapter`` in ``slot``: a fresh one when the slot's adapter changed; None
        without a check, for an unguarded adapter, or for one the slot no longer holds (a request that
        started before a swap is not recorded against its successor)."""
        settings = self._population
        if settings is None or adapter.guard is None:
            return None
        watch = self._watches.get(slot)
        if watch is not None and watch.adapter is adapter:
            return watch
        with self._lock:
            watch = self._watches.get(slot)
            if watch is not None and watch.adapter is adapter:
                return watch
            if self._resolve(slot)[1] is not adapter:
                return None
            aside = QueryAdapter.identity(adapter.dimension, adapter.base_model, adapter.normalize)
            aside.metadata = {"store_version": BASE_VERSION}
            watch = _Watch(adapter, settings.fresh(), aside)
            self._watches = {**self._watches, slot: watch}
        return watch

    def _serve(self, watch: _Watch, slot: str | None, x: np.ndarray) -> np.ndarray:
        """The check's decisions for the queries ``x`` (recorded), saying so in the log when it turned."""
        guard, check = watch.adapter.guard, watch.check
        assert guard is not None  # only adapters with a guard are watched
        served = check.serve(guard.weight_of_one(x) if x.ndim == 1 else guard.weight(x))
        if check.turned(served):
            aside = check.stepped_aside
            # the first step aside of an adapter is news; later turns near the floor are routine
            logger.log(
                logging.WARNING if aside and check.times_stepped_aside == 1 else logging.INFO,
                "adapter %s for %s %s: the mean guard weight of its last %d queries is %.2f (floor %.2f)",
                adapter_version(watch.adapter) or "(unversioned)",
                "the default" if slot is None else f"key {slot!r}",
                "steps aside, the base model serves" if aside else "serves again",
                len(check),
                check.recent_weight or 0.0,
                check.floor,
            )
        return served

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

    def _check(self, adapter: QueryAdapter) -> None:
        adapter.check_compatible(self.base_model, self.dimension, self.output_model, self.output_dimension)

    def check_compatible(
        self,
        base_model: str | None = None,
        dimension: int | None = None,
        output_model: str | None = None,
        output_dimension: int | None = None,
    ) -> None:
        """Raise :class:`~adapter_retrievers.AdapterMismatchError` for another query model or dimension, or (the
        ``output_`` arguments) another model or dimension of the index's vectors."""
        self.default.check_compatible(base_model, dimension, output_model, output_dimension)

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


def check_documents_for(adapter: QueryAdapter | AdapterRegistry) -> None:
    """Refuse to embed documents through a migration adapter's wrapper: they would get the new model's vectors
    in an index of the old model's. Add them with the old model (or re-embed the corpus and retire the adapter)."""
    served = adapter.default if isinstance(adapter, AdapterRegistry) else adapter
    if served.is_migration:
        raise ValueError(
            f"this adapter maps {served.base_model!r} queries into an index of {served.output_model!r}: documents "
            f"embedded here would be {served.base_model!r} vectors mixed into that index. Add documents with "
            f"{served.output_model!r} (or re-embed the corpus with the new model and retire the migration adapter)"
        )


class PinnedAdapter:
    """One request's adapter, resolved once (see :func:`pin_adapter`); a context manager.

    ``challenger``: for an interleaved request, the adapter whose results are drafted with live's (None
    otherwise); ``candidate_version`` its store version; ``rng`` the coins of the draft.
    """

    def __init__(self, adapter: QueryAdapter | AdapterRegistry, key: str | None = None) -> None:
        self.source, self.key = adapter, key
        self.adapter = resolve_adapter(adapter, key)
        self.version = adapter_version(self.adapter)
        self.challenger: QueryAdapter | None = None
        self.fraction = 0.0
        self.rng: random.Random | None = None
        if isinstance(adapter, AdapterRegistry) and adapter.interleave > 0:
            challenger = adapter.challenger(key)
            if challenger is not None and adapter.random.random() < adapter.interleave:
                self.challenger, self.fraction, self.rng = challenger, adapter.interleave, adapter.random
        self.candidate_version = adapter_version(self.challenger) if self.challenger is not None else None
        self._tokens: list[Any] = []

    @property
    def interleaved(self) -> bool:
        return self.challenger is not None

    def __enter__(self) -> QueryAdapter:
        self._tokens.append(_PINNED.set(self))
        return self.adapter

    def __exit__(self, *exc: object) -> None:
        _PINNED.reset(self._tokens.pop())


_PINNED: ContextVar[PinnedAdapter | None] = ContextVar("adapter_retrievers_pinned", default=None)


def pin_adapter(adapter: QueryAdapter | AdapterRegistry, key: str | None = None) -> PinnedAdapter:
    """Resolve ``adapter`` for ``key`` now; inside ``with`` every adaptation through it uses that one.

    A request that straddles a promotion then uses one version throughout, and the version it used is
    known before the retrieval starts (``.version``, for the capture handlers and traces). A registry that
    interleaves decides here, once per request, whether this one is interleaved (``.challenger``).
    """
    return PinnedAdapter(adapter, key)


def pinned_for(adapter: QueryAdapter | AdapterRegistry, key: str | None) -> PinnedAdapter | None:
    """The pin of the request in progress for ``adapter`` and ``key``, if one is pinned."""
    pinned = _PINNED.get()
    return pinned if pinned is not None and pinned.source is adapter and pinned.key == key else None


def adapt_query_vector(adapter: QueryAdapter | AdapterRegistry, key: str | None, vector: Any) -> list[float]:
    """One framework query embedding (a list of floats) adapted for one request, as a list again (a
    registry records the query in its population check)."""
    pinned = pinned_for(adapter, key)
    chosen = pinned.adapter if pinned is not None else resolve_adapter(adapter, key)
    base = np.asarray(vector, dtype=np.float32)
    adapted = chosen.transform(base).tolist()
    if isinstance(adapter, AdapterRegistry):
        adapter.observe(base, key)
    return adapted


def interleaved_results(
    pinned: PinnedAdapter, live: list[Any], candidate: list[Any], k: int, key: Any
) -> list[tuple[Any, str, float]]:
    """The team draft of one interleaved request: ``(item, ranker, propensity)`` for each shown item.

    ``key(item)`` identifies a document across the two result lists. The propensity is the probability that
    the item is shown under this registry's policy: from live's list in the ``1 - fraction`` plain requests,
    plus the draft's own probability in the interleaved ones.
    """
    from adapter_retrievers.interleaving import team_draft

    by_key = {}
    for item in (*live, *candidate):
        by_key.setdefault(key(item), item)
    live_keys = [key(item) for item in live[:k]]
    drafted = team_draft(live_keys, [key(item) for item in candidate[:k]], k, pinned.rng)
    in_live = set(live_keys)
    fraction = pinned.fraction
    return [
        (by_key[item], team, (1.0 - fraction) * (item in in_live) + fraction * shown)
        for item, team, shown in zip(drafted.keys, drafted.teams, drafted.propensities)
    ]


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
