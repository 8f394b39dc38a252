"""Benchmark: property-based fuzzing of every reader (Hypothesis), inputs tried and outcomes per reader.

Each reader gets generated records of its format, then mutated line by line (truncated, a field of the
wrong type, a field missing, a huge number, NaN/inf, deep nesting, invalid UTF-8, not an object, blank)
and file by file (gzip, a gzip cut short). The only allowed outcomes are a counted skip (lenient mode) or
the package's documented error naming the file and line (strict mode): ``DataFormatError`` for data
files, ``AdapterFileError`` for adapter folders. Never another exception, never a hang (a Hypothesis
deadline bounds every input), never a silent drop: rows read == rows used + rows skipped, and every
non-blank line of the file is read.

The test suite runs the same properties with few examples (``tests/test_fuzz.py``); this script runs
many and counts outcomes.

    python benchmarks/fuzz.py [--examples 2000] [--seconds-per-input 10]

Results: ``benchmarks/results/fuzz.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import struct
import tempfile
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapter_retrievers import Corpus, QueryAdapter, TrainingSet
from adapter_retrievers.adapters import CONFIG_FILE, WEIGHTS_FILE, AdapterFileError
from adapter_retrievers.data import NO_RELEVANT_DOCUMENT, DataFormatError

# ------------------------------------------------------------------------------------------ strategies

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**310),  # beyond float range
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
ANY_JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
IDS = st.one_of(st.text(min_size=1, max_size=8), st.integers(min_value=0, max_value=10**6))
MUTATIONS = (
    "none",
    "none",
    "wrong type",
    "nested wrong type",
    "missing field",
    "truncated",
    "huge number",
    "deep nesting",
    "invalid utf-8",
    "not an object",
    "blank",
)
HUGE = "9" * 5000  # an integer longer than Python's 4300-digit conversion limit
BAD_BYTES = (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\xf0\x9f")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def _paths(value: Any, prefix: tuple = ()) -> Any:
    """Every (key or index) path inside a JSON value."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


@st.composite
def mutated_line(draw: Any, record: st.SearchStrategy, keys: tuple[str, ...]) -> tuple[str, bytes]:
    """One JSONL line: a valid ``record`` or one of :data:`MUTATIONS` of it; returns ``(mutation, bytes)``."""
    obj = dict(draw(record))
    mutation = draw(st.sampled_from(MUTATIONS))
    key = draw(st.sampled_from(keys))
    if mutation == "wrong type":
        obj[key] = draw(ANY_JSON)
    elif mutation == "nested wrong type":
        obj = json.loads(json.dumps(obj))  # a deep copy
        paths = list(_paths(obj))
        if paths:
            *parents, last = draw(st.sampled_from(paths))
            container = obj
            for step in parents:
                container = container[step]
            container[last] = draw(ANY_JSON)
    elif mutation == "missing field":
        obj.pop(key, None)
    elif mutation == "huge number":
        obj[key] = "@@HUGE@@"
        return mutation, _dumps(obj).replace(b'"@@HUGE@@"', HUGE.encode())
    elif mutation == "deep nesting":
        depth = draw(st.sampled_from((5_000, 100_000)))
        return mutation, (b'{"a":' * depth if draw(st.booleans()) else b"[" * depth) + b"1"
    elif mutation == "not an object":
        return mutation, _dumps(draw(ANY_JSON.filter(lambda v: not isinstance(v, dict))))
    elif mutation == "blank":
        return mutation, b"   "
    line = _dumps(obj)
    if mutation == "truncated":
        return mutation, line[: draw(st.integers(0, max(0, len(line) - 1)))]
    if mutation == "invalid utf-8":
        at = draw(st.integers(0, len(line)))
        return mutation, line[:at] + draw(st.sampled_from(BAD_BYTES)) + line[at:]
    return mutation, line


@st.composite
def jsonl_file(draw: Any, record: st.SearchStrategy, keys: tuple[str, ...], max_lines: int = 8) -> dict:
    lines = draw(st.lists(mutated_line(record, keys), min_size=0, max_size=max_lines))
    return {"lines": [line for _, line in lines], "mutations": [m for m, _ in lines], **draw(file_form())}


@st.composite
def file_form(draw: Any) -> dict:
    """Plain, gzip, or gzip cut short at a fraction of its compressed length."""
    form = draw(st.sampled_from(("plain", "plain", "gzip", "gzip cut short")))
    return {"form": form, "cut": draw(st.floats(0.05, 0.95)) if form == "gzip cut short" else None}


def write_lines(folder: Path, stem: str, spec: dict) -> Path:
    data = b"".join(line + b"\n" for line in spec["lines"])
    if spec["form"] == "plain":
        path = folder / f"{stem}.jsonl"
        path.write_bytes(data)
        return path
    path = folder / f"{stem}.jsonl.gz"
    packed = gzip.compress(data)
    if spec["cut"] is not None:
        packed = packed[: int(len(packed) * spec["cut"])]
    path.write_bytes(packed)
    return path


def non_blank_lines(spec: dict) -> int:
    return sum(1 for line in spec["lines"] if line.strip())


CORPUS_RECORD = st.fixed_dictionaries(
    {"_id": IDS, "text": st.text(max_size=30)}, optional={"title": st.text(max_size=10), "metadata": ANY_JSON}
)
QUERY_RECORD = st.fixed_dictionaries({"_id": st.sampled_from(["q1", "q2", "q3", "q4"]), "text": st.text(max_size=20)})
PAIR_RECORD = st.fixed_dictionaries(
    {"query": st.text(max_size=20), "doc_id": IDS},
    optional={
        "query_id": st.sampled_from(["q1", "q2", "q3"]),
        "label": st.sampled_from([0, 1]),
        "score": st.floats(0, 3, allow_nan=False),
    },
)


@st.composite
def qrels_file(draw: Any) -> list[bytes]:
    rows = [b"query-id\tcorpus-id\tscore"] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 8))):
        qid = draw(st.sampled_from(["q1", "q2", "q3", "q4", "q9", ""]))
        doc = draw(st.sampled_from(["d1", "d2", "d3", ""]))
        grade = draw(st.sampled_from(["1", "0", "2", "-1", "0.5", "nan", "inf", "-inf", "1e999", "abc", "", HUGE]))
        columns = [qid, doc, grade] if draw(st.integers(0, 5)) else [qid, "0", doc, grade]
        mutation = draw(st.sampled_from(("none", "none", "columns", "invalid utf-8", "truncated")))
        line = "\t".join(columns).encode()
        if mutation == "columns":
            line = "\t".join(columns[: draw(st.integers(0, len(columns)))] + ["x"] * draw(st.integers(0, 2))).encode()
        elif mutation == "invalid utf-8":
            at = draw(st.integers(0, len(line)))
            line = line[:at] + draw(st.sampled_from(BAD_BYTES)) + line[at:]
        elif mutation == "truncated":
            line = line[: draw(st.integers(0, len(line)))]
        rows.append(line)
    return rows


# ---------------------------------------------------------------------------------------------- checks


def _check_rows(report: Any, what: str) -> None:
    """Nothing dropped silently: every row read is used or counted as skipped."""
    row_skips = sum(n for reason, n in report.skipped.items() if reason != NO_RELEVANT_DOCUMENT)
    assert report.rows_read == report.rows_used + row_skips, f"{what}: {report.rows_read} rows read but " + (
        f"{report.rows_used} used + {row_skips} skipped"
    )


def _strict(read: Any, lenient_skips: int, file_pattern: str) -> str:
    """Strict mode raises the documented error naming file and line exactly when lenient mode skipped a row."""
    try:
        read()
    except DataFormatError as exc:
        assert re.search(file_pattern + r":\d+: ", str(exc)), f"error does not name file and line: {exc}"
        assert lenient_skips > 0, f"strict mode raised but lenient mode skipped nothing: {exc}"
        return "DataFormatError (file:line)"
    assert lenient_skips == 0, "lenient mode skipped rows that strict mode accepted"
    return "read cleanly"


def _lenient_outcome(report: Any) -> str:
    return "skips counted" if report.n_skipped else "read cleanly"


def check_corpus_beir(spec: dict) -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_lines(folder, "corpus", spec)
        corpus = Corpus.from_beir(folder, errors="skip")
        report = corpus.read_report
        _check_rows(report, "corpus")
        assert report.rows_used == len(corpus)
        if spec["cut"] is None:
            assert report.rows_read == non_blank_lines(spec), "a non-blank line was not read"
        strict = _strict(lambda: Corpus.from_beir(folder), report.n_skipped, r"corpus\.jsonl(\.gz)?")
        return _lenient_outcome(report), strict


def check_training_beir(queries: dict, qrels: list[bytes]) -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_lines(folder, "queries", queries)
        (folder / "qrels").mkdir()
        (folder / "qrels" / "test.tsv").write_bytes(b"".join(row + b"\n" for row in qrels))
        train = TrainingSet.from_beir(folder, "test", errors="skip")
        report = train.read_report
        _check_rows(report, "queries + qrels")
        if queries["cut"] is None:
            header = 1 if qrels and qrels[0].startswith(b"query-id\t") else 0
            expected = non_blank_lines(queries) + sum(1 for row in qrels if row.strip()) - header
            assert report.rows_read == expected, f"{report.rows_read} rows read of {expected} non-blank lines"
        row_skips = report.n_skipped - report.skipped[NO_RELEVANT_DOCUMENT]
        strict = _strict(lambda: TrainingSet.from_beir(folder, "test"), row_skips, r"(queries\.jsonl(\.gz)?|test\.tsv)")
        return _lenient_outcome(report), strict


def check_pairs_jsonl(spec: dict) -> tuple[str, str]:
    spec = {**spec, "form": "plain", "cut": None}  # the pairs reader takes any path; gzip is the BEIR readers' case
    with tempfile.TemporaryDirectory() as tmp:
        path = write_lines(Path(tmp), "pairs", spec)
        train = TrainingSet.from_pairs_jsonl(path, errors="skip")
        report = train.read_report
        _check_rows(report, "pairs")
        assert report.rows_read == non_blank_lines(spec), "a non-blank line was not read"
        row_skips = report.n_skipped - report.skipped[NO_RELEVANT_DOCUMENT]
        strict = _strict(lambda: TrainingSet.from_pairs_jsonl(path), row_skips, r"pairs\.jsonl")
        return _lenient_outcome(report), strict


QA_RECORD = st.fixed_dictionaries(
    {
        "queries": st.dictionaries(st.sampled_from(["q1", "q2", "q3"]), st.text(max_size=10), max_size=3),
        "corpus": st.dictionaries(st.sampled_from(["d1", "d2", "d3"]), st.text(max_size=10), max_size=3),
        "relevant_docs": st.dictionaries(
            st.sampled_from(["q1", "q2", "q3"]), st.lists(st.sampled_from(["d1", "d2", "d3"]), max_size=2), max_size=3
        ),
    },
    optional={"mode": st.just("text")},
)


@st.composite
def qa_json(draw: Any) -> bytes:
    """A LlamaIndex QA JSON file, or a mutation of it (one top-level or nested value replaced, cut, bad bytes)."""
    data = draw(QA_RECORD)
    mutation = draw(st.sampled_from(("none", "top", "nested", "truncated", "invalid utf-8", "deep nesting", "huge")))
    if mutation == "top":
        data[draw(st.sampled_from(["queries", "corpus", "relevant_docs"]))] = draw(ANY_JSON)
    elif mutation == "nested":
        section = draw(st.sampled_from(["queries", "corpus", "relevant_docs"]))
        data[section][draw(st.sampled_from(["q1", "d1", "x"]))] = draw(ANY_JSON)
    elif mutation == "deep nesting":
        return b'{"queries": ' + b"[" * 100_000
    elif mutation == "huge":
        data["corpus"]["d9"] = "@@HUGE@@"
        return _dumps(data).replace(b'"@@HUGE@@"', HUGE.encode())
    raw = _dumps(data)
    if mutation == "truncated":
        return raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    if mutation == "invalid utf-8":
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.sampled_from(BAD_BYTES)) + raw[at:]
    return raw


def check_llamaindex_json(raw: bytes) -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qa.json"
        path.write_bytes(raw)
        outcomes = []
        for read in (TrainingSet.from_llamaindex_json, Corpus.from_llamaindex_json):
            try:
                read(path)
                outcomes.append("read cleanly")
            except DataFormatError as exc:
                assert str(path) in str(exc), f"error does not name the file: {exc}"
                outcomes.append("DataFormatError (file)")
        return outcomes[0], outcomes[1]


# -------------------------------------------------------------------------------------------- harvest

SPAN = st.sampled_from(["r1", "r2", "r3", "0xabc"])
DOC = st.sampled_from(["d1", "d2", "d3", "d9"])
QUERY = st.text(max_size=15)
SCORE = st.one_of(st.floats(0, 1), st.sampled_from(["relevant", "no", "0.5"]))
OURS_DOC = st.fixed_dictionaries(
    {
        "id": DOC,
        "content": st.text(max_size=10),
        "score": st.floats(0, 1),
        "position": st.integers(0, 3),
        "metadata": st.just({}),
    }
)
HARVEST_RECORDS = {
    "ours": st.one_of(
        st.fixed_dictionaries(
            {
                "schema": st.just(1),
                "type": st.just("retrieval"),
                "id": SPAN,
                "trace_id": SPAN,
                "query": QUERY,
                "timestamp": st.just("2026-01-01T00:00:00Z"),
                "session": st.just("s1"),
                "documents": st.lists(OURS_DOC, max_size=3),
            }
        ),
        st.fixed_dictionaries(
            {
                "schema": st.just(1),
                "type": st.just("signal"),
                "target": SPAN,
                "kind": st.sampled_from(["feedback", "citation", "click", "label"]),
                "value": SCORE,
                "document_id": DOC,
                "document_position": st.integers(0, 3),
            }
        ),
    ),
    "openinference": st.one_of(
        st.builds(
            lambda span, query, docs: {
                "name": "retrieve",
                "context": {"trace_id": "t1", "span_id": span},
                "start_time": "2026-01-01T00:00:00Z",
                "attributes": {
                    "openinference.span.kind": "RETRIEVER",
                    "input.value": query,
                    **{f"retrieval.documents.{i}.document.{k}": v for i, d in enumerate(docs) for k, v in d.items()},
                },
            },
            SPAN,
            QUERY,
            st.lists(
                st.fixed_dictionaries({"id": DOC, "content": st.text(max_size=8), "score": st.floats(0, 1)}), max_size=3
            ),
        ),
        st.builds(
            lambda span, query, doc: {
                "resourceSpans": [
                    {
                        "scopeSpans": [
                            {
                                "spans": [
                                    {
                                        "spanId": span,
                                        "traceId": "t1",
                                        "startTimeUnixNano": "1700000000000000000",
                                        "attributes": [
                                            {"key": "openinference.span.kind", "value": {"stringValue": "RETRIEVER"}},
                                            {"key": "input.value", "value": {"stringValue": query}},
                                            {"key": "retrieval.documents.0.document.id", "value": {"stringValue": doc}},
                                            {
                                                "key": "retrieval.documents.0.document.score",
                                                "value": {"doubleValue": 0.5},
                                            },
                                            {"key": "llm.token_count.total", "value": {"intValue": "12"}},
                                        ],
                                    }
                                ]
                            }
                        ]
                    }
                ]
            },
            SPAN,
            QUERY,
            DOC,
        ),
        st.fixed_dictionaries(
            {
                "span_id": SPAN,
                "name": st.sampled_from(["relevance", "user_feedback", ""]),
                "result": st.fixed_dictionaries({"label": st.sampled_from(["relevant", "irrelevant"]), "score": SCORE}),
            },
            optional={"document_position": st.integers(0, 3)},
        ),
    ),
    "langsmith": st.one_of(
        st.fixed_dictionaries(
            {
                "id": SPAN,
                "trace_id": SPAN,
                "run_type": st.sampled_from(["retriever", "retriever", "llm"]),
                "inputs": st.fixed_dictionaries({"query": QUERY}),
                "start_time": st.just("2026-01-01T00:00:00"),
                "outputs": st.fixed_dictionaries(
                    {
                        "documents": st.lists(
                            st.fixed_dictionaries(
                                {"page_content": st.text(max_size=8), "metadata": st.fixed_dictionaries({"id": DOC})}
                            ),
                            max_size=3,
                        )
                    }
                ),
                "extra": st.just({"metadata": {"session_id": "s1"}}),
            }
        ),
        st.fixed_dictionaries(
            {"run_id": SPAN, "key": st.sampled_from(["user_score", "relevance", "citation", "other"]), "score": SCORE},
            optional={"extra": st.fixed_dictionaries({"document_id": DOC})},
        ),
    ),
    "langfuse": st.one_of(
        st.fixed_dictionaries(
            {
                "id": SPAN,
                "traceId": SPAN,
                "type": st.sampled_from(["RETRIEVER", "RETRIEVER", "GENERATION"]),
                "startTime": st.just("2026-01-01T00:00:00Z"),
                "input": st.fixed_dictionaries({"query": QUERY}),
                "output": st.fixed_dictionaries(
                    {
                        "documents": st.lists(
                            st.fixed_dictionaries({"id": DOC, "content": st.text(max_size=8)}), max_size=3
                        )
                    }
                ),
            }
        ),
        st.fixed_dictionaries(
            {"traceId": SPAN, "name": st.sampled_from(["user-feedback", "relevance", "click"]), "value": SCORE},
            optional={"observationId": SPAN, "metadata": st.fixed_dictionaries({"document_id": DOC})},
        ),
    ),
    "llamaindex": st.one_of(
        st.fixed_dictionaries(
            {
                "class_name": st.just("RetrievalStartEvent"),
                "span_id": SPAN,
                "str_or_query_bundle": QUERY,
                "timestamp": st.just("2026-01-01T00:00:00"),
            }
        ),
        st.fixed_dictionaries(
            {
                "class_name": st.just("RetrievalEndEvent"),
                "span_id": SPAN,
                "str_or_query_bundle": st.one_of(QUERY, st.builds(lambda q: {"query_str": q}, QUERY)),
                "nodes": st.lists(
                    st.fixed_dictionaries(
                        {
                            "node": st.fixed_dictionaries(
                                {"id_": DOC, "text": st.text(max_size=8), "metadata": st.just({})}
                            ),
                            "score": st.floats(0, 1),
                        }
                    ),
                    max_size=3,
                ),
            }
        ),
    ),
}


def _keys(fmt: str) -> tuple[str, ...]:
    return {
        "ours": ("type", "id", "query", "documents", "target", "kind", "value", "document_position"),
        "openinference": ("context", "attributes", "resourceSpans", "span_id", "result", "document_position"),
        "langsmith": ("id", "run_type", "inputs", "outputs", "run_id", "key", "score", "extra"),
        "langfuse": ("id", "type", "input", "output", "traceId", "name", "value", "metadata"),
        "llamaindex": ("class_name", "span_id", "str_or_query_bundle", "nodes"),
    }[fmt]


def _array_items(spec: dict) -> int | None:
    """Number of items when the whole file is one JSON array (read as such), else ``None``."""
    data = b"".join(line + b"\n" for line in spec["lines"])
    if not data.startswith(b"["):
        return None
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return len(value) if isinstance(value, list) else None


def check_harvest_reader(fmt: str, spec: dict) -> tuple[str, str]:
    """The reader reads every non-blank line; each record yields something or is counted as skipped;
    ``harvest`` over the file raises nothing and counts every record it read."""
    from adapter_retrievers.data import ReadReport
    from adapter_retrievers.harvest import SignalPolicy, harvest, read_traces

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = write_lines(folder, "traces", spec)
        report = ReadReport()
        items = list(read_traces([path], fmt, report, SignalPolicy()))
        if spec["cut"] is None:
            expected = _array_items(spec)
            expected = non_blank_lines(spec) if expected is None else expected
            assert report.rows_read == expected, f"{report.rows_read} of {expected} records read"
        if fmt != "llamaindex":  # LlamaIndex pairs a start event with its end event: checked over the file
            for i, line in enumerate(spec["lines"]):
                if not line.strip() or _array_items({"lines": [line]}) is not None:
                    continue  # blank, or a JSON array read as a file of records
                one = folder / f"line-{i}.jsonl"
                one.write_bytes(line + b"\n")
                single = ReadReport()
                produced = list(read_traces([one], fmt, single, SignalPolicy()))
                assert produced or single.n_skipped, f"line {i} was dropped silently: {line[:200]!r}"
        corpus = Corpus(["d1", "d2", "d3"], ["one", "two", "three"])
        result = harvest([path], corpus, fmt=fmt)
        assert result.report.records_read == report.rows_read
        lenient = "skips counted" if report.n_skipped else "read cleanly"
        return lenient, f"{len(items)} items" if items else "no items"


# ------------------------------------------------------------------------------------------- adapters

ADAPTER_DIM = 4


def _seed_adapters() -> dict[str, tuple[dict, dict[str, np.ndarray]]]:
    """``kind -> (config, tensors)`` of a valid saved adapter of every kind."""
    from safetensors.numpy import load

    seeds = {}
    options = {"low_rank": {"rank": 2}, "residual_mlp": {"hidden": 3}}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in QueryAdapter.kinds():
            if kind == "identity":
                adapter = QueryAdapter.identity(ADAPTER_DIM, "fuzz/model")
            else:
                adapter = QueryAdapter.create(kind, ADAPTER_DIM, "fuzz/model", **options.get(kind, {}))
            path = adapter.save(Path(tmp) / kind)
            config = json.loads((path / CONFIG_FILE).read_text())
            seeds[kind] = (config, load((path / WEIGHTS_FILE).read_bytes()))
    return seeds


SEEDS = _seed_adapters()
CONFIG_KEYS = ("format_version", "kind", "dimension", "base_model", "normalize", "metadata", "parameters")


@st.composite
def adapter_folder(draw: Any) -> dict:
    """Config and weights bytes of a saved adapter, one of them mutated."""
    from safetensors.numpy import save

    kind = draw(st.sampled_from(sorted(SEEDS)))
    config, tensors = SEEDS[kind]
    config, tensors = json.loads(json.dumps(config)), {k: v.copy() for k, v in tensors.items()}
    target = draw(st.sampled_from(("config", "tensors", "weights bytes", "none")))
    config_bytes = None
    if target == "config":
        _, config_bytes = draw(mutated_line(st.just(config), CONFIG_KEYS))
    elif target == "tensors" and tensors:
        name = draw(st.sampled_from(sorted(tensors)))
        change = draw(st.sampled_from(("dtype", "shape", "scalar", "nan", "inf", "drop", "extra", "huge")))
        if change == "dtype":
            tensors[name] = tensors[name].astype(draw(st.sampled_from([np.float16, np.float64, np.int32, np.uint8])))
        elif change == "shape":
            tensors[name] = tensors[name].reshape(-1)[: max(1, tensors[name].size - draw(st.integers(0, 2)))].copy()
        elif change == "scalar":
            tensors[name] = np.array(1.0, dtype=np.float32)
        elif change in ("nan", "inf"):
            tensors[name].reshape(-1)[0] = np.nan if change == "nan" else np.inf
        elif change == "drop":
            del tensors[name]
        elif change == "extra":
            tensors["extra"] = np.zeros((2, 2), np.float32)
        else:
            tensors[name] = np.full(tensors[name].shape, 3e38, np.float32)
    weights = save(tensors, metadata={"format": "adapter-retrievers"}) if tensors else save({})
    if target == "weights bytes":
        changes = ("truncated", "flipped", "header", "empty") if tensors else ("truncated", "empty")
        change = draw(st.sampled_from(changes))
        if change == "truncated":
            weights = weights[: draw(st.integers(0, len(weights) - 1))]
        elif change == "flipped":
            data = bytearray(weights)
            for _ in range(draw(st.integers(1, 4))):
                data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
            weights = bytes(data)
        elif change == "header":
            size = struct.unpack("<Q", weights[:8])[0]
            header = json.loads(weights[8 : 8 + size])
            name = draw(st.sampled_from(sorted(header)))
            header[name] = draw(ANY_JSON) if draw(st.booleans()) else {**header[name], "shape": draw(ANY_JSON)}
            new = json.dumps(header).encode()
            weights = struct.pack("<Q", len(new)) + new + weights[8 + size :]
        else:
            weights = b""
    return {
        "kind": kind,
        "config": config_bytes if config_bytes is not None else _dumps(config),
        "weights": weights,
    }


def check_adapter_load(spec: dict) -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "adapter"
        path.mkdir()
        (path / CONFIG_FILE).write_bytes(spec["config"])
        (path / WEIGHTS_FILE).write_bytes(spec["weights"])
        try:
            adapter = QueryAdapter.load(path)
        except AdapterFileError as exc:
            assert str(path) in str(exc), f"error does not name the adapter file: {exc}"
            return "AdapterFileError (file)", "-"
        y = adapter.transform(np.ones((2, adapter.dimension), np.float32))  # a loaded adapter must work
        assert y.shape == (2, adapter.output_dimension)
        return "loaded", "finite output" if np.isfinite(y).all() else "non-finite output"


# ------------------------------------------------------------------------------------------ properties


def properties(record: Counter | None = None) -> dict[str, Any]:
    """``name -> (strategy, check)`` for every reader; ``record`` counts outcomes when given."""
    pairs = {
        "Corpus.from_beir": (st.tuples(jsonl_file(CORPUS_RECORD, ("_id", "text", "title"))), check_corpus_beir),
        "TrainingSet.from_beir": (
            st.tuples(jsonl_file(QUERY_RECORD, ("_id", "text")), qrels_file()),
            check_training_beir,
        ),
        "TrainingSet.from_pairs_jsonl": (
            st.tuples(jsonl_file(PAIR_RECORD, ("query", "doc_id", "query_id", "label", "score"))),
            check_pairs_jsonl,
        ),
        "from_llamaindex_json": (st.tuples(qa_json()), check_llamaindex_json),
        "QueryAdapter.load": (st.tuples(adapter_folder()), check_adapter_load),
    }
    for fmt, record in HARVEST_RECORDS.items():
        pairs[f"harvest {fmt}"] = (
            st.tuples(st.just(fmt), jsonl_file(record, _keys(fmt))),
            check_harvest_reader,
        )
    return pairs


def fuzz_settings(examples: int, seconds: float, derandomize: bool = False) -> settings:
    return settings(
        max_examples=examples,
        deadline=timedelta(seconds=seconds),
        derandomize=derandomize,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )


def run(name: str, examples: int, seconds: float) -> dict[str, Any]:
    """Fuzz one reader; count inputs and outcomes; a violated property is reported, not hidden."""
    strategy, check = properties()[name]
    outcomes: Counter = Counter()

    @fuzz_settings(examples, seconds)
    @given(strategy)
    def prop(args: tuple) -> None:
        lenient, strict = check(*args)
        outcomes[f"{lenient} / {strict}"] += 1

    failure = None
    try:
        prop()
    except Exception as exc:  # a violated property: report it
        failure = f"{type(exc).__name__}: {str(exc)[:2000]}"
    return {"inputs": sum(outcomes.values()), "outcomes": dict(outcomes), "failure": failure}


def main() -> None:
    import time
    from datetime import datetime, timezone

    from common import RESULTS, machine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--seconds-per-input", type=float, default=10.0)
    parser.add_argument("--readers", nargs="+", default=None)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "examples": args.examples,
        "deadline_seconds": args.seconds_per_input,
        "readers": {},
    }
    for name in args.readers or list(properties()):
        started = time.perf_counter()
        row = run(name, args.examples, args.seconds_per_input)
        row["seconds"] = round(time.perf_counter() - started, 1)
        results["readers"][name] = row
        print(name, json.dumps(row, indent=1), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fuzz.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
