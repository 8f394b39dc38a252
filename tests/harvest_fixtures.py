"""Trace files of every format, emitted by the real libraries where they install: the fixtures of
tests/test_harvest.py, shared with the Ray tests (which harvest the same files on both engines).

Each writer puts its files in ``folder`` and returns what the single-process test asserts on.
"""

from __future__ import annotations

import gzip
import json
import shutil
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from adapter_retrievers.capture import RetrievalLog
from conftest import langchain_spans, write_spans

TEXTS = {f"d{i}": f"document number {i} about topic {i}" for i in range(10)}


# --------------------------------------------------------------------------------- our own log


def own_log(folder: Path) -> tuple[Path, list[str]]:
    path = folder / "log.jsonl"
    log = RetrievalLog(path)
    docs = [{"id": f"d{i}", "content": TEXTS[f"d{i}"], "score": 1 - i / 10} for i in range(3)]
    a = log.log_retrieval("first question", docs, trace_id="t1", session="s1")
    b = log.log_retrieval("second question", docs[::-1], session="s1")
    c = log.log_retrieval("third question", docs, session="s2")
    log.log_retrieval("never judged", docs)
    log.add_feedback("t1", 1.0)  # thumbs up on the trace: top document becomes a positive
    log.add_citations(b, ["d1"])
    log.add_label(b, "d2", relevance=0)  # judged irrelevant: a hard negative
    log.add_click(c, "d9")  # clicked a document that was not among the retrieved ones
    log.add_feedback(c, 0.0)  # thumbs down: top document becomes a hard negative
    log.add_label("no-such-retrieval", "d1")
    return path, [a, b, c]


def interleaved_log(folder: Path) -> Path:
    """Retrievals shown as a team draft of live and a candidate: each document names its ranker and propensity."""
    path = folder / "interleaved.jsonl"
    log = RetrievalLog(path)
    teams = ["live", "candidate", "candidate", "live"]
    docs = [
        {"id": f"d{i}", "content": TEXTS[f"d{i}"], "ranker": team, "propensity": 1.0 if i < 2 else 0.1}
        for i, team in zip(range(4), teams)
    ]
    a = log.log_retrieval("interleaved one", docs, adapter_version="v0001", candidate_version="v0002")
    b = log.log_retrieval("interleaved two", docs[::-1], adapter_version="v0001", candidate_version="v0002")
    log.add_click(a, "d2")  # the candidate's pick
    log.add_click(b, "d0")  # live's
    log.add_citations(b, ["d1"])  # the candidate's
    return path


def bad_lines_log(folder: Path) -> Path:
    path = folder / "bad.jsonl"
    log = RetrievalLog(path)
    rid = log.log_retrieval("good question", [{"id": "d3", "content": TEXTS["d3"]}])
    log.add_feedback(rid, 1)
    with open(path, "a") as handle:
        handle.write('{"type": "retrieval", "id": "x", "query": "trunc\n')  # truncated JSON
        handle.write("[1, 2, 3]\n")  # wrong type
        handle.write('{"type": "retrieval", "id": 5, "query": 7, "documents": "nope"}\n')  # wrong field types
        handle.write(
            '{"type": "signal", "target": "' + rid + '", "kind": "label", "value": "relevant", "document_id": "zzz"}\n'
        )
        handle.write('{"type": "mystery"}\n')
        handle.write(
            '{"type": "signal", "kind": "feedback", "target": "'
            + rid
            + '", "value": 1, "pad": "'
            + "x" * 17_000_000
            + '"}\n'
        )
    return path


def split_log(folder: Path) -> Path:
    path = folder / "timed.jsonl"
    log = RetrievalLog(path)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for i in range(10):
        rid = log.log_retrieval(
            f"question {i}", [{"id": f"d{i}"}], session=f"s{i // 3}", timestamp=(start + timedelta(days=i)).isoformat()
        )
        log.add_feedback(rid, 1)
    return path


def merged_duplicates_log(folder: Path) -> Path:
    path = folder / "dupes.jsonl"
    log = RetrievalLog(path)
    docs = [{"id": "d1", "content": TEXTS["d1"]}, {"id": "d2", "content": TEXTS["d2"]}]
    for _ in range(2):
        log.add_click(log.log_retrieval("Same  question", docs), "d1")
    log.add_click(log.log_retrieval("same question", docs), "d2")  # same question, another document
    rid = log.log_retrieval("other question", docs)
    log.add_click(rid, "d1")
    log.add_label(rid, "d1", relevance=1.0)  # a second signal for a pair already recorded
    return path


def answer_feedback_log(folder: Path) -> Path:
    path = folder / "feedback.jsonl"
    log = RetrievalLog(path)
    docs = [{"id": f"d{i}", "content": TEXTS[f"d{i}"]} for i in range(3)]
    alone = log.log_retrieval("thumbs up alone", docs)
    log.add_feedback(alone, 1.0)
    named = log.log_retrieval("thumbs up and a click", docs)
    log.add_feedback(named, 1.0)  # before the click in the log: order does not matter
    log.add_click(named, "d2")
    down = log.log_retrieval("thumbs down and a label", docs)
    log.add_label(down, "d0", relevance=1.0)
    log.add_feedback(down, 0.0)
    return path


def _langchain_store():
    from langchain_core.documents import Document
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=16))
    store.add_documents([Document(page_content=t, metadata={"source": i}) for i, t in TEXTS.items()], ids=list(TEXTS))
    return store


def langchain_capture_log(folder: Path) -> tuple[Path, uuid.UUID]:
    """A real chain logged by our LangChain handler, with feedback on the whole run."""
    pytest.importorskip("langchain_core")
    from langchain_core.runnables import RunnableLambda

    from adapter_retrievers.integrations.langchain import RetrievalLogger

    path = folder / "langchain.jsonl"
    logger = RetrievalLogger(path)
    chain = _langchain_store().as_retriever(search_kwargs={"k": 3}) | RunnableLambda(lambda docs: docs[0].page_content)
    run_id = uuid.uuid4()
    chain.invoke("topic 4?", config={"callbacks": [logger], "run_id": run_id, "metadata": {"session_id": "u1"}})
    logger.log.add_feedback(str(run_id), 1.0)  # feedback on the whole run (trace)
    return path, run_id


# --------------------------------------------------------------------------------- OpenInference


def _emit_openinference_spans(query_texts):
    """Real spans from openinference-instrumentation-langchain around a real LangChain retriever."""
    with langchain_spans() as exporter:
        retriever = _langchain_store().as_retriever(search_kwargs={"k": 2})
        for q in query_texts:
            retriever.invoke(q, config={"metadata": {"session_id": "sess-1"}})
    return exporter.get_finished_spans()


def openinference_sdk_files(folder: Path) -> tuple[Path, Path, Path, list]:
    """SDK spans (``span.to_json()``), Phoenix-style document annotations, and the spans as OTLP/JSON."""
    spans = _emit_openinference_spans(["about topic 1", "about topic 2"])
    retriever_spans = [s for s in spans if s.attributes.get("openinference.span.kind") == "RETRIEVER"]
    sdk = folder / "spans.jsonl"
    write_spans(spans, sdk)
    # Phoenix-style document annotation: the first document of the first span is relevant, the second is not
    first_span = format(retriever_spans[0].context.span_id, "016x")
    annotations = folder / "annotations.jsonl"
    annotations.write_text(
        "".join(
            json.dumps(
                {
                    "span_id": first_span,
                    "name": "relevance",
                    "annotator_kind": "LLM",
                    "document_position": position,
                    "result": {"label": label, "score": score},
                }
            )
            + "\n"
            for position, label, score in ((0, "relevant", 1), (1, "irrelevant", 0))
        )
    )
    # the SDK's to_json writes span ids as 0x-hex; annotations use plain hex: both must meet
    rows = []
    for line in sdk.read_text().splitlines():
        row = json.loads(line)
        row["context"]["span_id"] = row["context"]["span_id"].removeprefix("0x")
        rows.append(json.dumps(row))
    sdk.write_text("\n".join(rows) + "\n")

    from google.protobuf.json_format import MessageToDict
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    otlp = folder / "otlp.jsonl"
    otlp.write_text(json.dumps(MessageToDict(encode_spans(spans))) + "\n")
    return sdk, annotations, otlp, retriever_spans


def openinference_hash_file(folder: Path) -> Path:
    span = {
        "name": "retrieve",
        "context": {"trace_id": "t", "span_id": "s1"},
        "start_time": "2026-01-01T00:00:00Z",
        "attributes": {
            "openinference.span.kind": "RETRIEVER",
            "input.value": "hash me",
            "retrieval.documents.0.document.content": "  document number 7   about topic 7 ",
            "retrieval.documents.0.document.score": 0.9,
        },
    }
    phoenix_row = {
        "context.span_id": "s2",
        "context.trace_id": "t2",
        "start_time": "2026-01-02",
        "attributes.openinference.span.kind": "RETRIEVER",
        "attributes.input.value": "phoenix row",
        "attributes.retrieval.documents": [{"document.id": "d5", "document.content": "x", "document.score": 1}],
    }
    path = folder / "hashed.jsonl"
    records = [
        span,
        phoenix_row,
        {"span_id": "s1", "name": "user_feedback", "result": {"score": 1}},
        {"span_id": "s2", "name": "user_feedback", "result": {"label": "thumbs_up"}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def phoenix_shapes_file(folder: Path) -> Path:
    """The record shapes Phoenix's client and GraphQL return (taken from a real Phoenix 20.26)."""
    span = {
        "id": "U3Bhbjo3",
        "name": "VectorStoreRetriever",
        "context": {"trace_id": "t1", "span_id": "s1"},
        "span_kind": "RETRIEVER",  # no openinference.span.kind attribute
        "parent_id": "root",
        "start_time": "2026-11-27T23:27:38.714723+00:00",
        "attributes": {
            "input.value": "which topic",
            "retrieval.documents.0.document.content": "not in the corpus",
            "retrieval.documents.1.document.content": "whatever",
            "retrieval.documents.1.document.metadata.doc_id": "d4",  # flattened metadata
        },
    }
    chain = {**span, "span_kind": "CHAIN", "context": {"trace_id": "t1", "span_id": "root"}, "attributes": {}}
    frame_row = {
        "context.span_id": "s2",
        "context.trace_id": "t2",
        "span_kind": "RETRIEVER",
        "start_time": 1795822058714,  # pandas' to_json: epoch milliseconds
        "attributes.input.value": "frame question",
        "attributes.retrieval.documents": [{"document.content": TEXTS["d6"]}],
    }
    annotation_row = {"span_id": "s2", "annotation_name": "user_feedback", "result.label": "thumbs_up"}
    indexed_row = {"annotation_name": "user_feedback", "result.label": "thumbs_up"}  # span_id left in the index
    graphql = {
        "spanId": "s1",
        "documentEvaluations": [{"name": "relevance", "label": "relevant", "documentPosition": 1}],
    }
    path = folder / "phoenix.jsonl"
    path.write_text(
        "".join(json.dumps(r) + "\n" for r in (span, chain, frame_row, annotation_row, graphql, indexed_row))
    )
    return path


# --------------------------------------------------------------------------------- LangSmith


def _dump(model):
    if hasattr(model, "model_dump"):
        return (
            json.loads(model.model_dump_json()) if hasattr(model, "model_dump_json") else model.model_dump(mode="json")
        )
    return json.loads(model.json())


def langsmith_file(folder: Path) -> Path:
    """LangSmith runs and feedback as one JSON array (``Client.list_runs`` / ``list_feedback`` dumped)."""
    schemas = pytest.importorskip("langsmith.schemas")
    trace_id = uuid.uuid4()
    now = datetime.now(timezone.utc)
    runs = [
        schemas.Run(
            id=trace_id,
            trace_id=trace_id,
            name="RunnableSequence",
            run_type="chain",
            start_time=now,
            inputs={"question": "q"},
        ),
        schemas.Run(
            id=uuid.uuid4(),
            trace_id=trace_id,
            parent_run_id=trace_id,
            name="VectorStoreRetriever",
            run_type="retriever",
            start_time=now,
            inputs={"query": "what about topic 3"},
            outputs={
                "documents": [
                    {"page_content": TEXTS["d3"], "metadata": {"id": "d3"}, "type": "Document"},
                    {"page_content": TEXTS["d4"], "metadata": {}, "type": "Document"},
                ]
            },
            extra={"metadata": {"session_id": "abc"}},
        ),
    ]

    def feedback(run_id, key, score, **extra):
        return schemas.Feedback(
            id=uuid.uuid4(),
            created_at=now,
            modified_at=now,
            run_id=run_id,
            trace_id=trace_id,
            key=key,
            score=score,
            **extra,
        )

    notes = [
        feedback(None, "user_feedback", 1),
        feedback(runs[1].id, "relevance", 0, extra={"document_id": "d4"}),
        feedback(runs[1].id, "latency_ok", 1),
    ]
    path = folder / "langsmith.json"
    path.write_text(json.dumps([_dump(r) for r in runs + notes]))
    return path


# --------------------------------------------------------------------------------- Langfuse


def _langfuse(model):
    return json.loads(model.json(by_alias=True, exclude_none=True)) if hasattr(model, "json") else model.dict()


def langfuse_file(folder: Path) -> Path:
    types = pytest.importorskip("langfuse.api.commons.types")
    now = datetime.now(timezone.utc)
    observation = types.ObservationV2(
        id="obs-1",
        trace_id="trace-1",
        start_time=now,
        type="RETRIEVER",
        name="retrieve",
        project_id="p",
        input={"query": "topic 6 please"},
        output={"documents": [{"page_content": TEXTS["d6"], "metadata": {}}]},
        session_id="sess",
    )
    score = types.NumericScore(
        id="sc-1",
        trace_id="trace-1",
        name="user_feedback",
        value=1.0,
        source="API",
        timestamp=now,
        created_at=now,
        updated_at=now,
        data_type="NUMERIC",
        environment="default",
    )
    other = types.ObservationV2(id="gen-1", trace_id="trace-1", start_time=now, type="GENERATION", project_id="p")
    path = folder / "langfuse.jsonl"
    path.write_text("".join(json.dumps(_langfuse(o)) + "\n" for o in (observation, other, score)))
    return path


# --------------------------------------------------------------------------------- LlamaIndex


def llamaindex_files(folder: Path) -> tuple[Path, list[dict]]:
    """Real ``RetrievalStartEvent``/``RetrievalEndEvent`` dumps plus a click in our schema, and what our
    ``RetrievalEventLogger`` logged of the same retrieval."""
    pytest.importorskip("llama_index.core")
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.schema import TextNode

    from adapter_retrievers.integrations.llamaindex import RetrievalEventLogger

    events_path = folder / "events.jsonl"

    class Dump(BaseEventHandler):
        def handle(self, event, **kwargs):
            if type(event).__name__ in ("RetrievalStartEvent", "RetrievalEndEvent"):
                with open(events_path, "a") as handle:
                    handle.write(json.dumps(event.model_dump(mode="json")) + "\n")

    index = VectorStoreIndex(
        [TextNode(id_=i, text=t) for i, t in TEXTS.items()], embed_model=MockEmbedding(embed_dim=8)
    )
    dispatcher = get_dispatcher()
    handlers = [Dump(), RetrievalEventLogger(folder / "ours-events.jsonl")]
    for h in handlers:
        dispatcher.add_event_handler(h)
    try:
        index.as_retriever(similarity_top_k=2).retrieve("which topic")
    finally:
        for h in handlers:
            dispatcher.event_handlers.remove(h)
    ours = [json.loads(line) for line in (folder / "ours-events.jsonl").read_text().splitlines()]
    (folder / "ours-events.jsonl").unlink()  # our schema, not this format: kept out of the folder
    click = {"type": "signal", "target": ours[0]["id"], "kind": "click", "value": 1}
    with open(events_path, "a") as handle:
        handle.write(json.dumps({**click, "document_id": ours[0]["documents"][1]["id"]}) + "\n")
    return events_path, ours


# ------------------------------------------------------------------------- other kinds of records


def other_kinds_files(folder: Path) -> dict[str, Path]:
    """Records that are not retrievals, one file per format."""
    folder.mkdir(parents=True, exist_ok=True)
    runs = folder / "runs.jsonl"
    runs.write_text(json.dumps({"id": "r1", "run_type": "llm", "inputs": {}, "outputs": {}}) + "\n")
    spans = folder / "llm-spans.jsonl"
    span = {"context": {"span_id": "ab"}, "attributes": {"openinference.span.kind": "LLM"}}
    spans.write_text(json.dumps(span) + "\n")
    observations = folder / "observations.jsonl"
    observations.write_text(json.dumps({"id": "o1", "type": "GENERATION", "traceId": "t"}) + "\n")
    return {"langsmith": runs, "openinference": spans, "langfuse": observations}


# ------------------------------------------------------------------- every fixture of one format


def format_files(fmt: str, folder: Path) -> list[Path]:
    """All of a format's fixtures written into ``folder`` (JSONL or JSON arrays), in a fixed order."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "ours":
        files = [own_log(folder)[0], bad_lines_log(folder), split_log(folder), merged_duplicates_log(folder)]
        return [*files, answer_feedback_log(folder), langchain_capture_log(folder)[0], interleaved_log(folder)]
    if fmt == "openinference":
        sdk, annotations, otlp, _ = openinference_sdk_files(folder)
        files = [sdk, annotations, otlp, openinference_hash_file(folder), phoenix_shapes_file(folder)]
        return [*files, other_kinds_files(folder / "other")[fmt]]
    if fmt == "langsmith":
        return [langsmith_file(folder), other_kinds_files(folder / "other")[fmt]]
    if fmt == "langfuse":
        return [langfuse_file(folder), other_kinds_files(folder / "other")[fmt]]
    if fmt == "llamaindex":
        return [llamaindex_files(folder)[0]]
    raise ValueError(fmt)


def gzipped(path: Path, folder: Path) -> Path:
    """A ``.gz`` copy of a JSONL or JSON file."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (path.name + ".gz")
    with open(path, "rb") as source, gzip.open(target, "wb") as sink:
        shutil.copyfileobj(source, sink)
    return target


def as_parquet(path: Path, folder: Path) -> Path | None:
    """A Parquet copy of a trace file in the documented layout (one record a row, columns = the record's keys);
    ``None`` when pyarrow cannot type its records (one key holding a number here and text there)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = path.read_text()
    if text.lstrip().startswith("["):
        records = json.loads(text)
    else:
        records = []
        for line in text.splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    records = [_no_empty_objects(r) for r in records if isinstance(r, dict)]
    keys = list(dict.fromkeys(k for r in records for k in r))
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (path.name.split(".")[0] + ".parquet")
    try:
        pq.write_table(pa.table({k: pa.array([r.get(k) for r in records]) for k in keys}), target)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        target.unlink(missing_ok=True)
        return None
    return target


def _no_empty_objects(value):
    """Parquet has no empty struct: an empty object is written as null (read back as an absent key)."""
    if isinstance(value, dict):
        kept = {k: _no_empty_objects(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not None} or None
    if isinstance(value, list):
        return [_no_empty_objects(v) for v in value]
    return value
