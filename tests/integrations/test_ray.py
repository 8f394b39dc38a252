"""Harvest and embedding on a real local Ray (2 CPUs, no dashboard): the same results as one process.

Every format's fixtures of tests/test_harvest.py (emitted by the real libraries), as JSONL, JSONL.gz and
Parquet files together, and the bundled RAG log, are harvested by both engines; pairs (in order), hard
negatives, first-seen times, sessions, adapter versions and the whole report must be equal.
"""

from __future__ import annotations

import dataclasses
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import harvest_fixtures as fx
from adapter_retrievers import CachedEncoder, Corpus
from adapter_retrievers.harvest import FORMATS, SignalPolicy, harvest
from conftest import HashingEncoder

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from adapter_retrievers.integrations.ray import embed_on_ray, harvest_on_ray  # noqa: E402

BUNDLED = Path(__file__).resolve().parents[2] / "adapter_retrievers" / "datasets" / "xquad_es"


@pytest.fixture(scope="session", autouse=True)
def local_ray():
    """One local Ray for the session (about 6 s to start on 2 cores), shut down at its end."""
    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
            logging_level="warning",
        )
    import sys

    import conftest

    for module in (conftest, sys.modules[__name__]):  # the test encoders go to the actors by value
        ray.cloudpickle.register_pickle_by_value(module)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def corpus():
    return Corpus(list(fx.TEXTS), list(fx.TEXTS.values()))


def assert_same(one, on_ray, same_locations: bool = True) -> None:
    """Both engines produced the same result; ``same_locations``: the report's example locations too."""
    ts, rts = one.training_set, on_ray.training_set
    assert list(rts.queries.items()) == list(ts.queries.items())  # the same queries in the same order
    assert rts.relevant == ts.relevant and rts.negatives == ts.negatives
    assert on_ray.query_info == one.query_info
    assert on_ray.feedback == one.feedback  # what each signal named, where shown, which ranker picked it
    if same_locations:
        assert dataclasses.asdict(on_ray.report) == dataclasses.asdict(one.report)
        assert str(on_ray.report) == str(one.report)
    else:
        for name in ("records_read", "retrievals", "signals", "pairs", "negatives", "queries"):
            assert getattr(on_ray.report, name) == getattr(one.report, name), name
        assert on_ray.report.skipped.skipped == one.report.skipped.skipped
        assert on_ray.report.merged.skipped == one.report.merged.skipped


def _every_variant(fmt: str, folder: Path) -> list[Path]:
    """A format's fixtures as JSONL (or JSON arrays), their gzipped copies and Parquet copies: several files."""
    files = fx.format_files(fmt, folder / "jsonl")
    parquet = [p for p in (fx.as_parquet(f, folder / "parquet") for f in files) if p is not None]
    assert parquet, f"no {fmt} fixture converts to Parquet"
    return [*files, *(fx.gzipped(f, folder / "gz") for f in files), *parquet]


def test_every_format_same_as_one_process(tmp_path, corpus):
    """All five formats; the harvests run side by side in threads (Ray Data runs each as its own job)."""
    inputs = {fmt: _every_variant(fmt, tmp_path / fmt) for fmt in FORMATS}
    with ThreadPoolExecutor(len(FORMATS)) as pool:
        futures = {fmt: pool.submit(harvest_on_ray, files, corpus, fmt, workers=2) for fmt, files in inputs.items()}
        results = {fmt: future.result() for fmt, future in futures.items()}
    for fmt, files in inputs.items():
        one = harvest(files, corpus, fmt)
        assert one.report.pairs > 0 and one.report.skipped.n_skipped + one.report.merged.n_skipped > 0, fmt
        assert_same(one, results[fmt])
    credited = [f.credit for f in results["ours"].feedback if f.candidate_version == "v0002"]
    assert sorted(c["candidate"] - c["live"] for c in credited) == [0, 1], credited  # clicks credited on Ray too


def test_bundled_log_sharded_on_a_filesystem_url(tmp_path):
    """The bundled XQuAD-es log cut into shards (JSONL, JSONL.gz and Parquet) in a folder read through a
    ``file://`` URL (pyarrow's filesystem: what ``s3://`` goes through), against the one file read at once."""
    import gzip

    corpus = Corpus.from_beir(BUNDLED)
    log = BUNDLED / "rag-log.jsonl.gz"
    with gzip.open(log, "rt") as handle:
        lines = handle.read().splitlines()
    shards = tmp_path / "shards"
    shards.mkdir()
    third = len(lines) // 3
    (shards / "part-0.jsonl").write_text("\n".join(lines[:third]) + "\n")
    with gzip.open(shards / "part-1.jsonl.gz", "wt") as handle:
        handle.write("\n".join(lines[third : 2 * third]) + "\n")
    (tmp_path / "rest.jsonl").write_text("\n".join(lines[2 * third :]) + "\n")
    assert fx.as_parquet(tmp_path / "rest.jsonl", shards) is not None
    (shards / "_SUCCESS").write_text("")  # a writer's marker: passed over
    whole = harvest(log, corpus, policy=SignalPolicy())
    one = harvest(shards, corpus)
    on_ray = harvest_on_ray(f"file://{shards}", corpus, workers=2)
    assert whole.report.pairs > 1000
    assert_same(one, on_ray)
    assert_same(whole, on_ray, same_locations=False)  # sharding changes nothing but where records were read


def test_a_ray_dataset_of_records(tmp_path, corpus):
    """A Dataset the user already has (columns = the records' keys, as read_parquet gives them)."""
    path, _ = fx.own_log(tmp_path)
    parquet = fx.as_parquet(fx.answer_feedback_log(tmp_path), tmp_path / "pq")
    one = harvest([fx.as_parquet(path, tmp_path / "pq"), parquet], corpus)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # before the Dataset is made: it keeps a copy
    try:
        dataset = ray.data.read_parquet([str(tmp_path / "pq" / "log.parquet"), str(parquet)])
        on_ray = harvest_on_ray(dataset, corpus)
    finally:
        context.execution_options.preserve_order = False
    assert one.report.pairs >= 5
    assert_same(one, on_ray, same_locations=False)
    assert on_ray.report.skipped.examples["retrieval with no signal"]


def test_bad_input_is_refused_before_any_work(tmp_path, corpus):
    with pytest.raises(ValueError, match="unknown trace format"):
        harvest_on_ray(tmp_path, corpus, fmt="splunk")
    with pytest.raises(FileNotFoundError):
        harvest_on_ray(tmp_path / "missing.jsonl", corpus)
    with pytest.raises(ValueError, match="no trace files"):
        harvest_on_ray(tmp_path, corpus)


# ------------------------------------------------------------------------------------------ embedding


class CountingEncoder(HashingEncoder):
    """Appends one line per embedded text to a file: the actors' calls add up across processes."""

    def __init__(self, tally: Path, model_id: str = "test/hashing-64") -> None:
        super().__init__(64, model_id)
        self.tally = tally

    def embed_queries(self, texts):
        with open(self.tally, "a") as handle:
            handle.write("".join(f"{t}\n" for t in texts))
        return super().embed_queries(texts)


def _tally(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_embedding_on_an_actor_pool_fills_the_cache_once(tmp_path):
    tally, cache = tmp_path / "tally.txt", tmp_path / "cache"
    texts = [f"question {i} about topic {i % 7}" for i in range(300)] + ["question 3 about topic 3"] * 5
    more = [*texts, "one new question"]
    run = embed_on_ray(texts, cache, CountingEncoder(tally), role="query", concurrency=2, batch_size=64)
    assert (run.texts, run.distinct, run.cached, run.embedded) == (305, 300, 0, 300)
    assert _tally(tally) == 300 and run.shard is not None and run.shard.parent == cache / "vectors"

    again = embed_on_ray(more, cache, CountingEncoder(tally))
    assert (again.cached, again.embedded) == (300, 1) and _tally(tally) == 301  # a rerun embeds nothing twice

    reference = HashingEncoder(64)
    cached = CachedEncoder(reference, cache, progress=False)
    vectors = cached.embed_queries(more)
    assert reference.calls == 0 and (cached.hits, cached.misses) == (306, 0)  # all from the Parquet shards
    np.testing.assert_array_equal(vectors, HashingEncoder(64).embed_queries(more))
    cached.embed_documents(texts[:3])  # another role, another key: not in the cache
    assert reference.calls == 1 and cached.misses == 3


def test_embedding_with_a_factory_and_a_dataset(tmp_path):
    """Each actor builds its own encoder; a Dataset of texts; documents keyed apart from queries; the vectors
    found by a CachedEncoder of the same model and by a rerun, and not by another model."""
    tally, cache = tmp_path / "tally.txt", tmp_path / "cache"
    texts = [f"document {i}" for i in range(50)]
    dataset = ray.data.from_items([{"text": t} for t in texts])

    def factory():
        return CountingEncoder(tally, "test/factory-model")

    run = embed_on_ray(dataset, cache, factory=factory, model_id="test/factory-model", role="document")
    assert run.embedded == 50 and _tally(tally) == 50
    rerun = embed_on_ray(texts, cache, factory=factory, model_id="test/factory-model", role="document")
    assert rerun.embedded == 0 and rerun.shard is None and _tally(tally) == 50
    found = CachedEncoder(HashingEncoder(64, "test/factory-model"), cache, progress=False)
    found.embed_documents(texts)
    assert found.misses == 0
    other = CachedEncoder(HashingEncoder(64, "test/another-model"), cache, progress=False)
    other.embed_documents(texts)
    assert other.misses == 50
    with pytest.raises(ValueError, match="model_id"):
        embed_on_ray(texts, cache, factory=factory)
    shutil.rmtree(cache)


def test_harvest_command_on_ray_writes_what_the_local_engine_writes(tmp_path):
    """``harvest --engine ray`` on the bundled log: the same pairs files, byte for byte, and the same summary."""
    from typer.testing import CliRunner

    from adapter_retrievers.cli import app

    log = str(BUNDLED / "rag-log.jsonl.gz")
    outputs = {}
    for engine in ("local", "ray"):
        args = ["harvest", log, "--corpus", str(BUNDLED), "-o", str(tmp_path / f"{engine}.jsonl")]
        result = CliRunner().invoke(
            app, [*args, "--held-out", str(tmp_path / f"{engine}-held.jsonl"), "--engine", engine]
        )
        assert result.exit_code == 0, result.output
        outputs[engine] = result.output.split("wrote")[0]  # the summary
    assert outputs["local"] == outputs["ray"] and "pairs" in outputs["local"]
    for name in ("{}.jsonl", "{}-held.jsonl"):
        local, on_ray = (tmp_path / name.format(e) for e in ("local", "ray"))
        assert local.read_bytes() == on_ray.read_bytes() and local.stat().st_size > 10_000


def test_engine_flags_are_checked_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from adapter_retrievers.cli import app

    base = ["harvest", str(BUNDLED / "rag-log.jsonl.gz"), "--corpus", str(BUNDLED), "-o", str(tmp_path / "p.jsonl")]
    for extra, message in (
        (["--engine", "spark"], "--engine"),
        (["--ray-address", "auto"], "--ray-address needs --engine ray"),
    ):
        result = CliRunner().invoke(app, [*base, *extra])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "p.jsonl").exists()


def test_refresh_on_ray_runs_the_nightly_job_end_to_end(tmp_path):
    """``refresh --engine ray`` twice (a night, then a night with nothing new) against a store refreshed
    by the local engine from the same log: the same pairs stored, the same decision, the same history."""
    import gzip
    import json

    from typer.testing import CliRunner

    from adapter_retrievers.cli import app
    from adapter_retrievers.store import AdapterStore

    with gzip.open(BUNDLED / "rag-log.jsonl.gz", "rt", encoding="utf-8") as handle:
        lines = [next(handle) for _ in range(160)]
    log = tmp_path / "logs" / "rag-log.jsonl"
    log.parent.mkdir()
    log.write_text("".join(lines), encoding="utf-8")
    records = [json.loads(line) for line in lines]
    wanted = {r["document_id"] for r in records if r["type"] == "signal"}
    wanted |= {d["id"] for r in records if r["type"] == "retrieval" for d in r["documents"][:2]}
    with gzip.open(BUNDLED / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        kept = [line for line in handle if json.loads(line)["_id"] in wanted]
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "corpus.jsonl").write_text("".join(kept), encoding="utf-8")

    def night(engine: str) -> str:
        args = ["refresh", "--store", str(tmp_path / engine), "--log", str(log), "--corpus", str(tmp_path / "corpus")]
        args += ["--cache-dir", str(tmp_path / "cache"), "--epochs", "5", "--engine", engine, "--no-progress"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        return result.output

    for engine in ("local", "ray"):
        first, second = night(engine), night(engine)
        assert "80 new pairs" in first, first
        assert "nothing_new" in second, second
    local, on_ray = AdapterStore(tmp_path / "local"), AdapterStore(tmp_path / "ray")

    def stored(store: AdapterStore) -> list[dict]:  # every field but "added" (the time of the night's run)
        rows = [json.loads(line) for line in (store.state_dir / "pairs.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if k != "added"} for row in rows]

    assert stored(local) == stored(on_ray) and len(stored(local)) >= 80
    assert local.live == on_ray.live

    def decisions(store: AdapterStore) -> list[tuple]:
        return [(r["action"], r.get("version"), json.dumps(r.get("metrics"), sort_keys=True)) for r in store.history()]

    assert any(r["action"] != "nothing_new" for r in local.history())

    assert decisions(local) == decisions(on_ray)
