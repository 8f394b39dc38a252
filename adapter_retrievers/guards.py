"""Per-query guards: an adapter applies itself only as far as a query resembles the queries it was trained on.

A guard is a compact summary of the training queries, stored in the adapter file beside the weights. At serving
time it gives each query a ``distance`` from that summary; up to ``inner`` the adapter applies fully, from
``outer`` on the base vector is served, in between the two are blended linearly (:meth:`QueryGuard.weight`),
the way :func:`~adapter_retrievers.adapters.blend` mixes an adapter with the identity, but per query.
``inner`` is a quantile of the distances of validation queries held out from the summary
(:meth:`QueryGuard.calibrated`), so queries like the training population keep the whole adapter.

Two summaries:

- :class:`CentroidGuard` (the default): ``k`` centroids of the training queries (spherical k-means); a
  query's distance is one minus its cosine to the nearest centroid. A population is a few clusters of ways
  of asking, and another population that shares the broad directions (German questions beside Spanish ones
  in an English model) still lies off those clusters: measured in ``docs/benchmarks.md``, it lets through
  a fifth as much of another language as the Gaussian summary at the same cost to the trained population.
- :class:`GaussianGuard`: the mean and ``k`` principal directions with their variances plus one variance for
  the rest (a probabilistic PCA); the distance is the Mahalanobis distance per dimension. The first guard
  of this package: adapter files that hold one still load and serve as before.

A :class:`PopulationCheck` watches the guard weights of the queries an adapter serves, in order, and steps
the adapter aside while most recent queries lie far from its training queries (an
:class:`~adapter_retrievers.registry.AdapterRegistry` keeps one per served adapter): a query of another
population that resembles the training queries is then served by the base model too.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np

GUARD_PREFIX = "guard."
GuardKind = Literal["centroids", "gaussian"]


class GuardError(ValueError):
    """A guard's tensors or numbers are malformed (the adapter loader reports it as an adapter file error)."""


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class QueryGuard:
    """What every guard shares: the calibrated ``inner``/``outer`` distances and the weight they give a query.

    A subclass holds the summary and defines :meth:`distance` (a batch) and :meth:`distance_of_one` (one float32
    vector, with Python floats for the scalars: what a retriever serves one query at a time).
    """

    kind: ClassVar[str] = ""
    inner: float
    outer: float

    # --------------------------------------------------------------------------- what a summary defines

    @property
    def dimension(self) -> int:
        raise NotImplementedError

    @property
    def size(self) -> int:
        """The number of centroids or principal directions the summary keeps."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        raise NotImplementedError

    def distance(self, query_vectors: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def distance_of_one(self, query_vector: np.ndarray) -> float:
        raise NotImplementedError

    def tensors(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def numbers(self) -> dict[str, float]:
        """The summary's scalars besides ``inner`` and ``outer`` (stored in the adapter's config)."""
        return {}

    # ------------------------------------------------------------------------------------- shared

    @staticmethod
    def summarise(
        vectors: np.ndarray, components: int = 16, kind: GuardKind = "centroids", seed: int = 0
    ) -> QueryGuard:
        """The summary of ``vectors`` (training queries) of ``kind``, with ``inner``/``outer`` still to be
        calibrated; ``components``: the number of centroids or of principal directions."""
        if kind == "centroids":
            return CentroidGuard.summarise(vectors, components, seed)
        if kind == "gaussian":
            return GaussianGuard.summarise(vectors, components)
        raise ValueError(f"unknown guard kind {kind!r}; choose 'centroids' or 'gaussian'")

    def weight(self, query_vectors: np.ndarray) -> np.ndarray:
        """Per query: how much of the adapter to apply, 1 up to ``inner``, 0 from ``outer`` on."""
        share = (self.outer - self.distance(query_vectors)) / (self.outer - self.inner)
        return np.minimum(np.maximum(share, 0.0), 1.0)  # np.clip costs microseconds on a single query

    def weight_of_one(self, query_vector: np.ndarray) -> float:
        """:meth:`weight` of one float32 query vector (shape ``(d,)``)."""
        share = (self.outer - self.distance_of_one(query_vector)) / (self.outer - self.inner)
        return min(max(share, 0.0), 1.0)

    def calibrated(self, held_out_distances: np.ndarray, quantile: float = 0.99, width: float = 1.0) -> QueryGuard:
        """The same summary with ``inner`` at the ``quantile`` of held-out training-like queries' distances
        and ``outer`` beyond it by ``width`` times the distance from their median to ``inner``."""
        d = np.asarray(held_out_distances, dtype=np.float64)
        inner = float(np.quantile(d, quantile))
        spread = max(inner - float(np.median(d)), 1e-3 * max(inner, 1e-3))
        return replace(self, inner=inner, outer=inner + width * spread)  # type: ignore[type-var]

    def _check_numbers(self, *arrays: np.ndarray) -> None:
        values = (*arrays, np.array([self.inner, self.outer, *self.numbers().values()]))
        if not all(np.isfinite(v).all() for v in values):
            raise GuardError("guard values contain NaN or inf")
        if not 0 <= self.inner < self.outer:
            raise GuardError(f"guard needs 0 <= inner < outer, got inner {self.inner}, outer {self.outer}")

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.numbers(), "inner": self.inner, "outer": self.outer}

    @staticmethod
    def from_file(tensors: dict[str, np.ndarray], config: Any) -> QueryGuard:
        """The guard of an adapter file: ``tensors`` named ``guard.*``, ``config`` the config's ``guard`` object
        (files without a ``kind`` hold the Gaussian summary, the first guard)."""
        kind = config.get("kind", GaussianGuard.kind) if isinstance(config, dict) else None
        cls = {CentroidGuard.kind: CentroidGuard, GaussianGuard.kind: GaussianGuard}.get(kind)  # type: ignore[arg-type]
        if cls is None:
            expected = f"tensors {sorted(f'{GUARD_PREFIX}{n}' for n in GaussianGuard.TENSORS)}"
            if isinstance(config, dict):
                raise GuardError(f"unknown guard kind {kind!r} (this version reads 'centroids' and 'gaussian')")
            raise GuardError(f"a guard needs {expected} and a 'guard' object in the config")
        names = {f"{GUARD_PREFIX}{n}" for n in cls.TENSORS}
        if set(tensors) != names:
            raise GuardError(f"a {kind} guard needs tensors {sorted(names)}, the file has {sorted(tensors)}")
        try:
            numbers = {k: float(config[k]) for k in (*cls.NUMBERS, "inner", "outer")}
        except (KeyError, TypeError, ValueError) as exc:
            raise GuardError(f"guard config needs {', '.join((*cls.NUMBERS, 'inner', 'outer'))} ({exc})") from None
        return cls(*(tensors[f"{GUARD_PREFIX}{n}"] for n in cls.TENSORS), **numbers)


@dataclass
class CentroidGuard(QueryGuard):
    """``k`` unit centroids of the training queries; a query's distance is ``1 - cos`` to the nearest one."""

    kind: ClassVar[str] = "centroids"
    TENSORS: ClassVar[tuple[str, ...]] = ("centroids",)
    NUMBERS: ClassVar[tuple[str, ...]] = ()

    centroids: np.ndarray
    inner: float = 0.0
    outer: float = 1.0

    def __post_init__(self) -> None:
        self.centroids = np.ascontiguousarray(self.centroids, dtype=np.float32)
        if self.centroids.ndim != 2 or not len(self.centroids):
            raise GuardError(f"guard centroids have shape {self.centroids.shape}: expected (k, d) with k >= 1")
        self._check_numbers(self.centroids)
        self._transposed = np.ascontiguousarray(self.centroids.T)  # (d, k): one product per query

    @property
    def dimension(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def size(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self._transposed.nbytes)

    @classmethod
    def summarise(cls, vectors: np.ndarray, components: int = 16, seed: int = 0) -> CentroidGuard:
        """Spherical k-means (k-means++ start from ``seed``) of the unit training queries, at most one centroid
        per four queries so that each is a cluster, not a query."""
        x = _unit_rows(np.asarray(vectors, dtype=np.float64))
        n = len(x)
        if n == 0:
            raise ValueError("a guard needs at least one training query")
        k = max(1, min(components, n // 4))
        rng = np.random.default_rng(seed)
        centres = [x[rng.integers(n)]]
        for _ in range(1, k):  # k-means++: the next centre far from those chosen, with probability ~ distance²
            gap = np.maximum(1.0 - np.max(x @ np.array(centres).T, axis=1), 0.0) ** 2
            if gap.sum() <= 0:
                break
            centres.append(x[rng.choice(n, p=gap / gap.sum())])
        c = np.array(centres)
        assignment = np.full(n, -1)
        for _ in range(50):
            nearest = np.argmax(x @ c.T, axis=1)
            if (nearest == assignment).all():
                break
            assignment = nearest
            for j in range(len(c)):
                members = x[assignment == j]
                if len(members):  # an empty cluster keeps its centre
                    c[j] = members.sum(axis=0)
            c = _unit_rows(c)
        return cls(c)

    def distance(self, query_vectors: np.ndarray) -> np.ndarray:
        """Per query: ``1 - cos`` to the nearest centroid (0 on a centroid, 1 orthogonal to all of them)."""
        x = np.atleast_2d(np.asarray(query_vectors, dtype=np.float32))
        norms = np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), 1e-12)
        return 1.0 - (x @ self._transposed).max(axis=1) / norms

    def distance_of_one(self, query_vector: np.ndarray) -> float:
        # ``dot`` and Python's ``max`` over a list: each a few microseconds less than ``@`` and ``ndarray.max``
        nearest = max(query_vector.dot(self._transposed).tolist())
        return 1.0 - nearest / max(math.sqrt(float(query_vector.dot(query_vector))), 1e-12)

    def tensors(self) -> dict[str, np.ndarray]:
        return {f"{GUARD_PREFIX}centroids": self.centroids}


@dataclass
class GaussianGuard(QueryGuard):
    """The training queries' mean, ``k`` principal directions with the variance along each and one variance for
    every other direction (a probabilistic PCA). A query's ``distance`` is its Mahalanobis distance from that
    summary per dimension (about 1 for a typical training query)."""

    kind: ClassVar[str] = "gaussian"
    TENSORS: ClassVar[tuple[str, ...]] = ("mean", "components", "variances")
    NUMBERS: ClassVar[tuple[str, ...]] = ("residual_variance",)

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual_variance: float
    inner: float = 0.0
    outer: float = 1.0

    def __post_init__(self) -> None:
        self.mean = np.ascontiguousarray(self.mean, dtype=np.float32)
        self.components = np.ascontiguousarray(self.components, dtype=np.float32)
        self.variances = np.ascontiguousarray(self.variances, dtype=np.float32)
        d = self.mean.shape[0] if self.mean.ndim == 1 else -1
        if self.mean.ndim != 1 or self.components.shape != (d, self.variances.shape[0]) or self.variances.ndim != 1:
            raise GuardError(
                f"guard tensors have shapes mean {self.mean.shape}, components {self.components.shape}, "
                f"variances {self.variances.shape}: expected (d,), (d, k), (k,)"
            )
        self._check_numbers(self.mean, self.components, self.variances)
        if (self.variances <= 0).any() or self.residual_variance <= 0:
            raise GuardError(f"guard needs positive variances, got residual variance {self.residual_variance}")
        # serving runs one product per query: x @ [components | mean], then a weighted sum of squares;
        # components and mean are views into that one array, so the guard holds them once
        self._projection = np.ascontiguousarray(np.hstack([self.components, self.mean[:, None]]))
        self.components, self.mean = self._projection[:, :-1], self._projection[:, -1]
        self._mean_along = self.mean @ self.components
        self._mean_squared = float(self.mean @ self.mean)
        self._along_scale = (1.0 / self.variances - 1.0 / self.residual_variance).astype(np.float32)

    @property
    def dimension(self) -> int:
        return int(self.mean.shape[0])

    @property
    def size(self) -> int:
        return int(self.variances.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self._projection.nbytes + self.variances.nbytes)

    @classmethod
    def summarise(cls, vectors: np.ndarray, components: int = 32) -> GaussianGuard:
        """The summary of ``vectors`` (training queries), with ``inner``/``outer`` still to be calibrated."""
        x = _unit_rows(np.asarray(vectors, dtype=np.float64))
        n, d = x.shape
        k = max(1, min(components, n - 2, d - 1))
        mean = x.mean(axis=0)
        centred = x - mean
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        eigen = singular**2 / max(n - 1, 1)
        floor = max(float(eigen[0]) * 1e-6, 1e-12)
        residual = max(float(eigen[k:].sum() / (d - k)), floor)  # the directions n queries cannot show
        return cls(mean, vt[:k].T, np.maximum(eigen[:k], floor), residual)

    def distance(self, query_vectors: np.ndarray) -> np.ndarray:
        """Per query: Mahalanobis distance from the training queries' summary, per dimension."""
        x = _unit_rows(np.atleast_2d(np.asarray(query_vectors, dtype=np.float32)))
        projected = x @ self._projection
        along = projected[:, :-1] - self._mean_along
        # |x - mean|^2 from x's own norm and its product with the mean; the part along the components is
        # weighted by 1/variance, the rest by 1/residual_variance
        centred = np.einsum("ij,ij->i", x, x) - 2.0 * projected[:, -1] + self._mean_squared
        squared = (along * along) @ self._along_scale + centred / self.residual_variance
        return np.sqrt(np.maximum(squared, 0.0) / self.dimension)

    def distance_of_one(self, query_vector: np.ndarray) -> float:
        projected = query_vector.dot(self._projection)  # ``dot``: less call overhead than ``@`` on 1-D arrays
        squared_norm = float(query_vector.dot(query_vector))
        scale = 1.0 / max(math.sqrt(squared_norm), 1e-12)  # the query normalised, as in :meth:`distance`
        along = projected[:-1] * scale
        along -= self._mean_along
        centred = squared_norm * scale * scale - 2.0 * float(projected[-1]) * scale + self._mean_squared
        squared = float(along.dot(along * self._along_scale)) + centred / self.residual_variance
        return math.sqrt(max(squared, 0.0) / self.dimension)

    def tensors(self) -> dict[str, np.ndarray]:
        return {
            f"{GUARD_PREFIX}mean": np.ascontiguousarray(self.mean),
            f"{GUARD_PREFIX}components": np.ascontiguousarray(self.components),
            f"{GUARD_PREFIX}variances": self.variances,
        }

    def numbers(self) -> dict[str, float]:
        return {"residual_variance": self.residual_variance}


class PopulationCheck:
    """Whether the recent traffic still looks like an adapter's training population: it steps aside when not.

    The per-query guard judges each query alone, and a query of another population that happens to resemble the
    training queries (a German question full of names that Spanish ones also use) gets the whole adapter. Once
    most recent queries lie far from the training queries, the population has changed, and such look-alikes are
    more likely to be strangers than regulars. The check keeps the guard weights of the last ``window`` queries
    an adapter served; after at least ``warmup`` of them (default 20, or ``window`` if smaller), while their
    mean is below ``floor``, it *steps aside*
    (the base model serves every query) and it steps back in as soon as the mean is at or above ``floor``
    again (the weights of queries served by the base model are still recorded).

    Measured in ``docs/benchmarks.md``: the drift benchmark's population switch, and the cost on traffic that
    mixes the training population with another. Serving decides from the queries before the current one, so
    the same traffic in the same order is served the same way. Thread-safe.
    """

    def __init__(self, window: int = 50, floor: float = 0.5, warmup: int | None = None) -> None:
        warmup = min(20, window) if warmup is None else warmup  # default: 20 queries, or the whole window
        if window < 1 or not 1 <= warmup <= window:
            raise ValueError(f"need window >= 1 and 1 <= warmup <= window, got window={window}, warmup={warmup}")
        if not 0.0 < floor <= 1.0:
            raise ValueError(f"floor is a mean guard weight in (0, 1], got {floor!r}")
        self.window, self.floor, self.warmup = int(window), float(floor), int(warmup)
        self._weights: deque[float] = deque(maxlen=self.window)
        self._lock = threading.Lock()
        #: how many times it has stepped aside so far (a turn from serving to not serving)
        self.times_stepped_aside = 0

    def fresh(self) -> PopulationCheck:
        """The same settings with no queries seen (for a newly served adapter)."""
        return PopulationCheck(self.window, self.floor, self.warmup)

    def copy(self) -> PopulationCheck:
        """The same settings, recent weights and count of steps aside (to replay traffic without touching this
        one)."""
        other = self.fresh()
        with self._lock:
            other._weights.extend(self._weights)
            other.times_stepped_aside = self.times_stepped_aside
        return other

    @property
    def recent_weight(self) -> float | None:
        """The mean guard weight of the recent queries (None before any)."""
        with self._lock:
            return sum(self._weights) / len(self._weights) if self._weights else None

    @property
    def stepped_aside(self) -> bool:
        """Whether the base model should serve the next query (the recent population is not the trained one)."""
        with self._lock:
            return self._aside()

    def _aside(self) -> bool:
        n = len(self._weights)
        return n >= self.warmup and sum(self._weights) < self.floor * n

    def serve(self, weights: float | np.ndarray) -> np.ndarray:
        """Serve queries with these guard weights one after the other (one, or a batch in serving order): for
        each, whether the adapter serves it (False: stepped aside), decided from the queries before it; then it
        is recorded. A weight that is not finite (a broken query vector) counts as 0, far from the training."""
        values = np.atleast_1d(np.asarray(weights, dtype=np.float64))
        values = np.where(np.isfinite(values), values, 0.0).tolist()
        served = np.empty(len(values), dtype=bool)
        with self._lock:
            aside = self._aside()
            for i, weight in enumerate(values):
                served[i] = not aside
                self._weights.append(weight)
                now = self._aside()  # the next query's decision
                self.times_stepped_aside += now and not aside
                aside = now
        return served

    def turned(self, served: np.ndarray) -> bool:
        """Whether the check turned (from serving to stepped aside, or back) over the queries :meth:`serve` just
        decided ``served`` for: the state now against the first of them's."""
        return len(served) > 0 and self.stepped_aside == bool(served[0])

    def observe(self, weights: float | np.ndarray) -> bool:
        """Record served queries' guard weights (:meth:`serve`, without the decisions); whether that turned the
        check."""
        return self.turned(self.serve(weights))

    def replay(self, weights: np.ndarray) -> np.ndarray:
        """:meth:`serve` from a copy of this state (left unchanged): what-if traffic."""
        return self.copy().serve(weights)

    def __len__(self) -> int:
        """How many recent queries the check holds (at most ``window``)."""
        with self._lock:
            return len(self._weights)

    def __repr__(self) -> str:
        recent = self.recent_weight
        shown = "none yet" if recent is None else f"{recent:.2f} over {len(self)}"
        return f"PopulationCheck(window={self.window}, floor={self.floor}, warmup={self.warmup}, recent={shown})"
