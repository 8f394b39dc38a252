"""Faults during a refresh: a run killed mid-training or mid-save, disk full, two runs at once.

Every case checks the same promise: live is untouched, no half version is ever listed, and the next
run proceeds normally.
"""

import errno
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapter_retrievers.capture import RetrievalLog
from adapter_retrievers.store import AdapterStore, StoreLocked
from test_refresh import log_day, make_task, run

TESTS = Path(__file__).resolve().parent

# A refresh in a child process that blocks at a chosen point, so the test can kill it right there.
CHILD = """
import os, sys, time
from pathlib import Path
sys.path[:0] = [{tests!r}]
from test_refresh import make_task, run
tmp, phase = Path(sys.argv[1]), sys.argv[2]

def block(*args, **kwargs):
    (tmp / "reached").write_text(phase)
    time.sleep(600)

if phase == "training":
    import adapter_retrievers.training as training
    training.AdapterTrainer.fit_vectors = block
else:  # "save": the version folder is fully written, the rename that publishes it is next
    os.rename = block
run(tmp, make_task(), 1)
"""


def first_night(tmp_path):
    """The task, the RAG log with day 0's traffic, and the (empty) store: ``(task, log, store)``."""
    log = RetrievalLog(tmp_path / "rag-log.jsonl")
    log_day(log, 0, range(0, 100))
    return make_task(), log, AdapterStore(tmp_path / "store")


def start_child(tmp_path, phase):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(tests=str(TESTS)), str(tmp_path), phase], env=env, cwd=TESTS.parent
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "reached").exists():
        assert child.poll() is None, "the child refresh ended before reaching the point to kill it at"
        assert time.monotonic() < deadline, "the child refresh never reached the point to kill it at"
        time.sleep(0.05)
    return child


@pytest.mark.parametrize("phase", ["training", "save"])
def test_a_run_killed_midway_leaves_live_and_the_next_run_proceeds(tmp_path, phase):
    task, log, store = first_night(tmp_path)
    assert run(tmp_path, task, 0).action == "promoted"
    log_day(log, 1, range(100, 200))
    history = store.history()

    child = start_child(tmp_path, phase)
    try:
        with pytest.raises(StoreLocked, match=f"pid {child.pid}"):  # two runs at once: the second is refused
            run(tmp_path, task, 1)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert store.live == "v0001" and store.versions() == ["v0001"] and store.history() == history
    if phase == "save":  # the killed save left its staging folder behind; it is not a version
        assert [p.name for p in store.versions_dir.iterdir() if p.name.startswith(".")]
    assert store.lock().holder()["pid"] == child.pid  # a stale lock

    outcome = run(tmp_path, task, 1)  # the next run clears the stale lock and decides
    assert outcome.action in ("promoted", "kept") and outcome.record["data"]["n_queries"] == 200
    actions = [r["action"] for r in store.history()[len(history) :]]
    assert actions == ["stale_lock_cleared", outcome.action]
    assert not [p for p in store.versions_dir.iterdir() if p.name.startswith(".")]
    assert store.lock().holder() is None


def test_disk_full_while_saving_a_version(tmp_path, monkeypatch):
    task, _, store = first_night(tmp_path)
    real_open = io.open

    class FullDisk:
        """A file on a full disk: opening works, writing fails with ENOSPC (as write(2) does)."""

        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def __getattr__(self, name):
            return getattr(self.handle, name)

    def open_on_full_disk(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return FullDisk(handle) if "w" in mode and "versions" in str(file) else handle

    monkeypatch.setattr(io, "open", open_on_full_disk)
    with pytest.raises(OSError) as failure:
        run(tmp_path, task, 0)
    monkeypatch.undo()
    assert failure.value.errno == errno.ENOSPC
    assert store.live is None and store.versions() == [] and store.lock().holder() is None
    assert not [p for p in store.versions_dir.iterdir() if p.name.startswith(".")]
    assert [r["action"] for r in store.history()] == ["failed"] and "No space left" in store.history()[0]["reason"]
    assert run(tmp_path, task, 0).action == "promoted"  # space is back: the next run proceeds
