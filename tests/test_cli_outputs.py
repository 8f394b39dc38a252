"""The write rule from the command line: nothing the user did not name is changed, and nothing is replaced
without --overwrite; bad input ends with one ``error:`` line naming the flag, before any work (issue 18)."""

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapter_retrievers.capture import RetrievalLog
from adapter_retrievers.cli import app
from adapter_retrievers.demo import demo_output
from adapter_retrievers.outputs import Output, OutputRefused, check_outputs, clone_root, tracked_files
from test_cli import invoke_in_a_fresh_process, one_error_line, write_beir

runner = CliRunner()
PACKAGE = Path(__file__).resolve().parent.parent / "adapter_retrievers"
README_LIKE = "# my project\n\nNotes I would hate to lose.\n"


@pytest.fixture
def workspace(tmp_path):
    """A BEIR folder, a capture log with clicks, an adapter for the bundled model, a store, and a README."""
    from adapter_retrievers import QueryAdapter
    from adapter_retrievers.encoders import DEFAULT_MODEL_ID
    from adapter_retrievers.store import AdapterStore

    write_beir(tmp_path / "data")
    log = RetrievalLog(tmp_path / "log.jsonl")
    for i in range(10):
        rid = log.log_retrieval(f"question {i}", [{"id": f"d{i}"}], timestamp=f"2026-01-{i + 1:02d}T00:00:00Z")
        log.add_click(rid, f"d{i}")
    QueryAdapter.create("linear", 384, DEFAULT_MODEL_ID).save(tmp_path / "adapter")
    store = AdapterStore(tmp_path / "store")
    store.add_version(QueryAdapter.identity(384, DEFAULT_MODEL_ID), {"note": "by hand"})
    for name in USERS_FILES:
        (tmp_path / name).write_text(README_LIKE)
    (tmp_path / "notes.json").write_text('{"mine": true}\n')
    return tmp_path


#: files of the user's that output flags are pointed at, one per suffix the flags take (and a folder's worth)
USERS_FILES = ("README.md", "mine.jsonl", "mine.json", "mine.png")


def every_output_flag(t: Path) -> dict[str, list[str]]:
    """Every subcommand with each of its output flags pointed at an existing file of the user's (with the
    suffix the flag takes: mine.jsonl, mine.json, mine.png; README.md for a folder; notes.json for the numbers
    file ``curve`` writes beside its PNG); ids start with the issue's item where one applies."""
    victim, data, log = str(t / "README.md"), str(t / "data"), str(t / "log.jsonl")
    jsonl, json_file, png = str(t / "mine.jsonl"), str(t / "mine.json"), str(t / "mine.png")
    beir = ["--beir", data, "--split", "train"]
    curve = ["curve", "--beir", data, "--test-split", "train", "--sizes", "5"]
    refresh = ["refresh", "--log", log, "--corpus", data]
    return {
        "1-harvest--output": ["harvest", log, "--corpus", data, "-o", jsonl],
        "harvest--held-out": ["harvest", log, "--corpus", data, "-o", str(t / "p.jsonl"), "--held-out", jsonl],
        "2-eval--plot": ["eval", str(t / "adapter"), *beir, "--plot", png],
        "eval--json": ["eval", str(t / "adapter"), *beir, "--json", json_file],
        "eval--cache-dir": ["eval", str(t / "adapter"), *beir, "--cache-dir", victim],
        "3-capture--json": ["capture", log, "--json", json_file],
        "4-synth--output": ["synth", "--corpus", data, "-o", jsonl, "--llm", "extractive", "--max-chunks", "2"],
        "6-curve--output": [*curve, "-o", png],
        "curve-numbers": [*curve, "-o", str(t / "notes.png")],
        "curve--cache-dir": [*curve, "-o", str(t / "c.png"), "--cache-dir", victim],
        "7-train--output": ["train", *beir[:2], "-o", victim],
        "train--cache-dir": ["train", *beir[:2], "-o", str(t / "a"), "--cache-dir", victim],
        "demo--output": ["demo", "--output", victim],
        "migrate--output": ["migrate", "--corpus", data, "--new-model", str(t / "new-model"), "-o", victim],
        "migrate--cache-dir": [
            *("migrate", "--corpus", data, "--new-model", str(t / "new-model"), "-o", str(t / "m")),
            *("--cache-dir", victim),
        ],
        "export-phoenix--output": ["export-phoenix", "--url", "http://127.0.0.1:9", "-o", jsonl],
        "refresh--store": [*refresh, "--store", victim],
        "refresh--cache-dir": [*refresh, "--store", str(t / "store"), "--cache-dir", victim],
        "rollback--store": ["rollback", "--store", victim],
        "promote--store": ["promote", "v0001", "--store", victim],
    }


def test_every_output_flag_refuses_an_existing_file_before_any_work(workspace):
    """In a fresh process: each command ends with exit 2 and one error line naming the flag, the file is
    byte for byte unchanged, and neither torch, the model nor Phoenix's client was ever imported."""
    cases = every_output_flag(workspace)
    before = {name: (workspace / name).read_bytes() for name in (*USERS_FILES, "notes.json")}
    out, heavy = invoke_in_a_fresh_process(cases, ("torch", "sentence_transformers", "phoenix.client"))
    assert {name: (workspace / name).read_bytes() for name in before} == before
    assert not (workspace / "a").exists() and not (workspace / "p.jsonl").exists()
    for name, (exit_code, output) in out.items():
        lines = [line for line in output.splitlines() if line.strip()]
        flag = "--" + name.split("--")[-1] if "--" in name else "--output's numbers"
        assert exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (name, output)
        assert flag in lines[0], (name, lines[0])
    assert heavy == []


def test_overwrite_replaces_when_asked(workspace):
    data, log = str(workspace / "data"), str(workspace / "log.jsonl")
    summary, pairs = workspace / "mine.json", workspace / "mine.jsonl"
    for victim, argv, check in (
        (summary, ["capture", log, "--json", str(summary)], lambda text: json.loads(text)["retrievals"] == 10),
        (pairs, ["harvest", log, "--corpus", data, "-o", str(pairs)], lambda text: len(text.splitlines()) == 10),
        (
            pairs,
            ["synth", "--corpus", data, "-o", str(pairs), "--llm", "extractive", "--max-chunks", "2"],
            lambda text: all(set(json.loads(line)) == {"query", "doc_id"} for line in text.splitlines()),
        ),
    ):
        victim.write_text(README_LIKE)
        result = runner.invoke(app, [*argv, "--overwrite"])
        assert result.exit_code == 0, result.output
        assert check(victim.read_text()), (argv[0], victim.read_text())


def test_synth_resumes_only_its_own_output(workspace):
    """Item 4: a rerun resumes synth's own file; a pairs file harvest wrote is not synth's and is refused."""
    base = ["synth", "--corpus", str(workspace / "data"), "--llm", "extractive", "--no-progress"]
    out = workspace / "synth.jsonl"
    assert runner.invoke(app, [*base, "-o", str(out), "--max-chunks", "2"]).exit_code == 0
    first = out.read_text()
    result = runner.invoke(app, [*base, "-o", str(out), "--max-chunks", "4"])
    assert result.exit_code == 0 and "2 resumed" in result.output and out.read_text().startswith(first)
    pairs = workspace / "pairs.jsonl"
    harvest = ["harvest", str(workspace / "log.jsonl"), "--corpus", str(workspace / "data")]
    harvested = runner.invoke(app, [*harvest, "-o", str(pairs)])
    assert harvested.exit_code == 0, harvested.output
    kept = pairs.read_bytes()
    one_error_line(runner.invoke(app, [*base, "-o", str(pairs)]), "--output", "is not a previous synth output")
    assert pairs.read_bytes() == kept


def test_two_outputs_may_not_be_one_path(workspace):
    """Item 5: --output and --held-out naming one file (as written, by another spelling, through a symlink)."""
    args = ["harvest", str(workspace / "log.jsonl"), "--corpus", str(workspace / "data")]
    (workspace / "link.jsonl").symlink_to(workspace / "x.jsonl")
    for held_out in ("x.jsonl", "./sub/../x.jsonl", "link.jsonl"):
        result = runner.invoke(app, [*args, "-o", str(workspace / "x.jsonl"), "--held-out", str(workspace / held_out)])
        one_error_line(result, "--output and --held-out are the same path")
    assert not (workspace / "x.jsonl").exists()


def test_nothing_is_written_into_the_package_or_the_source_folders(workspace):
    """Items 1 and 6: not the package (demo used to fill it with cache/ and chroma/), not tests/ or docs/."""
    before = sorted(p.name for p in PACKAGE.iterdir())
    log, data = str(workspace / "log.jsonl"), str(workspace / "data")
    one_error_line(runner.invoke(app, ["demo", "--output", str(PACKAGE)]), "--output", "inside the installed")
    one_error_line(runner.invoke(app, ["harvest", log, "--corpus", data, "-o", str(PACKAGE / "pairs_module.py")]))
    one_error_line(
        runner.invoke(app, ["capture", log, "--json", str(PACKAGE.parent / "docs" / "summary.json")]),
        "--json",
        "the repository's source folder docs/",
    )
    assert sorted(p.name for p in PACKAGE.iterdir()) == before
    assert not (PACKAGE.parent / "docs" / "summary.json").exists()


ROOT = PACKAGE.parent
in_a_clone = pytest.mark.skipif(clone_root() is None, reason="runs where the package is a clone's")


@in_a_clone
def test_the_clones_own_files_are_never_outputs_even_with_overwrite(workspace, monkeypatch):
    """Fresh-clone run, item 1: run in the clone, ``-o README.md --overwrite`` replaced README.md. No file git
    tracks there, no folder of them, not the clone's root, not the environment; the error invites no --overwrite."""
    monkeypatch.chdir(ROOT)
    log, data = str(workspace / "log.jsonl"), str(workspace / "data")
    tracked = ["README.md", "pyproject.toml", "Makefile", "constraints.txt", ".gitignore", ".ci/run", "runs/../LICENSE"]
    tracked = [name for name in tracked if (ROOT / name).exists()]
    before = {name: (ROOT / name).read_bytes() for name in tracked}
    harvest = ["harvest", log, "--corpus", data]
    cases = [[*harvest, "-o", name, "--overwrite"] for name in tracked] + [
        ["capture", log, "--json", "pyproject.toml", "--overwrite"],
        [*harvest, "-o", str(Path(sys.prefix) / "x.jsonl")],  # the environment running us (.venv)
        [*harvest, "-o", ".venv/x.jsonl"],  # the clone's venv, whichever Python runs
        [*harvest, "-o", ".ci/pairs.jsonl"],  # a new file in a folder of tracked files
        [*harvest, "-o", "benchmarks/results/pairs.jsonl"],
    ]
    try:
        for argv in cases:
            line = one_error_line(runner.invoke(app, argv))
            assert "--overwrite" not in line and "write outputs elsewhere" in line, (argv, line)
        assert {name: (ROOT / name).read_bytes() for name in tracked} == before
        assert not (ROOT / ".venv" / "x.jsonl").exists() and not (ROOT / ".ci" / "pairs.jsonl").exists()
    finally:  # where the rule does not hold (today's main), leave the clone as it was
        for name, content in before.items():
            if (ROOT / name).read_bytes() != content:
                (ROOT / name).write_bytes(content)
        for name in (".venv/x.jsonl", ".ci/pairs.jsonl", "benchmarks/results/pairs.jsonl"):
            (ROOT / name).unlink(missing_ok=True)
        Path(sys.prefix, "x.jsonl").unlink(missing_ok=True)
    for folder in (demo_output(ROOT, "--output"), Output(ROOT, "--output", folder=True)):  # demo/train -o .
        with pytest.raises(OutputRefused, match="the root folder of the adapter-retrievers clone"):
            check_outputs([folder], overwrite=True, protect_sources=True)
    check_outputs([Output(ROOT / "runs" / "pairs.jsonl", "--output")], protect_sources=True)  # where outputs go


@in_a_clone
def test_the_clones_files_are_known_without_git(monkeypatch):
    """Where git cannot list the files (not on PATH, an unpacked source archive), the clone's known files are."""
    monkeypatch.setenv("PATH", "")
    tracked_files.cache_clear()
    try:
        for name in ("README.md", "pyproject.toml", "Makefile", ".ci/run", "tests/test_x.py"):
            with pytest.raises(OutputRefused, match=r"adapter-retrievers repository|source folder"):
                check_outputs([Output(ROOT / name, "--output")], overwrite=True, protect_sources=True)
        check_outputs([Output(ROOT / "runs" / "pairs.jsonl", "--output")], protect_sources=True)
    finally:
        tracked_files.cache_clear()


def test_train_does_not_replace_an_adapter_without_overwrite(workspace):
    """Item 7 (the README saved runs/adapters/xquad-es in Python; the CLI example used to replace it)."""
    config = (workspace / "adapter" / "adapter_config.json").read_bytes()
    result = runner.invoke(app, ["train", "--beir", str(workspace / "data"), "-o", str(workspace / "adapter")])
    one_error_line(result, "--output", "exists; pass --overwrite to replace it")
    assert (workspace / "adapter" / "adapter_config.json").read_bytes() == config


def test_eval_refuses_an_empty_pairs_file(workspace):
    """Item 8: no table of zeros for 0 queries."""
    (workspace / "empty.jsonl").write_text("")
    argv = ["eval", str(workspace / "adapter"), "--pairs", str(workspace / "empty.jsonl"), "--corpus"]
    one_error_line(runner.invoke(app, [*argv, str(workspace / "data")]), "--pairs", "no queries")


def test_store_commands_need_an_existing_store(workspace):
    """Item 9: status/history on a missing folder are errors; rollback/promote need --store like the others."""
    missing = str(workspace / "adapters" / "store")
    for argv in (["status", "--store", missing], ["history", "--store", missing], ["rollback", "--store", missing]):
        one_error_line(runner.invoke(app, argv), "--store", "no such folder")
    one_error_line(runner.invoke(app, ["status", "--store", str(workspace / "data")]), "not an adapter store")
    for argv in (["rollback"], ["promote", "v0001"]):
        one_error_line(runner.invoke(app, argv), "--store is required")
    assert not (workspace / "adapters").exists() and not Path("adapter-store").exists()


def refresh_argv(t: Path, *extra: str) -> list[str]:
    data, log = str(t / "data"), str(t / "log.jsonl")
    return ["refresh", "--store", str(t / "new-store"), "--corpus", data, "--log", log, *extra]


def test_refresh_bad_input_is_refused_before_the_store_is_touched(workspace):
    """Items 10 and 11: exit 2 with the flag named, no store folder created, no history line, nothing read."""
    cases = {
        "--log": ["--log", str(workspace / "logs" / "missing.jsonl")],
        "--epochs": ["--epochs", "-1"],
        "--min-queries": ["--min-queries", "2"],
        "--held-out-fraction": ["--held-out-fraction", "1.5"],
        "--confidence": ["--confidence", "0"],
        "--keep": ["--keep", "0"],
        "--kind": ["--kind", "bogus"],
        "--window-days": ["--window-days", "0"],
        "--phoenix-url": ["--phoenix-url", "notaurl"],
        "--traces": ["--traces", str(workspace / "no-export")],
    }
    for flag, extra in cases.items():
        line = one_error_line(runner.invoke(app, refresh_argv(workspace, *extra)), flag)
        assert "batch_size" not in line
    assert not (workspace / "new-store").exists()
    before = (workspace / "store" / "history.jsonl").exists()
    argv = [*refresh_argv(workspace, "--epochs", "0")[:2], str(workspace / "store"), *refresh_argv(workspace)[3:]]
    one_error_line(runner.invoke(app, [*argv, "--epochs", "0"]), "--epochs")
    assert (workspace / "store" / "history.jsonl").exists() == before  # no "failed" line for bad input


def test_export_phoenix_options_are_refused_at_once(tmp_path):
    """Item 12: in a fresh process that never imports Phoenix's client (its import alone took seconds)."""
    out = str(tmp_path / "t.jsonl")
    cases = {
        "--since": ["export-phoenix", "-o", out, "--since", "yesterday"],
        "--until": ["export-phoenix", "-o", out, "--since", "2026-11-02", "--until", "2026-11-01"],
        "--url": ["export-phoenix", "-o", out, "--url", "notaurl"],
        "--page-size": ["export-phoenix", "-o", out, "--page-size", "0"],
    }
    out, heavy = invoke_in_a_fresh_process(cases, ("phoenix", "httpx"))
    assert heavy == []
    for flag, (_, output) in out.items():
        lines = [line for line in output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {flag}"), (flag, output)
        assert "page_size" not in lines[0] and "isoformat" not in lines[0]
    assert not (tmp_path / "t.jsonl").exists()
