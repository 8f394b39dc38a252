"""Harvesting pairs from each trace format; fixtures are emitted by the real libraries where they install."""

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from adapter_retrievers import Corpus
from adapter_retrievers.capture import RetrievalLog
from adapter_retrievers.harvest import SignalPolicy, content_hash, harvest
from conftest import langchain_spans, write_spans

TEXTS = {f"d{i}": f"document number {i} about topic {i}" for i in range(10)}


@pytest.fixture
def corpus():
    return Corpus(list(TEXTS), list(TEXTS.values()))


# --------------------------------------------------------------------------------- our own log


def test_own_log_signals_to_pairs(tmp_path, corpus):
    log = RetrievalLog(tmp_path / "log.jsonl")
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
    result = harvest(tmp_path / "log.jsonl", corpus)
    ts = result.training_set
    by_text = {ts.queries[q]: q for q in ts.queries}
    assert ts.relevant[by_text["first question"]] == {"d0": 1.0}
    assert ts.relevant[by_text["second question"]] == {"d1": 1.0}
    assert ts.negatives[by_text["second question"]] == {"d2"}
    assert ts.relevant[by_text["third question"]] == {"d9": 1.0} and ts.negatives[by_text["third question"]] == {"d0"}
    assert a != b and result.report.pairs == 3 and result.report.negatives == 2
    skipped = result.report.skipped.skipped
    assert skipped["retrieval with no signal"] == 1 and skipped["signal for an unknown retrieval or trace"] == 1
    assert "produced 3 positive pairs" in str(result.report)


def test_bad_lines_are_counted_not_fatal(tmp_path, corpus):
    path = tmp_path / "log.jsonl"
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
    result = harvest(path, corpus)
    assert result.training_set.relevant == {next(iter(result.training_set.queries)): {"d3": 1.0}}
    reasons = result.report.skipped.skipped
    assert reasons["malformed JSON line"] == 1 and reasons["line is not a JSON object"] == 1
    assert reasons["retrieval without id, query or documents"] == 1 and reasons["unknown record type"] == 1
    assert reasons["unknown document (not in the corpus)"] == 1 and reasons["line longer than 16 MiB"] == 1
    assert "log.jsonl:3" in result.report.skipped.examples["malformed JSON line"][0]


def test_split_by_time_and_session(tmp_path, corpus):
    log = RetrievalLog(tmp_path / "log.jsonl")
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for i in range(10):
        rid = log.log_retrieval(
            f"question {i}", [{"id": f"d{i}"}], session=f"s{i // 3}", timestamp=(start + timedelta(days=i)).isoformat()
        )
        log.add_feedback(rid, 1)
    result = harvest(tmp_path / "log.jsonl", corpus)
    train, held = result.split("time", 0.2)
    assert sorted(held.queries.values()) == ["question 8", "question 9"]
    train, held = result.split("session", 0.25)
    assert sorted(held.queries.values()) == ["question 9"]  # the newest session, whole
    assert not set(train.queries) & set(held.queries)


# --------------------------------------------------------------------------------- LangChain capture


def _langchain_store():
    from langchain_core.documents import Document
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=16))
    store.add_documents([Document(page_content=t, metadata={"source": i}) for i, t in TEXTS.items()], ids=list(TEXTS))
    return store


def test_langchain_capture_handler(tmp_path, corpus):
    pytest.importorskip("langchain_core")
    from langchain_core.runnables import RunnableLambda

    from adapter_retrievers.integrations.langchain import RetrievalLogger

    logger = RetrievalLogger(tmp_path / "log.jsonl")
    chain = _langchain_store().as_retriever(search_kwargs={"k": 3}) | RunnableLambda(lambda docs: docs[0].page_content)
    run_id = uuid.uuid4()
    chain.invoke("topic 4?", config={"callbacks": [logger], "run_id": run_id, "metadata": {"session_id": "u1"}})
    record = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert record["type"] == "retrieval" and record["trace_id"] == str(run_id) and record["session"] == "u1"
    assert record["query"] == "topic 4?" and len(record["documents"]) == 3
    assert [d["position"] for d in record["documents"]] == [0, 1, 2] and record["documents"][0]["id"] in TEXTS
    logger.log.add_feedback(str(run_id), 1.0)  # feedback on the whole run (trace)
    result = harvest(tmp_path / "log.jsonl", corpus)
    assert result.report.pairs == 1 and result.training_set.relevant


# --------------------------------------------------------------------------------- OpenInference


def _emit_openinference_spans(query_texts):
    """Real spans from openinference-instrumentation-langchain around a real LangChain retriever."""
    with langchain_spans() as exporter:
        retriever = _langchain_store().as_retriever(search_kwargs={"k": 2})
        for q in query_texts:
            retriever.invoke(q, config={"metadata": {"session_id": "sess-1"}})
    return exporter.get_finished_spans()


def test_openinference_sdk_and_otlp_json(tmp_path, corpus):
    spans = _emit_openinference_spans(["about topic 1", "about topic 2"])
    retriever_spans = [s for s in spans if s.attributes.get("openinference.span.kind") == "RETRIEVER"]
    assert len(retriever_spans) == 2
    assert "retrieval.documents.0.document.id" not in retriever_spans[0].attributes  # as the issue says
    sdk = tmp_path / "spans.jsonl"
    write_spans(spans, sdk)
    # Phoenix-style document annotation: the first document of the first span is relevant, the second is not
    first_span = format(retriever_spans[0].context.span_id, "016x")
    annotations = tmp_path / "annotations.jsonl"
    annotations.write_text(
        json.dumps(
            {
                "span_id": first_span,
                "name": "relevance",
                "annotator_kind": "LLM",
                "document_position": 0,
                "result": {"label": "relevant", "score": 1},
            }
        )
        + "\n"
        + json.dumps(
            {
                "span_id": first_span,
                "name": "relevance",
                "annotator_kind": "LLM",
                "document_position": 1,
                "result": {"label": "irrelevant", "score": 0},
            }
        )
        + "\n"
    )
    # the SDK's to_json writes span ids as 0x-hex; annotations use plain hex: both must meet
    _rewrite_ids(sdk)
    result = harvest([sdk, annotations], corpus, fmt="openinference")
    ts = result.training_set
    assert result.report.retrievals == 2 and len(ts) == 1
    (qid,) = ts.queries
    assert ts.queries[qid] == "about topic 1" and len(ts.relevant[qid]) == 1 and len(ts.negatives[qid]) == 1
    retrieved = [retriever_spans[0].attributes[f"retrieval.documents.{i}.document.content"] for i in range(2)]
    assert TEXTS[next(iter(ts.relevant[qid]))] == retrieved[0]  # position 0, matched to the corpus
    assert TEXTS[next(iter(ts.negatives[qid]))] == retrieved[1]

    from google.protobuf.json_format import MessageToDict
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    otlp = tmp_path / "otlp.jsonl"
    otlp.write_text(json.dumps(MessageToDict(encode_spans(spans))) + "\n")
    otlp_result = harvest([otlp], corpus, fmt="openinference")
    assert otlp_result.report.retrievals == 2 and otlp_result.report.skipped.skipped["retrieval with no signal"] == 2


def _rewrite_ids(path):
    rows = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        row["context"]["span_id"] = row["context"]["span_id"].removeprefix("0x")
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n")


def test_openinference_content_hash_matching(tmp_path, corpus):
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
    path = tmp_path / "spans.jsonl"
    path.write_text(
        json.dumps(span)
        + "\n"
        + json.dumps(phoenix_row)
        + "\n"
        + json.dumps({"span_id": "s1", "name": "user_feedback", "result": {"score": 1}})
        + "\n"
        + json.dumps({"span_id": "s2", "name": "user_feedback", "result": {"label": "thumbs_up"}})
        + "\n"
    )
    ts = harvest(path, corpus, fmt="openinference").training_set
    assert sorted(d for docs in ts.relevant.values() for d in docs) == ["d5", "d7"]
    assert content_hash("a  b\n") == content_hash("a b")


# --------------------------------------------------------------------------------- LangSmith


def test_langsmith_runs_and_feedback(tmp_path, corpus):
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
    feedback = [
        schemas.Feedback(
            id=uuid.uuid4(),
            created_at=now,
            modified_at=now,
            run_id=None,
            trace_id=trace_id,
            key="user_feedback",
            score=1,
        ),
        schemas.Feedback(
            id=uuid.uuid4(),
            created_at=now,
            modified_at=now,
            run_id=runs[1].id,
            trace_id=trace_id,
            key="relevance",
            score=0,
            extra={"document_id": "d4"},
        ),
        schemas.Feedback(
            id=uuid.uuid4(),
            created_at=now,
            modified_at=now,
            run_id=runs[1].id,
            trace_id=trace_id,
            key="latency_ok",
            score=1,
        ),
    ]
    path = tmp_path / "langsmith.json"
    path.write_text(json.dumps([_dump(r) for r in runs + feedback]))
    result = harvest(path, corpus, fmt="langsmith")
    ts = result.training_set
    (qid,) = ts.queries
    assert ts.relevant[qid] == {"d3": 1.0} and ts.negatives[qid] == {"d4"}
    assert result.report.skipped.skipped["feedback or score 'latency_ok' is not configured as a signal"] == 1
    strict = harvest(path, corpus, fmt="langsmith", policy=SignalPolicy(feedback_threshold=2.0))
    assert strict.report.pairs == 0  # a score of 1 is below that threshold: thumbs down instead


def _dump(model):
    if hasattr(model, "model_dump"):
        return (
            json.loads(model.model_dump_json()) if hasattr(model, "model_dump_json") else model.model_dump(mode="json")
        )
    return json.loads(model.json())


# --------------------------------------------------------------------------------- Langfuse


def test_langfuse_observations_and_scores(tmp_path, corpus):
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
    path = tmp_path / "langfuse.jsonl"
    path.write_text("".join(json.dumps(_langfuse(o)) + "\n" for o in (observation, other, score)))
    result = harvest(path, corpus, fmt="langfuse")
    assert list(result.training_set.relevant.values()) == [{"d6": 1.0}]
    assert result.query_info[next(iter(result.training_set.queries))]["session"] == "sess"


def _langfuse(model):
    return json.loads(model.json(by_alias=True, exclude_none=True)) if hasattr(model, "json") else model.dict()


# --------------------------------------------------------------------------------- LlamaIndex


def test_llamaindex_events_and_capture(tmp_path, corpus):
    pytest.importorskip("llama_index.core")
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.schema import TextNode

    from adapter_retrievers.integrations.llamaindex import RetrievalEventLogger

    events_path = tmp_path / "events.jsonl"

    class Dump(BaseEventHandler):
        def handle(self, event, **kwargs):
            if type(event).__name__ in ("RetrievalStartEvent", "RetrievalEndEvent"):
                with open(events_path, "a") as handle:
                    handle.write(json.dumps(event.model_dump(mode="json")) + "\n")

    index = VectorStoreIndex(
        [TextNode(id_=i, text=t) for i, t in TEXTS.items()], embed_model=MockEmbedding(embed_dim=8)
    )
    dispatcher = get_dispatcher()
    handlers = [Dump(), RetrievalEventLogger(tmp_path / "ours.jsonl")]
    for h in handlers:
        dispatcher.add_event_handler(h)
    try:
        index.as_retriever(similarity_top_k=2).retrieve("which topic")
    finally:
        for h in handlers:
            dispatcher.event_handlers.remove(h)
    ours = [json.loads(line) for line in (tmp_path / "ours.jsonl").read_text().splitlines()]
    assert len(ours) == 1 and ours[0]["query"] == "which topic" and len(ours[0]["documents"]) == 2
    span_id = ours[0]["id"]
    with open(events_path, "a") as handle:
        handle.write(
            json.dumps(
                {
                    "type": "signal",
                    "target": span_id,
                    "kind": "click",
                    "value": 1,
                    "document_id": ours[0]["documents"][1]["id"],
                }
            )
            + "\n"
        )
    result = harvest(events_path, corpus, fmt="llamaindex")
    assert result.report.retrievals == 1
    assert list(result.training_set.relevant.values()) == [{ours[0]["documents"][1]["id"]: 1.0}]


def test_unknown_format(tmp_path, corpus):
    (tmp_path / "x.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="unknown trace format"):
        harvest(tmp_path / "x.jsonl", corpus, fmt="splunk")


def test_merged_duplicates_are_counted(tmp_path, corpus):
    """The same question clicked to the same document twice is one pair, and the report says so."""
    log = RetrievalLog(tmp_path / "log.jsonl")
    docs = [{"id": "d1", "content": TEXTS["d1"]}, {"id": "d2", "content": TEXTS["d2"]}]
    for _ in range(2):
        log.add_click(log.log_retrieval("Same  question", docs), "d1")
    log.add_click(log.log_retrieval("same question", docs), "d2")  # same question, another document
    rid = log.log_retrieval("other question", docs)
    log.add_click(rid, "d1")
    log.add_label(rid, "d1", relevance=1.0)  # a second signal for a pair already recorded
    result = harvest(tmp_path / "log.jsonl", corpus)
    assert result.report.signals == 5 and result.report.pairs == 3
    merged = result.report.merged.skipped
    assert merged["same question and document in another retrieval (one pair kept)"] == 1
    assert merged["signal for a pair already recorded (merged)"] == 1
    assert "merged 2:" in str(result.report)


def test_other_span_and_run_kinds_are_counted(tmp_path, corpus):
    """Non-retriever records are counted under their own reason, never dropped silently."""
    runs = tmp_path / "runs.jsonl"
    runs.write_text(json.dumps({"id": "r1", "run_type": "llm", "inputs": {}, "outputs": {}}) + "\n")
    result = harvest(runs, corpus, fmt="langsmith")
    assert result.report.skipped.skipped["run that is not a retriever run"] == 1
    spans = tmp_path / "spans.jsonl"
    span = {"context": {"span_id": "ab"}, "attributes": {"openinference.span.kind": "LLM"}}
    spans.write_text(json.dumps(span) + "\n")
    result = harvest(spans, corpus, fmt="openinference")
    assert result.report.skipped.skipped["span that is not a RETRIEVER span"] == 1
    observations = tmp_path / "observations.jsonl"
    observations.write_text(json.dumps({"id": "o1", "type": "GENERATION", "traceId": "t"}) + "\n")
    result = harvest(observations, corpus, fmt="langfuse")
    assert result.report.skipped.skipped["observation that is not a RETRIEVER"] == 1


def test_one_reader_module_per_format():
    import importlib

    from adapter_retrievers.harvest import FORMATS, READERS

    for fmt in FORMATS:
        module = importlib.import_module(f"adapter_retrievers.harvest.{fmt}")
        assert fmt == module.FORMAT and READERS[fmt].__module__ == module.__name__
        assert module.__doc__ and "format=" in module.__doc__


def test_answer_feedback_names_no_document(tmp_path, corpus):
    """A thumbs up on the answer is not a pair by itself: it makes the top retrieved document a positive only
    when nothing names the useful document; a click/label on the same retrieval takes its place."""
    log = RetrievalLog(tmp_path / "log.jsonl")
    docs = [{"id": f"d{i}", "content": TEXTS[f"d{i}"]} for i in range(3)]
    alone = log.log_retrieval("thumbs up alone", docs)
    log.add_feedback(alone, 1.0)
    named = log.log_retrieval("thumbs up and a click", docs)
    log.add_feedback(named, 1.0)  # before the click in the log: order does not matter
    log.add_click(named, "d2")
    down = log.log_retrieval("thumbs down and a label", docs)
    log.add_label(down, "d0", relevance=1.0)
    log.add_feedback(down, 0.0)
    result = harvest(tmp_path / "log.jsonl", corpus)
    ts = result.training_set
    by_text = {ts.queries[q]: q for q in ts.queries}
    assert ts.relevant[by_text["thumbs up alone"]] == {"d0": 1.0}
    assert ts.relevant[by_text["thumbs up and a click"]] == {"d2": 1.0}
    assert ts.relevant[by_text["thumbs down and a label"]] == {"d0": 1.0}
    assert not ts.negatives[by_text["thumbs down and a label"]]  # a labelled-relevant document is never negative
    assert (result.report.feedback_to_top_k, result.report.feedback_with_named_documents) == (2, 1)
    assert "1 x thumbs up left to the documents a click, citation or label named" in str(result.report)
    ignored = harvest(tmp_path / "log.jsonl", corpus, policy=SignalPolicy(feedback_top_k=0)).training_set
    assert "thumbs up alone" not in ignored.queries.values()


def test_phoenix_client_shapes_without_a_server(tmp_path, corpus):
    """The record shapes Phoenix's client and GraphQL return (taken from a real Phoenix 20.26, see
    tests/integrations/test_phoenix.py for the live round trip)."""
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
    path = tmp_path / "phoenix.jsonl"
    path.write_text(
        "".join(json.dumps(r) + "\n" for r in (span, chain, frame_row, annotation_row, graphql, indexed_row))
    )
    result = harvest(path, corpus, fmt="openinference")
    ts = result.training_set
    assert {ts.queries[q]: set(d) for q, d in ts.relevant.items()} == {"which topic": {"d4"}, "frame question": {"d6"}}
    assert result.report.skipped.skipped["span that is not a RETRIEVER span"] == 1
    assert result.report.records_read == 6 == result.report.retrievals + result.report.signals + 2
    assert (
        result.report.skipped.skipped[
            "annotation row without span_id (write get_span_annotations_dataframe().reset_index())"
        ]
        == 1
    )
    assert result.query_info[next(q for q in ts.queries if ts.queries[q] == "frame question")]["timestamp"] == (
        "2026-11-27T23:27:38.714000+00:00"
    )
