"""Harvest from a real Arize Phoenix: a LangChain retriever over Chroma, traced by OpenInference's LangChain
instrumentor over OTLP/HTTP into `phoenix serve`; user clicks written with Phoenix's own client as span
annotations (``user_feedback``) and document annotations (``relevance`` at the clicked position); read back
the ways Phoenix's docs show (and our ``export-phoenix``), harvested, and checked against the clicks made."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pytest

pytest.importorskip("langchain_chroma")
pytest.importorskip("openinference.instrumentation.langchain")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

from adapter_retrievers import Corpus
from adapter_retrievers.harvest import harvest
from conftest import HashingEncoder
from integrations.conftest import MODEL_ID, TOPICS

PROJECT = "rag-app"
DOCUMENT_EVALUATIONS = "documentEvaluations { name label score documentPosition annotatorKind metadata }"


@dataclass
class Knowledge:
    """A small knowledge base: one document per topic, and a question per topic."""

    ids: list[str]
    texts: list[str]
    queries: list[str]
    encoder: HashingEncoder


@pytest.fixture(scope="module")
def knowledge() -> Knowledge:
    """This module's own documents (the shared `task` fixture also trains an adapter, not needed here)."""
    return Knowledge(
        [f"doc-{t}" for t in TOPICS],
        [f"notes on {t} and more {t}" for t in TOPICS],
        [f"tell me about {t}" for t in TOPICS[:12]],
        HashingEncoder(64, MODEL_ID),
    )


@dataclass
class Traffic:
    url: str
    corpus: Corpus
    spans: dict[str, str] = field(default_factory=dict)  # retriever span id -> query
    retrieved: dict[str, list[str]] = field(default_factory=dict)  # query -> retrieved doc ids, in order
    clicked: dict[str, str] = field(default_factory=dict)  # query -> the document the user clicked
    thumbs: dict[str, float] = field(default_factory=dict)  # query -> user_feedback score
    n_spans: int = 0  # every span Phoenix stored (chains too)


def _send_traffic(url: str, knowledge, queries: list[str], db_path, project: str = PROJECT) -> list[list]:
    """Run a LangChain chain (Chroma retriever -> answer) per query with OpenInference tracing to Phoenix."""
    import chromadb
    from langchain_chroma import Chroma
    from langchain_core.documents import Document
    from langchain_core.runnables import RunnableLambda

    from adapter_retrievers.integrations.langchain import EncoderEmbeddings
    from adapter_retrievers.integrations.phoenix import trace_langchain

    store = Chroma(
        collection_name="phoenix-test",
        embedding_function=EncoderEmbeddings(knowledge.encoder),
        client=chromadb.PersistentClient(path=str(db_path)),
    )
    if not store.get(limit=1)["ids"]:
        # half the documents carry their id in metadata; the others are matched by content
        documents = [
            Document(page_content=t, metadata={"doc_id": i} if n % 2 == 0 else {"topic": n})
            for n, (i, t) in enumerate(zip(knowledge.ids, knowledge.texts))
        ]
        store.add_documents(documents, ids=knowledge.ids)
    chain = store.as_retriever(search_kwargs={"k": 3}) | RunnableLambda(lambda docs: docs)
    with trace_langchain(url, project):
        results = [chain.invoke(q, config={"metadata": {"session_id": f"user-{n % 3}"}}) for n, q in enumerate(queries)]
    return results


def _stored_retriever_spans(client, queries: set[str], project: str = PROJECT) -> dict[str, dict]:
    """Poll until Phoenix has stored a RETRIEVER span for every query (ingestion is asynchronous)."""
    deadline = time.time() + 60
    while True:
        try:
            spans = client.spans.get_spans(project_identifier=project, span_kind="RETRIEVER", limit=10_000)
        except Exception:  # the project exists only once its first span is stored (404 before)
            spans = []
        by_query = {s["attributes"]["input.value"]: s for s in spans if s["attributes"].get("input.value") in queries}
        if len(by_query) == len(queries) or time.time() > deadline:
            return by_query
        time.sleep(0.3)


def _record_clicks(client, knowledge, queries, results, spans, traffic: Traffic) -> None:
    """Clicks as a Phoenix user writes them: a thumbs up/down on the retrieval span (``user_feedback``) and,
    when the user clicked a document, ``relevance`` at the clicked position (a document annotation).

    Per query n: n % 4 in (0, 1) thumbs up + click (not always on the first result); n % 4 == 2 thumbs up, no
    document named; n % 4 == 3 thumbs down + click on the third result, but the last one with no click."""
    span_notes, document_notes = [], []
    for n, (query, documents) in enumerate(zip(queries, results)):
        span_id = spans[query]["context"]["span_id"]
        traffic.spans[span_id] = query
        traffic.retrieved[query] = [d.id for d in documents]
        up = n % 4 != 3
        traffic.thumbs[query] = 1.0 if up else 0.0
        span_notes.append(
            {
                "span_id": span_id,
                "name": "user_feedback",
                "annotator_kind": "HUMAN",
                "result": {"label": "thumbs_up" if up else "thumbs_down", "score": 1.0 if up else 0.0},
                "metadata": {"user": f"user-{n % 3}"},
            }
        )
        position = {0: (n + 1) % 3, 1: (n + 1) % 3, 2: None, 3: 2}[n % 4] if n != len(queries) - 1 else None
        if position is not None:
            traffic.clicked[query] = documents[position].id
            document_notes.append(
                {
                    "span_id": span_id,
                    "document_position": position,
                    "name": "relevance",
                    "annotator_kind": "HUMAN",
                    "result": {"label": "relevant", "score": 1.0},
                }
            )
    client.spans.log_span_annotations(span_annotations=span_notes, sync=True)
    client.spans.log_document_annotations(document_annotations=document_notes, sync=True)


@pytest.fixture(scope="module")
def traffic(phoenix_server, knowledge, tmp_path_factory) -> Traffic:
    from phoenix.client import Client

    queries = [f"{q} please" for q in knowledge.queries]
    results = _send_traffic(phoenix_server, knowledge, queries, tmp_path_factory.mktemp("chroma") / "db")
    client = Client(base_url=phoenix_server)
    spans = _stored_retriever_spans(client, set(queries))
    assert len(spans) == len(queries)
    traffic = Traffic(phoenix_server, Corpus(knowledge.ids, knowledge.texts))
    _record_clicks(client, knowledge, queries, results, spans, traffic)
    traffic.n_spans = len(client.spans.get_spans(project_identifier=PROJECT, limit=10_000))
    assert traffic.n_spans == 3 * len(queries)  # sequence, retriever, lambda
    return traffic


def _expected(traffic: Traffic) -> tuple[dict[str, set[str]], dict[str, set[str]], int]:
    """Positives and hard negatives per query from the clicks the test made (default SignalPolicy), and the
    number of queries left with no positive (dropped from the training set, counted)."""
    positives, negatives, dropped = {}, {}, 0
    for query, score in traffic.thumbs.items():
        top = traffic.retrieved[query][0]
        if query in traffic.clicked:  # a click names the document: a thumbs up adds nothing more
            positives[query] = {traffic.clicked[query]}
            if score < 0.5 and top != traffic.clicked[query]:  # thumbs down: the top document was wrong
                negatives[query] = {top}
        elif score >= 0.5:  # thumbs up, no document named: the top document (feedback_top_k=1)
            positives[query] = {top}
        else:  # thumbs down alone: a hard negative with no positive, nothing to learn from
            dropped += 1
    return positives, negatives, dropped


def _check_pairs(result, traffic: Traffic) -> None:
    ts = result.training_set
    got_pos = {ts.queries[q]: set(docs) for q, docs in ts.relevant.items() if docs}
    got_neg = {ts.queries[q]: set(docs) for q, docs in ts.negatives.items() if docs}
    positives, negatives, dropped = _expected(traffic)
    assert got_pos == positives
    assert got_neg == negatives and negatives and dropped
    report = result.report
    assert report.retrievals == len(traffic.spans)
    assert report.skipped.skipped["query without a relevant document (nothing to learn from)"] == dropped
    named = sum(1 for q in traffic.clicked if traffic.thumbs[q] >= 0.5)
    assert report.feedback_with_named_documents == named
    assert report.feedback_to_top_k == len(traffic.thumbs) - named
    assert "answer feedback (names no document)" in str(report)


def _write_lines(path, rows) -> int:
    path.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    return len(rows)


def _graphql_document_annotations(url: str, span_node_ids: list[str]) -> list[dict]:
    """Phoenix serves document annotations only through GraphQL: one aliased ``node`` per span."""
    import httpx

    fields = f"... on Span {{ spanId {DOCUMENT_EVALUATIONS} }}"
    query = "query { " + " ".join(f's{i}: node(id: "{n}") {{ {fields} }}' for i, n in enumerate(span_node_ids)) + " }"
    response = httpx.post(f"{url}/graphql", json={"query": query}, timeout=30)
    response.raise_for_status()
    return [node for node in response.json()["data"].values() if node and node["documentEvaluations"]]


def test_get_spans_dicts_and_annotation_dicts(traffic, tmp_path):
    from phoenix.client import Client

    client = Client(base_url=traffic.url)
    spans = client.spans.get_spans(project_identifier=PROJECT, limit=10_000)
    annotations = client.spans.get_span_annotations(spans=spans, project_identifier=PROJECT)
    retriever_ids = [s["id"] for s in spans if s["span_kind"] == "RETRIEVER"]
    documents = _graphql_document_annotations(traffic.url, retriever_ids)
    _write_lines(tmp_path / "spans.jsonl", spans)
    _write_lines(tmp_path / "annotations.jsonl", annotations)
    _write_lines(tmp_path / "document-annotations.jsonl", documents)
    result = harvest(sorted(tmp_path.glob("*.jsonl")), traffic.corpus, fmt="openinference")
    _check_pairs(result, traffic)
    report = result.report
    n_document_notes = sum(len(d["documentEvaluations"]) for d in documents)
    assert n_document_notes == len(traffic.clicked) and len(spans) == traffic.n_spans
    assert report.signals == len(annotations) + n_document_notes
    others = report.skipped.skipped["span that is not a RETRIEVER span"]
    assert others == traffic.n_spans - len(traffic.spans)  # chains: counted, not silently dropped
    assert report.records_read == len(spans) + len(annotations) + n_document_notes  # a GraphQL note is a record
    assert report.records_read == report.retrievals + report.signals + others


def test_dataframe_rows(traffic, tmp_path):
    from phoenix.client import Client

    client = Client(base_url=traffic.url)
    spans = client.spans.get_spans_dataframe(project_identifier=PROJECT, limit=10_000)
    annotations = client.spans.get_span_annotations_dataframe(spans_dataframe=spans, project_identifier=PROJECT)
    # the annotation frame is indexed by span_id: reset_index keeps it in the rows
    (tmp_path / "spans.jsonl").write_text(spans.to_json(orient="records", lines=True))
    (tmp_path / "annotations.jsonl").write_text(annotations.reset_index().to_json(orient="records", lines=True))
    retriever_ids = [s["id"] for s in client.spans.get_spans(project_identifier=PROJECT, span_kind="RETRIEVER")]
    _write_lines(tmp_path / "document-annotations.jsonl", _graphql_document_annotations(traffic.url, retriever_ids))
    result = harvest(sorted(tmp_path.glob("*.jsonl")), traffic.corpus, fmt="openinference")
    _check_pairs(result, traffic)
    assert result.report.skipped.skipped["span that is not a RETRIEVER span"] == traffic.n_spans - len(traffic.spans)
    assert result.report.signals == len(annotations) + len(traffic.clicked)
    times = [info["timestamp"] for info in result.query_info.values()]
    assert all(t.startswith("20") for t in times)  # epoch numbers in the frame's JSON become ISO times


def test_export_phoenix_pages_and_harvests(traffic, tmp_path):
    from adapter_retrievers.harvest.phoenix import export_phoenix

    stats = export_phoenix(tmp_path / "traces.jsonl", traffic.url, PROJECT, page_size=5)
    assert (stats.retriever_spans, stats.pages) == (len(traffic.spans), 3)
    assert stats.span_annotations == len(traffic.thumbs) and stats.document_annotations == len(traffic.clicked)
    result = harvest(tmp_path / "traces.jsonl", traffic.corpus, fmt="openinference")
    _check_pairs(result, traffic)
    assert result.report.records_read == stats.records == result.report.retrievals + result.report.signals
    newest = max(info["timestamp"] for info in result.query_info.values())
    assert stats.watermark.isoformat() == newest
    written = (tmp_path / "traces.jsonl").read_bytes()
    with pytest.raises(ValueError, match="exists; pass overwrite=True"):  # refused before connecting
        export_phoenix(tmp_path / "traces.jsonl", traffic.url, PROJECT, page_size=5)
    assert (tmp_path / "traces.jsonl").read_bytes() == written
    again = export_phoenix(tmp_path / "traces.jsonl", traffic.url, PROJECT, page_size=500, overwrite=True)
    assert again.records == stats.records and again.pages == 1


def test_export_phoenix_incremental_with_answer_feedback_on_the_trace(phoenix_server, knowledge, tmp_path):
    """Nightly use: export, more traffic and feedback arrive, export again from the watermark. Answer feedback
    on a trace's root span or on the trace itself reaches the trace's retrieval."""
    from phoenix.client import Client

    from adapter_retrievers.harvest.phoenix import PhoenixExport, export_phoenix, iter_phoenix_records

    project = "rag-app-nightly"
    client = Client(base_url=phoenix_server)
    first, second = [f"first {q}" for q in knowledge.queries[:3]], [f"second {q}" for q in knowledge.queries[3:5]]
    _send_traffic(phoenix_server, knowledge, first, tmp_path / "db", project)
    spans = _stored_retriever_spans(client, set(first), project)
    night1 = export_phoenix(tmp_path / "night-1.jsonl", phoenix_server, project)
    assert night1.retriever_spans == 3 and night1.span_annotations == 0
    # feedback arrives later: thumbs up on the root span of the newest trace, and on a new trace itself
    newest = max(spans.values(), key=lambda s: s["start_time"])
    (root,) = client.spans.get_spans(
        project_identifier=project, trace_ids=[newest["context"]["trace_id"]], parent_id="null"
    )
    client.spans.add_span_annotation(
        span_id=root["context"]["span_id"], annotation_name="user_feedback", label="thumbs_up", score=1, sync=True
    )
    results = _send_traffic(phoenix_server, knowledge, second, tmp_path / "db", project)
    later = _stored_retriever_spans(client, set(second), project)
    client.traces.add_trace_annotation(
        trace_id=later[second[1]]["context"]["trace_id"],
        annotation_name="user_feedback",
        label="thumbs_up",
        score=1,
        sync=True,
    )
    stats = PhoenixExport()
    records = list(iter_phoenix_records(phoenix_server, project, since=night1.watermark, stats=stats))
    assert stats.retriever_spans == 3  # the span at the watermark (inclusive) and the two new ones
    assert stats.trace_annotations == 2 and stats.watermark > night1.watermark
    (tmp_path / "night-2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = harvest(
        [tmp_path / "night-1.jsonl", tmp_path / "night-2.jsonl"],
        Corpus(knowledge.ids, knowledge.texts),
        fmt="openinference",
    )
    ts = result.training_set
    got = {ts.queries[q]: set(d) for q, d in ts.relevant.items()}
    top = knowledge.ids[knowledge.texts.index(newest["attributes"]["retrieval.documents.0.document.content"])]
    assert got == {newest["attributes"]["input.value"]: {top}, second[1]: {results[1][0].id}}
    assert result.report.merged.skipped["retrieval logged twice (same id)"] == 1


def test_export_phoenix_command(traffic, tmp_path):
    from typer.testing import CliRunner

    from adapter_retrievers.cli import app

    out = tmp_path / "traces.jsonl"
    result = CliRunner().invoke(app, ["export-phoenix", "--url", traffic.url, "--project", PROJECT, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{len(traffic.spans)} retriever spans" in result.output and "--since 20" in result.output
    _check_pairs(harvest(out, traffic.corpus, fmt="openinference"), traffic)
    missing = CliRunner().invoke(app, ["export-phoenix", "--url", traffic.url, "--page-size", "0", "-o", str(out)])
    assert missing.exit_code == 2 and "error: --page-size must be 1..1000" in missing.output
    written = out.read_bytes()
    again = CliRunner().invoke(app, ["export-phoenix", "--url", traffic.url, "--project", PROJECT, "-o", str(out)])
    assert again.exit_code == 2 and "--output" in again.output and "pass --overwrite" in again.output
    assert out.read_bytes() == written
