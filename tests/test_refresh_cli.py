"""`adapter-retrievers refresh` as cron runs it: real log, bundled model, exit codes of every outcome."""

import errno
import gzip
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapter_retrievers.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_LOCKED, EXIT_OK, EXIT_SOURCE, app
from adapter_retrievers.store import AdapterStore

runner = CliRunner()
DATA = Path(__file__).resolve().parent.parent / "adapter_retrievers" / "datasets" / "xquad_es"


@pytest.fixture
def day_of_traffic(tmp_path):
    """The first 120 lines of the bundled RAG log (60 retrievals and their clicks) as tonight's log, and
    a corpus of the paragraphs clicked or ranked first (small, so the bundled model embeds it quickly)."""
    with gzip.open(DATA / "rag-log.jsonl.gz", "rt", encoding="utf-8") as handle:
        lines = [next(handle) for _ in range(120)]
    log = tmp_path / "logs" / "rag-log.jsonl"
    log.parent.mkdir()
    log.write_text("".join(lines), encoding="utf-8")
    records = [json.loads(line) for line in lines]
    wanted = {r["document_id"] for r in records if r["type"] == "signal"}
    wanted |= {r["documents"][0]["id"] for r in records if r["type"] == "retrieval"}
    with gzip.open(DATA / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        kept = [line for line in handle if json.loads(line)["_id"] in wanted]
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "corpus.jsonl").write_text("".join(kept), encoding="utf-8")
    return log


def refresh_args(tmp_path, log, *extra):
    return [
        "refresh",
        "--store",
        str(tmp_path / "store"),
        "--log",
        str(log),
        "--corpus",
        str(tmp_path / "corpus"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--epochs",
        "5",
        *extra,
    ]


def test_refresh_exit_codes_without_training(tmp_path, day_of_traffic, monkeypatch):
    """Every exit code cron sees; --min-queries above tonight's traffic keeps the model unloaded."""
    store = AdapterStore(tmp_path / "store")
    args = refresh_args(tmp_path, day_of_traffic, "--min-queries", "1000")

    with store.lock():  # another run is in progress
        result = runner.invoke(app, args)
    assert result.exit_code == EXIT_LOCKED and "another run holds" in result.output

    real_replace = os.replace  # the disk is full: the pairs store cannot be committed

    def full(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    result = runner.invoke(app, args)
    monkeypatch.setattr(os, "replace", real_replace)
    assert result.exit_code == EXIT_FAILED and "No space left on device" in result.output, result.output
    assert "live is untouched" in result.output and store.live is None
    assert not (store.state_dir / "watermarks.json").exists()  # nothing was committed: tonight is read again

    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_OK, result.output
    assert "120 new records; 60 new pairs" in result.output and "kept: 60 queries with pairs" in result.output
    result = runner.invoke(app, args)  # an empty night
    assert result.exit_code == EXIT_OK and "nothing_new: nothing new since the last decision" in result.output
    assert [r["action"] for r in store.history()] == ["failed", "kept", "nothing_new"]

    # bad input is refused before the store is touched: exit 2, no history line
    result = runner.invoke(app, refresh_args(tmp_path, tmp_path / "gone" / "rag-log.jsonl"))
    assert result.exit_code == EXIT_BAD_INPUT and "--log" in result.output and "no such file" in result.output
    result = runner.invoke(app, [*args[:5], "--corpus", str(tmp_path / "no-corpus")])
    assert result.exit_code == EXIT_BAD_INPUT and "--corpus" in result.output
    result = runner.invoke(app, [*args, "--demote", "sometimes"])
    assert result.exit_code == EXIT_BAD_INPUT and "--demote must be one of" in result.output
    result = runner.invoke(app, ["history", "--store", str(tmp_path / "store"), "--json"])
    records = [json.loads(line) for line in result.output.splitlines()]
    assert [r["action"] for r in records] == ["failed", "kept", "nothing_new"]
    assert "No space left" in records[0]["reason"]


def test_refresh_trains_with_the_bundled_model(tmp_path, day_of_traffic):
    pytest.importorskip("all_minilm_l6_v2")
    store = AdapterStore(tmp_path / "store")
    result = runner.invoke(app, refresh_args(tmp_path, day_of_traffic))
    assert result.exit_code == EXIT_OK, result.output
    decided = store.history()[-1]
    assert decided["action"] in ("promoted", "kept") and decided["action"] in result.output
    assert decided["data"]["n_queries"] == 60 and decided["n_held_out"] == 12
    assert set(decided["scores"]) == {"base", "live", "candidate"}
    assert store.live == (decided["version"] if decided["action"] == "promoted" else None)


def test_phoenix_down_exits_4_and_moves_nothing(tmp_path, day_of_traffic):
    pytest.importorskip("phoenix.client")
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = AdapterStore(tmp_path / "store")
    args = refresh_args(tmp_path, day_of_traffic, "--min-queries", "1000")
    assert runner.invoke(app, args).exit_code == EXIT_OK
    marks = (store.state_dir / "watermarks.json").read_text()
    result = runner.invoke(app, [*args, "--phoenix-url", f"http://127.0.0.1:{port}", "--phoenix-project", "rag"])
    assert result.exit_code == EXIT_SOURCE, result.output
    assert "trace source failed: Phoenix project 'rag'" in result.output and "unchanged" in result.output
    assert (store.state_dir / "watermarks.json").read_text() == marks and store.live is None
