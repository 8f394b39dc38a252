import json
import pickle

import numpy as np
import pytest
import safetensors.numpy

from adapter_retrievers import AdapterFileError, AdapterMismatchError, QueryAdapter
from adapter_retrievers.adapters import OrthogonalAdapter

KINDS = ["linear", "low_rank", "orthogonal", "residual_mlp"]
MODEL = "test/model"


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_starts_as_identity(kind):
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    adapter = QueryAdapter.create(kind, 16, MODEL)
    np.testing.assert_allclose(adapter.transform(x), unit(x), atol=1e-6)
    np.testing.assert_allclose(adapter.transform(x[0]), unit(x[0]), atol=1e-6)  # one query, 1-D


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(tmp_path, kind):
    rng = np.random.default_rng(1)
    adapter = QueryAdapter.create(kind, 8, MODEL, rank=3, hidden=5)
    if kind != "orthogonal":
        adapter.params = {
            k: v + 0.1 * rng.standard_normal(v.shape).astype(np.float32) for k, v in adapter.params.items()
        }
    adapter.metadata = {"note": "x"}
    adapter.save(tmp_path / "a")
    loaded = QueryAdapter.load(tmp_path / "a", base_model=MODEL, dimension=8)
    assert type(loaded) is type(adapter) and loaded.metadata["note"] == "x"
    x = rng.standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_allclose(loaded.transform(x), adapter.transform(x), atol=1e-6)
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["kind"] == kind and config["base_model"] == MODEL and config["dimension"] == 8


def test_mismatched_model_or_dimension_is_refused(tmp_path):
    QueryAdapter.create("linear", 8, MODEL).save(tmp_path / "a")
    with pytest.raises(AdapterMismatchError, match="trained on embeddings of 'test/model', not 'other/model'"):
        QueryAdapter.load(tmp_path / "a", base_model="other/model")
    with pytest.raises(AdapterMismatchError, match="dimension 16"):
        QueryAdapter.load(tmp_path / "a", dimension=16)
    with pytest.raises(AdapterMismatchError, match="expects dimension 8"):
        QueryAdapter.load(tmp_path / "a").transform(np.ones((2, 16)))


def test_corrupted_and_pickled_files_are_refused(tmp_path):
    QueryAdapter.create("linear", 8, MODEL).save(tmp_path / "a")
    weights = tmp_path / "a" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(AdapterFileError, match="not a valid safetensors file"):
        QueryAdapter.load(tmp_path / "a")

    class Exploit:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    weights.write_bytes(pickle.dumps({"weight": Exploit()}))
    with pytest.raises(AdapterFileError, match="not a valid safetensors file"):
        QueryAdapter.load(tmp_path / "a")
    assert not (tmp_path / "pwned").exists()  # nothing was unpickled
    (tmp_path / "a" / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterFileError, match="not valid JSON"):
        QueryAdapter.load(tmp_path / "a")
    with pytest.raises(AdapterFileError, match="not an adapter folder"):
        QueryAdapter.load(tmp_path / "missing")


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"weight": np.eye(8, dtype=np.float32), "bias": np.full(8, np.nan, dtype=np.float32)}, "NaN or inf"),
        ({"weight": np.eye(8, dtype=np.float64), "bias": np.zeros(8)}, "dtype float64"),
        ({"weight": np.eye(7, dtype=np.float32), "bias": np.zeros(8, dtype=np.float32)}, "shape \\(7, 7\\)"),
        ({"weight": np.eye(8, dtype=np.float32)}, "needs tensors \\['bias', 'weight'\\]"),
        ({"weight": np.full((8, 8), 3e38, dtype=np.float32), "bias": np.zeros(8, dtype=np.float32)}, "far too large"),
    ],
)
def test_bad_tensors_are_refused(tmp_path, tensors, message):
    QueryAdapter.create("linear", 8, MODEL).save(tmp_path / "a")
    safetensors.numpy.save_file(tensors, str(tmp_path / "a" / "model.safetensors"))
    with pytest.raises(AdapterFileError, match=message):
        QueryAdapter.load(tmp_path / "a")


def test_unknown_format_version_or_kind(tmp_path):
    QueryAdapter.create("linear", 8, MODEL).save(tmp_path / "a")
    path = tmp_path / "a" / "adapter_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(AdapterFileError, match="format_version 99"):
        QueryAdapter.load(tmp_path / "a")
    path.write_text(json.dumps({**config, "kind": "pickled_lambda"}))
    with pytest.raises(AdapterFileError, match="unknown adapter kind"):
        QueryAdapter.load(tmp_path / "a")


def test_crash_mid_save_keeps_previous_adapter(tmp_path, monkeypatch):
    first = QueryAdapter.create("linear", 8, MODEL)
    first.metadata = {"version": 1}
    first.save(tmp_path / "a")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save", crash)
    second = QueryAdapter.create("linear", 8, MODEL)
    second.metadata = {"version": 2}
    with pytest.raises(OSError, match="disk full"):
        second.save(tmp_path / "a", overwrite=True)
    assert QueryAdapter.load(tmp_path / "a").metadata == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temporary folder left behind
    monkeypatch.undo()
    with pytest.raises(ValueError, match="exists; pass overwrite=True to replace it"):
        second.save(tmp_path / "a")  # an existing adapter is replaced only when asked
    assert QueryAdapter.load(tmp_path / "a").metadata == {"version": 1}
    second.save(tmp_path / "a", overwrite=True)
    assert QueryAdapter.load(tmp_path / "a").metadata == {"version": 2}
    (tmp_path / "a" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="other files in it"):
        first.save(tmp_path / "a", overwrite=True)  # a folder with other files is never replaced
    assert (tmp_path / "a" / "notes.txt").read_text() == "mine"


def test_procrustes_recovers_a_rotation():
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    if np.linalg.det(rotation) < 0:
        rotation[:, 0] *= -1
    queries = unit(rng.standard_normal((200, 12)))
    adapter = OrthogonalAdapter.procrustes(queries, queries @ rotation.T, MODEL)
    np.testing.assert_allclose(adapter.params["rotation"], rotation, atol=1e-4)
    with pytest.raises(AdapterFileError, match="not orthogonal"):
        OrthogonalAdapter(12, MODEL, {"rotation": 2 * np.eye(12, dtype=np.float32)})


def test_unnormalised_adapter_keeps_scale():
    adapter = QueryAdapter.create("linear", 4, MODEL, normalize=False)
    x = np.array([[3.0, 0.0, 0.0, 4.0]], dtype=np.float32)
    np.testing.assert_allclose(adapter.transform(x), x)


@pytest.mark.parametrize(("umask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_written_files_follow_the_umask(tmp_path, umask, file_mode, folder_mode):
    """A serving process running as another user can read a saved adapter under umask 022, as with open()."""
    import os
    import stat

    from adapter_retrievers._files import atomic_write_text

    old = os.umask(umask)
    try:
        QueryAdapter.create("linear", 4, "test/model").save(tmp_path / "adapter")
        atomic_write_text(tmp_path / "report.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "adapter").stat().st_mode) == folder_mode
    for path in [*(tmp_path / "adapter").iterdir(), tmp_path / "report.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path


def test_repr_is_one_short_line():
    text = repr(QueryAdapter.create("linear", 384, "sentence-transformers/all-MiniLM-L6-v2"))
    assert text == (
        "LinearAdapter(kind='linear', dimension=384, base_model='sentence-transformers/all-MiniLM-L6-v2', "
        "parameters=147,840, normalize=True)"
    )


def test_the_average_of_linear_adapters_ranks_by_their_mean_score():
    """One matrix, no serving cost: ranking by the averaged adapter is ranking by the mean of the adapters' scores."""
    from adapter_retrievers.adapters import average

    rng = np.random.default_rng(3)
    adapters = []
    for _ in range(3):
        a = QueryAdapter.create("linear", 8, MODEL)
        a.params = {k: v + 0.3 * rng.standard_normal(v.shape).astype(np.float32) for k, v in a.params.items()}
        adapters.append(a)
    mean = average(adapters)
    x, docs = rng.standard_normal((5, 8)).astype(np.float32), unit(rng.standard_normal((40, 8)))
    scores = np.mean([a._apply(x) @ docs.T for a in adapters], axis=0)
    np.testing.assert_array_equal(np.argsort(-(mean.transform(x) @ docs.T), axis=1), np.argsort(-scores, axis=1))
    assert not np.array_equal(np.argsort(-(adapters[0].transform(x) @ docs.T), axis=1), np.argsort(-scores, axis=1))
    assert average([adapters[0]]) is adapters[0]
    with pytest.raises(ValueError, match="linear"):
        average([adapters[0], QueryAdapter.create("low_rank", 8, MODEL, rank=2)])
