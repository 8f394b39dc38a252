"""Load checks at small sizes; the same functions run at full size in ``benchmarks/load.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("chromadb")
pytest.importorskip("langchain_chroma")
pytest.importorskip("llama_index.vector_stores.chroma")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import load


def test_swaps_under_load_only_ever_serve_the_old_or_the_new_adapter(tmp_path):
    result = load.swap_under_load(tmp_path, n_docs=400, dim=32, n_queries=40, n_threads=8, n_swaps=200)
    assert result["errors"] == 0, result["error_examples"]
    assert result["mismatches"] == 0, result["outcomes"]
    # the check can fail: the two adapters answer differently, and both were served while swapping
    assert min(result["answers_differ_between_a_and_b"].values()) > 0.5
    for framework, outcomes in result["outcomes"].items():
        assert outcomes.get("as A", 0) > 0 and outcomes.get("as B", 0) > 0, (framework, outcomes)


def test_langchain_logger_keeps_every_record_and_forgets_failed_runs(tmp_path):
    result = load.langchain_logger_runs(tmp_path, n_runs=600, n_threads=4, warmup=100)
    assert result["failed_runs"] == {"ValueError": 60, "ConnectionError": 60, "RuntimeError": 60}
    assert result["lines"] == result["records"] == result["distinct_ids"] == result["expected_records"] == 480
    assert result["in_progress_left"] == 0  # failed chains used to stay in the logger's run map forever


def test_llamaindex_handler_keeps_one_record_per_retrieval_and_forgets_failed_ones(tmp_path):
    result = load.llamaindex_logger_runs(tmp_path, n_runs=600, n_threads=4, warmup=100)
    assert result["failed_runs"] == {"ValueError": 60, "ConnectionError": 60, "RuntimeError": 60}
    # one line per retrieval: AdapterVectorRetriever's inner retrieval used to be logged a second time
    assert result["lines"] == result["records"] == result["distinct_ids"] == result["expected_records"] == 480
    assert result["in_progress_left"] == 0  # failed retrievals used to stay pending forever


def test_four_processes_append_to_one_log_without_loss_or_interleaving(tmp_path):
    result = load.concurrent_appends(tmp_path, n_processes=4, n_lines=150)
    assert result["exit_codes"] == [0, 0, 0, 0]
    assert result["lines"] == 600
    assert result["unparsable"] == result["wrong_payload"] == result["duplicated"] == result["missing"] == 0
