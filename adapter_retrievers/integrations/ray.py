"""Ray: harvest and embed on Ray Data, on a local Ray or an existing cluster, with the results of one process.

- :func:`harvest_on_ray` runs :func:`adapter_retrievers.harvest.harvest` on Ray Data: the same stages
  (:mod:`adapter_retrievers.harvest.join`) with each file parsed by the format's own reader inside
  ``map_batches`` and signals joined to their retrievals by two group-bys on Ray (target, then retrieval
  id; each on buckets of those keys). It returns the same :class:`~adapter_retrievers.harvest.HarvestResult`:
  the same pairs, first-seen times, adapter versions, sessions and report counts.
- :func:`embed_on_ray` embeds texts by ``map_batches`` over an actor pool of your encoder (``concurrency``
  actors, ``num_gpus`` each where there are GPUs) and writes (text hash, vector) Parquet into the embedding
  cache folder, where :class:`~adapter_retrievers.encoders.CachedEncoder` and
  ``AdapterTrainer(cache_dir=...)`` find the vectors; texts already cached are not embedded again.

Both join the Ray of the process when there is one, else ``address`` (``"auto"``: the cluster this
machine belongs to, as ``ray start`` or KubeRay set it up), else start a local Ray.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from adapter_retrievers.data import Corpus, ReadReport
from adapter_retrievers.harvest.join import (
    DEFAULT_METADATA_ID_FIELDS,
    DocumentMatcher,
    KeptRetrieval,
    Outcome,
    apply_signals,
    assemble,
    check_format,
    ignored_files_report,
    latest_copy,
    parse,
    parse_file,
    resolve_targets,
    retrievals_of,
    signals_of,
)
from adapter_retrievers.harvest.policy import SignalPolicy
from adapter_retrievers.harvest.records import TraceFiles, table_records, trace_files
from adapter_retrievers.harvest.report import HarvestReport, HarvestResult


def init_ray(address: str | None = None) -> None:
    """Use the Ray this process already runs; else join ``address`` (``"auto"``, ``"ray://host:10001"``);
    else start a local Ray on this machine's cores, quietly (no dashboard, workers' logs kept in their files)."""
    import ray

    if ray.is_initialized():
        return
    if address is None and not os.environ.get("RAY_ADDRESS"):
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="warning")
    else:
        ray.init(address=address, logging_level="warning")


@contextlib.contextmanager
def _data_context(progress: bool) -> Iterator[None]:
    """Ray Data's settings for this call only: progress bars on or off, and the sort-based shuffle for the
    group-bys. The join's rows are few (signals and the retrievals they name), and a sort shuffle runs as
    tasks, where the hash shuffle starts aggregator actors for every group-by (measured on the bundled
    log, 2 workers: 6 s against 12-18 s a harvest)."""
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    context = DataContext.get_current()
    names = ("enable_progress_bars", "print_on_execution_start", "shuffle_strategy")
    saved = [getattr(context, name) for name in names]
    for name, value in zip(names, (progress, progress, ShuffleStrategy.SORT_SHUFFLE_PULL_BASED)):
        setattr(context, name, value)
    try:
        yield
    finally:
        for name, value in zip(names, saved):
            setattr(context, name, value)


BUCKETS = 256  # the group-bys' groups: rows whose join keys hash alike, joined key by key inside one call


def _schema() -> Any:
    """Every row between the stages: a join key, its bucket, what the row is (signal, retrieval, member of a
    trace, report, unknown target, outcome) and the pickled record."""
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("bucket", pa.int32()), ("role", pa.string()), ("data", pa.binary())])


def _rows(rows: list[tuple[str, str, Any]]) -> Any:
    import pyarrow as pa

    keys, roles, data = zip(*rows) if rows else ((), (), ())
    buckets = [zlib.crc32(key.encode()) % BUCKETS for key in keys]
    return pa.table([list(keys), buckets, list(roles), [pickle.dumps(d, protocol=5) for d in data]], schema=_schema())


def _loaded(table: Any) -> Iterator[tuple[str, str, Any]]:
    for key, role, data in zip(table["key"].to_pylist(), table["role"].to_pylist(), table["data"].to_pylist()):
        yield key, role, pickle.loads(data)


# -------------------------------------------------------------------------------------------- harvest


@dataclass
class _Units:
    """What the workers read: trace files (one task each) or the blocks of a user's Dataset."""

    files: TraceFiles | None
    blocks: list[Any] | None  # ObjectRefs of pyarrow tables

    def __len__(self) -> int:
        return len(self.files.paths) if self.files is not None else len(self.blocks or [])

    def parse(self, unit: int, fmt: str, report: ReadReport, policy: SignalPolicy) -> Any:
        if self.files is not None:
            return parse_file(self.files, unit, fmt, report, policy)
        import ray

        table = ray.get(self.blocks[unit])
        return parse(table_records(table, f"dataset block {unit}", report), fmt, report, policy)


def _signal_rows(batch: Any, units: _Units, fmt: str, policy: SignalPolicy) -> Any:
    """Pass 1 on a worker: the signals of one file, keyed by their target."""
    rows = []
    for unit in batch["unit"].to_pylist():
        for ordinal, signal in signals_of(units.parse(unit, fmt, ReadReport(), policy), unit):
            rows.append((signal.target, "signal", (ordinal, signal)))
    return _rows(rows)


def _retrieval_rows(batch: Any, units: _Units, fmt: str, policy: SignalPolicy, targets: set[str]) -> Any:
    """Pass 2 on a worker: the retrievals of one file a signal may point to, keyed by their id and (when a signal
    names it) by their trace id, and the file's report: the single process's pass 2, file by file."""
    rows: list[tuple[str, str, Any]] = []
    for unit in batch["unit"].to_pylist():
        report = HarvestReport()
        for retrieval in retrievals_of(units.parse(unit, fmt, report.skipped, policy), unit, targets, report):
            rows.append((retrieval.retrieval_id, "retrieval", retrieval))
            if retrieval.trace_id in targets:
                rows.append((retrieval.trace_id, "member", retrieval))
        rows.append((f"\0report {unit}", "report", (unit, report)))
    return _rows(rows)


_PASSED = ("report",)


def _by_key(join: Callable[..., list[tuple[str, str, Any]]], **kwargs: Any) -> Callable[[Any], Any]:
    """A group-by's function over one bucket: ``join`` applied to the rows of each key in it. A bucket of many
    keys is one call and one table out, where a group per key cost a call and a table each (at 20M retrievals,
    200,000 groups twice: most of what Ray spent beyond the parse)."""

    def each_key(bucket: Any) -> Any:
        keys: dict[str, list[tuple[str, str, Any]]] = {}
        for row in _loaded(bucket):
            keys.setdefault(row[0], []).append(row)
        return _rows([out for rows in keys.values() for out in join(rows, **kwargs)])

    return each_key


def _resolve_group(rows: list[tuple[str, str, Any]]) -> list[tuple[str, str, Any]]:
    """Group-by 1, on the target: the retrievals each signal applies to (re-keyed by retrieval id)."""
    signals = [data for _, role, data in rows if role == "signal"]
    retrievals = [data for _, role, data in rows if role in ("retrieval", "member")]
    out = [(key, role, data) for key, role, data in rows if role in (*_PASSED, "retrieval")]
    if signals:
        applied, unknown = resolve_targets(signals, retrievals)
        out += [(rid, "signal", signal) for rid, applied_signals in applied.items() for signal in applied_signals]
        out += [(signal.target, "unknown", (ordinal, signal)) for ordinal, signal in unknown]
    return out


def _apply_group(
    rows: list[tuple[str, str, Any]], policy: SignalPolicy, match: DocumentMatcher
) -> list[tuple[str, str, Any]]:
    """Group-by 2, on the retrieval id: the policy applied to the retrieval's signals."""
    copies: list[KeptRetrieval] = [data for _, role, data in rows if role == "retrieval"]
    out = [(key, role, data) for key, role, data in rows if role in (*_PASSED, "unknown")]
    if copies:
        merged = ReadReport()
        signals = [data for _, role, data in rows if role == "signal"]
        outcome = apply_signals(latest_copy(copies, merged), signals, policy, match, merged)
        out.append((copies[0].retrieval_id, "outcome", outcome))
    return out


def harvest_on_ray(
    traces: Any,
    corpus: Corpus,
    fmt: str = "ours",
    policy: SignalPolicy | None = None,
    metadata_id_fields: tuple[str, ...] = DEFAULT_METADATA_ID_FIELDS,
    name: str | None = None,
    *,
    workers: int | None = None,
    address: str | None = None,
    progress: bool = False,
) -> HarvestResult:
    """:func:`~adapter_retrievers.harvest.harvest` on Ray Data: same arguments, same result.

    ``traces``: trace files (JSONL, JSONL.gz, JSON arrays, Parquet with one record a row), folders of them,
    pyarrow filesystem URLs (``s3://bucket/traces/``, ``gs://``, ``file://``), or a ``ray.data.Dataset`` whose
    rows are the records (its columns the records' keys, as ``ray.data.read_json`` gives them). Each file is
    one task: shard a large export into many files. A Dataset runs once and is then read block by block
    (its blocks stay in Ray's object store, spilled to disk when they do not fit); its block order is the
    record order, so set ``DataContext.execution_options.preserve_order`` for a reproducible one.

    ``workers``: parsing tasks at once (default: Ray's choice, one per CPU). Like the single process, each file
    is read twice, signals first, then only the retrievals a signal may point to, so no stage holds every
    retrieval (pickling every retrieval for one read measured 2.7x the parse time of a file); two group-bys
    join them (by target, then by retrieval id; each groups 256 buckets of keys and joins key by key inside a
    call). The signal targets (one id per signal) go to the pass-2
    tasks and the corpus' ids and content hashes to the join tasks; the driver holds the signals' outcomes
    and the report.
    """
    import ray
    import ray.data

    check_format(fmt)
    policy = policy or SignalPolicy()
    match = DocumentMatcher(corpus, metadata_id_fields)
    is_dataset = isinstance(traces, ray.data.Dataset)
    files = None if is_dataset else trace_files(traces)  # every check before any work
    init_ray(address)
    with _data_context(progress):
        units = _Units(files, traces.to_arrow_refs() if is_dataset else None)
        if not len(units):
            raise ValueError("the Dataset holds no blocks to harvest")
        compute = ray.data.TaskPoolStrategy(size=min(workers, len(units))) if workers else None
        items = ray.data.from_items([{"unit": i} for i in range(len(units))], override_num_blocks=len(units))
        common = {"units": units, "fmt": fmt, "policy": policy}

        def each_unit(fn: Callable[..., Any], **kwargs: Any) -> Any:
            return items.map_batches(
                fn, batch_size=1, batch_format="pyarrow", compute=compute, fn_kwargs={**common, **kwargs}
            )

        signals = each_unit(_signal_rows).materialize()
        targets = {key for batch in signals.iter_batches(batch_format="pyarrow") for key in batch["key"].to_pylist()}
        joined = (
            signals.union(each_unit(_retrieval_rows, targets=targets))
            .groupby("bucket")
            .map_groups(_by_key(_resolve_group), batch_format="pyarrow")
            .groupby("bucket")
            .map_groups(_by_key(_apply_group, policy=policy, match=match), batch_format="pyarrow")
        )
        reports: dict[int, HarvestReport] = {}
        unknown = []
        outcomes: list[Outcome] = []
        for batch in joined.iter_batches(batch_format="pyarrow"):
            for _, role, data in _loaded(batch):
                if role == "report":
                    reports[data[0]] = data[1]
                elif role == "unknown":
                    unknown.append(data)
                else:
                    outcomes.append(data)
    parts = [reports[unit] for unit in sorted(reports)]
    if files is not None:
        parts.append(ignored_files_report(files))
    return assemble(parts, unknown, outcomes, name or f"harvest:{fmt}")


# ---------------------------------------------------------------------------------------------- embed


@dataclass
class EmbedRun:
    """What :func:`embed_on_ray` did: texts given, distinct, already in the cache, embedded, and where
    (``None`` counts for a Dataset, which is not counted before it runs)."""

    model_id: str
    role: str
    texts: int | None
    distinct: int | None
    cached: int | None
    embedded: int
    shard: Path | None  # the Parquet folder written (None: nothing was missing)


class _EmbedActor:
    """One encoder per actor, built from the factory there (each actor loads its own model) or unpickled; each
    batch's vectors go straight to a Parquet file of the shard being written (nothing flows back but counts)."""

    def __init__(self, encoder: Any, factory: Callable[[], Any] | None, model_id: str, role: str, folder: str) -> None:
        from adapter_retrievers.encoders import as_encoder

        self.encoder = as_encoder(factory() if factory is not None else encoder, model_id)
        self.model_id, self.role, self.folder = model_id, role, Path(folder)

    def __call__(self, batch: Any) -> Any:
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        texts = batch["text"].to_pylist()
        embed = self.encoder.embed_queries if self.role == "query" else self.encoder.embed_documents
        vectors = np.ascontiguousarray(embed(texts), dtype=np.float32)
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        n = len(texts)
        table = pa.table(
            {
                "model": pa.array([self.model_id] * n, pa.string()),
                "role": pa.array([self.role] * n, pa.string()),
                "hash": batch["hash"],
                "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
            }
        )
        pq.write_table(table, self.folder / f"part-{uuid.uuid4().hex}.parquet")
        return pa.table({"written": [n]})


def embed_on_ray(
    texts: Sequence[str] | Any,
    cache_dir: os.PathLike | str,
    encoder: Any = None,
    *,
    factory: Callable[[], Any] | None = None,
    model_id: str | None = None,
    role: Literal["query", "document"] = "query",
    concurrency: int = 1,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    batch_size: int = 256,
    text_column: str = "text",
    address: str | None = None,
    progress: bool = False,
) -> EmbedRun:
    """Embed the texts missing from ``cache_dir``'s cache on an actor pool, as (hash, vector) Parquet there.

    ``encoder``: anything :func:`~adapter_retrievers.encoders.as_encoder` accepts (pickled to every actor), or
    ``factory``: a function that returns one, called in each actor (each loads its own model; needs
    ``model_id``). ``role``: ``"query"`` or ``"document"`` (models may embed them differently; the cache keys
    them apart). ``texts``: a sequence of strings or a ``ray.data.Dataset`` with a ``text_column``.
    ``concurrency`` actors, each holding ``num_cpus`` CPUs (default 1) and ``num_gpus`` GPUs; each writes its
    batches' vectors itself. With a Dataset, leave CPUs free for its read tasks (``concurrency * num_cpus``
    below the cluster's CPUs), or Ray Data waits for CPUs the actors hold.

    The cache key is :class:`~adapter_retrievers.encoders.CachedEncoder`'s (model id, role, SHA-256 of the
    text), and the shard goes to ``cache_dir/vectors/`` under a new name, written to a hidden folder first
    and renamed when complete, so a later ``CachedEncoder(encoder, cache_dir)`` or
    ``AdapterTrainer(encoder, cache_dir=cache_dir)`` finds every vector, and a rerun embeds nothing twice.
    """
    import pyarrow as pa
    import ray
    import ray.data

    from adapter_retrievers.encoders import VectorCache, as_encoder, canonical_model_id, text_hash

    if (encoder is None) == (factory is None):
        raise ValueError("pass either encoder= or factory=")
    if role not in ("query", "document"):
        raise ValueError(f"role must be 'query' or 'document', got {role!r}")
    if factory is not None and model_id is None:
        raise ValueError("factory= needs model_id=... (the cache is keyed by it; the model loads only in the actors)")
    if encoder is not None:
        encoder = as_encoder(encoder, model_id)
    model = canonical_model_id(model_id) if model_id is not None else encoder.model_id
    cache = VectorCache(cache_dir)
    is_dataset = isinstance(texts, ray.data.Dataset)
    if not is_dataset:
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be strings")
    init_ray(address)
    with _data_context(progress):
        if is_dataset:
            known = cache.hashes(model, role)

            def with_hashes(batch: Any) -> Any:
                column = batch[text_column].to_pylist()
                hashes = [text_hash(t) for t in column]
                fresh = dict((h, t) for h, t in zip(hashes, column) if h not in known)
                return pa.table({"hash": list(fresh), "text": list(fresh.values())})

            missing = texts.map_batches(with_hashes, batch_format="pyarrow")
            n_texts = n_distinct = n_cached = None
        else:
            distinct = dict((text_hash(t), t) for t in texts)
            cached = cache.contains(model, role, list(distinct))
            fresh = {h: t for h, t in distinct.items() if h not in cached}
            n_texts, n_distinct, n_cached = len(texts), len(distinct), len(cached)
            if not fresh:
                return EmbedRun(model, role, n_texts, n_distinct, n_cached, 0, None)
            # blocks made here, so no task upstream of the actors needs a CPU they hold
            step = max(batch_size, -(-len(fresh) // (4 * concurrency)))
            items = list(fresh.items())
            missing = ray.data.from_arrow(
                [
                    pa.table({"hash": [h for h, _ in part], "text": [t for _, t in part]})
                    for part in (items[i : i + step] for i in range(0, len(items), step))
                ]
            )
        name = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"

        def write(folder: Path) -> None:
            counts = missing.map_batches(
                _EmbedActor,
                batch_size=batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=concurrency),
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                fn_constructor_kwargs={
                    "encoder": encoder,
                    "factory": factory,
                    "model_id": model,
                    "role": role,
                    "folder": str(folder),
                },
            )
            counts.materialize()

        shard = cache.write_shard(name, write)
    if not any(shard.iterdir()):  # a Dataset whose texts were all cached
        shard.rmdir()
        return EmbedRun(model, role, n_texts, n_distinct, n_cached, 0, None)
    return EmbedRun(model, role, n_texts, n_distinct, n_cached, cache.count(shard), shard)
