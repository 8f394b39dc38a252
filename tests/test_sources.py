"""Incremental sources: watermarks, a log appended while read, rotation and gzip, exports; the pairs store."""

import gzip
import json
import os
import shutil
from datetime import datetime, timedelta, timezone

import pytest

from adapter_retrievers import TrainingSet
from adapter_retrievers.capture import RetrievalLog
from adapter_retrievers.data import ReadReport
from adapter_retrievers.sources import ExportSource, LogSource, PairsStore, SourceError, Watermarks, iso_time


def read_all(source, watermark):
    records, report = [], ReadReport()
    new = source.read(watermark, records.append, report)
    return records, new, report


def queries_of(records):
    return [r["query"] for r in records if r.get("type") == "retrieval"]


def log_queries(log, names):
    for name in names:
        log.log_retrieval(name, [{"id": "d1", "content": "x"}])


def test_log_reads_only_what_is_new_and_leaves_a_partial_line(tmp_path):
    log = RetrievalLog(tmp_path / "rag-log.jsonl")
    source = LogSource(log.path)
    log_queries(log, ["a", "b"])
    records, mark, _ = read_all(source, None)
    assert queries_of(records) == ["a", "b"]
    records, same, _ = read_all(source, mark)
    assert records == [] and same == mark  # nothing new
    log_queries(log, ["c"])
    with open(log.path, "a") as handle:  # the application is in the middle of writing a line
        handle.write('{"schema": 1, "type": "retrieval", "id": "x", "query": "d", "documents": []')
    records, mark2, report = read_all(source, mark)
    assert queries_of(records) == ["c"] and report.n_skipped == 0
    with open(log.path, "a") as handle:  # ... and finishes it
        handle.write("}\n")
    records, _, _ = read_all(source, mark2)
    assert queries_of(records) == ["d"]
    # a watermark that was never committed reads the same records again
    records, _, _ = read_all(source, mark)
    assert queries_of(records) == ["c", "d"]


def test_log_follows_rename_rotation_and_gzip(tmp_path):
    log = RetrievalLog(tmp_path / "rag-log.jsonl")
    source = LogSource(log.path)
    log_queries(log, ["a", "b"])
    _, mark, _ = read_all(source, None)
    log_queries(log, ["c"])
    os.rename(log.path, tmp_path / "rag-log.jsonl.1")  # logrotate: rename, the app opens a new file
    log_queries(log, ["d"])
    with open(tmp_path / "rag-log.jsonl.1", "rb") as src, gzip.open(tmp_path / "rag-log.jsonl.1.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)  # ... and compresses the rotated one
    os.utime(tmp_path / "rag-log.jsonl.1.gz", ns=(os.stat(tmp_path / "rag-log.jsonl.1").st_mtime_ns,) * 2)
    os.unlink(tmp_path / "rag-log.jsonl.1")
    (tmp_path / "unrelated.jsonl").write_text('{"type": "retrieval"}\n')
    records, mark, _ = read_all(source, mark)
    assert queries_of(records) == ["c", "d"]
    log_queries(log, ["e"])
    records, _, _ = read_all(source, mark)
    assert queries_of(records) == ["e"]


def test_log_follows_copytruncate_rotation(tmp_path):
    log = RetrievalLog(tmp_path / "rag-log.jsonl")
    source = LogSource(log.path)
    log_queries(log, ["a"])
    _, mark, _ = read_all(source, None)
    log_queries(log, ["b"])
    shutil.copy2(log.path, tmp_path / "rag-log.jsonl-20261127")
    os.truncate(log.path, 0)
    log_queries(log, ["c"])
    records, _, _ = read_all(source, mark)
    assert queries_of(records) == ["b", "c"]


def test_a_line_cut_in_half_is_counted_not_fatal(tmp_path):
    log = RetrievalLog(tmp_path / "rag-log.jsonl")
    log_queries(log, ["a"])
    with open(log.path, "a") as handle:  # the writer died mid-line; the next write follows it
        handle.write('{"schema": 1, "type": "retrie')
    log_queries(log, ["b", "c"])
    source = LogSource(log.path)
    records, mark, report = read_all(source, None)
    assert queries_of(records) == ["a", "c"]  # "b" shares the broken line
    assert report.skipped["malformed JSON line"] == 1
    # a rotated file that ends mid-line: the rest of that line will never come
    os.rename(log.path, tmp_path / "rag-log.jsonl.1")
    with open(tmp_path / "rag-log.jsonl.1", "a") as handle:
        handle.write('{"schema": 1, "ty')
    log_queries(log, ["d"])
    records, _, report = read_all(source, mark)
    assert queries_of(records) == ["d"]
    assert report.skipped["line cut short (no newline at the end of a rotated file)"] == 1


def test_a_missing_log_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="no log at"):
        read_all(LogSource(tmp_path / "rag-log.jsonl"), None)
    with pytest.raises(SourceError, match="does not exist"):
        read_all(LogSource(tmp_path / "nowhere" / "rag-log.jsonl"), None)


def test_export_files_are_read_once(tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    span = {
        "name": "retrieve",
        "context": {"trace_id": "0x1", "span_id": "0xa"},
        "start_time": "2026-11-27T10:00:00.000000Z",
        "attributes": {
            "openinference.span.kind": "RETRIEVER",
            "input.value": "first",
            "retrieval.documents.0.document.id": "d1",
        },
    }
    (folder / "day1.jsonl").write_text(json.dumps(span) + "\n")
    source = ExportSource([folder], "openinference")
    records, mark, _ = read_all(source, None)
    assert queries_of(records) == ["first"] and records[0]["timestamp"] == "2026-11-27T10:00:00.000+00:00"
    assert records[0]["documents"][0]["id"] == "d1"
    second = {**span, "context": {"trace_id": "0x2", "span_id": "0xb"}}
    second["attributes"] = {**span["attributes"], "input.value": "second"}
    (folder / "day2.jsonl").write_text(json.dumps(second) + "\n")
    shutil.copy(folder / "day1.jsonl", folder / "day1-copy.jsonl")  # the same export again
    records, mark, _ = read_all(source, mark)
    assert queries_of(records) == ["second"]
    assert read_all(source, mark)[0] == []
    with pytest.raises(SourceError, match="does not exist"):
        read_all(ExportSource([tmp_path / "missing"]), None)


def test_watermarks_commit_atomically(tmp_path):
    marks = Watermarks(tmp_path / "w.json")
    assert marks.get("a") is None
    marks.commit({"a": {"offset": 1}})
    marks.commit({"b": {"offset": 2}})
    assert marks.load() == {"a": {"offset": 1}, "b": {"offset": 2}}


def test_iso_time():
    assert iso_time("2026-11-27T10:00:00Z") == "2026-11-27T10:00:00.000+00:00"
    assert iso_time(1795773600_000_000_000) == iso_time(1795773600) == iso_time("1795773600000")
    assert iso_time(None) is None and iso_time("") is None


def test_pairs_store_dedups_and_windows(tmp_path):
    store = PairsStore(tmp_path / "pairs.jsonl")
    now = datetime(2026, 11, 27, tzinfo=timezone.utc)
    old, new = (now - timedelta(days=10)).isoformat(), (now - timedelta(days=1)).isoformat()
    first = TrainingSet({"q1": "one", "q2": "two"}, {"q1": {"d1": 1.0}, "q2": {"d2": 1.0}}, {"q2": {"d9"}})
    assert store.add(first, {"q1": {"timestamp": old}, "q2": {"timestamp": new, "adapter_version": "v0001"}}) == 3
    again = TrainingSet({"q1": "one"}, {"q1": {"d1": 1.0}})
    assert store.add(again, {"q1": {"timestamp": new}}) == 0  # duplicate; the first-seen time stays
    store.save()
    reread = PairsStore(tmp_path / "pairs.jsonl")
    assert len(reread) == 3
    everything, info = reread.training_data()
    assert everything.n_pairs == 2 and everything.negatives == {"q2": {"d9"}}
    assert info["q2"]["adapter_version"] == "v0001" and info["q1"]["timestamp"].startswith("2026-11-17")
    recent, _ = reread.training_data(window_days=5, now=now)
    assert recent.query_ids == ["q2"]
