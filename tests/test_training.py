import numpy as np
import pytest

from adapter_retrievers import AdapterTrainer, QueryAdapter, TrainingSet, compare
from adapter_retrievers.training import run
from adapter_retrievers.training.config import TrainingConfig, parallel_runs
from adapter_retrievers.training.run import _candidates
from adapter_retrievers.training.validation import validation_folds
from conftest import make_rotation_task, rows_for

# the consistency term and the blend search are exercised by their own tests below; off here for speed
FAST = {
    "learning_rate": 1e-2,
    "epochs": 40,
    "patience": 10,
    "progress": False,
    "model_id": "test/model",
    "consistency_weight": 0.0,
    "blend": (1.0,),
}


@pytest.fixture(scope="module")
def task():
    corpus, queries, vectors = make_rotation_task(n_docs=240, dim=16, mix=0.35)
    rest, test = queries.split(0.3, seed=1)
    train, validation = rest.split(0.2, seed=0)
    return corpus, train, validation, test, vectors


def fit(task, **options):
    corpus, train, validation, _, vectors = task
    trainer = AdapterTrainer(**{**FAST, **options})
    return trainer.fit_vectors(train, rows_for(train, vectors), validation, rows_for(validation, vectors), corpus)


def held_out(task, adapter):
    corpus, _, _, test, vectors = task
    return compare(adapter, rows_for(test, vectors), test, corpus)


@pytest.mark.parametrize(
    ("kind", "loss", "negatives"),
    [
        ("linear", "infonce", "all"),
        ("linear", "triplet", 8),
        ("linear", "mse_cosine", 8),
        ("low_rank", "infonce", 16),
        ("orthogonal", "infonce", "all"),
        ("residual_mlp", "infonce", "all"),
    ],
)
def test_adapter_learns_the_hidden_transform(task, kind, loss, negatives):
    # mse_cosine learns too little for a 34-query validation set to call it significant: test the loss itself
    gate = loss != "mse_cosine"
    result = fit(task, kind=kind, loss=loss, negatives=negatives, rank=8, hidden=32, require_significant_gain=gate)
    assert result.improved and result.adapter.kind == kind
    assert result.report.gain() > 0  # validation, where it was selected
    report = held_out(task, result.adapter)
    assert report.intervals["ndcg@10"][0] > 0, str(report)  # held-out gain, whole interval above zero
    if loss == "infonce":
        assert report.gain("ndcg@10") > 0.15, str(report)


def test_procrustes_solver(task):
    result = fit(task, kind="orthogonal", solver="procrustes")
    assert result.adapter.kind == "orthogonal"
    assert held_out(task, result.adapter).gain() > 0.15


def test_never_worse_than_base_on_validation():
    corpus, queries, vectors = make_rotation_task(n_docs=120, dim=16, mix=0.9, noise=0.05)
    rng = np.random.default_rng(0)
    # Labels that contradict the geometry: training can only hurt, so the identity must win.
    shuffled = TrainingSet(queries.queries, {q: {f"d{rng.integers(120)}": 1.0} for q in queries.query_ids})
    train, validation = queries.split(0.3, seed=0)
    noisy_train = shuffled.subset(train.query_ids)
    trainer = AdapterTrainer(**FAST, kind="linear")
    result = trainer.fit_vectors(
        noisy_train, rows_for(noisy_train, vectors), validation, rows_for(validation, vectors), corpus
    )
    assert result.report.adapted.mean()["ndcg@10"] >= result.report.baseline.mean()["ndcg@10"]
    assert not result.improved and result.adapter.is_identity
    assert result.history[0]["epoch"] == 0  # the identity was scored as a candidate


def test_training_is_deterministic_given_a_seed(task):
    a = fit(task, kind="low_rank", negatives=8, epochs=5, seed=7)
    b = fit(task, kind="low_rank", negatives=8, epochs=5, seed=7)
    c = fit(task, kind="low_rank", negatives=8, epochs=5, seed=8)
    for name in a.adapter.params:
        np.testing.assert_array_equal(a.adapter.params[name], b.adapter.params[name])
    assert any(not np.array_equal(a.adapter.params[n], c.adapter.params[n]) for n in a.adapter.params)


_DEFAULT_FIT_DIGEST = """
import hashlib, sys
sys.path.insert(0, {tests!r})
from adapter_retrievers import AdapterTrainer
from conftest import make_rotation_task, rows_for
corpus, queries, vectors = make_rotation_task(n_docs=160, dim=16, mix=0.35)
train, validation = queries.split(0.25, seed=0)
trainer = AdapterTrainer(progress=False, model_id="test/model", seed=3, epochs=12, parallel_runs=2)
result = trainer.fit_vectors(train, rows_for(train, vectors), validation, rows_for(validation, vectors), corpus)
digest = hashlib.sha256()
for name in sorted(result.adapter.params):
    digest.update(name.encode() + result.adapter.params[name].tobytes())
print(result.adapter.kind, digest.hexdigest())
"""


def test_one_seed_gives_the_same_adapter_bit_for_bit_in_separate_processes():
    # The default trainer (several runs on the parallel executor, averaging, the gate) in two fresh
    # interpreters: thread scheduling and process state must not reach the weights.
    import subprocess
    import sys
    from pathlib import Path

    script = _DEFAULT_FIT_DIGEST.format(tests=str(Path(__file__).parent))
    outputs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
        for _ in range(2)
    ]
    assert len(outputs[0]) == 2 and outputs[0] == outputs[1]


def test_random_negatives_never_include_known_positives():
    rng = np.random.default_rng(0)
    positives = [np.array([0, 1, 2]), np.array([3])]
    labelled = [np.array([9]), np.array([], dtype=np.int64)]
    q_idx, d_idx = np.array([0, 0, 1]), np.array([0, 1, 3])
    for _ in range(50):
        candidates, target, mask = _candidates(q_idx, d_idx, positives, labelled, 10, False, 6, True, rng)
        assert (target == 0).all() and (candidates[:, 0] == d_idx).all()
        for row, q in enumerate(q_idx):
            scored_negatives = candidates[row, 1:][mask[row, 1:]]
            assert not np.isin(scored_negatives, positives[q]).any()
        assert 9 in candidates[0, 1:] and 9 in candidates[1, 1:]  # labelled negatives are used
    _, target, hidden = _candidates(q_idx, d_idx, positives, labelled, 10, True, 0, False, rng)
    # every document is a candidate: each pair hides its query's other positives, and only those
    assert (target == d_idx).all() and sorted(zip(*hidden)) == [(0, 1), (0, 2), (1, 0), (1, 2)]
    single = _candidates(np.array([1, 1]), np.array([3, 3]), positives, labelled, 10, True, 0, False, rng)
    assert single[0] is None and single[2] is None  # one positive per query: nothing to hide, every document valid


@pytest.mark.parametrize("loss", ["infonce", "triplet", "mse_cosine"])
def test_hidden_cells_and_a_dense_mask_give_the_same_loss(loss):
    torch = pytest.importorskip("torch")
    from adapter_retrievers.torch_adapters import pair_loss

    scores = torch.randn(4, 9, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 3, 5, 8])
    rows, cols = torch.tensor([0, 1, 1, 3]), torch.tensor([2, 0, 7, 1])
    dense = torch.ones(4, 9, dtype=torch.bool)
    dense[rows, cols] = False
    sparse = pair_loss(loss, scores, target, (rows, cols), temperature=1.0)
    torch.testing.assert_close(sparse, pair_loss(loss, scores, target, dense, temperature=1.0))
    unmasked = pair_loss(loss, scores, target, None, temperature=1.0)
    assert not torch.isclose(sparse, unmasked)  # hiding the cells changes the loss, so the check can fail


def test_torch_and_numpy_agree():
    torch = pytest.importorskip("torch")
    from adapter_retrievers.torch_adapters import TorchAdapter

    x = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    for kind in ["linear", "low_rank", "orthogonal", "residual_mlp"]:
        module = TorchAdapter(QueryAdapter.create(kind, 8, "m", rank=2, hidden=4))
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.1 * torch.randn_like(p))
            expected = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(module.export().transform(x), expected, atol=1e-5)


def test_fit_embeds_once_with_an_encoder(hashing_encoder, tmp_path):
    from adapter_retrievers import Corpus

    topics = ["apple", "river", "engine", "violin", "planet", "pepper", "glacier", "compiler"]
    docs = [f"{t} fact {i} about {t}s" for t in topics for i in range(5)]
    corpus = Corpus.from_texts(docs)
    train = TrainingSet.from_pairs(
        [(f"tell me about {t} number {i}", f"doc-{k * 5 + i}") for k, t in enumerate(topics) for i in range(5)]
    )
    trainer = AdapterTrainer(hashing_encoder, cache_dir=tmp_path / "cache", **{**FAST, "model_id": None, "epochs": 3})
    result = trainer.fit(train, corpus)
    assert result.adapter.base_model == "test/hashing-64" and result.adapter.dimension == 64
    calls = hashing_encoder.calls
    AdapterTrainer(hashing_encoder, cache_dir=tmp_path / "cache", **{**FAST, "model_id": None, "epochs": 3}).fit(
        train, corpus
    )
    assert hashing_encoder.calls == calls  # second run: every vector came from the disk cache
    assert result.adapter.metadata["training_data"]["fingerprint"] == train.fingerprint


def test_bad_input_is_refused(task, hashing_encoder):
    corpus, train, validation, _, vectors = task
    with pytest.raises(ValueError, match="training set is empty"):
        AdapterTrainer(hashing_encoder).fit(TrainingSet({}, {}), corpus)
    with pytest.raises(ValueError, match="unknown adapter kind"):
        AdapterTrainer(kind="cubic")
    with pytest.raises(ValueError, match="unknown loss"):
        AdapterTrainer(loss="hinge2")
    with pytest.raises(ValueError, match="has dimension 5, expected 16"):
        AdapterTrainer(**FAST).fit_vectors(
            train, np.ones((len(train), 5)), validation, rows_for(validation, vectors), corpus
        )
    with pytest.raises(ValueError, match="NaN"):
        bad = rows_for(train, vectors).copy()
        bad[0, 0] = np.nan
        AdapterTrainer(**FAST).fit_vectors(train, bad, validation, rows_for(validation, vectors), corpus)
    with pytest.raises(ValueError, match="in both train and validation"):
        AdapterTrainer(hashing_encoder).fit(train, corpus, validation=train)


def test_gain_that_validation_cannot_tell_from_noise_is_rejected():
    corpus, queries, vectors = make_rotation_task(n_docs=200, dim=16, mix=0.35)
    train, validation = queries.split(0.1, seed=0)
    rng = np.random.default_rng(1)
    # Validation labels are mostly random: the trained adapter cannot show a reliable gain on them.
    noisy = TrainingSet(
        validation.queries,
        {
            q: (docs if i < 2 else {f"d{rng.integers(200)}": 1.0})
            for i, (q, docs) in enumerate(validation.relevant.items())
        },
    )
    options = {**FAST, "kind": "linear", "epochs": 15}
    args = (train, rows_for(train, vectors), noisy, rows_for(noisy, vectors), corpus)
    lenient = AdapterTrainer(**options, require_significant_gain=False).fit_vectors(*args)
    assert lenient.improved  # a lucky epoch beat the base model on noisy validation
    strict = AdapterTrainer(**options).fit_vectors(*args)
    assert not strict.improved and strict.adapter.is_identity
    rejected = strict.adapter.metadata["validation"]["rejected_not_significant"]
    assert rejected["epoch"] == lenient.best_epoch and rejected["gain_interval"][0] <= 0


def test_refit_trains_the_kept_adapter_again_on_every_pair(task):
    corpus, train, _, _, vectors = task
    options = {**FAST, "epochs": 10, "cv_below_queries": 0}
    plain = AdapterTrainer(**options, refit=False).fit_vectors(train, rows_for(train, vectors), None, None, corpus)
    refit = AdapterTrainer(**options).fit_vectors(train, rows_for(train, vectors), None, None, corpus)  # the default
    assert plain.improved and refit.improved
    assert refit.decision.pop("refit_on_queries") == len(train)
    assert "and the refit" in refit.decision.pop("averaged_runs") and "refit" not in plain.decision.pop("averaged_runs")
    assert plain.decision == refit.decision  # the same selection
    assert "trained again on all" not in plain.describe_decision()
    assert plain.n_train_queries == refit.n_train_queries == len(train)  # the folds' runs together saw every pair
    assert refit.adapter.metadata["training_data"]["n_pairs"] == train.n_pairs
    assert not np.allclose(plain.adapter.params["weight"], refit.adapter.params["weight"])
    assert held_out(task, refit.adapter).gain() > 0


def test_validation_blind_to_documents_with_traffic_tests_not_worse_instead_of_a_gain():
    """All validation queries about new documents: keep a gain too small to be significant, unless it may cost more
    than the margin; with a validation query about a document with traffic, the gain must be significant."""
    from adapter_retrievers.training import TrainingConfig
    from adapter_retrievers.training.gate import decide as _decide
    from adapter_retrievers.training.selection import Choice as _Choice

    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.9, 400)
    adapted = base + 0.004 + rng.normal(0, 0.06, 400)  # a small gain, interval straddling zero
    chosen = _Choice(epoch=3)
    all_new = np.ones(400, dtype=bool)
    cfg = TrainingConfig()
    blind = _decide(base, adapted, all_new, chosen, cfg, "folds")
    assert -cfg.non_inferiority_margin < blind["gain_interval"][0] <= 0 < blind["gain"]
    assert blind["kept"] and blind["test"].startswith("not worse")
    strict = _decide(base, adapted, all_new, chosen, TrainingConfig(non_inferiority_margin=None), "folds")
    assert not strict["kept"] and strict["reason"] == "gain not significant"
    some_seen = all_new.copy()
    some_seen[:50] = False
    assert not _decide(base, adapted, some_seen, chosen, cfg, "split")["kept"]
    risky = base + 0.004 + rng.normal(0, 0.3, 400)  # same mean gain, far wider spread: may cost more than 0.01
    decision = _decide(base, risky, all_new, chosen, cfg, "folds")
    assert decision["gain_interval"][0] < -0.01 and not decision["kept"] and "worse" in decision["reason"]


def test_all_negatives_falls_back_to_sampling_on_large_corpora(task, caplog):
    result = fit(task, negatives="all", all_negatives_limit=50, epochs=3, require_significant_gain=False)
    assert "using 256 random negatives" in caplog.text
    assert result.history[-1]["epoch"] == 3


def test_result_knows_its_training_documents_and_the_report_splits_by_them(task):
    corpus, train, _validation, test, vectors = task
    result = fit(task)
    assert result.training_documents == train.documents and len(result.training_documents) == len(train)
    meta = result.adapter.metadata["training_data"]
    assert meta["documents_fingerprint"] == train.documents_fingerprint
    assert meta["n_documents_seen"] == len(train.documents)
    # held-out queries: half about training documents (re-asked), half about new ones
    again = TrainingSet(
        {f"r{q}": "again" for q in list(train.queries)[:20]},
        {f"r{q}": train.relevant[q] for q in list(train.queries)[:20]},
    )
    mixed = TrainingSet({**again.queries, **test.queries}, {**again.relevant, **test.relevant})
    mixed_vectors = np.concatenate([rows_for(train, vectors)[:20], rows_for(test, vectors)])
    report = compare(result.adapter, mixed_vectors, mixed, corpus, seen_documents=result.training_documents)
    assert report.n_queries_in("seen") == 20 and report.n_queries_in("new") == len(test)
    assert result.decision["split"] == "given validation set" and result.decision["kept"]
    assert result.decision["gain"] == pytest.approx(result.report.gain())
    assert "given validation set" in result.describe_decision()


def doubled_task():
    """Two queries per document: a split by query leaves the twin in training ("seen"), one by document does not."""
    corpus, queries, vectors = make_rotation_task(n_docs=200, dim=16, mix=0.35)
    doubled = TrainingSet(
        {**queries.queries, **{f"x{q}": "twin" for q in queries.query_ids}},
        {**queries.relevant, **{f"x{q}": r for q, r in queries.relevant.items()}},
    )
    twin_vectors = np.concatenate([vectors, vectors + 0.01])
    row = {q: i for i, q in enumerate(doubled.query_ids)}
    return corpus, doubled, twin_vectors[[row[q] for q in doubled.query_ids]]


@pytest.mark.parametrize("split", ["document", "query", "both"])
def test_validation_folds_by_document_have_only_new_documents(split):
    """Every query is validated once, out of fold; by document all of them are about new documents, by query
    mostly seen ones, and "both" has both kinds in every fold."""
    corpus, doubled, vectors = doubled_task()
    trainer = AdapterTrainer(**FAST, validation_split=split, cv_below_queries=0)
    result = trainer.fit_vectors(doubled, vectors, None, None, corpus)
    seen, new = result.report.n_queries_in("seen"), result.report.n_queries_in("new")
    assert seen + new == result.n_validation_queries == result.decision["n_queries"] == len(doubled)
    assert "3 validation folds" in result.decision["split"] and len(result.decision["fold_gains"]) == 3
    if split == "document":
        assert seen == 0 and new > 0 and "by document" in result.decision["split"]
    elif split == "query":
        assert seen > new  # random queries: most have their twin in another fold
    else:
        assert seen > 0 and new > 0 and result.decision["n_new"] == new
    folds = validation_folds(doubled, trainer.config)
    assert sorted(q for f in folds for q in f.queries) == sorted(doubled.queries)  # disjoint, and every query
    assert max(len(f) for f in folds) - min(len(f) for f in folds) <= 4
    if split == "both":
        for fold in folds:
            rest = doubled.subset([q for q in doubled.query_ids if q not in fold.queries])
            groups = {q: bool(set(fold.relevant[q]) & rest.documents) for q in fold.query_ids}
            assert any(groups.values()) and not all(groups.values())  # seen and new in every fold
    assert result.decision["kept"] and result.n_train_queries == result.decision["refit_on_queries"] == len(doubled)


@pytest.mark.parametrize("split", ["document", "query", "both"])
def test_one_validation_split_by_document_has_only_new_documents(split):
    corpus, doubled, vectors = doubled_task()
    trainer = AdapterTrainer(**FAST, validation_split=split, validation_fraction=0.2, validation_folds=1)
    result = trainer.fit_vectors(doubled, vectors, None, None, corpus)
    seen, new = result.report.n_queries_in("seen"), result.report.n_queries_in("new")
    assert seen + new == result.n_validation_queries == result.decision["n_queries"]
    if split == "document":
        assert seen == 0 and new > 0 and "by document" in result.decision["split"]
    elif split == "query":
        assert seen > new
    else:
        assert seen > 0 and new > 0 and result.decision["n_new"] == new
    rest, validation = trainer.validation_split(doubled)
    assert len(rest) + len(validation) == len(doubled) and not set(rest.queries) & set(validation.queries)
    assert result.n_validation_queries == len(validation)
    assert result.decision["kept"] and result.n_train_queries == result.decision["refit_on_queries"] == len(doubled)


def test_small_data_uses_k_fold_cross_validation_then_refits_on_all_pairs(task):
    corpus, train, _validation, _test, vectors = task
    trainer = AdapterTrainer(**{**FAST, "epochs": 20}, cv_below_queries=1000, cv_folds=4)
    result = trainer.fit_vectors(train, rows_for(train, vectors), None, None, corpus)
    assert "4-fold cross-validation" in result.decision["split"] and result.decision["n_queries"] == len(train)
    assert result.n_validation_queries == len(train) and result.n_train_queries == len(train)
    assert result.improved and result.best_epoch == result.decision["epoch"] > 0
    assert result.adapter.metadata["training_data"]["n_pairs"] == train.n_pairs  # the refit saw every pair
    assert result.report.n_queries_in("new") == len(train)  # out-of-fold queries are about new documents
    assert "tested: not worse than the base model by more than 0.01" in result.describe_decision()
    assert held_out(task, result.adapter).intervals["ndcg@10"][0] > 0
    # above the threshold the same trainer holds out one validation split instead
    plain = AdapterTrainer(**FAST, cv_below_queries=10).fit_vectors(train, rows_for(train, vectors), None, None, corpus)
    assert "cross-validation" not in plain.decision["split"] and "validation folds" in plain.decision["split"]


def test_blend_is_the_adapter_mixed_with_the_identity(task):
    from adapter_retrievers.training import blend

    result = fit(task, kind="linear", epochs=3, guard=False)  # random queries: no guard between them and the blend
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    w, b = result.adapter.params["weight"], result.adapter.params["bias"]
    half = blend(result.adapter, 0.5)
    expected = 0.5 * (x @ w.T + b) + 0.5 * x
    np.testing.assert_allclose(half.transform(x), expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)
    assert blend(result.adapter, 1.0) is result.adapter
    chosen = fit(task, blend=(0.5, 1.0))
    assert chosen.adapter.metadata["validation"]["blend"] in (0.5, 1.0)
    assert AdapterTrainer(kind="orthogonal", blend=(0.5,)).config.blend == (1.0,)  # no blend for a rotation
    with pytest.raises(ValueError, match="blend factors"):
        AdapterTrainer(blend=(0.0, 1.0))


@pytest.mark.parametrize("kind", ["linear", "low_rank", "residual_mlp"])
def test_blend_factors_scored_together_match_scoring_each_blended_adapter(task, kind):
    """The trainer scores every blend factor from two matrix products; that must rank as each blended adapter does."""
    from adapter_retrievers.training import blend
    from adapter_retrievers.training.validation import ValidationScorer as _Scorer

    corpus, train, _, _, all_vectors = task
    vectors = rows_for(train, all_vectors)
    rng = np.random.default_rng(1)
    start = QueryAdapter.create(kind, vectors.shape[1], "m", rank=4, hidden=8)
    params = {k: v + rng.normal(scale=0.3, size=v.shape).astype(np.float32) for k, v in start.params.items()}
    adapter = type(start)(start.dimension, "m", params, start.normalize)
    scorer = _Scorer(train, vectors, corpus, "ndcg@10", set())
    alphas = [1.0, 0.75, 0.5, 0.25]
    together = scorer.blends(adapter, alphas)
    assert list(together) == alphas
    for alpha in alphas:
        np.testing.assert_allclose(together[alpha], scorer(blend(adapter, alpha)), atol=1e-9)
    assert not np.allclose(together[1.0], together[0.25])  # the factors really differ, so the check can fail


def test_negatives_from_training_positives_only(task):
    result = fit(task, negative_pool="positives", consistency_weight=1.0, bias=False)
    assert result.improved and held_out(task, result.adapter).gain() > 0.1
    assert not result.adapter.params["bias"].any()  # bias=False keeps it at zero


def test_consistency_over_sampled_documents_on_large_corpora(task):
    """Above ``consistency_documents`` the consistency term scores a random sample per step, reproducibly."""
    options = {"consistency_weight": 1.0, "epochs": 4, "require_significant_gain": False}
    sampled = fit(task, consistency_documents=32, **options).adapter.params["weight"]
    again = fit(task, consistency_documents=32, **options).adapter.params["weight"]
    whole = fit(task, consistency_documents=10_000, **options).adapter.params["weight"]
    np.testing.assert_array_equal(sampled, again)
    assert not np.allclose(sampled, whole)
    with pytest.raises(ValueError, match="consistency_documents"):
        AdapterTrainer(consistency_documents=1)


def test_a_tuple_of_negatives_is_a_selection_grid(task):
    """Each option trains its own run; the one validation prefers is kept, and the refit of k-fold uses it."""
    both = fit(task, negatives=("all", 4))
    runs = {n: fit(task, negatives=n) for n in ("all", 4)}
    chosen = both.adapter.metadata["validation"]["negatives"]
    assert chosen in ("all", 4)
    assert both.adapter.metadata["validation"]["adapted"] == max(
        r.adapter.metadata["validation"]["adapted"] for r in runs.values()
    )
    np.testing.assert_array_equal(both.adapter.params["weight"], runs[chosen].adapter.params["weight"])
    corpus, train, _, _, vectors = task
    small = AdapterTrainer(**{**FAST, "negatives": ("all", 4), "cv_below_queries": 10_000, "epochs": 5})
    result = small.fit_vectors(train, rows_for(train, vectors), None, None, corpus)
    assert result.adapter.metadata["validation"]["negatives"] in ("all", 4)
    with pytest.raises(ValueError, match="negatives"):
        AdapterTrainer(negatives=("all", -1))


@pytest.mark.parametrize(("cross_validated", "refit"), [(False, False), (False, True), (True, True)])
def test_negatives_options_train_in_parallel_with_the_same_result(task, monkeypatch, cross_validated, refit):
    """``parallel_runs`` > 1 advances every option's fold runs in threads at once, epoch by epoch (then the kept
    option is refitted); the chosen adapter is bit-identical to training one run after another."""
    import threading

    threads_seen = []
    original = run.train_epochs

    def spy(*args, **kwargs):
        threads_seen.append(threading.current_thread().name)
        yield from original(*args, **kwargs)

    monkeypatch.setattr(run, "train_epochs", spy)
    corpus, train, _, _, vectors = task
    options = {**FAST, "negatives": ("all", 4), "consistency_weight": 1.0, "blend": (0.5, 1.0), "epochs": 6}
    options["cv_below_queries"] = 10_000 if cross_validated else 0
    options["refit"] = refit
    results = {}
    for runs in (1, 2, 3):
        threads_seen.clear()
        trainer = AdapterTrainer(**options, parallel_runs=runs)
        results[runs] = trainer.fit_vectors(train, rows_for(train, vectors), None, None, corpus)
        workers = {name for name in threads_seen if name.startswith("adapter-training")}
        assert (len(workers) == 0) if runs == 1 else (1 < len(workers) <= runs), threads_seen
    one = results[1]
    assert one.improved  # so that the weights compared below are trained ones
    for many in (results[2], results[3]):
        assert repr(one.decision) == repr(many.decision) and repr(one.history) == repr(many.history)  # nan != nan
        np.testing.assert_array_equal(one.adapter.params["weight"], many.adapter.params["weight"])
    if not cross_validated and refit:  # the refit trained again, on every pair: not the selected adapter
        selected = AdapterTrainer(**{**options, "refit": False}).fit_vectors(
            train, rows_for(train, vectors), None, None, corpus
        )
        assert selected.best_epoch == one.best_epoch
        assert not np.allclose(selected.adapter.params["weight"], one.adapter.params["weight"])
    with pytest.raises(ValueError, match="parallel_runs"):
        AdapterTrainer(parallel_runs=0)


def test_training_runs_on_the_configured_threads_and_restores_the_callers(task, monkeypatch):
    import torch

    seen = []
    original = run.train_epochs

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        yield from original(*args, **kwargs)

    monkeypatch.setattr(run, "train_epochs", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fit(task, epochs=2, threads=1, require_significant_gain=False)
        assert seen and set(seen) == {1} and torch.get_num_threads() == 2
        seen.clear()
        fit(task, epochs=2, threads=None, require_significant_gain=False)
        assert set(seen) == {2}
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads"):
        AdapterTrainer(threads=0)


def test_the_result_says_how_stable_it_is(task):
    """Per-fold gains of the chosen candidate and each option's score, in the result and in its one line."""
    corpus, train, _, _, vectors = task
    result = AdapterTrainer(**{**FAST, "cv_below_queries": 0, "negatives": ("all", 4)}).fit_vectors(
        train, rows_for(train, vectors), None, None, corpus
    )
    stability = result.stability
    assert len(stability["fold_gains"]) == 3 and set(stability["option_scores"]) == {"all", "4"}
    assert stability["fold_gain_spread"] == pytest.approx(max(stability["fold_gains"]) - min(stability["fold_gains"]))
    sizes = [len(f) for f in validation_folds(train, result.config)]
    pooled = sum(g * n for g, n in zip(stability["fold_gains"], sizes)) / sum(sizes)
    assert pooled == pytest.approx(result.decision["gain"])  # the folds' gains pool to the decision's gain
    assert "per fold" in result.describe_decision() and "spread" in result.describe_decision()


def test_an_option_stops_when_it_is_behind_and_its_curve_has_flattened():
    """``outpaced`` is a pure rule over the options' validation curves: after ``race_after`` epochs, a run more
    than ``race_margin`` behind the best, and further behind than it climbed in its last ``race_after`` epochs,
    stops; one still climbing fast enough to catch up goes on."""
    from adapter_retrievers.training.config import TrainingConfig
    from adapter_retrievers.training.selection import Curve, EpochScores, outpaced

    cfg = TrainingConfig(race_after=3, race_margin=0.005, blend=(1.0,), selection_tolerance=0.0)

    def curve(*scores: float) -> Curve:
        return Curve(0.4, None, [EpochScores(e, 0.0, {1.0: v}) for e, v in enumerate(scores, start=1)])

    leader = curve(0.50, 0.55, 0.60, 0.61, 0.61)
    flat = curve(0.50, 0.52, 0.53, 0.53, 0.53)  # 0.08 behind, climbed 0.01 since epoch 2
    climbing = curve(0.30, 0.40, 0.50, 0.55, 0.58)  # 0.03 behind, climbed 0.18 since epoch 2
    close = curve(0.50, 0.55, 0.60, 0.606, 0.606)  # within the margin
    assert outpaced([leader, flat, climbing, close], cfg) == [False, True, False, False]
    assert outpaced([curve(0.61, 0.61), curve(0.3, 0.3)], cfg) == [False, False]  # too early to tell
    assert outpaced([leader, flat], TrainingConfig(race_after=0, blend=(1.0,))) == [False, False]
    assert outpaced([flat], cfg) == [False]
    with pytest.raises(ValueError, match="race_after"):
        TrainingConfig(race_margin=-0.1)


@pytest.mark.parametrize("cross_validated", [False, True])
def test_a_race_stops_the_losing_option_and_keeps_the_winners_adapter_bit_for_bit(task, monkeypatch, cross_validated):
    """The losing option is listed first, so the refit that trails it must start again for the leader: the kept
    adapter is the one the unraced fit returns, and the loser trained only up to the race's epoch (one more, thrown
    away, when a free worker started it before the race was decided)."""
    trained: dict[str, int] = {}
    original = run.train_epochs

    def spy(train, vectors, corpus, cfg, *args, **kwargs):
        for step in original(train, vectors, corpus, cfg, *args, **kwargs):
            trained[str(cfg.negatives)] = max(trained.get(str(cfg.negatives), 0), step[0])
            yield step

    monkeypatch.setattr(run, "train_epochs", spy)
    corpus, train, _, _, vectors = task
    options = {**FAST, "negatives": (1, "all"), "refit": True}
    options["cv_below_queries"] = 10_000 if cross_validated else 0
    results = {}
    for race_after in (0, 3):
        trained.clear()
        trainer = AdapterTrainer(**options, race_after=race_after)
        results[race_after] = (trainer.fit_vectors(train, rows_for(train, vectors), None, None, corpus), dict(trained))
    (unraced, unraced_epochs), (raced, raced_epochs) = results[0], results[3]
    assert unraced.improved and unraced.adapter.metadata["validation"]["negatives"] == "all"
    stopped = raced.decision["outpaced_at_epoch"]
    # with several workers a free one may have started the loser's next epoch before the race was decided
    ahead = 1 if parallel_runs(TrainingConfig()) > 1 else 0
    assert list(stopped) == ["1"] and stopped["1"] <= raced_epochs["1"] <= stopped["1"] + ahead < unraced_epochs["1"]
    assert f"negatives=1 stopped at epoch {stopped['1']}" in raced.describe_decision()
    assert raced.best_epoch == unraced.best_epoch and "outpaced_at_epoch" not in unraced.decision
    np.testing.assert_array_equal(raced.adapter.params["weight"], unraced.adapter.params["weight"])
