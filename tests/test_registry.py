import numpy as np
import pytest

from adapter_retrievers import AdapterMismatchError, QueryAdapter
from adapter_retrievers.registry import AdapterRegistry, resolve_adapter

MODEL = "test/model"


def shifted(dim, value):
    adapter = QueryAdapter.create("linear", dim, MODEL, normalize=False)
    adapter.params["bias"] += value
    return adapter


def test_pick_by_key_and_fall_back_to_identity():
    registry = AdapterRegistry(MODEL, 4, {"a": shifted(4, 1.0), "b": shifted(4, 2.0)})
    x = np.zeros((1, 4), dtype=np.float32)
    assert registry.transform(x, "a")[0, 0] == 1.0 and registry.transform(x, "b")[0, 0] == 2.0
    unit = np.array([3.0, 4.0, 0.0, 0.0], dtype=np.float32)
    np.testing.assert_allclose(registry.transform(unit, "nobody"), unit / 5)  # identity (re-normalised)
    assert resolve_adapter(registry, None).is_identity
    single = shifted(4, 0.0)
    assert resolve_adapter(single, "any key") is single
    assert sorted(registry) == ["a", "b"] and "a" in registry and len(registry) == 2
    registry.remove("a")
    assert "a" not in registry and registry.get("a").is_identity


def test_register_refuses_another_model_or_dimension():
    registry = AdapterRegistry(MODEL, 4)
    with pytest.raises(AdapterMismatchError, match="dimension 4"):
        registry.register("x", QueryAdapter.create("linear", 8, MODEL))
    with pytest.raises(AdapterMismatchError, match="not 'test/model'"):
        registry.register("x", QueryAdapter.create("linear", 4, "other/model"))
    assert len(registry) == 0


def test_from_folder_and_hot_swap(tmp_path):
    shifted(4, 1.0).save(tmp_path / "adapters" / "tenant-a")
    shifted(4, 2.0).save(tmp_path / "adapters" / "tenant-b")
    (tmp_path / "adapters" / "notes").mkdir()
    registry = AdapterRegistry.from_folder(tmp_path / "adapters", MODEL, 4)
    assert sorted(registry) == ["tenant-a", "tenant-b"]
    held = registry.get("tenant-a")  # a request in flight keeps its adapter
    shifted(4, 5.0).save(tmp_path / "adapters" / "tenant-a", overwrite=True)
    registry.load("tenant-a", tmp_path / "adapters" / "tenant-a")
    x = np.zeros(4, dtype=np.float32)
    assert held.transform(x)[0] == 1.0 and registry.transform(x, "tenant-a")[0] == 5.0
    (tmp_path / "adapters" / "tenant-b" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a valid safetensors"):
        registry.load("tenant-b", tmp_path / "adapters" / "tenant-b")
    assert registry.transform(x, "tenant-b")[0] == 2.0  # a failed load leaves the served adapter in place


def test_low_rank_adapters_are_small():
    registry = AdapterRegistry(MODEL, 384)
    for i in range(10):
        registry.register(f"t{i}", QueryAdapter.create("low_rank", 384, MODEL, rank=8, seed=i))
    assert registry.nbytes == 10 * (2 * 384 * 8 + 384) * 4
