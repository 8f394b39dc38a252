"""Corpus and training-set data model, with readers and writers for the formats people already have.

Formats:
- BEIR layout: ``corpus.jsonl[.gz]``, ``queries.jsonl``, ``qrels/<split>.tsv``.
- The ``{queries, corpus, relevant_docs}`` JSON of LlamaIndex's ``EmbeddingQAFinetuneDataset`` and
  sentence-transformers' ``InformationRetrievalEvaluator``.
- A plain JSONL of pairs: ``{"query": ..., "doc_id": ..., "query_id"?: ..., "label"?: 1|0, "score"?: float}``.

Every reader takes ``errors="raise"`` (a bad row raises :class:`DataFormatError` naming file and line)
or ``errors="skip"`` (bad rows are skipped and counted in the returned object's ``read_report``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import random
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from adapter_retrievers._files import atomic_write_text

ErrorMode = Literal["raise", "skip"]
NO_RELEVANT_DOCUMENT = "query without a relevant document (nothing to learn from)"  # a skipped query, not a row


class DataFormatError(ValueError):
    """A file or an in-memory input does not have the expected shape; the message says where."""


@dataclass
class ReadReport:
    """What a lenient read skipped, counted by reason, with the first few locations of each.

    Every row read is either used or skipped: ``rows_read == rows_used + rows skipped`` (a skip whose
    location has no line, such as a query left without any relevant document, is not a row).
    """

    rows_read: int = 0
    rows_used: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(where)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def merge(self, other: ReadReport) -> None:
        self.rows_read += other.rows_read
        self.rows_used += other.rows_used
        self.skipped.update(other.skipped)
        for reason, where in other.examples.items():
            self.examples.setdefault(reason, []).extend(where[: 5 - len(self.examples[reason])])

    def __str__(self) -> str:
        lines = [f"{self.rows_read} rows read, {self.n_skipped} skipped"]
        for reason, count in self.skipped.most_common():
            lines.append(f"  {count} x {reason} (e.g. {', '.join(self.examples.get(reason, []))})")
        return "\n".join(lines)


class _RowErrors:
    """Raise or count a bad row, depending on the error mode."""

    def __init__(self, mode: ErrorMode, report: ReadReport | None = None) -> None:
        if mode not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {mode!r}")
        self.mode = mode
        self.report = report if report is not None else ReadReport()

    def bad(self, reason: str, path: os.PathLike | str, line: int | None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        if self.mode == "raise":
            raise DataFormatError(f"{where}: {reason} (pass errors='skip' to skip and count bad rows)")
        self.report.skip(reason, where)


def _open_binary(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # type: ignore[return-value]


def iter_lines(
    path: os.PathLike | str,
    errors: _RowErrors,
    max_line_bytes: int | None = None,
    opener: Callable[[Path], io.BufferedIOBase] = _open_binary,
) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each non-blank line, decoded one line at a time.

    A line that is not UTF-8 (or longer than ``max_line_bytes``) is one bad row and the next lines are
    still read; a gzip file cut short or corrupted ends the file with one bad row. Each non-blank line
    counts once in ``rows_read``. ``opener`` opens ``path`` for binary reads (a remote filesystem's files).
    """
    path = Path(path)
    limit = -1 if max_line_bytes is None else max_line_bytes + 1
    with opener(path) as handle:
        line_no = 0
        while True:
            try:
                raw = handle.readline(limit)
                too_long = max_line_bytes is not None and len(raw) > max_line_bytes
                while too_long and raw and not raw.endswith(b"\n"):  # skip the rest of a huge line
                    raw = handle.readline(max_line_bytes)
            except (EOFError, OSError, zlib.error) as exc:  # truncated or corrupted gzip
                errors.report.rows_read += 1
                errors.bad(f"unreadable data ({type(exc).__name__}: {exc})", path, line_no + 1)
                return
            if not raw:
                return
            line_no += 1
            if too_long:
                errors.report.rows_read += 1
                errors.bad(f"line longer than {max_line_bytes // 2**20} MiB", path, line_no)
                continue
            if not raw.strip():
                continue
            errors.report.rows_read += 1
            try:
                yield line_no, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                errors.bad(f"invalid UTF-8 ({exc.reason} at byte {exc.start})", path, line_no)


def _json(text: str) -> Any:
    """``json.loads`` whose only error is :class:`json.JSONDecodeError` (also for deep nesting, huge numbers)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text[:20], 0) from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # e.g. an integer longer than Python's 4300-digit limit
        raise json.JSONDecodeError(str(exc).split(";")[0], text[:20], 0) from None


def iter_jsonl(path: os.PathLike | str, errors: _RowErrors) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each JSON object line; blank lines are ignored."""
    for line_no, line in iter_lines(path, errors):
        try:
            obj = _json(line)
        except json.JSONDecodeError as exc:
            errors.bad(f"malformed JSON ({exc.msg})", path, line_no)
            continue
        if not isinstance(obj, dict):
            errors.bad("line is not a JSON object", path, line_no)
            continue
        yield line_no, obj


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` (bools, strings, NaN, inf and numbers beyond float range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _text_fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _as_id(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (str, int)):
        text = str(value).strip()
        return text or None
    return None


def find_beir_file(folder: Path, stem: str) -> Path | None:
    """``<stem>.jsonl`` or ``<stem>.jsonl.gz`` in a BEIR folder, ``None`` when neither is there."""
    for candidate in (folder / f"{stem}.jsonl", folder / f"{stem}.jsonl.gz"):
        if candidate.is_file():
            return candidate
    return None


def _find_file(folder: Path, stem: str) -> Path:
    found = find_beir_file(folder, stem)
    if found is None:
        raise FileNotFoundError(f"no {stem}.jsonl or {stem}.jsonl.gz in {folder}")
    return found


# --------------------------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    """Documents to retrieve from: ids, texts and optionally vectors already stored in a vector store.

    When ``embeddings`` is given the trainer uses them as they are and never re-embeds the corpus.
    """

    ids: list[str]
    texts: list[str]
    embeddings: np.ndarray | None = None
    metadatas: list[dict] | None = None
    name: str = "corpus"
    read_report: ReadReport = field(default_factory=ReadReport, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.ids = [str(i) for i in self.ids]
        self.texts = list(self.texts)
        if len(self.ids) != len(self.texts):
            raise DataFormatError(f"{len(self.ids)} ids but {len(self.texts)} texts")
        duplicates = [i for i, n in Counter(self.ids).items() if n > 1]
        if duplicates:
            raise DataFormatError(f"duplicated document ids: {duplicates[:5]}{' ...' if len(duplicates) > 5 else ''}")
        if self.metadatas is not None and len(self.metadatas) != len(self.ids):
            raise DataFormatError(f"{len(self.ids)} ids but {len(self.metadatas)} metadatas")
        if self.embeddings is not None:
            self.embeddings = check_vectors(self.embeddings, "corpus embeddings", rows=len(self.ids))
        self._position = {doc_id: i for i, doc_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def position(self, doc_id: str) -> int:
        """Row of ``doc_id`` in :attr:`ids` and :attr:`embeddings`; ``KeyError`` if unknown."""
        return self._position[doc_id]

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._position

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for doc_id, text in zip(self.ids, self.texts):
            digest.update(doc_id.encode() + b"\0" + text.encode() + b"\0")
        return digest.hexdigest()[:16]

    def normalized_embeddings(self) -> np.ndarray:
        """Unit-length float32 copy of :attr:`embeddings`, made once and reused by search and training."""
        if self.embeddings is None:
            raise ValueError("the corpus has no embeddings: embed it first (corpus.with_embeddings(...))")
        cached = getattr(self, "_normalized", None)
        if cached is None or cached[0] is not self.embeddings:
            unit = normalize_rows(np.asarray(self.embeddings, dtype=np.float32))
            self._normalized = (self.embeddings, unit)
        return self._normalized[1]

    def with_embeddings(self, embeddings: np.ndarray) -> Corpus:
        return Corpus(self.ids, self.texts, embeddings, self.metadatas, self.name)

    @classmethod
    def from_texts(
        cls, texts: Sequence[str], ids: Sequence[str] | None = None, metadatas: list[dict] | None = None
    ) -> Corpus:
        ids = list(ids) if ids is not None else [f"doc-{i}" for i in range(len(texts))]
        return cls(list(ids), list(texts), metadatas=metadatas)

    @classmethod
    def from_beir(cls, folder: os.PathLike | str, errors: ErrorMode = "raise", title_separator: str = " ") -> Corpus:
        """Read ``corpus.jsonl[.gz]``; a title is prepended to the text as BEIR and MTEB do."""
        folder = Path(folder)
        path = _find_file(folder, "corpus")
        row_errors = _RowErrors(errors)
        ids: list[str] = []
        texts: list[str] = []
        seen: set[str] = set()
        for line_no, obj in iter_jsonl(path, row_errors):
            doc_id = _as_id(obj.get("_id", obj.get("id")))
            text = obj.get("text")
            title = obj.get("title") or ""
            if doc_id is None:
                row_errors.bad("missing or invalid _id", path, line_no)
                continue
            if not isinstance(text, str) or not isinstance(title, str):
                row_errors.bad("missing or non-string text", path, line_no)
                continue
            if doc_id in seen:
                row_errors.bad(f"duplicated document id {doc_id!r}", path, line_no)
                continue
            seen.add(doc_id)
            row_errors.report.rows_used += 1
            ids.append(doc_id)
            texts.append(f"{title}{title_separator}{text}".strip() if title else text)
        return cls(ids, texts, name=folder.name, read_report=row_errors.report)

    @classmethod
    def from_llamaindex_json(cls, path: os.PathLike | str) -> Corpus:
        data = _read_qa_json(path)
        corpus = data["corpus"]
        return cls(list(corpus), [str(t) for t in corpus.values()], name=Path(path).stem)

    def to_beir(self, folder: os.PathLike | str, overwrite: bool = False) -> None:
        """Write ``corpus.jsonl`` into ``folder`` (an existing one is replaced only with ``overwrite=True``)."""
        from adapter_retrievers.outputs import check_output

        folder = Path(folder)
        check_output(folder / "corpus.jsonl", overwrite)
        folder.mkdir(parents=True, exist_ok=True)
        lines = (
            json.dumps({"_id": i, "title": "", "text": t}, ensure_ascii=False) for i, t in zip(self.ids, self.texts)
        )
        atomic_write_text(folder / "corpus.jsonl", "\n".join(lines) + "\n")


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (all-zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def check_vectors(vectors: Any, what: str, rows: int | None = None, dimension: int | None = None) -> np.ndarray:
    """Return ``vectors`` as a 2-D float32 array, or raise a clear error for bad shapes and NaN/inf."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise DataFormatError(f"{what} must be a 2-D array (n, dimension), got shape {array.shape}")
    if rows is not None and array.shape[0] != rows:
        raise DataFormatError(f"{what} has {array.shape[0]} rows, expected {rows}")
    if dimension is not None and array.shape[1] != dimension:
        raise DataFormatError(f"{what} has dimension {array.shape[1]}, expected {dimension}")
    if not np.isfinite(array).all():
        bad = np.unique(np.nonzero(~np.isfinite(array))[0])
        raise DataFormatError(f"{what} contain NaN or inf in rows {bad[:5].tolist()}")
    return array


def read_query_texts(path: os.PathLike | str, errors: ErrorMode = "raise") -> tuple[list[str], ReadReport]:
    """The distinct query texts of a JSONL of ``{"query": ...}`` rows (a query log, or a pairs file) or of BEIR
    ``queries.jsonl`` rows (``{"_id", "text"}``), in order of first appearance, with the read report (rows
    without a query are bad rows; a repeated text is used once: ``rows_used - len(texts)`` were repeats)."""
    path = Path(path)
    row_errors = _RowErrors(errors)
    texts: dict[str, None] = {}
    for line_no, obj in iter_jsonl(path, row_errors):
        text = obj.get("query", obj.get("text"))
        if not isinstance(text, str) or not text.strip():
            row_errors.bad(f"missing or empty query (fields: {', '.join(sorted(obj)) or 'none'})", path, line_no)
            continue
        texts.setdefault(text)
        row_errors.report.rows_used += 1
    return list(texts), row_errors.report


# ----------------------------------------------------------------------------------------- training set


@dataclass
class TrainingSet:
    """Queries with their relevant documents (graded), and optionally labelled non-relevant ones.

    ``relevant[query_id] = {doc_id: grade}`` with grade > 0; ``negatives[query_id] = {doc_id, ...}``
    are documents a person or a model judged not relevant (hard negatives).
    """

    queries: dict[str, str]
    relevant: dict[str, dict[str, float]]
    negatives: dict[str, set[str]] = field(default_factory=dict)
    name: str = "training set"
    read_report: ReadReport = field(default_factory=ReadReport, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = [q for q in self.relevant if q not in self.queries]
        if unknown:
            raise DataFormatError(f"relevance judgements for unknown query ids: {unknown[:5]}")
        # Queries without any positive document carry no training signal: keep only judged ones, and
        # count the others so nothing is dropped silently.
        self.relevant = {q: dict(docs) for q, docs in self.relevant.items() if docs}
        for q in sorted((set(self.queries) | set(self.negatives)) - set(self.relevant)):
            self.read_report.skip(NO_RELEVANT_DOCUMENT, q)
        self.queries = {q: t for q, t in self.queries.items() if q in self.relevant}
        self.negatives = {q: set(d) - set(self.relevant[q]) for q, d in self.negatives.items() if q in self.relevant}

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def query_ids(self) -> list[str]:
        return list(self.queries)

    @property
    def n_pairs(self) -> int:
        return sum(len(d) for d in self.relevant.values())

    def pairs(self) -> Iterator[tuple[str, str]]:
        for query_id, docs in self.relevant.items():
            for doc_id in docs:
                yield query_id, doc_id

    @property
    def fingerprint(self) -> str:
        """Stable hash of the queries and judgements: recorded in adapter files for provenance."""
        digest = hashlib.sha256()
        for query_id in sorted(self.queries):
            digest.update(self.queries[query_id].encode() + b"\0")
            for doc_id, grade in sorted(self.relevant[query_id].items()):
                digest.update(f"{doc_id}:{grade}\0".encode())
        return digest.hexdigest()[:16]

    def check_against(self, corpus: Corpus, errors: ErrorMode = "raise") -> TrainingSet:
        """Make sure every judged document is in ``corpus``; drop and count unknown ones with ``skip``."""
        row_errors = _RowErrors(errors, self.read_report)
        relevant: dict[str, dict[str, float]] = {}
        for query_id, docs in self.relevant.items():
            kept = {}
            for doc_id, grade in docs.items():
                if doc_id in corpus:
                    kept[doc_id] = grade
                else:
                    row_errors.bad(f"unknown document id {doc_id!r} for query {query_id!r}", corpus.name, None)
            relevant[query_id] = kept
        negatives = {q: {d for d in docs if d in corpus} for q, docs in self.negatives.items()}
        return TrainingSet(self.queries, relevant, negatives, self.name, self.read_report)

    def subset(self, query_ids: Iterable[str], name: str | None = None) -> TrainingSet:
        ids = [q for q in query_ids if q in self.queries]
        return TrainingSet(
            {q: self.queries[q] for q in ids},
            {q: self.relevant[q] for q in ids},
            {q: self.negatives[q] for q in ids if q in self.negatives},
            name or self.name,
        )

    @property
    def documents(self) -> set[str]:
        """Ids of every document judged relevant to some query (an adapter's "seen" documents)."""
        return {d for docs in self.relevant.values() for d in docs}

    @property
    def documents_fingerprint(self) -> str:
        """Stable hash of :attr:`documents`: recorded in adapter files so "seen" can be checked later."""
        return documents_fingerprint(self.documents)

    def document_groups(self) -> list[list[str]]:
        """Queries grouped so that no relevant document is shared between two groups.

        Two queries land in one group when they share a relevant document (transitively): holding out
        whole groups leaves no held-out relevant document among the training positives.
        """
        parent = {q: q for q in self.queries}

        def root(q: str) -> str:
            while parent[q] != q:
                parent[q] = parent[parent[q]]
                q = parent[q]
            return q

        owner: dict[str, str] = {}
        for query_id in sorted(self.queries):
            for doc_id in self.relevant[query_id]:
                if doc_id in owner:
                    a, b = root(owner[doc_id]), root(query_id)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
                else:
                    owner[doc_id] = query_id
        groups: dict[str, list[str]] = {}
        for query_id in sorted(self.queries):
            groups.setdefault(root(query_id), []).append(query_id)
        return sorted(groups.values())

    def split(
        self, fraction: float, seed: int = 0, by: Literal["query", "document"] = "query"
    ) -> tuple[TrainingSet, TrainingSet]:
        """Hold out about ``fraction`` of the queries: returns ``(rest, held_out)``.

        ``by="query"``: random queries (their documents may also have training queries: "seen").
        ``by="document"``: whole :meth:`document_groups`, so no relevant document of a held-out query
        is a training positive: the held-out queries measure what carries over to new documents.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        if by not in ("query", "document"):
            raise ValueError(f"split by 'query' or 'document', got {by!r}")
        groups = self.document_groups() if by == "document" else [[q] for q in sorted(self.queries)]
        if len(groups) < 2:
            raise ValueError(
                f"cannot split {len(self.queries)} queries in {len(groups)} group(s) by {by}: need at least 2 queries"
            )
        random.Random(seed).shuffle(groups)
        target = max(1, round(len(self.queries) * fraction))
        held: list[str] = []
        for group in groups[:-1]:  # the last group always stays in training
            if len(held) >= target:
                break
            held += group
        kept = set(held)
        rest = [q for g in groups for q in g if q not in kept]
        suffix = "held out" if by == "query" else "held out by document"
        return self.subset(rest, f"{self.name} (train)"), self.subset(held, f"{self.name} ({suffix})")

    def folds(self, k: int, seed: int = 0, by: Literal["query", "document"] = "document") -> list[TrainingSet]:
        """``k`` disjoint parts of the queries (whole :meth:`document_groups` with ``by="document"``), sizes balanced.

        For k-fold cross-validation on small data: each part is validation once, the rest trains.
        """
        if by not in ("query", "document"):
            raise ValueError(f"split by 'query' or 'document', got {by!r}")
        groups = self.document_groups() if by == "document" else [[q] for q in sorted(self.queries)]
        if k < 2 or len(groups) < k:
            raise ValueError(f"cannot make {k} folds from {len(groups)} group(s) of queries (by {by})")
        random.Random(seed).shuffle(groups)
        groups.sort(key=len, reverse=True)  # biggest first, each to the smallest fold: balanced sizes
        parts: list[list[str]] = [[] for _ in range(k)]
        for group in groups:
            min(parts, key=len).extend(group)
        return [self.subset(sorted(p), f"{self.name} (fold {i + 1}/{k})") for i, p in enumerate(parts)]

    def sample_pairs(self, n_pairs: int, seed: int = 0) -> TrainingSet:
        """A random subset of about ``n_pairs`` pairs, taken whole query by whole query."""
        ids = sorted(self.queries)
        random.Random(seed).shuffle(ids)
        chosen, total = [], 0
        for query_id in ids:
            if total >= n_pairs:
                break
            chosen.append(query_id)
            total += len(self.relevant[query_id])
        return self.subset(chosen)

    # ----------------------------------------------------------------------------------- readers

    @classmethod
    def from_pairs(
        cls,
        pairs: Iterable[tuple[str, str]],
        negatives: Iterable[tuple[str, str]] = (),
        name: str = "pairs",
    ) -> TrainingSet:
        """Build from ``(query text, relevant doc id)`` pairs; the same query text merges into one query."""
        queries: dict[str, str] = {}
        relevant: dict[str, dict[str, float]] = {}
        negative: dict[str, set[str]] = {}
        for text, doc_id in pairs:
            query_id = _query_id_for(text)
            queries[query_id] = text
            relevant.setdefault(query_id, {})[str(doc_id)] = 1.0
        for text, doc_id in negatives:
            query_id = _query_id_for(text)
            queries.setdefault(query_id, text)
            negative.setdefault(query_id, set()).add(str(doc_id))
        return cls(queries, relevant, negative, name)

    @classmethod
    def from_beir(cls, folder: os.PathLike | str, split: str = "test", errors: ErrorMode = "raise") -> TrainingSet:
        """Read ``queries.jsonl`` and ``qrels/<split>.tsv``; grade 0 rows become labelled negatives."""
        folder = Path(folder)
        row_errors = _RowErrors(errors)
        all_queries: dict[str, str] = {}
        queries_path = _find_file(folder, "queries")
        for line_no, obj in iter_jsonl(queries_path, row_errors):
            query_id, text = _as_id(obj.get("_id", obj.get("id"))), obj.get("text")
            if query_id is None or not isinstance(text, str) or not text.strip():
                row_errors.bad("missing _id or text", queries_path, line_no)
                continue
            row_errors.report.rows_used += 1
            all_queries[query_id] = text
        qrels_path = folder / "qrels" / f"{split}.tsv"
        if not qrels_path.exists():
            available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
            raise FileNotFoundError(f"{qrels_path} not found; splits here: {available}")
        relevant, negatives = _read_qrels(qrels_path, all_queries, row_errors)
        queries = {q: all_queries[q] for q in relevant}
        return cls(queries, relevant, negatives, f"{folder.name}/{split}", row_errors.report)

    @classmethod
    def from_llamaindex_json(cls, path: os.PathLike | str) -> TrainingSet:
        """Read the ``{queries, corpus, relevant_docs}`` JSON (LlamaIndex / sentence-transformers)."""
        data = _read_qa_json(path)
        relevant = {str(q): {str(d): 1.0 for d in docs} for q, docs in data["relevant_docs"].items()}
        unknown = [q for q in relevant if q not in data["queries"]]
        if unknown:
            raise DataFormatError(f"{path}: relevant_docs names unknown query ids {unknown[:5]}")
        return cls({str(q): str(t) for q, t in data["queries"].items()}, relevant, name=Path(path).stem)

    @classmethod
    def from_pairs_jsonl(cls, path: os.PathLike | str, errors: ErrorMode = "raise") -> TrainingSet:
        """Read a JSONL of ``{"query", "doc_id", "query_id"?, "label"?, "score"?}`` rows.

        ``label`` 0 (or a score of 0) marks a judged non-relevant document.
        """
        path = Path(path)
        row_errors = _RowErrors(errors)
        queries: dict[str, str] = {}
        relevant: dict[str, dict[str, float]] = {}
        negatives: dict[str, set[str]] = {}
        for line_no, obj in iter_jsonl(path, row_errors):
            text, doc_id = obj.get("query"), _as_id(obj.get("doc_id"))
            if not isinstance(text, str) or not text.strip():
                row_errors.bad("missing or empty query", path, line_no)
                continue
            if doc_id is None:
                row_errors.bad("missing or invalid doc_id", path, line_no)
                continue
            grade = _finite(obj.get("score", obj.get("label", 1)))
            if grade is None:
                row_errors.bad("label/score is not a finite number", path, line_no)
                continue
            query_id = _as_id(obj.get("query_id")) or _query_id_for(text)
            if query_id in queries and queries[query_id] != text:
                row_errors.bad(f"query_id {query_id!r} used for two different texts", path, line_no)
                continue
            queries[query_id] = text
            row_errors.report.rows_used += 1
            if grade > 0:
                relevant.setdefault(query_id, {})[doc_id] = max(grade, relevant.get(query_id, {}).get(doc_id, 0.0))
            else:
                negatives.setdefault(query_id, set()).add(doc_id)
        return cls(queries, relevant, negatives, path.stem, row_errors.report)

    # ----------------------------------------------------------------------------------- writers

    def to_pairs_jsonl(self, path: os.PathLike | str, overwrite: bool = False) -> None:
        """Write the pairs as JSON lines (an existing file is replaced only with ``overwrite=True``)."""
        from adapter_retrievers.outputs import check_output

        check_output(path, overwrite)
        rows = []
        for query_id, docs in self.relevant.items():
            for doc_id, grade in docs.items():
                rows.append({"query_id": query_id, "query": self.queries[query_id], "doc_id": doc_id, "score": grade})
            for doc_id in sorted(self.negatives.get(query_id, ())):
                rows.append({"query_id": query_id, "query": self.queries[query_id], "doc_id": doc_id, "label": 0})
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    def to_llamaindex_json(self, path: os.PathLike | str, corpus: Corpus, overwrite: bool = False) -> None:
        """Write LlamaIndex's QA JSON (an existing file is replaced only with ``overwrite=True``)."""
        from adapter_retrievers.outputs import check_output

        check_output(path, overwrite)
        needed = {d for docs in self.relevant.values() for d in docs}
        data = {
            "queries": self.queries,
            "corpus": {doc_id: corpus.texts[corpus.position(doc_id)] for doc_id in corpus.ids if doc_id in needed},
            "relevant_docs": {q: list(docs) for q, docs in self.relevant.items()},
            "mode": "text",
        }
        atomic_write_text(path, json.dumps(data, ensure_ascii=False))

    def to_beir(self, folder: os.PathLike | str, split: str = "train", overwrite: bool = False) -> None:
        """Write ``queries.jsonl`` and ``qrels/{split}.tsv`` into ``folder`` (existing ones are replaced only with
        ``overwrite=True``)."""
        from adapter_retrievers.outputs import Output, check_outputs

        folder = Path(folder)
        check_outputs([Output(folder / "queries.jsonl"), Output(folder / "qrels" / f"{split}.tsv")], overwrite)
        (folder / "qrels").mkdir(parents=True, exist_ok=True)
        queries = "".join(json.dumps({"_id": q, "text": t}, ensure_ascii=False) + "\n" for q, t in self.queries.items())
        atomic_write_text(folder / "queries.jsonl", queries)
        rows = ["query-id\tcorpus-id\tscore"]
        for query_id, docs in self.relevant.items():
            rows += [f"{query_id}\t{d}\t{_grade_text(g)}" for d, g in docs.items()]
            rows += [f"{query_id}\t{d}\t0" for d in sorted(self.negatives.get(query_id, ()))]
        atomic_write_text(folder / "qrels" / f"{split}.tsv", "\n".join(rows) + "\n")


def documents_fingerprint(doc_ids: Iterable[str]) -> str:
    """Order-independent hash of a set of document ids."""
    digest = hashlib.sha256()
    for doc_id in sorted(set(doc_ids)):
        digest.update(doc_id.encode() + b"\0")
    return digest.hexdigest()[:16]


def _grade_text(grade: float) -> str:
    return str(int(grade)) if float(grade).is_integer() else str(grade)


def _query_id_for(text: str) -> str:
    return "q-" + _text_fingerprint(text.strip())[:16]


def _read_qrels(
    path: Path, known_queries: Mapping[str, str], row_errors: _RowErrors
) -> tuple[dict[str, dict[str, float]], dict[str, set[str]]]:
    relevant: dict[str, dict[str, float]] = {}
    negatives: dict[str, set[str]] = {}
    for line_no, line in iter_lines(path, row_errors):
        parts = line.rstrip("\n\r").split("\t")
        if line_no == 1 and parts[0] in ("query-id", "query_id", "qid"):
            row_errors.report.rows_read -= 1  # the header is not a row
            continue
        if len(parts) == 4:  # TREC qrels: qid 0 docid grade
            parts = [parts[0], parts[2], parts[3]]
        if len(parts) != 3:
            row_errors.bad(f"expected 3 tab-separated columns, got {len(parts)}", path, line_no)
            continue
        query_id, doc_id, grade_text = (p.strip() for p in parts)
        try:
            grade = float(grade_text)
        except ValueError:
            grade = math.nan
        if not math.isfinite(grade):
            row_errors.bad(f"score {grade_text[:40]!r} is not a finite number", path, line_no)
            continue
        if not query_id or not doc_id:
            row_errors.bad("empty query or document id", path, line_no)
            continue
        if query_id not in known_queries:
            row_errors.bad(f"unknown query id {query_id[:40]!r}", path, line_no)
            continue
        row_errors.report.rows_used += 1
        if grade > 0:
            relevant.setdefault(query_id, {})[doc_id] = grade
        else:
            negatives.setdefault(query_id, set()).add(doc_id)
    return relevant, negatives


def _read_qa_json(path: os.PathLike | str) -> dict:
    try:
        with open(path, "rb") as handle:
            data = _json(handle.read().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: invalid UTF-8 at byte {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: expected a JSON object with queries, corpus and relevant_docs")
    missing = [k for k in ("queries", "corpus", "relevant_docs") if not isinstance(data.get(k), dict)]
    if missing:
        raise DataFormatError(f"{path}: missing or non-object keys {missing} (expected LlamaIndex QA JSON)")
    for key in ("queries", "corpus"):
        bad = [k for k, v in data[key].items() if not isinstance(v, str)]
        if bad:
            raise DataFormatError(f"{path}: {key} must map ids to strings; not so for {bad[:5]}")
    bad = [
        q
        for q, docs in data["relevant_docs"].items()
        if not isinstance(docs, list) or not all(isinstance(d, str) or _as_id(d) for d in docs)
    ]
    if bad:
        raise DataFormatError(f"{path}: relevant_docs must map query ids to lists of document ids; not for {bad[:5]}")
    return data
