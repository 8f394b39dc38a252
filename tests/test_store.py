"""The versioned adapter store: versions, live pointer, history, retention, lock."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from adapter_retrievers import QueryAdapter
from adapter_retrievers.store import AdapterStore, StoreError, StoreLocked

MODEL = "test/model"


def shifted(value, dim=4):
    adapter = QueryAdapter.create("linear", dim, MODEL, normalize=False)
    adapter.params["bias"] += value
    return adapter


def test_versions_live_pointer_and_history(tmp_path):
    store = AdapterStore(tmp_path / "store")
    assert store.live is None and store.versions() == [] and store.history() == []
    assert store.live_adapter(MODEL, 4).is_identity
    v1 = store.add_version(shifted(1.0), {"evaluation": {"ndcg@10": 0.5}, "data": {"fingerprint": "abc"}})
    v2 = store.add_version(shifted(2.0), {"evaluation": {"ndcg@10": 0.6}})
    assert (v1, v2) == ("v0001", "v0002") and store.versions() == [v1, v2]
    assert store.live is None  # storing is not promoting
    store.set_live(v1, "promoted")
    x = np.zeros(4, dtype=np.float32)
    assert store.live == v1 and store.live_adapter(MODEL, 4).transform(x)[0] == 1.0
    assert store.info(v1).record["data"] == {"fingerprint": "abc"}
    assert store.load(v2).metadata["store_version"] == v2
    store.promote(v2)
    assert store.live == v2
    actions = [(r["action"], r["live_before"], r["live_after"]) for r in store.history()]
    assert actions == [("promoted", None, v1), ("promote", v1, v2)]
    with pytest.raises(StoreError, match="no version v0009"):
        store.promote("v0009")
    with pytest.raises(StoreError, match="not a version id"):
        store.promote("../etc")
    assert store.live == v2 and len(store.history()) == 2


def test_rollback_walks_back_through_versions_that_were_live(tmp_path):
    store = AdapterStore(tmp_path)
    v1, v2, v3, v4 = (store.add_version(shifted(float(i)), {}) for i in range(1, 5))
    store.set_live(v1, "promoted")
    store.set_live(v2, "promoted")
    store.set_live(v4, "promoted")  # v3 was a candidate that never went live
    assert store.rollback()["live_after"] == v2
    assert store.rollback()["live_after"] == v1
    assert store.rollback()["live_after"] is None  # the base model
    with pytest.raises(StoreError, match="nothing to roll back to"):
        store.rollback()
    assert store.rollback(v3)["live_after"] == v3  # any stored version, by name
    assert store.live == v3


def test_rollback_after_a_demotion_restores_the_adapter_that_was_live_before_it(tmp_path):
    store = AdapterStore(tmp_path)
    v1, v2, v3 = (store.add_version(shifted(float(i)), {}) for i in range(1, 4))
    store.set_live(v1, "promoted")
    store.set_live(v2, "promoted")
    store.set_live(None, "demoted")  # the nightly refresh served the base model
    assert store.rollback()["live_after"] == v2  # undoes the demotion
    assert store.rollback()["live_after"] == v1  # then walks back as before
    store.set_live(None, "demoted")
    store.set_live(v3, "promoted")  # promoted from the base model
    assert store.rollback()["live_after"] is None  # back to what was live before: the base model
    assert store.rollback()["live_after"] == v1  # ... and before that, the adapter the demotion took down
    store.rollback()
    with pytest.raises(StoreError, match="nothing to roll back to"):
        store.rollback()


def test_the_candidate_pointer_is_kept_by_retention_and_shown_by_status(tmp_path):
    store = AdapterStore(tmp_path, keep=1)
    versions = [store.add_version(shifted(float(i)), {}) for i in range(4)]
    store.set_candidate(versions[0])
    store.set_live(versions[1], "promoted")
    assert store.prune() == [versions[2]] and store.candidate == versions[0]
    assert store.status()["candidate"] == versions[0]
    with pytest.raises(StoreError, match="no version v0042"):
        store.set_candidate("v0042")
    store.set_candidate(None)
    assert store.candidate is None


def test_retention_keeps_newest_and_live(tmp_path):
    store = AdapterStore(tmp_path, keep=2)
    versions = [store.add_version(shifted(float(i)), {}) for i in range(5)]
    store.set_live(versions[0], "promoted")
    removed = store.prune()
    assert removed == versions[1:3]
    assert store.versions() == [versions[0], *versions[3:]]
    # ids are never reused, even after pruning
    assert store.add_version(shifted(9.0), {}) == "v0006"


def test_retention_keeps_what_rollback_returns_to(tmp_path):
    """Found by the young-application benchmark: nightly candidates pushed the previous live version out."""
    store = AdapterStore(tmp_path, keep=2)
    first = store.add_version(shifted(1.0), {})
    store.set_live(first, "promoted")
    later = [store.add_version(shifted(float(i)), {}) for i in range(2, 7)]
    store.set_live(later[2], "promoted")
    removed = store.prune()
    assert removed == [later[0], later[1]]  # not the newest two, not live, not the rollback target
    assert store.rollback()["live_after"] == first
    assert store.rollback()["live_after"] is None


def test_unfinished_save_is_not_a_version_and_is_cleaned(tmp_path, monkeypatch):
    store = AdapterStore(tmp_path)
    v1 = store.add_version(shifted(1.0), {})

    def explode(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", explode)
    with pytest.raises(OSError, match="No space left"):
        store.add_version(shifted(2.0), {})
    monkeypatch.undo()
    assert store.versions() == [v1]
    assert not [p for p in store.versions_dir.iterdir() if p.name.startswith(".")]  # staging removed
    # a staging folder left by a killed process (no cleanup ran) is never listed and is removed later
    (store.versions_dir / ".v0002.deadbeef.staging").mkdir()
    assert store.versions() == [v1]
    assert store.add_version(shifted(3.0), {}) == "v0003"  # its number stays reserved
    assert store.remove_staging() == [".v0002.deadbeef.staging"]


def test_history_skips_a_line_cut_by_a_crash(tmp_path):
    store = AdapterStore(tmp_path)
    store.append_history({"action": "kept", "version": None})
    with open(store.history_path, "a") as handle:
        handle.write('{"action": "prom')
    assert [r["action"] for r in store.history()] == ["kept"]


def test_lock_excludes_a_second_run_and_clears_a_dead_ones(tmp_path):
    store = AdapterStore(tmp_path)
    with store.lock() as held:
        with pytest.raises(StoreLocked, match=f"pid {os.getpid()}"):
            store.lock().acquire()
        assert store.lock().holder()["token"] == held.token
    assert store.lock().holder() is None  # released
    # a lock left by a process that was killed
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child.kill()
    child.wait()
    lock = store.lock()
    lock.path.write_text(json.dumps({"pid": child.pid, "host": os.uname().nodename, "started_unix": time.time()}))
    with lock:
        assert lock.cleared is not None and f"process {child.pid} is gone" in lock.cleared["reason"]
    # a lock from another host is stale only by age
    other = {"pid": 1, "host": "elsewhere", "started_unix": time.time() - 10}
    lock.path.write_text(json.dumps(other))
    with pytest.raises(StoreLocked, match="elsewhere"):
        store.lock().acquire()
    old = AdapterStore(tmp_path, stale_lock_after=5).lock()
    with old:
        assert "old" in old.cleared["reason"]


def test_lock_release_leaves_someone_elses_lock(tmp_path):
    store = AdapterStore(tmp_path)
    lock = store.lock().acquire()
    lock.path.write_text(json.dumps({"pid": os.getpid(), "host": "x", "token": "other", "started_unix": time.time()}))
    lock.release()
    assert lock.path.exists()


def test_status(tmp_path):
    store = AdapterStore(tmp_path)
    v1 = store.add_version(shifted(1.0), {"evaluation": {"candidate": {"ndcg@10": 0.7}}})
    store.set_live(v1, "promoted")
    store.append_history({"action": "kept", "version": None})
    status = store.status()
    assert status["live"] == v1 and status["versions"] == [v1]
    assert status["live_evaluation"] == {"candidate": {"ndcg@10": 0.7}}
    assert status["last_decision"]["action"] == "kept" and status["decisions"] == 2 and status["lock"] is None


def test_cli_status_history_rollback_promote(tmp_path):
    from typer.testing import CliRunner

    from adapter_retrievers.cli import EXIT_BAD_INPUT, app

    runner = CliRunner()
    store = AdapterStore(tmp_path)
    v1 = store.add_version(shifted(1.0), {})
    v2 = store.add_version(shifted(2.0), {})
    store.set_live(v1, "promoted", scores={"base": 0.5, "live": 0.5, "candidate": 0.6})
    result = runner.invoke(app, ["promote", v2, "--store", str(tmp_path)])
    assert result.exit_code == 0 and f"live: {v2} (was {v1})" in result.output and store.live == v2
    result = runner.invoke(app, ["rollback", "--store", str(tmp_path)])
    assert result.exit_code == 0 and store.live == v1
    result = runner.invoke(app, ["status", "--store", str(tmp_path)])
    assert result.exit_code == 0 and f"live      {v1}" in result.output and "lock      free" in result.output
    result = runner.invoke(app, ["history", "--store", str(tmp_path)])
    lines = result.output.splitlines()
    assert [line.split()[1] for line in lines] == ["promoted", "promote", "rollback"]
    assert "ndcg@10: base 0.5000, live 0.5000, candidate 0.6000" in lines[0]
    result = runner.invoke(app, ["status", "--store", str(tmp_path), "--json"])
    assert json.loads(result.output)["versions"] == [v1, v2]
    result = runner.invoke(app, ["promote", "v0042", "--store", str(tmp_path)])
    assert result.exit_code == EXIT_BAD_INPUT and "no version v0042" in result.output and store.live == v1
    with store.lock():
        result = runner.invoke(app, ["status", "--store", str(tmp_path)])
        assert f"held by pid {os.getpid()}" in result.output


def test_published_files_are_readable_by_a_serving_process_of_another_user(tmp_path):
    import stat

    from adapter_retrievers._files import _umask

    _FILE_MODE, _FOLDER_MODE = 0o666 & ~_umask(), 0o777 & ~_umask()  # what open() and mkdir() give
    store = AdapterStore(tmp_path)
    store.set_live(store.add_version(shifted(1.0), {}), "promoted")
    assert stat.S_IMODE(store.live_path.stat().st_mode) == _FILE_MODE
    folder = store.version_path("v0001")
    assert stat.S_IMODE(folder.stat().st_mode) == _FOLDER_MODE
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {_FILE_MODE}


def test_adding_a_version_leaves_the_callers_adapter_alone(tmp_path):
    store = AdapterStore(tmp_path / "store")
    adapter = QueryAdapter.identity(4, "test/model")
    adapter.metadata = {"note": "mine"}
    version = store.add_version(adapter, {})
    assert adapter.metadata == {"note": "mine"}
    assert store.load(version).metadata == {"note": "mine", "store_version": version}
