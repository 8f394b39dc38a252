"""Query-only adapters, applied with numpy (no torch at inference time), and their safe file format.

Kinds (``y`` is the adapted query, ``x`` the base query embedding):

- ``linear``: ``y = x Wᵀ + b``, a full d×d matrix initialised to the identity.
- ``low_rank``: ``y = x + (x V) Uᵀ + b``, identity plus a rank-r update; small, for little data and
  for many adapters on one corpus.
- ``orthogonal``: ``y = x Rᵀ`` with R a rotation (det +1), fitted in closed form (Procrustes) or trained.
- ``residual_mlp``: ``y = x + W₂ gelu(W₁ x + b₁) + b₂`` with W₂ initialised to zero.

Every kind starts as the identity, so an untrained adapter changes nothing. With ``normalize=True``
(cosine stores) the output is re-normalised to unit length.

**Migration adapters** (changing the embedding model without re-embedding the corpus): the input is the new
query model (``base_model``, ``dimension``), the output the model that embedded the stored documents
(``output_model``, ``output_dimension``). ``linear`` is then a full ``d_out × d_in`` matrix; ``low_rank`` and
``residual_mlp`` replace the identity by a fixed ``projection`` ``P`` (``d_out × d_in``, the closed-form
least-squares map new → old that :func:`~adapter_retrievers.training.migration.fit_migration` fits on documents
embedded by both models): ``y = x Pᵀ + (x V) Uᵀ + b`` and ``y = x Pᵀ + W₂ gelu(W₁ x + b₁) + b₂``, starting
as ``P``. ``orthogonal`` needs equal dimensions (a rotation cannot change them); ``identity`` maps no model
into another. Migration files are format version 2 (this version reads 1 and 2).

An adapter file is a folder with ``model.safetensors`` (tensors only: loading never unpickles) and
``adapter_config.json``; loading checks format, shapes, dtypes and finiteness, and can refuse a
mismatched base model or dimension.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from adapter_retrievers._files import atomic_folder
from adapter_retrievers.data import normalize_rows
from adapter_retrievers.guards import GUARD_PREFIX, GuardError, QueryGuard

FORMAT_VERSION = 2  # 2: adapters between two models (output_model, output_dimension); ordinary ones are still 1
READABLE_VERSIONS = (1, 2)
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "adapter_config.json"


class AdapterFileError(ValueError):
    """An adapter file is missing, corrupted or does not match what it is loaded for."""


class AdapterMismatchError(AdapterFileError):
    """The adapter was trained for another base model or dimension than the one it is used with."""


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh form: matches ``torch.nn.functional.gelu(x, approximate="tanh")`` used in training."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


@dataclass
class QueryAdapter:
    """A fitted query adapter. Create one with :class:`~adapter_retrievers.AdapterTrainer` or :meth:`identity`."""

    kind: ClassVar[str] = "base"

    dimension: int
    base_model: str
    params: dict[str, np.ndarray] = field(default_factory=dict)
    normalize: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)
    guard: QueryGuard | None = None
    #: the model whose vectors the store holds (None: ``base_model``, an ordinary adapter)
    output_model: str | None = None
    #: the dimension of the stored vectors (None: ``dimension``)
    output_dimension: int | None = None

    # ---------------------------------------------------------------------------------- registry

    _kinds: ClassVar[dict[str, type[QueryAdapter]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        QueryAdapter._kinds[cls.kind] = cls

    @classmethod
    def kinds(cls) -> list[str]:
        return sorted(k for k in cls._kinds)

    @classmethod
    def create(
        cls,
        kind: str,
        dimension: int,
        base_model: str,
        normalize: bool = True,
        output_model: str | None = None,
        output_dimension: int | None = None,
        projection: np.ndarray | None = None,
        **options: Any,
    ) -> QueryAdapter:
        """An adapter of ``kind`` initialised to the identity (``options``: ``rank``, ``hidden``, ``seed``).

        With ``output_model``/``output_dimension`` (a migration adapter) it starts as ``projection``
        (``output_dimension × dimension``; by default the rectangular identity, which means nothing: pass the
        least-squares map, as :func:`~adapter_retrievers.training.migration.fit_migration` does).
        """
        if kind not in cls._kinds:
            raise ValueError(f"unknown adapter kind {kind!r}; choose one of {cls.kinds()}")
        adapter_cls = cls._kinds[kind]
        out_dim = dimension if output_dimension is None else int(output_dimension)
        migration = _maps_models(base_model, dimension, output_model, out_dim)
        params = adapter_cls.initial_params(dimension, **options)
        if migration and kind in ("linear", "low_rank", "residual_mlp"):
            start = np.eye(out_dim, dimension, dtype=np.float32) if projection is None else projection
            start = np.asarray(start, dtype=np.float32)
            if start.shape != (out_dim, dimension):
                raise ValueError(f"projection has shape {start.shape}, expected {(out_dim, dimension)}")
            params = adapter_cls.initial_params(max(dimension, out_dim), **options)
            params = _migration_params(kind, params, dimension, out_dim, start)
        return adapter_cls(dimension, base_model, params, normalize, {}, None, output_model, out_dim)

    @classmethod
    def identity(cls, dimension: int, base_model: str, normalize: bool = True) -> QueryAdapter:
        """The no-op adapter: what the trainer returns when nothing beat the base model."""
        return IdentityAdapter(dimension, base_model, {}, normalize)

    # --------------------------------------------------------------------------- per-kind parts

    @classmethod
    def initial_params(cls, dimension: int, **options: Any) -> dict[str, np.ndarray]:
        return {}

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def _apply(self, x: np.ndarray) -> np.ndarray:
        return x

    # ------------------------------------------------------------------------------------ public

    def __post_init__(self) -> None:
        self.output_model = self.base_model if self.output_model is None else self.output_model
        self.output_dimension = self.dimension if self.output_dimension is None else int(self.output_dimension)
        if self.output_dimension <= 0:
            raise AdapterFileError(f"output dimension must be positive, got {self.output_dimension}")
        self.params = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.params.items()}
        _check_params(self, source="adapter parameters")
        if self.guard is not None and self.guard.dimension != self.dimension:
            raise AdapterFileError(f"guard has dimension {self.guard.dimension}, the adapter {self.dimension}")
        if self.guard is not None and self.is_migration:
            raise AdapterFileError("a migration adapter cannot have a guard: the base vector is in another space")

    @property
    def is_migration(self) -> bool:
        """True when the adapter maps one model's queries into another model's document space."""
        return _maps_models(self.base_model, self.dimension, self.output_model, self.output_dimension)

    def transform(self, query_vectors: Any) -> np.ndarray:
        """Adapt one query vector (shape ``(d,)``) or a batch (``(n, d)``); numpy in, numpy out.

        With a :attr:`guard`, each query gets the adapter only as far as it resembles the training queries.
        """
        x = np.asarray(query_vectors, dtype=np.float32)
        if x.ndim not in (1, 2) or x.shape[-1] != self.dimension:
            raise AdapterMismatchError(
                f"query side: query vectors have shape {x.shape}, but this adapter expects dimension "
                f"{self.dimension} (base model {self.base_model!r})"
            )
        if x.ndim == 1:  # one query (what a retriever serves): scalar arithmetic where numpy calls would cost more
            y = self._apply(x)
            if self.guard is not None:
                w = self.guard.weight_of_one(x)
                if w < 1.0:
                    y = w * y + (1.0 - w) * x
            return y / max(math.sqrt(float(y.dot(y))), 1e-12) if self.normalize else y
        y = self._apply(x)
        if self.guard is not None:  # far from the training queries: towards the base vector
            w = self.guard.weight(x)[:, None]
            y = w * y + (1.0 - w) * x
        return normalize_rows(y) if self.normalize else y

    __call__ = transform

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind!r}, dimension={self.dimension}, base_model={self.base_model!r}, "
            + (
                f"output_dimension={self.output_dimension}, output_model={self.output_model!r}, "
                if self.is_migration
                else ""
            )
            + f"parameters={self.n_parameters:,}, normalize={self.normalize}"
            + (f", guard=[{self.guard.inner:.3f}, {self.guard.outer:.3f}]" if self.guard is not None else "")
            + ")"
        )

    @property
    def n_parameters(self) -> int:
        return int(sum(v.size for v in self.params.values()))

    @property
    def nbytes(self) -> int:
        """Bytes held in memory: the parameters and the guard's summary."""
        guard = self.guard.nbytes if self.guard is not None else 0
        return int(sum(v.nbytes for v in self.params.values())) + guard

    def with_guard(self, guard: QueryGuard | None) -> QueryAdapter:
        """The same adapter with another guard (None: none, the adapter applies to every query alike)."""
        return replace(self, params=dict(self.params), metadata=dict(self.metadata), guard=guard)

    @property
    def is_identity(self) -> bool:
        return self.kind == "identity"

    def check_compatible(
        self,
        base_model: str | None = None,
        dimension: int | None = None,
        output_model: str | None = None,
        output_dimension: int | None = None,
    ) -> None:
        """Raise :class:`AdapterMismatchError` if this adapter was trained for another model or dimension.

        ``base_model``/``dimension``: the query encoder (the adapter's input); ``output_model``/``output_dimension``:
        the model and dimension of the vectors the store holds (its output). The error names the wrong side.
        """
        from adapter_retrievers.encoders import canonical_model_id

        if self.is_migration and self._looks_swapped(base_model, dimension, output_model, output_dimension):
            raise AdapterMismatchError(
                f"query and index sides look swapped: this adapter maps {self.dimension}-d queries of "
                f"{self.base_model!r} (the new model, the query encoder) into the {self.output_dimension}-d index "
                f"of {self.output_model!r} (the old model, the stored vectors); you passed them the other way round"
            )
        if dimension is not None and int(dimension) != self.dimension:
            raise AdapterMismatchError(
                f"query side: adapter expects {self.dimension}-dimensional embeddings from {self.base_model!r}, "
                f"but the embeddings have dimension {dimension}: train an adapter for this model"
            )
        if base_model is not None and canonical_model_id(base_model) != canonical_model_id(self.base_model):
            raise AdapterMismatchError(
                f"query side: adapter was trained on embeddings of {self.base_model!r}, not {base_model!r}: train an "
                "adapter for this model (or pass the matching model id if it is the same model under another name)"
            )
        if output_dimension is not None and int(output_dimension) != self.output_dimension:
            raise AdapterMismatchError(
                f"index side: adapter outputs {self.output_dimension}-dimensional vectors of {self.output_model!r}, "
                f"but the stored document vectors have dimension {output_dimension}: use an adapter into the "
                "model that embedded this index"
            )
        if output_model is not None and canonical_model_id(output_model) != canonical_model_id(self.output_model):
            raise AdapterMismatchError(
                f"index side: adapter maps into the document space of {self.output_model!r}, but the index was "
                f"embedded with {output_model!r}: use an adapter into the model that embedded this index"
            )

    def _looks_swapped(
        self, base_model: str | None, dimension: int | None, output_model: str | None, output_dimension: int | None
    ) -> bool:
        """Whether the query side given is this adapter's index side and the other way round (the models when
        both are given, else the dimensions when they differ)."""
        from adapter_retrievers.encoders import canonical_model_id

        if base_model is not None and output_model is not None:
            same = canonical_model_id(base_model) == canonical_model_id(self.base_model)
            crossed = canonical_model_id(base_model) == canonical_model_id(self.output_model) and canonical_model_id(
                output_model
            ) == canonical_model_id(self.base_model)
            return crossed and not same
        return (
            dimension is not None
            and output_dimension is not None
            and self.dimension != self.output_dimension
            and (int(dimension), int(output_dimension)) == (self.output_dimension, self.dimension)
        )

    def save(self, path: os.PathLike | str, overwrite: bool = False) -> Path:
        """Write ``model.safetensors`` and ``adapter_config.json`` into folder ``path``, atomically.

        An existing adapter folder is replaced only with ``overwrite=True``; a folder holding other files
        never is.
        """
        from safetensors.numpy import save

        from adapter_retrievers.outputs import check_output, holds_only

        path = check_output(
            path, overwrite, folder=True, replaceable=holds_only((WEIGHTS_FILE, CONFIG_FILE)), name="adapter folder"
        )
        config = {
            "format_version": FORMAT_VERSION if self.is_migration else 1,  # 1: older readers still load these
            "kind": self.kind,
            "dimension": self.dimension,
            "base_model": self.base_model,
            **(
                {"output_dimension": self.output_dimension, "output_model": self.output_model}
                if self.is_migration
                else {}
            ),
            "normalize": self.normalize,
            "similarity": "cosine" if self.normalize else "dot",
            "parameters": {k: list(v.shape) for k, v in self.params.items()},
            "created": self.metadata.get("created") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "metadata": self.metadata,
        }
        tensors = dict(self.params)
        if self.guard is not None:
            config["guard"] = self.guard.config()
            tensors.update(self.guard.tensors())
        with atomic_folder(path) as tmp:
            (tmp / WEIGHTS_FILE).write_bytes(save(tensors, metadata={"format": "adapter-retrievers"}))
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=_json_default) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(
        cls,
        path: os.PathLike | str,
        base_model: str | None = None,
        dimension: int | None = None,
        output_model: str | None = None,
        output_dimension: int | None = None,
    ) -> QueryAdapter:
        """Load an adapter folder; pass ``base_model``/``dimension`` (the query encoder) and
        ``output_model``/``output_dimension`` (the store's vectors) to refuse a mismatched one."""
        from safetensors import SafetensorError
        from safetensors.numpy import load

        path = Path(path)
        config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
        if not config_path.exists() or not weights_path.exists():
            raise AdapterFileError(f"{path} is not an adapter folder: expected {CONFIG_FILE} and {WEIGHTS_FILE}")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, an over-long integer, deep nesting
            raise AdapterFileError(f"{config_path}: not valid JSON ({type(exc).__name__}: {exc})") from exc
        if not isinstance(config, dict):
            raise AdapterFileError(f"{config_path}: expected a JSON object")
        version = config.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version not in READABLE_VERSIONS:
            raise AdapterFileError(
                f"{config_path}: format_version {version!r} is not supported (this version reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}); upgrade adapter-retrievers or retrain the adapter"
            )
        kind = config.get("kind")
        adapter_cls = cls._kinds.get(kind) if isinstance(kind, str) else None
        if adapter_cls is None:
            raise AdapterFileError(f"{config_path}: unknown adapter kind {kind!r}; known: {cls.kinds()}")
        dim, model = config.get("dimension"), config.get("base_model")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0 or not isinstance(model, str):
            raise AdapterFileError(f"{config_path}: missing or invalid 'dimension' or 'base_model'")
        out_dim, out_model = config.get("output_dimension", dim), config.get("output_model", model)
        if version == 1 and ("output_dimension" in config or "output_model" in config):
            raise AdapterFileError(f"{config_path}: output_dimension/output_model need format_version 2")
        if not isinstance(out_dim, int) or isinstance(out_dim, bool) or out_dim <= 0 or not isinstance(out_model, str):
            raise AdapterFileError(f"{config_path}: invalid 'output_dimension' or 'output_model'")
        metadata = config.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise AdapterFileError(f"{config_path}: 'metadata' must be a JSON object")
        try:
            params = load(weights_path.read_bytes())
        except (SafetensorError, ValueError, OSError) as exc:
            raise AdapterFileError(
                f"{weights_path} is not a valid safetensors file ({exc}); the file is corrupted or was not "
                "written by adapter-retrievers: save the adapter again"
            ) from exc
        for name, value in params.items():
            if value.dtype != np.float32:
                raise AdapterFileError(f"{weights_path}: tensor {name!r} has dtype {value.dtype}, expected float32")
        guard_tensors = {k: params.pop(k) for k in [k for k in params if k.startswith(GUARD_PREFIX)]}
        try:
            guard = None
            if guard_tensors or "guard" in config:
                guard = QueryGuard.from_file(guard_tensors, config.get("guard"))
            normalize = bool(config.get("normalize", True))
            adapter = adapter_cls(dim, model, params, normalize, metadata, guard, out_model, out_dim)
        except (AdapterFileError, GuardError) as exc:
            raise AdapterFileError(f"{weights_path}: {exc}") from exc
        probe = np.random.default_rng(0).standard_normal((4, dim)).astype(np.float32)
        with np.errstate(all="ignore"):
            finite = np.isfinite(adapter._apply(probe / np.linalg.norm(probe, axis=1, keepdims=True))).all()
        if not finite:
            raise AdapterFileError(
                f"{weights_path}: the adapter turns unit vectors into NaN or inf (weights far too large); the file "
                "is corrupted or was not written by adapter-retrievers: save the adapter again"
            )
        adapter.check_compatible(base_model, dimension, output_model, output_dimension)
        return adapter


def _maps_models(base_model: str, dimension: int, output_model: str | None, output_dimension: int | None) -> bool:
    from adapter_retrievers.encoders import canonical_model_id

    if output_dimension is not None and int(output_dimension) != int(dimension):
        return True
    return output_model is not None and canonical_model_id(output_model) != canonical_model_id(base_model)


def _migration_params(
    kind: str, params: dict[str, np.ndarray], d_in: int, d_out: int, projection: np.ndarray
) -> dict[str, np.ndarray]:
    """The parameters of a migration adapter of ``kind`` that starts as ``projection`` (from square ones)."""
    if kind == "linear":
        return {"weight": projection.copy(), "bias": np.zeros(d_out, dtype=np.float32)}
    if kind == "low_rank":
        return {
            "projection": projection.copy(),
            "up": np.zeros((d_out, params["up"].shape[1]), dtype=np.float32),
            "down": np.ascontiguousarray(params["down"][:d_in]),
            "bias": np.zeros(d_out, dtype=np.float32),
        }
    return {  # residual_mlp
        "projection": projection.copy(),
        "w1": np.ascontiguousarray(params["w1"][:, :d_in]),
        "b1": params["b1"],
        "w2": np.zeros((d_out, params["w2"].shape[1]), dtype=np.float32),
        "b2": np.zeros(d_out, dtype=np.float32),
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def _check_params(adapter: QueryAdapter, source: str) -> None:
    expected = adapter.expected_shapes()
    if set(adapter.params) != set(expected):
        raise AdapterFileError(
            f"{source}: a {adapter.kind!r} adapter needs tensors {sorted(expected)}, found {sorted(adapter.params)}"
        )
    for name, shape in expected.items():
        value = adapter.params[name]
        if value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
            raise AdapterFileError(
                f"{source}: tensor {name!r} has shape {value.shape}, expected {shape} for dimension {adapter.dimension}"
                + (f" → {adapter.output_dimension}" if adapter.output_dimension != adapter.dimension else "")
            )
        if not np.isfinite(value).all():
            raise AdapterFileError(f"{source}: tensor {name!r} contains NaN or inf")


class IdentityAdapter(QueryAdapter):
    """No change: the base model's own query vector (re-normalised for cosine)."""

    kind = "identity"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.is_migration:
            raise AdapterFileError(
                f"an identity adapter cannot map {self.base_model!r} ({self.dimension}-d) into {self.output_model!r} "
                f"({self.output_dimension}-d): fit a migration adapter"
            )


class LinearAdapter(QueryAdapter):
    kind = "linear"

    @classmethod
    def initial_params(cls, dimension: int, **options: Any) -> dict[str, np.ndarray]:
        return {"weight": np.eye(dimension, dtype=np.float32), "bias": np.zeros(dimension, dtype=np.float32)}

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        out = self.output_dimension or self.dimension
        return {"weight": (out, self.dimension), "bias": (out,)}

    def _apply(self, x: np.ndarray) -> np.ndarray:
        return x @ self.params["weight"].T + self.params["bias"]


class LowRankAdapter(QueryAdapter):
    kind = "low_rank"

    @classmethod
    def initial_params(cls, dimension: int, rank: int = 16, seed: int = 0, **options: Any) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {
            "up": np.zeros((dimension, rank), dtype=np.float32),  # zero: starts as the identity
            "down": (rng.standard_normal((dimension, rank)) / math.sqrt(dimension)).astype(np.float32),
            "bias": np.zeros(dimension, dtype=np.float32),
        }

    @property
    def rank(self) -> int:
        return int(self.params["up"].shape[1])

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        up = self.params.get("up")
        rank = up.shape[-1] if up is not None and up.ndim == 2 else 0
        out = self.output_dimension or self.dimension
        shapes = {"up": (out, rank), "down": (self.dimension, rank), "bias": (out,)}
        return {**shapes, "projection": (out, self.dimension)} if self.is_migration else shapes

    def _apply(self, x: np.ndarray) -> np.ndarray:
        return _start(self, x) + (x @ self.params["down"]) @ self.params["up"].T + self.params["bias"]


class OrthogonalAdapter(QueryAdapter):
    kind = "orthogonal"

    @classmethod
    def initial_params(cls, dimension: int, **options: Any) -> dict[str, np.ndarray]:
        return {"rotation": np.eye(dimension, dtype=np.float32)}

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"rotation": (self.dimension, self.dimension)}

    def __post_init__(self) -> None:
        if (self.output_dimension or self.dimension) != self.dimension:
            raise AdapterFileError(
                f"an orthogonal adapter cannot change the dimension ({self.dimension} → {self.output_dimension}): "
                "use a linear, low_rank or residual_mlp migration adapter"
            )
        super().__post_init__()
        rotation = self.params["rotation"].astype(np.float64)
        error = np.abs(rotation @ rotation.T - np.eye(self.dimension)).max()
        if error > 1e-3:
            raise AdapterFileError(f"tensor 'rotation' is not orthogonal (max |R Rᵀ - I| = {error:.2g})")

    def _apply(self, x: np.ndarray) -> np.ndarray:
        return x @ self.params["rotation"].T

    @classmethod
    def procrustes(
        cls, queries: np.ndarray, targets: np.ndarray, base_model: str, normalize: bool = True
    ) -> OrthogonalAdapter:
        """Closed-form rotation R (det +1) minimising ``Σ‖R qᵢ − tᵢ‖²`` (orthogonal Procrustes)."""
        m = targets.astype(np.float64).T @ queries.astype(np.float64)
        u, _, vt = np.linalg.svd(m)
        if np.linalg.det(u @ vt) < 0:  # stay in SO(d): a rotation, not a reflection
            u[:, -1] = -u[:, -1]
        return cls(queries.shape[1], base_model, {"rotation": (u @ vt).astype(np.float32)}, normalize)


class ResidualMLPAdapter(QueryAdapter):
    kind = "residual_mlp"

    @classmethod
    def initial_params(cls, dimension: int, hidden: int = 256, seed: int = 0, **options: Any) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(dimension)
        return {
            "w1": rng.uniform(-bound, bound, (hidden, dimension)).astype(np.float32),
            "b1": np.zeros(hidden, dtype=np.float32),
            "w2": np.zeros((dimension, hidden), dtype=np.float32),  # zero: starts as the identity
            "b2": np.zeros(dimension, dtype=np.float32),
        }

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        w1 = self.params.get("w1")
        hidden = w1.shape[0] if w1 is not None and w1.ndim == 2 else 0
        d, out = self.dimension, self.output_dimension or self.dimension
        shapes = {"w1": (hidden, d), "b1": (hidden,), "w2": (out, hidden), "b2": (out,)}
        return {**shapes, "projection": (out, d)} if self.is_migration else shapes

    def _apply(self, x: np.ndarray) -> np.ndarray:
        h = gelu_tanh(x @ self.params["w1"].T + self.params["b1"])
        return _start(self, x) + h @ self.params["w2"].T + self.params["b2"]


def _start(adapter: QueryAdapter, x: np.ndarray) -> np.ndarray:
    """What a residual kind adds its change to: ``x`` itself, or for a migration adapter ``x Pᵀ``."""
    return x @ adapter.params["projection"].T if "projection" in adapter.params else x


def blend(adapter: QueryAdapter, alpha: float) -> QueryAdapter:
    """``alpha * adapter + (1 - alpha) * identity``, again an adapter of the same kind (linear kinds only).

    For ``linear``: ``W' = alpha W + (1 - alpha) I``, ``b' = alpha b``; for ``low_rank`` and
    ``residual_mlp`` the residual branch is scaled by ``alpha`` (for a migration adapter: towards its
    projection). A linear migration adapter has no identity to blend with.
    """
    if alpha == 1.0 or adapter.is_identity:
        return adapter
    p = dict(adapter.params)
    if adapter.kind == "linear" and adapter.is_migration:
        raise ValueError("a linear migration adapter has no identity to blend with")
    if adapter.kind == "linear":
        eye = np.eye(adapter.dimension, dtype=np.float32)
        p["weight"], p["bias"] = alpha * p["weight"] + (1 - alpha) * eye, alpha * p["bias"]
    elif adapter.kind == "low_rank":
        p["up"], p["bias"] = alpha * p["up"], alpha * p["bias"]
    elif adapter.kind == "residual_mlp":
        p["w2"], p["b2"] = alpha * p["w2"], alpha * p["b2"]
    else:
        raise ValueError(f"cannot blend a {adapter.kind!r} adapter with the identity")
    return replace(adapter, params=p, metadata=dict(adapter.metadata))


def average(adapters: list[QueryAdapter]) -> QueryAdapter:
    """The mean of several linear adapters of one model: again one linear adapter, at no serving cost.

    For linear adapters the mean of the matrices scores every document by the mean of the adapters' scores
    (before the query's normalisation, which does not change its ranking): an ensemble in one matrix.
    """
    first = adapters[0]
    if any(
        a.kind != "linear" or (a.dimension, a.output_dimension) != (first.dimension, first.output_dimension)
        for a in adapters
    ):
        raise ValueError("only linear adapters of one dimension average into one adapter")
    if len(adapters) == 1:
        return first
    params = {name: np.mean([a.params[name] for a in adapters], axis=0) for name in first.params}
    return replace(first, params=params, metadata=dict(first.metadata))
