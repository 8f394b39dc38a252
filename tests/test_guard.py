"""The per-query guard: an adapter applies itself only as far as a query resembles its training queries."""

import json

import numpy as np
import pytest
import safetensors.numpy

from adapter_retrievers import AdapterFileError, AdapterTrainer, QueryAdapter
from adapter_retrievers.adapters import QueryGuard
from adapter_retrievers.guards import GaussianGuard, PopulationCheck
from adapter_retrievers.registry import BASE_VERSION, AdapterRegistry, adapt_query_vector, adapter_version
from conftest import make_rotation_task, rows_for

MODEL = "test/model"


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def population(center, n, rng, spread=0.15):
    """Queries around one direction: a population of users who ask alike."""
    return unit(center + spread * rng.standard_normal((n, center.shape[0]))).astype(np.float32)


@pytest.fixture(params=["centroids", "gaussian"])
def guarded(request):
    """A strong linear adapter with a guard summarising queries near one direction, calibrated on held-out ones
    (each kind of summary: centroids, the default, and the Gaussian of the first guarded files)."""
    rng = np.random.default_rng(0)
    d = 16
    here, elsewhere = unit(rng.standard_normal(d)), unit(rng.standard_normal(d))
    train, held = population(here, 400, rng), population(here, 200, rng)
    guard = QueryGuard.summarise(train, components=4, kind=request.param)
    guard = guard.calibrated(guard.distance(held), quantile=0.99)
    weight = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)  # far from the identity
    adapter = QueryAdapter.create("linear", d, MODEL)
    adapter.params = {"weight": weight, "bias": np.zeros(d, dtype=np.float32)}
    return adapter.with_guard(guard), here, elsewhere, rng


def test_a_training_like_query_gets_the_adapter_and_a_far_one_the_base_vector(guarded):
    adapter, here, elsewhere, rng = guarded
    plain = adapter.with_guard(None)
    near, far = population(here, 50, rng), population(elsewhere, 50, rng)
    assert (adapter.guard.weight(near) > 0.99).mean() > 0.9  # held-out users like the training ones: adapted
    np.testing.assert_allclose(adapter.transform(near[:5]), plain.transform(near[:5]), atol=1e-6)
    assert (adapter.guard.weight(far) == 0).all()
    np.testing.assert_allclose(adapter.transform(far), unit(far), atol=1e-6)  # exactly the base vector
    assert not np.allclose(plain.transform(far), unit(far), atol=1e-2)  # without the guard it would move them
    between = unit(near[0] + far[0])  # halfway: blended, neither one nor the other
    w = adapter.guard.weight(between)[0]
    expected = unit(w * plain._apply(between[None])[0] + (1 - w) * between)
    np.testing.assert_allclose(adapter.transform(between), expected, atol=1e-5)
    np.testing.assert_allclose(adapter.transform(far[0]), unit(far[0]), atol=1e-6)  # one 1-D query too


@pytest.mark.parametrize("kind", ["linear", "low_rank", "residual_mlp", "orthogonal"])
def test_one_query_is_served_as_in_a_batch(guarded, kind):
    """The single-query path (scalar arithmetic, what a retriever serves) gives the batch path's vector and
    weight, for queries fully adapted, blended and left alone, and for the zero vector."""
    adapter, here, elsewhere, rng = guarded
    other = QueryAdapter.create(kind, 16, MODEL, seed=1)
    if kind == "orthogonal":
        other.params = {"rotation": np.linalg.qr(rng.standard_normal((16, 16)))[0].astype(np.float32)}
    else:
        other.params = {k: v + 0.1 * rng.standard_normal(v.shape).astype(np.float32) for k, v in other.params.items()}
    near, far = population(here, 20, rng), population(elsewhere, 20, rng)
    between = unit(near[:20] + far[:20] * np.linspace(0.1, 1.5, 20)[:, None]).astype(np.float32)
    queries = np.concatenate([near, far, between, np.zeros((1, 16), np.float32)])
    weights = adapter.guard.weight(queries)
    assert ((weights > 0) & (weights < 1)).sum() >= 3  # some queries really are blended
    for candidate in (adapter, other.with_guard(adapter.guard), other, adapter.with_guard(None)):
        batch = candidate.transform(queries)
        one = np.stack([candidate.transform(q) for q in queries])
        np.testing.assert_allclose(one, batch, atol=2e-6)
        assert one.dtype == batch.dtype == np.float32
    np.testing.assert_allclose([adapter.guard.weight_of_one(q) for q in queries], weights, atol=1e-5)


def test_the_guard_is_in_the_file_and_old_files_still_load(tmp_path, guarded):
    adapter, here, elsewhere, rng = guarded
    adapter.save(tmp_path / "guarded")
    loaded = QueryAdapter.load(tmp_path / "guarded", base_model=MODEL, dimension=16)
    x = np.concatenate([population(here, 5, rng), population(elsewhere, 5, rng)])
    np.testing.assert_allclose(loaded.transform(x), adapter.transform(x), atol=1e-6)
    assert loaded.guard.inner == pytest.approx(adapter.guard.inner) and "guard=" in repr(loaded)
    config = json.loads((tmp_path / "guarded" / "adapter_config.json").read_text())
    numbers = {"residual_variance"} if adapter.guard.kind == "gaussian" else set()
    assert (
        set(config["guard"]) == {"kind", "inner", "outer", *numbers} and config["guard"]["kind"] == adapter.guard.kind
    )
    adapter.with_guard(None).save(tmp_path / "old")  # a file as written before the guard existed
    assert QueryAdapter.load(tmp_path / "old").guard is None


def test_a_file_of_the_first_guard_loads_and_serves_as_before(tmp_path):
    """Files written before guards had kinds hold the Gaussian summary and no "kind": they load as one."""
    rng = np.random.default_rng(3)
    here = unit(rng.standard_normal(16))
    guard = QueryGuard.summarise(population(here, 300, rng), components=4, kind="gaussian")
    guard = guard.calibrated(guard.distance(population(here, 100, rng)))
    adapter = QueryAdapter.create("linear", 16, MODEL).with_guard(guard)
    adapter.params["weight"] = np.linalg.qr(rng.standard_normal((16, 16)))[0].astype(np.float32)
    folder = adapter.save(tmp_path / "first")
    config = json.loads((folder / "adapter_config.json").read_text())
    del config["guard"]["kind"]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    loaded = QueryAdapter.load(folder)
    assert isinstance(loaded.guard, GaussianGuard)
    x = unit(here + 0.4 * rng.standard_normal((50, 16))).astype(np.float32)
    np.testing.assert_allclose(loaded.guard.weight(x), guard.weight(x), atol=1e-6)
    np.testing.assert_allclose(loaded.transform(x), adapter.transform(x), atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "change", "message"),
    [
        ("gaussian", lambda t, c: t.pop("guard.variances"), "guard needs tensors"),
        ("gaussian", lambda t, c: t.__setitem__("guard.mean", np.zeros(3, dtype=np.float32)), "shapes"),
        ("gaussian", lambda t, c: t.__setitem__("guard.variances", np.full(4, np.nan, dtype=np.float32)), "NaN"),
        ("centroids", lambda t, c: t.pop("guard.centroids"), "guard needs tensors"),
        ("centroids", lambda t, c: t.__setitem__("guard.centroids", np.zeros((0, 16), np.float32)), "shape"),
        ("centroids", lambda t, c: t.__setitem__("guard.centroids", np.full((2, 16), np.inf, np.float32)), "NaN"),
        ("centroids", lambda t, c: c["guard"].__setitem__("kind", "forest"), "unknown guard kind"),
        ("centroids", lambda t, c: t.__setitem__("guard.centroids", np.ones((2, 3), np.float32)), "dimension"),
        ("any", lambda t, c: c["guard"].__setitem__("outer", -1.0), "inner < outer"),
        ("any", lambda t, c: c.pop("guard"), "guard needs tensors"),
    ],
)
def test_a_broken_guard_is_refused(tmp_path, guarded, kind, change, message):
    adapter = guarded[0]
    if kind not in ("any", adapter.guard.kind):
        pytest.skip(f"a {kind} guard's file")
    folder = adapter.save(tmp_path / "a")
    tensors = safetensors.numpy.load_file(folder / "model.safetensors")
    config = json.loads((folder / "adapter_config.json").read_text())
    change(tensors, config)
    (folder / "model.safetensors").write_bytes(safetensors.numpy.save(tensors))
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterFileError, match=message):
        QueryAdapter.load(folder)


def test_the_registry_serves_the_guard(guarded):
    adapter, here, elsewhere, rng = guarded
    registry = AdapterRegistry(MODEL, 16, {"tenant": adapter})
    far = population(elsewhere, 3, rng)
    np.testing.assert_allclose(registry.transform(far, "tenant"), unit(far), atol=1e-6)
    near = population(here, 3, rng)
    np.testing.assert_allclose(registry.transform(near, "tenant"), adapter.with_guard(None).transform(near), atol=1e-5)


def test_the_population_check_steps_aside_while_recent_queries_are_far_and_back_when_they_return():
    check = PopulationCheck(window=10, floor=0.5, warmup=4)
    check.observe(np.zeros(3))
    assert not check.stepped_aside  # fewer than warmup queries: no judgement yet
    check.observe(0.0)
    assert check.stepped_aside and check.recent_weight == 0.0
    check.observe(np.ones(4))  # 4 of 8 training-like: mean 0.5, at the floor
    assert not check.stepped_aside
    check.observe(np.zeros(10))  # only the last 10 count
    assert check.stepped_aside and len(check) == 10 and check.times_stepped_aside == 2
    before = check.recent_weight
    served = check.replay(np.array([1.0] * 6))
    assert served.tolist() == [False] * 5 + [True]  # the 6th follows 5 training-like queries of the last 10
    assert check.recent_weight == before and check.stepped_aside  # replay leaves the check as it was
    with pytest.raises(ValueError, match="warmup"):
        PopulationCheck(window=5, warmup=6)
    assert PopulationCheck(window=10).warmup == 10 and PopulationCheck().warmup == 20  # at most the window
    with pytest.raises(ValueError, match="floor"):
        PopulationCheck(floor=0.0)


def test_the_registry_steps_a_guarded_adapter_aside_when_its_population_changes(guarded):
    adapter, here, elsewhere, rng = guarded
    plain = adapter.with_guard(None)
    registry = AdapterRegistry(MODEL, 16, {"tenant": adapter}, population=PopulationCheck(window=20, warmup=10))
    near = population(here, 1, rng)[0]
    look_alike = population(here, 1, rng)[0]  # a stranger who asks like the regulars: weight 1
    for regular in population(here, 40, rng):  # the trained-for population never trips it
        registry.transform(regular, "tenant")
    assert registry.get("tenant") is adapter and not registry.population_check("tenant").stepped_aside
    for stranger in population(elsewhere, 11, rng):  # one at a time, as a retriever serves them
        adapt_query_vector(registry, "tenant", stranger.tolist())
    assert adapter.guard.weight(look_alike[None])[0] == 1.0
    np.testing.assert_allclose(registry.transform(look_alike, "tenant"), unit(look_alike), atol=1e-6)  # base
    assert adapter_version(registry.get("tenant")) == BASE_VERSION  # what traces name
    for regular in population(here, 20, rng):  # the regulars come back: it serves again
        registry.transform(regular, "tenant")
    np.testing.assert_allclose(registry.transform(near, "tenant"), plain.transform(near), atol=1e-5)
    for stranger in population(elsewhere, 20, rng):
        registry.transform(stranger, "tenant")
    assert registry.population_check("tenant").stepped_aside
    registry.register("tenant", adapter.with_guard(adapter.guard))  # a new adapter: a fresh check
    np.testing.assert_allclose(registry.transform(near, "tenant"), plain.transform(near), atol=1e-5)
    for stranger in population(elsewhere, 20, rng):
        registry.transform(stranger, "tenant")
    registry.remove("tenant")
    registry.register("tenant", adapter)  # the same adapter again after a removal: a fresh check too
    assert len(registry.population_check("tenant")) == 0
    unchecked = AdapterRegistry(MODEL, 16, {"tenant": adapter}, population=None)
    for stranger in population(elsewhere, 40, rng):
        unchecked.transform(stranger, "tenant")
    np.testing.assert_allclose(unchecked.transform(look_alike, "tenant"), plain.transform(look_alike), atol=1e-5)
    assert unchecked.population_check("tenant") is None


def test_each_slot_has_its_own_check_and_a_batch_is_served_query_by_query(guarded):
    adapter, here, elsewhere, rng = guarded
    plain = adapter.with_guard(None)
    settings = PopulationCheck(window=20, warmup=10)
    registry = AdapterRegistry(MODEL, 16, {"a": adapter, "b": adapter.with_guard(adapter.guard)}, population=settings)
    strangers, look_alikes = population(elsewhere, 12, rng), population(here, 3, rng)
    batch = np.concatenate([look_alikes[:1], strangers, look_alikes[1:]])  # regulars before and after strangers
    served = registry.transform(batch, "a")
    np.testing.assert_allclose(served[0], plain.transform(batch[0]), atol=1e-5)  # before the strangers: adapted
    np.testing.assert_allclose(served[-2:], unit(batch[-2:]), atol=1e-6)  # after 12 strangers of 13: the base
    assert registry.population_check("a").stepped_aside
    np.testing.assert_allclose(registry.transform(look_alikes[0], "b"), plain.transform(look_alikes[0]), atol=1e-5)
    assert not registry.population_check("b").stepped_aside and len(registry.population_check("b")) == 1
    assert registry.population_check("a").times_stepped_aside == 1  # the copy keeps the count
    registry.population.floor = 0.99  # the registry's own settings: another registry keeps the default
    assert AdapterRegistry(MODEL, 16).population.floor == 0.5 and settings.floor == 0.5
    check = PopulationCheck(window=4, warmup=2)
    check.serve(np.array([np.nan, np.inf, 1.0, 0.0]))  # broken query vectors count as far ones
    assert check.recent_weight == 0.25 and check.stepped_aside


def test_the_trainer_guards_by_default_and_calibrates_on_validation():
    corpus, queries, vectors = make_rotation_task(n_docs=200, dim=16, mix=0.35)
    options = {"learning_rate": 1e-2, "epochs": 15, "progress": False, "model_id": MODEL, "cv_below_queries": 0}
    result = AdapterTrainer(**options).fit_vectors(queries, rows_for(queries, vectors), None, None, corpus)
    guard = result.adapter.guard
    assert result.improved and guard is not None and 0 < guard.inner < guard.outer
    assert result.adapter.metadata["guard"]["inner"] == guard.inner
    # the training queries themselves are (nearly) all inside: the guard leaves them the whole adapter
    assert (guard.weight(rows_for(queries, vectors)) == 1).mean() > 0.95
    unguarded = AdapterTrainer(**options, guard=False).fit_vectors(
        queries, rows_for(queries, vectors), None, None, corpus
    )
    assert unguarded.adapter.guard is None
    np.testing.assert_array_equal(unguarded.adapter.params["weight"], result.adapter.params["weight"])
    with pytest.raises(ValueError, match="guard"):
        AdapterTrainer(guard_quantile=0)
