import gzip
import json

import numpy as np
import pytest

from adapter_retrievers import Corpus, DataFormatError, TrainingSet


def write_beir(folder, corpus_lines, query_lines, qrels_lines, split="train"):
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("\n".join(corpus_lines) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(query_lines) + "\n")
    (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels_lines) + "\n")


GOOD_CORPUS = [json.dumps({"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"}) for i in range(3)]
GOOD_QUERIES = [json.dumps({"_id": "q1", "text": "first"}), json.dumps({"_id": "q2", "text": "second"})]


def test_beir_round_trip(tmp_path):
    write_beir(tmp_path / "b", GOOD_CORPUS, GOOD_QUERIES, ["q1\td0\t1", "q1\td1\t2", "q2\td2\t1", "q2\td0\t0"])
    corpus = Corpus.from_beir(tmp_path / "b")
    assert corpus.ids == ["d0", "d1", "d2"]
    assert corpus.texts[0] == "T0 text 0"  # title prepended, as BEIR/MTEB do
    train = TrainingSet.from_beir(tmp_path / "b", "train")
    assert train.relevant == {"q1": {"d0": 1.0, "d1": 2.0}, "q2": {"d2": 1.0}}
    assert train.negatives == {"q2": {"d0"}}
    train.to_beir(tmp_path / "out", "train")
    again = TrainingSet.from_beir(tmp_path / "out", "train")
    assert again.relevant == train.relevant and again.negatives == train.negatives


def test_malformed_line_names_file_and_line(tmp_path):
    lines = [*GOOD_CORPUS[:1], '{"_id": "d9", "text": ', *GOOD_CORPUS[1:]]
    write_beir(tmp_path / "b", lines, GOOD_QUERIES, ["q1\td0\t1"])
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:2: malformed JSON"):
        Corpus.from_beir(tmp_path / "b")
    lenient = Corpus.from_beir(tmp_path / "b", errors="skip")
    assert len(lenient) == 3
    assert lenient.read_report.n_skipped == 1
    assert "corpus.jsonl:2" in str(lenient.read_report)


def test_truncated_gzip_is_reported(tmp_path):
    folder = tmp_path / "b"
    write_beir(folder, GOOD_CORPUS * 1, GOOD_QUERIES, ["q1\td0\t1"])
    payload = gzip.compress(("\n".join(json.dumps({"_id": f"x{i}", "text": "t" * 50}) for i in range(500))).encode())
    (folder / "corpus.jsonl").unlink()
    (folder / "corpus.jsonl.gz").write_bytes(payload[: len(payload) // 2])
    with pytest.raises(DataFormatError, match="unreadable data"):
        Corpus.from_beir(folder)
    partial = Corpus.from_beir(folder, errors="skip")
    assert 0 < len(partial) < 500 and partial.read_report.n_skipped >= 1


def test_duplicate_ids_and_wrong_types(tmp_path):
    with pytest.raises(DataFormatError, match="duplicated document ids"):
        Corpus(["a", "a"], ["x", "y"])
    lines = [*GOOD_CORPUS, GOOD_CORPUS[0], json.dumps({"_id": "d7", "text": 5}), json.dumps(["not", "object"])]
    write_beir(tmp_path / "b", lines, GOOD_QUERIES, ["q1\td0\t1"])
    with pytest.raises(DataFormatError, match="duplicated document id 'd0'"):
        Corpus.from_beir(tmp_path / "b")
    corpus = Corpus.from_beir(tmp_path / "b", errors="skip")
    assert len(corpus) == 3
    assert dict(corpus.read_report.skipped) == {
        "duplicated document id 'd0'": 1,
        "missing or non-string text": 1,
        "line is not a JSON object": 1,
    }


def test_qrels_bad_rows(tmp_path):
    write_beir(tmp_path / "b", GOOD_CORPUS, GOOD_QUERIES, ["q1\td0\t1", "q1\td1", "q9\td1\t1", "q2\td2\tx"])
    with pytest.raises(DataFormatError, match=r"train.tsv:3: expected 3"):
        TrainingSet.from_beir(tmp_path / "b", "train")
    lenient = TrainingSet.from_beir(tmp_path / "b", "train", errors="skip")
    assert lenient.relevant == {"q1": {"d0": 1.0}}
    assert lenient.read_report.n_skipped == 3
    with pytest.raises(FileNotFoundError, match="splits here"):
        TrainingSet.from_beir(tmp_path / "b", "test")


def test_unknown_doc_ids_against_corpus():
    corpus = Corpus.from_texts(["a", "b"], ids=["d0", "d1"])
    train = TrainingSet.from_pairs([("query one", "d0"), ("query two", "missing")])
    with pytest.raises(DataFormatError, match="unknown document id 'missing'"):
        train.check_against(corpus)
    checked = train.check_against(corpus, errors="skip")
    assert len(checked) == 1 and checked.read_report.skipped


def test_empty_training_set_and_nan_vectors():
    assert len(TrainingSet({}, {})) == 0
    with pytest.raises(DataFormatError, match="NaN or inf in rows \\[1\\]"):
        Corpus(["a", "b"], ["x", "y"], embeddings=np.array([[1.0, 0.0], [np.nan, 1.0]]))
    with pytest.raises(DataFormatError, match="has 1 rows, expected 2"):
        Corpus(["a", "b"], ["x", "y"], embeddings=np.ones((1, 2)))


def test_llamaindex_json_round_trip(tmp_path):
    corpus = Corpus.from_texts(["alpha doc", "beta doc", "gamma doc"], ids=["n1", "n2", "n3"])
    train = TrainingSet({"a": "what is alpha", "b": "what is beta"}, {"a": {"n1": 1.0}, "b": {"n2": 1.0, "n3": 1.0}})
    train.to_llamaindex_json(tmp_path / "qa.json", corpus)
    data = json.loads((tmp_path / "qa.json").read_text())
    assert set(data) >= {"queries", "corpus", "relevant_docs"}
    assert TrainingSet.from_llamaindex_json(tmp_path / "qa.json").relevant == train.relevant
    assert Corpus.from_llamaindex_json(tmp_path / "qa.json").ids == ["n1", "n2", "n3"]
    (tmp_path / "bad.json").write_text('{"queries": {}, "corpus": {}}')
    with pytest.raises(DataFormatError, match="relevant_docs"):
        TrainingSet.from_llamaindex_json(tmp_path / "bad.json")


def test_pairs_jsonl(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"query": "how to x", "doc_id": "d1"},
        {"query": "how to x", "doc_id": "d2", "label": 0},
        {"query": "how to y", "doc_id": 7, "score": 2},
        {"query": "", "doc_id": "d1"},
        {"query": "how to z", "doc_id": "d1", "label": "yes"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{truncated")
    with pytest.raises(DataFormatError, match=r"pairs\.jsonl:4: missing or empty query"):
        TrainingSet.from_pairs_jsonl(path)
    pairs = TrainingSet.from_pairs_jsonl(path, errors="skip")
    assert pairs.n_pairs == 2 and pairs.read_report.n_skipped == 3
    assert [set(v) for v in pairs.negatives.values()] == [{"d2"}]
    pairs.to_pairs_jsonl(tmp_path / "out.jsonl")
    again = TrainingSet.from_pairs_jsonl(tmp_path / "out.jsonl")
    assert again.relevant == pairs.relevant and again.negatives == pairs.negatives


def test_split_is_by_query_and_seeded():
    ts = TrainingSet({f"q{i}": f"t{i}" for i in range(50)}, {f"q{i}": {f"d{i}": 1.0} for i in range(50)})
    a, b = ts.split(0.2, seed=3)
    assert not set(a.queries) & set(b.queries) and len(a) + len(b) == 50 and len(b) == 10
    assert ts.split(0.2, seed=3)[1].queries == b.queries
    assert ts.split(0.2, seed=4)[1].queries != b.queries
    with pytest.raises(ValueError, match="at least 2 queries"):
        ts.subset(["q1"]).split(0.5)


def test_queries_without_a_relevant_document_are_counted(tmp_path):
    write_beir(tmp_path / "b", GOOD_CORPUS, GOOD_QUERIES, ["q1\td0\t1", "q2\td1\t0"])
    train = TrainingSet.from_beir(tmp_path / "b", "train")
    assert list(train.queries) == ["q1"]
    assert train.read_report.skipped["query without a relevant document (nothing to learn from)"] == 1


def test_split_by_document_puts_no_document_on_both_sides():
    rng = np.random.default_rng(0)
    # 120 queries over 60 documents, each query judging 1-3 of them: many queries share documents
    relevant = {f"q{i}": {f"d{j}": 1.0 for j in rng.choice(60, rng.integers(1, 4), replace=False)} for i in range(120)}
    ts = TrainingSet({q: f"text {q}" for q in relevant}, relevant)
    groups = ts.document_groups()
    assert sorted(q for g in groups for q in g) == sorted(ts.queries)
    for i, a in enumerate(groups):  # no document is shared between two groups
        docs_a = {d for q in a for d in relevant[q]}
        for b in groups[i + 1 :]:
            assert not docs_a & {d for q in b for d in relevant[q]}
    sparse = TrainingSet(
        {f"q{i}": "t" for i in range(90)},
        {f"q{i}": {f"d{i // 3}": 1.0, f"e{i % 7 if i < 6 else i}": 1.0} for i in range(90)},
    )
    for data in (ts, sparse):
        rest, held = data.split(0.25, seed=1, by="document")
        assert len(rest) + len(held) == len(data) and not set(rest.queries) & set(held.queries)
        assert len(held) > 0 and not rest.documents & held.documents
    # by query, shared documents do end up on both sides (this is what "seen" means)
    rest, held = sparse.split(0.25, seed=1, by="query")
    assert rest.documents & held.documents
    with pytest.raises(ValueError, match="split by"):
        ts.split(0.2, by="topic")


def test_folds_by_document_cover_every_query_once():
    ts = TrainingSet(
        {f"q{i}": "t" for i in range(40)}, {f"q{i}": {f"d{i // 2}": 1.0} for i in range(40)}
    )  # pairs of queries share a document
    folds = ts.folds(4, seed=0)
    assert sorted(q for f in folds for q in f.queries) == sorted(ts.queries)
    assert [len(f) for f in folds] == [10, 10, 10, 10]
    for i, a in enumerate(folds):
        for b in folds[i + 1 :]:
            assert not a.documents & b.documents
    assert (
        ts.documents_fingerprint == TrainingSet(ts.queries, dict(reversed(ts.relevant.items()))).documents_fingerprint
    )
    assert ts.documents_fingerprint != folds[0].documents_fingerprint
    with pytest.raises(ValueError, match="cannot make 30 folds"):
        ts.folds(30)
