"""Harvesting pairs from each trace format; fixtures are emitted by the real libraries where they install
(tests/harvest_fixtures.py, shared with the Ray tests)."""

import json

import pytest

import harvest_fixtures as fx
from adapter_retrievers import Corpus
from adapter_retrievers.harvest import SignalPolicy, content_hash, harvest
from harvest_fixtures import TEXTS


@pytest.fixture
def corpus():
    return Corpus(list(TEXTS), list(TEXTS.values()))


# --------------------------------------------------------------------------------- our own log


def test_own_log_signals_to_pairs(tmp_path, corpus):
    path, (a, b, _) = fx.own_log(tmp_path)
    result = harvest(path, corpus)
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
    path = fx.bad_lines_log(tmp_path)
    result = harvest(path, corpus)
    assert result.training_set.relevant == {next(iter(result.training_set.queries)): {"d3": 1.0}}
    reasons = result.report.skipped.skipped
    assert reasons["malformed JSON line"] == 1 and reasons["line is not a JSON object"] == 1
    assert reasons["retrieval without id, query or documents"] == 1 and reasons["unknown record type"] == 1
    assert reasons["unknown document (not in the corpus)"] == 1 and reasons["line longer than 16 MiB"] == 1
    assert "bad.jsonl:3" in result.report.skipped.examples["malformed JSON line"][0]


def test_split_by_time_and_session(tmp_path, corpus):
    result = harvest(fx.split_log(tmp_path), corpus)
    train, held = result.split("time", 0.2)
    assert sorted(held.queries.values()) == ["question 8", "question 9"]
    train, held = result.split("session", 0.25)
    assert sorted(held.queries.values()) == ["question 9"]  # the newest session, whole
    assert not set(train.queries) & set(held.queries)


# --------------------------------------------------------------------------------- LangChain capture


def test_langchain_capture_handler(tmp_path, corpus):
    path, run_id = fx.langchain_capture_log(tmp_path)
    record = json.loads(path.read_text().splitlines()[0])
    assert record["type"] == "retrieval" and record["trace_id"] == str(run_id) and record["session"] == "u1"
    assert record["query"] == "topic 4?" and len(record["documents"]) == 3
    assert [d["position"] for d in record["documents"]] == [0, 1, 2] and record["documents"][0]["id"] in TEXTS
    result = harvest(path, corpus)
    assert result.report.pairs == 1 and result.training_set.relevant
    assert result.report.signals == 1  # the feedback on the whole run (trace)


# --------------------------------------------------------------------------------- OpenInference


def test_openinference_sdk_and_otlp_json(tmp_path, corpus):
    sdk, annotations, otlp, retriever_spans = fx.openinference_sdk_files(tmp_path)
    assert len(retriever_spans) == 2
    assert "retrieval.documents.0.document.id" not in retriever_spans[0].attributes  # as the issue says
    result = harvest([sdk, annotations], corpus, fmt="openinference")
    ts = result.training_set
    assert result.report.retrievals == 2 and len(ts) == 1
    (qid,) = ts.queries
    assert ts.queries[qid] == "about topic 1" and len(ts.relevant[qid]) == 1 and len(ts.negatives[qid]) == 1
    retrieved = [retriever_spans[0].attributes[f"retrieval.documents.{i}.document.content"] for i in range(2)]
    assert TEXTS[next(iter(ts.relevant[qid]))] == retrieved[0]  # position 0, matched to the corpus
    assert TEXTS[next(iter(ts.negatives[qid]))] == retrieved[1]

    otlp_result = harvest([otlp], corpus, fmt="openinference")
    assert otlp_result.report.retrievals == 2 and otlp_result.report.skipped.skipped["retrieval with no signal"] == 2


def test_openinference_content_hash_matching(tmp_path, corpus):
    path = fx.openinference_hash_file(tmp_path)
    ts = harvest(path, corpus, fmt="openinference").training_set
    assert sorted(d for docs in ts.relevant.values() for d in docs) == ["d5", "d7"]
    assert content_hash("a  b\n") == content_hash("a b")


# --------------------------------------------------------------------------------- LangSmith


def test_langsmith_runs_and_feedback(tmp_path, corpus):
    path = fx.langsmith_file(tmp_path)
    result = harvest(path, corpus, fmt="langsmith")
    ts = result.training_set
    (qid,) = ts.queries
    assert ts.relevant[qid] == {"d3": 1.0} and ts.negatives[qid] == {"d4"}
    assert result.report.skipped.skipped["feedback or score 'latency_ok' is not configured as a signal"] == 1
    strict = harvest(path, corpus, fmt="langsmith", policy=SignalPolicy(feedback_threshold=2.0))
    assert strict.report.pairs == 0  # a score of 1 is below that threshold: thumbs down instead


# --------------------------------------------------------------------------------- Langfuse


def test_langfuse_observations_and_scores(tmp_path, corpus):
    path = fx.langfuse_file(tmp_path)
    result = harvest(path, corpus, fmt="langfuse")
    assert list(result.training_set.relevant.values()) == [{"d6": 1.0}]
    assert result.query_info[next(iter(result.training_set.queries))]["session"] == "sess"


# --------------------------------------------------------------------------------- LlamaIndex


def test_llamaindex_events_and_capture(tmp_path, corpus):
    events_path, ours = fx.llamaindex_files(tmp_path)
    assert len(ours) == 1 and ours[0]["query"] == "which topic" and len(ours[0]["documents"]) == 2
    result = harvest(events_path, corpus, fmt="llamaindex")
    assert result.report.retrievals == 1
    assert list(result.training_set.relevant.values()) == [{ours[0]["documents"][1]["id"]: 1.0}]


def test_unknown_format(tmp_path, corpus):
    (tmp_path / "x.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="unknown trace format"):
        harvest(tmp_path / "x.jsonl", corpus, fmt="splunk")


def test_merged_duplicates_are_counted(tmp_path, corpus):
    """The same question clicked to the same document twice is one pair, and the report says so."""
    path = fx.merged_duplicates_log(tmp_path)
    result = harvest(path, corpus)
    assert result.report.signals == 5 and result.report.pairs == 3
    merged = result.report.merged.skipped
    assert merged["same question and document in another retrieval (one pair kept)"] == 1
    assert merged["signal for a pair already recorded (merged)"] == 1
    assert "merged 2:" in str(result.report)


def test_other_span_and_run_kinds_are_counted(tmp_path, corpus):
    """Non-retriever records are counted under their own reason, never dropped silently."""
    files = fx.other_kinds_files(tmp_path)
    result = harvest(files["langsmith"], corpus, fmt="langsmith")
    assert result.report.skipped.skipped["run that is not a retriever run"] == 1
    result = harvest(files["openinference"], corpus, fmt="openinference")
    assert result.report.skipped.skipped["span that is not a RETRIEVER span"] == 1
    result = harvest(files["langfuse"], corpus, fmt="langfuse")
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
    path = fx.answer_feedback_log(tmp_path)
    result = harvest(path, corpus)
    ts = result.training_set
    by_text = {ts.queries[q]: q for q in ts.queries}
    assert ts.relevant[by_text["thumbs up alone"]] == {"d0": 1.0}
    assert ts.relevant[by_text["thumbs up and a click"]] == {"d2": 1.0}
    assert ts.relevant[by_text["thumbs down and a label"]] == {"d0": 1.0}
    assert not ts.negatives[by_text["thumbs down and a label"]]  # a labelled-relevant document is never negative
    assert (result.report.feedback_to_top_k, result.report.feedback_with_named_documents) == (2, 1)
    assert "1 x thumbs up left to the documents a click, citation or label named" in str(result.report)
    ignored = harvest(path, corpus, policy=SignalPolicy(feedback_top_k=0)).training_set
    assert "thumbs up alone" not in ignored.queries.values()


def test_phoenix_client_shapes_without_a_server(tmp_path, corpus):
    """The record shapes Phoenix's client and GraphQL return (taken from a real Phoenix 20.26, see
    tests/integrations/test_phoenix.py for the live round trip)."""
    path = fx.phoenix_shapes_file(tmp_path)
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


# ------------------------------------------------------------------------- Parquet, folders, URLs


@pytest.mark.parametrize("fmt", ["ours", "openinference", "langsmith", "langfuse", "llamaindex"])
def test_parquet_with_one_record_a_row_harvests_like_its_jsonl(tmp_path, corpus, fmt):
    """The Parquet layout: columns = the records' keys, a null cell = an absent key (so runs and feedback,
    spans and annotations share one table); timestamps, structs and lists read back as the JSON held them."""
    converted = 0
    for path in fx.format_files(fmt, tmp_path / "jsonl"):
        parquet = fx.as_parquet(path, tmp_path / "parquet")
        if parquet is None:  # e.g. a value that is a number on one line and text on another
            continue
        converted += 1
        jsonl, columns = harvest(path, corpus, fmt), harvest(parquet, corpus, fmt)
        assert columns.training_set.relevant == jsonl.training_set.relevant, path.name
        assert columns.training_set.negatives == jsonl.training_set.negatives
        assert columns.query_info == jsonl.query_info
        assert columns.report.skipped.skipped == jsonl.report.skipped.skipped
        assert (columns.report.records_read, columns.report.pairs) == (jsonl.report.records_read, jsonl.report.pairs)
    assert converted


def test_folders_and_filesystem_urls(tmp_path, corpus):
    """A folder is every trace file below it in name order (writers' ``_SUCCESS`` and dot files passed over,
    other files counted as skipped); a ``file://`` URL goes through pyarrow's filesystem like ``s3://``."""
    pytest.importorskip("pyarrow")
    folder = tmp_path / "traces"
    first, _ = fx.own_log(folder / "a")
    second = fx.gzipped(fx.answer_feedback_log(tmp_path), folder / "b")
    (folder / "_SUCCESS").write_text("")
    (folder / ".part.crc").write_text("x")
    (folder / "README.txt").write_text("not a trace file")
    files = harvest([first, second], corpus)
    by_folder, by_url = harvest(folder, corpus), harvest(f"file://{folder}", corpus)
    for result in (by_folder, by_url):
        assert result.training_set.relevant == files.training_set.relevant and files.report.pairs >= 5
        assert result.report.skipped.skipped["file in the folder that is not a trace file (by its name)"] == 1
    assert by_url.report.skipped.examples == by_folder.report.skipped.examples
    with pytest.raises(FileNotFoundError):
        harvest(tmp_path / "nowhere", corpus)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no trace files"):
        harvest(tmp_path / "empty", corpus)
