import itertools

import numpy as np
import pytest

from adapter_retrievers import Corpus, QueryAdapter, TrainingSet, compare
from adapter_retrievers.evaluation import exact_search, paired_bootstrap, ranking_metrics, score_vectors


def random_run(seed=0, n_queries=40, n_docs=60):
    rng = np.random.default_rng(seed)
    qrels, rankings = [], []
    for _ in range(n_queries):
        judged = {f"d{j}": float(rng.integers(1, 4)) for j in rng.choice(n_docs, rng.integers(1, 6), replace=False)}
        qrels.append(judged)
        rankings.append([f"d{j}" for j in rng.permutation(n_docs)[:100]])
    return rankings, qrels


def test_metrics_match_trec_eval():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rankings, qrels = random_run()
    ours = ranking_metrics(rankings, qrels, ["ndcg@10", "recall@10", "recall@5", "mrr@60", "map@60", "precision@5"])
    run = {f"q{i}": {d: float(len(r) - rank) for rank, d in enumerate(r)} for i, r in enumerate(rankings)}
    trec_qrels = {f"q{i}": {d: int(g) for d, g in q.items()} for i, q in enumerate(qrels)}
    evaluator = pytrec_eval.RelevanceEvaluator(trec_qrels, {"ndcg_cut.10", "recall.5,10", "recip_rank", "map", "P.5"})
    theirs = evaluator.evaluate(run)
    for i in range(len(rankings)):
        t = theirs[f"q{i}"]
        assert ours["ndcg@10"][i] == pytest.approx(t["ndcg_cut_10"], abs=1e-9)
        assert ours["recall@10"][i] == pytest.approx(t["recall_10"], abs=1e-9)
        assert ours["recall@5"][i] == pytest.approx(t["recall_5"], abs=1e-9)
        assert ours["mrr@60"][i] == pytest.approx(t["recip_rank"], abs=1e-9)
        assert ours["map@60"][i] == pytest.approx(t["map"], abs=1e-9)
        assert ours["precision@5"][i] == pytest.approx(t["P_5"], abs=1e-9)


def test_hit_rate_and_unknown_metric():
    values = ranking_metrics([["a", "b", "c"], ["x", "y", "z"]], [{"c": 1}, {"q": 1}], ["hit_rate@2", "hit_rate@3"])
    assert values["hit_rate@2"].tolist() == [0.0, 0.0] and values["hit_rate@3"].tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="unknown metrics"):
        ranking_metrics([], [], ["bleu@4"])


def test_exact_search_orders_by_cosine():
    docs = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    assert exact_search(np.array([[1.0, 0.1]]), docs, 3).tolist() == [[0, 2, 1]]
    assert exact_search(np.array([[0.1, 5.0]]), docs * [[10], [1], [1]], 1, cosine=False).tolist() == [[2]]
    assert exact_search(np.array([[1.0, 0.1]]), docs * [[10], [1], [1]], 1, cosine=False).tolist() == [[0]]


def test_paired_bootstrap_interval():
    rng = np.random.default_rng(0)
    base = rng.random(300)
    lo, hi = paired_bootstrap(base, base + 0.1 + 0.05 * rng.standard_normal(300))
    assert lo < 0.1 < hi and hi - lo < 0.03
    lo, hi = paired_bootstrap(base, base)
    assert lo == hi == 0.0


def test_comparison_report_names_what_was_measured(tmp_path):
    corpus = Corpus(["a", "b"], ["x", "y"], embeddings=np.array([[1, 0], [0, 1]], dtype=np.float32))
    queries = TrainingSet({"q1": "x?", "q2": "y?"}, {"q1": {"a": 1}, "q2": {"b": 1}}, name="tiny")
    swap = QueryAdapter.create("linear", 2, "test/m")
    swap.params["weight"] = np.array([[0, 1], [1, 0]], dtype=np.float32)
    report = compare(swap, np.array([[0.1, 1.0], [1.0, 0.1]], dtype=np.float32), queries, corpus)
    assert report.baseline.mean()["ndcg@10"] == pytest.approx(0.6309, abs=1e-4)
    assert report.adapted.mean()["ndcg@10"] == 1.0
    text = str(report)
    assert "tiny: 2 queries against 2 documents, base model test/m" in text and "ndcg@10" in text
    report.save_json(tmp_path / "r.json")
    assert (tmp_path / "r.json").read_text().count("per_query") == 1


def test_learning_curve_and_plots(tmp_path, rotation_task):
    from adapter_retrievers import AdapterTrainer, learning_curve
    from adapter_retrievers.plots import plot_comparison, plot_learning_curve
    from conftest import rows_for

    corpus, queries, vectors = rotation_task
    train, test = queries.split(0.25, seed=0)

    class Lookup:
        model_id = "test/rotation"

        def embed_queries(self, texts):
            return vectors[[int(t.split()[1]) for t in texts]]

        def embed_documents(self, texts):
            return corpus.embeddings[[int(t.split()[1]) for t in texts]]

    trainer = AdapterTrainer(Lookup(), progress=False, learning_rate=1e-2, epochs=15, consistency_weight=0.0)
    rows = learning_curve(trainer, train, corpus, test, sizes=[10, 200], seeds=(0, 1))
    assert [r["runs"] for r in rows] == [2, 2]
    for row in rows:  # every held-out query is about a document the subset did or did not train on
        assert row["n_seen"] + row["n_new"] == len(test)
        assert row["gain"] == pytest.approx(row["ndcg@10"] - row["baseline"])
    assert rows[0]["n_new"] == len(test)  # test documents have no training queries in the rotation task
    assert rows[1]["ndcg@10"] > rows[0]["ndcg@10"] and rows[1]["ndcg@10"] > rows[1]["baseline"]
    plot_learning_curve(rows, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = trainer.fit(train, corpus)
    plot_comparison(compare(result.adapter, rows_for(test, vectors), test, corpus), tmp_path / "cmp.png")
    result.plot_history(tmp_path / "history.png")
    assert (tmp_path / "cmp.png").stat().st_size > 1000 and (tmp_path / "history.png").stat().st_size > 1000
    written = (tmp_path / "cmp.png").read_bytes()
    grouped = compare(result.adapter, rows_for(test, vectors), test, corpus, seen_documents=result.training_documents)
    with pytest.raises(ValueError, match="exists; pass overwrite=True to replace it"):
        plot_comparison(grouped, tmp_path / "cmp.png")
    assert (tmp_path / "cmp.png").read_bytes() == written
    plot_comparison(grouped, tmp_path / "cmp.png", overwrite=True)
    assert (tmp_path / "cmp.png").read_bytes() != written


def test_comparison_chart_says_what_it_shows(rotation_task):
    """The before/after chart: a y-axis label, what the error bars are, and the seen/new split when there is one."""
    import matplotlib.pyplot as plt

    from adapter_retrievers.plots import comparison_figure
    from conftest import rows_for

    corpus, queries, vectors = rotation_task
    test = queries.subset(queries.query_ids[:40])
    identity = QueryAdapter.identity(vectors.shape[1], "test/rotation")
    plain = comparison_figure(compare(identity, rows_for(test, vectors), test, corpus))
    seen = set(corpus.ids[:20])
    grouped = comparison_figure(compare(identity, rows_for(test, vectors), test, corpus, seen_documents=seen))
    assert len(plain.axes) == 1 and plain.axes[0].get_ylabel() == "mean over 40 held-out queries"
    assert any("error bars: 95% paired-bootstrap interval" in t.get_text() for t in plain.axes[0].texts)
    panel = grouped.axes[1]
    assert panel.get_ylabel() == "gain over the base model"
    labels = [t.get_text() for t in panel.get_legend().get_texts()]
    assert labels == ["all queries (40 queries)", "seen documents (20 queries)", "new documents (20 queries)"]
    plt.close("all")


def test_refresh_chart_ticks_never_repeat_one_date():
    from adapter_retrievers.plots import _run_labels

    same_day = [{"time": f"2026-11-28T08:3{i}:13.000+00:00", "version": f"v000{i}"} for i in range(3)]
    labels, what = _run_labels(same_day)
    assert len(set(labels)) == 3 and "2026-11-28" not in "".join(labels) and what == "time on 2026-11-28 (UTC)"
    days = [{"time": f"2026-11-2{i}T03:15:00+00:00"} for i in range(3)]
    assert _run_labels(days) == (["#1\n2026-11-20\n-", "#2\n2026-11-21\n-", "#3\n2026-11-22\n-"], "date")


def test_report_separates_seen_and_new_documents(tmp_path):
    # 4 documents; the swap adapter fixes queries about a and b (seen) and breaks nothing about c, d (new)
    corpus = Corpus(["a", "b", "c", "d"], ["w", "x", "y", "z"], embeddings=np.eye(4, dtype=np.float32)[:, :4].copy())
    queries = TrainingSet(
        {"q1": "1", "q2": "2", "q3": "3", "q4": "4", "q5": "5"},
        {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}, "q4": {"d": 1}, "q5": {"d": 1, "a": 1}},
        name="tiny",
    )
    vectors = np.array(
        [[0.2, 1, 0, 0], [1, 0.2, 0, 0], [0, 0, 1, 0.1], [0, 0, 0.1, 1], [0.5, 0, 0, 1]], dtype=np.float32
    )
    swap = QueryAdapter.create("linear", 4, "test/m")
    swap.params["weight"] = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32)
    report = compare(swap, vectors, queries, corpus, seen_documents={"a", "b"})
    assert report.has_groups and report.groups == {"q1": "seen", "q2": "seen", "q3": "new", "q4": "new", "q5": "seen"}
    assert (report.n_queries_in(), report.n_queries_in("seen"), report.n_queries_in("new")) == (5, 3, 2)
    assert report.gain(group="new") == 0.0 and report.interval("ndcg@10", "new") == (0.0, 0.0)
    seen_base, seen_adapted = report.means("ndcg@10", "seen")
    assert report.gain(group="seen") == pytest.approx(seen_adapted - seen_base) and report.gain(group="seen") > 0
    assert report.gain() == pytest.approx(report.gain(group="seen") * 3 / 5)
    lo, hi = report.interval("ndcg@10", "seen")
    assert lo <= report.gain(group="seen") <= hi and hi > 0
    text = str(report)
    assert "3 about documents seen in training, 2 about new documents" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith(("all ", "seen ", "new "))}
    assert lines["all"].split()[2] == "5" and lines["seen"].split()[2] == "3" and lines["new"].split()[2] == "2"
    assert "+0.0000" in lines["new"] and "[+0.0000, +0.0000]" in lines["new"]
    data = report.to_dict()
    assert data["groups"]["new"]["n_queries"] == 2 and data["groups"]["seen"]["n_queries"] == 3
    assert data["per_query"]["q3"]["group"] == "new"
    # without seen_documents: no groups, and asking for one is a clear error
    plain = compare(swap, vectors, queries, corpus)
    assert "groups" not in plain.to_dict() and "seen documents" not in str(plain)
    with pytest.raises(ValueError, match="pass seen_documents"):
        plain.gain(group="new")
    with pytest.raises(ValueError, match="group must be"):
        report.gain(group="old")
    # an empty group prints as such instead of a nan
    all_seen = compare(swap, vectors, queries, corpus, seen_documents={"a", "b", "c", "d"})
    assert all_seen.n_queries_in("new") == 0 and "nan" not in str(all_seen)


def test_learning_curve_axis_labels_do_not_overlap():
    from adapter_retrievers.plots import learning_curve_figure

    sizes = [25, 50, 100, 200, 400, 800, 919]
    rows = [{"pairs": n, "ndcg@10": 0.5 + i / 50, "std": 0.01, "baseline": 0.5} for i, n in enumerate(sizes)]
    fig = learning_curve_figure(rows)
    fig.canvas.draw()
    labels = [t for t in fig.axes[0].get_xticklabels() if t.get_visible() and t.get_text()]
    boxes = sorted((t.get_window_extent() for t in labels), key=lambda box: box.x0)
    assert [t.get_text() for t in labels][:3] == ["25", "50", "100"]  # plain numbers at the measured sizes
    assert all(left.x1 <= right.x0 for left, right in itertools.pairwise(boxes))


def test_score_vectors_matches_metrics_of_the_sorted_ranking():
    """Rank counting (no sort) gives what scoring the fully sorted ranking gives, ties broken by corpus order."""
    rng = np.random.default_rng(3)
    docs = rng.normal(size=(50, 8)).astype(np.float32)
    docs[7] = docs[3]  # an exact tie: the earlier document ranks first
    corpus = Corpus([f"d{i}" for i in range(50)], [""] * 50, docs)
    relevant = {
        f"q{i}": {f"d{j}": float(rng.integers(1, 3)) for j in rng.choice(50, 3, replace=False)} for i in range(20)
    }
    relevant["q0"] = {"d3": 1.0, "d7": 2.0}
    queries = TrainingSet({q: q for q in relevant}, relevant)
    vectors = rng.normal(size=(20, 8)).astype(np.float32)
    vectors[0] = docs[3]
    metrics = ["ndcg@10", "recall@5", "mrr@10", "map@20", "precision@5", "hit_rate@3"]
    scores = score_vectors(vectors, queries, corpus, metrics)
    unit = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    q = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    rankings = [[f"d{j}" for j in np.argsort(-(row @ unit.T), kind="stable")] for row in q]
    expected = ranking_metrics(rankings, [relevant[q] for q in queries.query_ids], metrics)
    batched = score_vectors(vectors, queries, corpus, metrics, batch_size=4)  # queries and pairs in chunks
    for name in metrics:
        np.testing.assert_allclose(scores.per_query[name], expected[name], atol=1e-12)
        np.testing.assert_array_equal(batched.per_query[name], scores.per_query[name])
    assert rankings[0][:2] == ["d3", "d7"] and scores.per_query["mrr@10"][0] == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_blend_metrics_equal_scoring_each_blend_ties_included(seed):
    """The blends' shortcut (only documents the two systems disagree on are weighed per alpha) ranks exactly
    as scoring every blended matrix does, with ties (rounded scores) broken by corpus order."""
    from adapter_retrievers.evaluation import blend_metrics, rank_metrics

    rng = np.random.default_rng(seed)
    n_docs, n_queries = 60, 25
    corpus = Corpus([f"d{i}" for i in range(n_docs)], [f"text {i}" for i in range(n_docs)])
    # one relevant document each (seed 0), three each, or 0-3 (seeds 3 and 4: every query's own count)
    counts = [1 if seed == 0 else 3 if seed < 3 else int(rng.integers(0, 4)) for _ in range(n_queries)]
    relevant = {
        f"q{i}": {f"d{j}": float(rng.integers(1, 3)) for j in rng.choice(n_docs, counts[i], replace=False)}
        for i in range(n_queries)
    }
    queries = TrainingSet({q: q for q in relevant}, relevant)
    # quarter-steps: many exact ties within a system and between blends
    adapted = np.round(rng.normal(size=(n_queries, n_docs)) * 4) / 4
    base = np.round(rng.normal(size=(n_queries, n_docs)) * 4) / 4
    alphas = [1.0, 0.75, 0.5, 0.25]
    metrics = ("ndcg@10", "mrr@10", "recall@10")
    fast = blend_metrics(queries, corpus, lambda a, b: adapted[a:b], lambda a, b: base[a:b], alphas, metrics, 7)
    slow = rank_metrics(queries, corpus, lambda a, b: [x * adapted[a:b] + (1 - x) * base[a:b] for x in alphas], metrics)
    for alpha, expected in zip(alphas, slow):
        for metric in metrics:
            np.testing.assert_array_equal(fast[alpha][metric], expected[metric])
    assert not np.array_equal(fast[1.0]["ndcg@10"], fast[0.25]["ndcg@10"])
