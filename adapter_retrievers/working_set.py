"""Corpora larger than memory: vectors read in chunks, and the working set the trainer holds instead.

Training needs the whole corpus only to find negatives and to rank validation queries. Both are done on
a *working set*: every training and validation query's positives, the base model's ``top_k`` documents
for each of those queries (found by one exact pass over the corpus, chunk by chunk: the hard negatives, and
the candidates validation ranks among) and a random sample of the rest (the random negatives). Peak memory
then follows the working set, not the corpus.

This is an approximation of exact search: a document outside the working set never competes, so a
validation query's rank is exact only while the adapted ranking's top stays inside its base top-k and the
sample. ``benchmarks/corpus_scale.py`` measures what it changes against exact search where both fit.

A :class:`VectorSource` is anything with a length, a dimension, chunks of rows, rows by position and ids:
:class:`ArrayVectors` (an array in memory or a ``numpy.memmap``), :class:`NpyVectors` (a ``.npy`` file read
with ``pread``, so no page of it stays mapped), :class:`ParquetVectors` (an id and a vector column), or a
Chroma collection (:func:`adapter_retrievers.integrations.chroma.collection_vectors`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from adapter_retrievers.data import Corpus, normalize_rows

DEFAULT_CHUNK_ROWS = 65_536


@runtime_checkable
class VectorSource(Protocol):
    """Corpus vectors that need not fit in memory, read a chunk of rows at a time."""

    dimension: int

    def __len__(self) -> int: ...

    def chunks(self, rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, float32 block)`` over the whole corpus, in order."""
        ...

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The rows at ``positions`` (sorted, unique), as float32."""
        ...

    def ids_at(self, positions: np.ndarray) -> list[str]:
        """The document ids of the rows at ``positions``."""
        ...

    def positions_of(self, ids: Collection[str]) -> dict[str, int]:
        """Rows of the given ids (those the corpus holds)."""
        ...


class _RowIds:
    """Ids for a source: given ones, or the row numbers as strings (``"0"``, ``"1"``, ...)."""

    def __init__(self, ids: Sequence[str] | None, n: int) -> None:
        if ids is not None and len(ids) != n:
            raise ValueError(f"{len(ids)} ids for {n} vectors")
        self.ids, self.n = ids, n
        self._position: dict[str, int] | None = None

    def at(self, positions: np.ndarray) -> list[str]:
        if self.ids is None:
            return [str(int(p)) for p in positions]
        return [str(self.ids[int(p)]) for p in positions]

    def of(self, wanted: Collection[str]) -> dict[str, int]:
        if self.ids is None:
            return {w: int(w) for w in wanted if w.isdigit() and int(w) < self.n}
        if self._position is None:
            self._position = {str(doc_id): i for i, doc_id in enumerate(self.ids)}
        return {w: self._position[w] for w in wanted if w in self._position}


class ArrayVectors:
    """An array (in memory, or a ``numpy.memmap``) with optional ids (default: row numbers)."""

    def __init__(self, vectors: np.ndarray, ids: Sequence[str] | None = None) -> None:
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D, got shape {vectors.shape}")
        self.vectors = vectors
        self.dimension = int(vectors.shape[1])
        self._ids = _RowIds(ids, len(vectors))

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def chunks(self, rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, len(self), rows):
            yield start, np.asarray(self.vectors[start : start + rows], dtype=np.float32)

    def take(self, positions: np.ndarray) -> np.ndarray:
        return np.asarray(self.vectors[positions], dtype=np.float32)

    def ids_at(self, positions: np.ndarray) -> list[str]:
        return self._ids.at(positions)

    def positions_of(self, ids: Collection[str]) -> dict[str, int]:
        return self._ids.of(ids)


class NpyVectors:
    """A 2-D float32 ``.npy`` file read with ``os.pread``: chunks are copied in and dropped, nothing stays
    mapped, so the process's memory does not grow with the file (a ``numpy.memmap`` keeps the pages it read
    resident). ``ids``: one per row, or None for the row numbers."""

    def __init__(self, path: os.PathLike | str, ids: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(handle)
            self._offset = handle.tell()
        if len(shape) != 2 or fortran or dtype != np.float32:
            raise ValueError(f"{self.path}: expected a C-ordered 2-D float32 array, got {shape} {dtype}")
        self._n, self.dimension = int(shape[0]), int(shape[1])
        self._row_bytes = self.dimension * 4
        self._ids = _RowIds(ids, self._n)

    def __len__(self) -> int:
        return self._n

    def _read(self, fd: int, start: int, count: int) -> np.ndarray:
        data = os.pread(fd, count * self._row_bytes, self._offset + start * self._row_bytes)
        return np.frombuffer(data, dtype=np.float32).reshape(count, self.dimension)

    def chunks(self, rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for start in range(0, self._n, rows):
                yield start, self._read(fd, start, min(rows, self._n - start))
        finally:
            os.close(fd)

    def take(self, positions: np.ndarray) -> np.ndarray:
        out = np.empty((len(positions), self.dimension), dtype=np.float32)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for i, position in enumerate(positions):
                out[i] = self._read(fd, int(position), 1)[0]
        finally:
            os.close(fd)
        return out

    def ids_at(self, positions: np.ndarray) -> list[str]:
        return self._ids.at(positions)

    def positions_of(self, ids: Collection[str]) -> dict[str, int]:
        return self._ids.of(ids)


class ParquetVectors:
    """A Parquet file or folder with an id column and a vector column (lists of floats), read in batches."""

    def __init__(self, path: os.PathLike | str, id_column: str = "id", vector_column: str = "vector") -> None:
        import pyarrow.dataset as pads

        self.dataset = pads.dataset(str(path), format="parquet")
        missing = {id_column, vector_column} - set(self.dataset.schema.names)
        if missing:
            raise ValueError(f"{path}: no column {sorted(missing)}; columns: {self.dataset.schema.names}")
        self.id_column, self.vector_column = id_column, vector_column
        self._n = self.dataset.count_rows()
        first = next(self._batches([vector_column], 1), None)
        self.dimension = 0 if first is None else int(first[1].shape[1])

    def __len__(self) -> int:
        return self._n

    def _batches(self, columns: list[str], rows: int) -> Iterator[tuple[int, np.ndarray]]:
        start = 0
        for batch in self.dataset.to_batches(columns=columns, batch_size=rows):
            if batch.num_rows == 0:
                continue
            column = batch.column(columns[-1])
            if columns[-1] == self.vector_column:
                flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
                yield start, flat.reshape(batch.num_rows, -1)
            else:
                yield start, np.asarray(column.to_pylist(), dtype=object)
            start += batch.num_rows

    def chunks(self, rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        yield from self._batches([self.vector_column], rows)

    def _gather(self, column: str, positions: np.ndarray) -> list[Any]:
        out: list[Any] = [None] * len(positions)
        order = np.argsort(positions)
        sorted_positions = positions[order]
        for start, block in self._batches([column], DEFAULT_CHUNK_ROWS):
            lo = np.searchsorted(sorted_positions, start)
            hi = np.searchsorted(sorted_positions, start + len(block))
            for j in range(lo, hi):
                out[order[j]] = block[sorted_positions[j] - start]
        return out

    def take(self, positions: np.ndarray) -> np.ndarray:
        rows = self._gather(self.vector_column, np.asarray(positions))
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, self.dimension), dtype=np.float32)

    def ids_at(self, positions: np.ndarray) -> list[str]:
        return [str(i) for i in self._gather(self.id_column, np.asarray(positions))]

    def positions_of(self, ids: Collection[str]) -> dict[str, int]:
        wanted, found = set(ids), {}
        for start, block in self._batches([self.id_column], DEFAULT_CHUNK_ROWS):
            for offset, doc_id in enumerate(block):
                if str(doc_id) in wanted:
                    found[str(doc_id)] = start + offset
        return found


def top_k(
    source: VectorSource, queries: np.ndarray, k: int, rows: int = DEFAULT_CHUNK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine search in one pass over the source: each query's ``k`` best rows and their scores.

    Memory: the queries, ``(n_queries, k)`` results and one ``(rows, n_queries)`` block of scores.
    """
    q = normalize_rows(np.asarray(queries, dtype=np.float32))
    k = min(k, len(source))
    best_scores = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_rows = np.full((len(q), k), -1, dtype=np.int64)
    for start, block in source.chunks(rows):
        scores = q @ normalize_rows(block).T  # (queries, rows in block)
        take = min(k, scores.shape[1])
        local = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, local, axis=1)], axis=1)
        merged_rows = np.concatenate([best_rows, local + start], axis=1)
        keep = np.argpartition(-merged_scores, k - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(merged_scores, keep, axis=1)
        best_rows = np.take_along_axis(merged_rows, keep, axis=1)
    order = np.lexsort((best_rows, -best_scores), axis=1)  # best first; ties by corpus order
    return np.take_along_axis(best_rows, order, axis=1), np.take_along_axis(best_scores, order, axis=1)


@dataclass
class WorkingSet:
    """What the trainer held instead of the whole corpus, and how it was chosen."""

    corpus: Corpus
    n_corpus: int
    n_top_k: int
    n_positives: int
    n_random: int
    top_k: int
    fingerprint: str

    def describe(self) -> dict[str, Any]:
        return {
            "documents": len(self.corpus),
            "of_corpus": self.n_corpus,
            "base_top_k": self.top_k,
            "from_top_k": self.n_top_k,
            "positives": self.n_positives,
            "random": self.n_random,
            "corpus_fingerprint": self.fingerprint,
        }


def working_set(
    source: VectorSource,
    query_vectors: np.ndarray,
    positives: Collection[str],
    k: int = 50,
    sample: int = 50_000,
    seed: int = 0,
    rows: int = DEFAULT_CHUNK_ROWS,
) -> WorkingSet:
    """The documents training and validation need from ``source``, in memory as a :class:`Corpus`:
    ``positives``, each query's base ``k`` best (one exact pass) and ``sample`` random others."""
    found = source.positions_of(set(positives))
    missing = set(positives) - set(found)
    if missing:
        raise ValueError(f"{len(missing)} relevant documents are not in the corpus, e.g. {sorted(missing)[:3]}")
    nearest, _ = top_k(source, query_vectors, k, rows)
    rng = np.random.default_rng(seed)
    chosen = set(np.unique(nearest[nearest >= 0]).tolist())
    from_top_k = len(chosen)
    positive_rows = set(found.values())
    chosen |= positive_rows
    n_before = len(chosen)
    want = min(sample, len(source) - len(chosen))
    while len(chosen) < n_before + want:
        chosen |= set(rng.integers(0, len(source), size=2 * want).tolist())
    extra = sorted(chosen - positive_rows - set(np.unique(nearest[nearest >= 0]).tolist()))
    if len(extra) > want:  # the draw above may overshoot: keep a seeded subset of exactly ``want``
        drop = set(rng.choice(extra, size=len(extra) - want, replace=False).tolist())
        chosen -= drop
    positions = np.array(sorted(chosen), dtype=np.int64)
    ids = source.ids_at(positions)
    vectors = source.take(positions)
    digest = hashlib.sha256(f"{len(source)}x{source.dimension}".encode())
    for doc_id in source.ids_at(np.array([0, len(source) - 1])):
        digest.update(doc_id.encode() + b"\0")
    corpus = Corpus(ids, [""] * len(ids), vectors, name="working set")
    return WorkingSet(
        corpus,
        len(source),
        from_top_k,
        len(positive_rows),
        len(positions) - n_before,
        k,
        digest.hexdigest()[:16],
    )
