"""Property-based fuzzing of every reader, a few dozen inputs each (``benchmarks/fuzz.py`` runs thousands).

The properties live in ``benchmarks/fuzz.py`` so the suite and the benchmark check the same thing: a
counted skip or the documented error naming file and line; never another exception, never a hang (a
deadline per input), never a silent drop (rows read == rows used + rows skipped).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")
from hypothesis import given

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz

PROPERTIES = fuzz.properties()


@pytest.mark.parametrize("reader", sorted(PROPERTIES))
def test_reader_survives_generated_and_mutated_input(reader):
    strategy, check = PROPERTIES[reader]
    outcomes = set()

    @fuzz.fuzz_settings(examples=40, seconds=10, derandomize=True)
    @given(strategy)
    def prop(args):
        outcomes.add(check(*args))

    prop()
    assert len(outcomes) >= 2, f"the inputs never reached both a clean read and a rejected one: {outcomes}"


# ------------------------------------------------------------- regressions: what fuzzing found, one case each


def test_bad_lines_in_a_beir_corpus_are_counted_and_the_rest_is_read(tmp_path):
    from adapter_retrievers import Corpus

    lines = [
        b'{"_id": "a", "text": "first"}',
        b'{"_id": "b", "text": "caf\xe9"}',  # Latin-1, not UTF-8: used to end the read here
        b"[" * 100_000,  # RecursionError
        b'{"_id": "c", "text": "x", "n": ' + b"9" * 5000 + b"}",  # ValueError: over 4300 digits
        b'{"_id": "d", "text": "last"}',
    ]
    (tmp_path / "corpus.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    corpus = Corpus.from_beir(tmp_path, errors="skip")
    assert corpus.ids == ["a", "d"]
    report = corpus.read_report
    assert (report.rows_read, report.rows_used, report.n_skipped) == (5, 2, 3)
    with pytest.raises(fuzz.DataFormatError, match=r"corpus\.jsonl:2: invalid UTF-8"):
        Corpus.from_beir(tmp_path)


def test_non_finite_grades_are_skipped(tmp_path):
    from adapter_retrievers import TrainingSet

    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "a question"}\n')
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("q1\td1\tinf\nq1\td2\tnan\nq1\td3\t1\n")
    train = TrainingSet.from_beir(tmp_path, "test", errors="skip")
    assert train.relevant == {"q1": {"d3": 1.0}} and train.read_report.n_skipped == 2
    (tmp_path / "pairs.jsonl").write_text('{"query": "a", "doc_id": "d1", "score": ' + "9" * 400 + "}\n")
    assert TrainingSet.from_pairs_jsonl(tmp_path / "pairs.jsonl", errors="skip").read_report.n_skipped == 1


@pytest.mark.parametrize(
    "data",
    [
        {"queries": {"q1": "x"}, "corpus": {"d1": "y"}, "relevant_docs": {"q1": 5}},  # used to raise TypeError
        {"queries": {"q1": "x"}, "corpus": {"d1": "y"}, "relevant_docs": {"q1": "d1"}},  # used to read "d", "1"
        {"queries": {"q1": ["x"]}, "corpus": {"d1": "y"}, "relevant_docs": {"q1": ["d1"]}},
    ],
)
def test_llamaindex_json_of_the_wrong_types_is_refused(tmp_path, data):
    import json

    from adapter_retrievers import TrainingSet

    (tmp_path / "qa.json").write_text(json.dumps(data))
    with pytest.raises(fuzz.DataFormatError, match=r"qa\.json"):
        TrainingSet.from_llamaindex_json(tmp_path / "qa.json")


def test_adapter_files_that_used_to_crash_the_loader(tmp_path):
    import numpy as np
    from safetensors.numpy import save

    from adapter_retrievers import QueryAdapter

    path = QueryAdapter.create("low_rank", 4, "m", rank=2).save(tmp_path / "a")
    config = (path / fuzz.CONFIG_FILE).read_text()
    (path / fuzz.CONFIG_FILE).write_text("[" * 100_000)  # RecursionError
    with pytest.raises(fuzz.AdapterFileError, match="not valid JSON"):
        QueryAdapter.load(path)
    (path / fuzz.CONFIG_FILE).write_text(config)
    (path / fuzz.WEIGHTS_FILE).write_bytes(save({k: np.array(1.0, np.float32) for k in ("up", "down", "bias")}))
    with pytest.raises(fuzz.AdapterFileError, match="shape"):  # 0-d tensors: used to raise IndexError
        QueryAdapter.load(path)


def test_trace_files_that_used_to_crash_or_vanish_in_harvest(tmp_path):
    import gzip
    import json

    from adapter_retrievers.data import ReadReport
    from adapter_retrievers.harvest import SignalPolicy, read_traces

    good = {"type": "retrieval", "id": "r1", "query": "q", "documents": [{"id": "d1"}]}
    lines = [
        b"[1, 2]",  # a first line that is an array: the whole file used to be read as one JSON array, and lost
        b"\xff" + json.dumps(good).encode(),  # invalid UTF-8 on the first byte: UnicodeDecodeError
        b'{"type": "signal", "target": "r1", "kind": "feedback", "value": NaN}',  # NaN: was negative feedback
        b'{"type": "signal", "target": "r1", "kind": "feedback", "value": 1' + b"0" * 400 + b"}",  # OverflowError
        json.dumps(good).encode(),
    ]
    path = tmp_path / "log.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n")[:-6])  # and the gzip is cut short
    report = ReadReport()
    items = list(read_traces([path], "ours", report, SignalPolicy()))
    assert [type(i).__name__ for i in items] == ["LoggedRetrieval"]
    assert report.rows_read == 6 and report.n_skipped == 5  # 5 lines + the unreadable end

    otlp = {
        "resourceSpans": [
            None,
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {"spanId": "s1", "attributes": [{"key": ["x"]}, {"key": "n", "value": {"intValue": "x"}}]}
                        ]
                    }
                ]
            },
        ]
    }
    (tmp_path / "spans.jsonl").write_text(json.dumps(otlp) + "\n")
    report = ReadReport()
    assert list(read_traces([tmp_path / "spans.jsonl"], "openinference", report, SignalPolicy())) == []
    assert report.n_skipped == 1  # a span that is not a RETRIEVER span, counted
