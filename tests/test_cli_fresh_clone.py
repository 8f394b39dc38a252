"""What a new user found in a fresh clone once issue 18's write rule was in (issue 18, second pass): click's
own errors in four lines, flags not named, work started before a refusal, outputs in disguise, a demo rerun
that left files behind. Each test goes through the real entry point and fails on the code before the fix."""

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from adapter_retrievers.cli import app
from test_cli import invoke_in_a_fresh_process, one_error_line, write_beir
from test_cli_outputs import workspace  # noqa: F401 - the fixture

runner = CliRunner()
HEAVY = ("torch", "sentence_transformers", "phoenix.client")


def lines_of(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_clicks_own_errors_are_one_line_from_the_console_script_and_python_m(tmp_path):
    """Item 3: a missing option, a badly typed value, an unknown flag, a missing argument: one ``error:`` line
    naming the flag and exit code 2 (click printed Usage, Try --help, a blank line and Error:)."""
    script = Path(sys.executable).parent / "adapter-retrievers"
    entry_points = [[sys.executable, "-m", "adapter_retrievers"]] + ([[str(script)]] if script.exists() else [])
    cases = {
        ("promote", "v0001"): "--store is required",
        ("train", "-o", str(tmp_path / "a"), "--epochs", "abc"): "--epochs: ",
        ("train", "--bogus-flag"): "--bogus-flag: no such option",
        ("train", "--outpt", "x"): "did you mean --output",
        ("harvest",): "TRACES is required",
        ("history", "--store", str(tmp_path), "--last", "-1"): "--last: ",
    }
    for entry in entry_points:
        for argv, text in list(cases.items())[: None if entry[0] == str(script) else 2]:
            done = subprocess.run([*entry, *argv], capture_output=True, text=True, timeout=120)
            assert done.returncode == 2 and done.stdout == "", (argv, done.stdout)
            lines = lines_of(done.stderr)
            assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], (entry, argv, lines)
    done = subprocess.run([*entry_points[0], "train", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Usage:" in done.stdout  # help is still help


def test_history_refuses_a_negative_count(workspace):  # noqa: F811
    """Item 11: ``--last -1`` printed every record but the first."""
    line = one_error_line(runner.invoke(app, ["history", "--store", str(workspace / "store"), "--last", "-1"]))
    assert line.startswith("error: --last: ") and "0" in line


def test_flags_are_named_and_refused_before_the_model(workspace, tmp_path):  # noqa: F811
    """Items 2 and 4, in a fresh process that never imports torch: sizes above the training pairs (curve used
    to embed SciFact for 10 minutes, then cap them), a missing qrels split, a folder without corpus.jsonl for
    every command that takes --corpus or --beir, a model id that is no Hub id, and one message per bad flag."""
    data, log, out = str(workspace / "data"), str(workspace / "log.jsonl"), tmp_path / "out"
    docs = tmp_path / "docs"  # like the clone's docs/: a folder, but no BEIR corpus in it
    docs.mkdir()
    (docs / "guide.md").write_text("# not a corpus\n")
    no_train = tmp_path / "no-train"
    write_beir(no_train)
    (no_train / "qrels" / "train.tsv").rename(no_train / "qrels" / "test.tsv")
    curve = ["curve", "-o", str(out / "c.png")]
    pairs = str(workspace / "pairs.jsonl")
    Path(pairs).write_text('{"query": "tell me about the violin", "doc_id": "d1"}\n')
    cases = {
        "--sizes 5,99999": [*curve, "--beir", data, "--test-split", "train", "--sizes", "5,99999"],
        "--train-split train": [*curve, "--beir", str(no_train)],
        "--test-split dev": [*curve, "--beir", data, "--test-split", "dev"],
        "--split dev": ["train", "--beir", data, "--split", "dev", "-o", str(out / "a")],
        "--seen-split dev": [
            "eval",
            str(workspace / "adapter"),
            "--beir",
            data,
            "--split",
            "train",
            "--seen-split",
            "dev",
        ],
        "--model not/a/model": [
            "train",
            "--beir",
            data,
            "--split",
            "train",
            "-o",
            str(out / "a"),
            "--model",
            "not/a/model",
        ],
        "--learning-rate must be above 0": ["train", "--beir", data, "-o", str(out / "a"), "--learning-rate", "-1"],
        "--beir ": ["train", "--beir", str(docs), "-o", str(out / "a")],
        "--corpus train": ["train", "--pairs", pairs, "--corpus", str(docs), "-o", str(out / "a")],
        "--corpus eval": ["eval", str(workspace / "adapter"), "--pairs", pairs, "--corpus", str(docs)],
        "--corpus harvest": ["harvest", log, "--corpus", str(docs), "-o", str(out / "p.jsonl")],
        "--corpus synth": ["synth", "--corpus", str(docs), "-o", str(out / "s.jsonl"), "--llm", "extractive"],
        "--corpus refresh": ["refresh", "--store", str(out / "store"), "--log", log, "--corpus", str(docs)],
        "--beir curve": [*curve, "--beir", str(docs)],
    }
    results, heavy = invoke_in_a_fresh_process(cases, HEAVY)
    assert heavy == []
    for name, (exit_code, output) in results.items():
        lines = lines_of(output)
        assert exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (name, output)
        flag = name.split()[0] if name.split()[0] in ("--corpus", "--beir") else name
        assert lines[0].startswith(f"error: {flag}"), (name, lines[0])
    assert "more than the 12 training pairs" in results["--sizes 5,99999"][1]
    assert "splits there: test" in results["--train-split train"][1]
    assert "no corpus.jsonl" in results["--corpus refresh"][1]
    assert "--epochs" not in results["--learning-rate must be above 0"][1]
    assert not out.exists()


def test_every_output_takes_only_the_suffix_of_what_is_written(workspace, tmp_path):  # noqa: F811
    """Item 10: ``curve -o runs/c3.txt`` wrote PNG bytes into a .txt file. Charts end in .png, JSON in .json,
    pairs and traces in .jsonl; refused before any work, naming the flag."""
    data, log, out = str(workspace / "data"), str(workspace / "log.jsonl"), tmp_path / "out"
    beir = ["--beir", data, "--split", "train"]
    cases = {
        "--output curve .png": ["curve", "--beir", data, "--test-split", "train", "-o", str(out / "c3.txt")],
        "--plot .png": ["eval", str(workspace / "adapter"), *beir, "--plot", str(out / "eval.jpg")],
        "--json eval .json": ["eval", str(workspace / "adapter"), *beir, "--json", str(out / "report.txt")],
        "--json capture .json": ["capture", log, "--json", str(out / "summary.jsonl")],
        "--output harvest .jsonl": ["harvest", log, "--corpus", data, "-o", str(out / "pairs.csv")],
        "--held-out .jsonl": [
            "harvest",
            log,
            "--corpus",
            data,
            "-o",
            str(out / "p.jsonl"),
            "--held-out",
            str(out / "held-out.json"),
        ],
        "--output synth .jsonl": ["synth", "--corpus", data, "-o", str(out / "s.txt"), "--llm", "extractive"],
        "--output export-phoenix .jsonl": ["export-phoenix", "-o", str(out / "traces.json")],
    }
    results, heavy = invoke_in_a_fresh_process(cases, HEAVY)
    assert heavy == []
    for name, (exit_code, output) in results.items():
        flag, suffix = name.split()[0], name.split()[-1]
        lines = lines_of(output)
        assert exit_code == 2 and len(lines) == 1, (name, output)
        assert lines[0].startswith(f"error: {flag} ") and f"give a name ending in {suffix}" in lines[0], lines[0]
    assert not out.exists()


def test_capture_of_a_file_that_is_not_a_capture_log_is_an_error(tmp_path):
    """Item 6: ``capture README.md`` exited 0 with a summary of 347 malformed lines."""
    (tmp_path / "README.md").write_text("# my project\n\nNot a log.\n")
    line = one_error_line(runner.invoke(app, ["capture", str(tmp_path / "README.md")]), "LOGS", "not a capture log")
    assert "2 x malformed JSON line" in line
    (tmp_path / "empty.jsonl").write_text("")
    one_error_line(runner.invoke(app, ["capture", str(tmp_path / "empty.jsonl")]), "not a capture log")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_export_phoenix_without_a_server_fails_at_once_in_one_line(tmp_path, monkeypatch):
    """Item 5: with no server it took 17 s (the Phoenix client's start) and printed "0 records, done in 14s"
    before its error. Now one line naming --url, before Phoenix's client is imported, and no output file."""
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("PHOENIX_COLLECTOR_ENDPOINT", url)
    out = tmp_path / "traces.jsonl"
    cases = {"--url": ["export-phoenix", "--url", url, "-o", str(out)], "env": ["export-phoenix", "-o", str(out)]}
    results, heavy = invoke_in_a_fresh_process(cases, ("phoenix", "httpx"))
    assert heavy == []
    for name, (exit_code, output) in results.items():
        lines = lines_of(output)
        assert exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: --url"), (name, output)
        assert "no server answers there" in lines[0] and "done" not in output
    assert f"--url not given, so $PHOENIX_COLLECTOR_ENDPOINT {url}" in results["env"][1]
    assert not out.exists()
    usage = runner.invoke(app, ["export-phoenix", "--help"], terminal_width=200).output
    assert "$PHOENIX_COLLECTOR_ENDPOINT, else http://localhost:6006" in " ".join(usage.split())


def test_demo_reruns_replace_its_chroma_index(tmp_path):
    """Item 7: every rerun deleted the collection and made a new one, leaving the old HNSW segment folder. The
    index is built aside and swapped in: after a rerun the folder holds what one run writes, nothing more."""
    pytest.importorskip("chromadb")
    import chromadb

    from adapter_retrievers.data import Corpus
    from adapter_retrievers.demo import COLLECTION, index_in_chroma, is_demo_folder

    rng = np.random.default_rng(0)
    corpus = Corpus([f"d{i}" for i in range(300)], [f"paragraph {i}" for i in range(300)])
    folder = tmp_path / "demo" / "chroma"
    listings = []
    for _ in range(3):
        vectors = rng.standard_normal((300, 8)).astype(np.float32)
        index_in_chroma(folder, corpus, vectors, progress=False)
        listings.append(sorted(p.name for p in folder.iterdir()))
        client = chromadb.PersistentClient(path=str(folder))
        collection = client.get_collection(COLLECTION)
        hit = collection.query(query_embeddings=[vectors[7].tolist()], n_results=1)["ids"][0][0]
        assert collection.count() == 300 and hit == "d7"  # the new vectors, not the previous run's
        client.close()
    assert [len(names) for names in listings] == [len(listings[0])] * 3  # one segment folder and the database
    assert sorted(p.name for p in folder.parent.iterdir()) == ["chroma"]  # no temporary folder left beside it
    for leftover in (".chroma.k2j4.tmp", ".report.json.a1b2.tmp", ".chroma.old"):  # a killed run's
        (folder.parent / leftover).mkdir()
    assert is_demo_folder(folder.parent)  # still the demo's folder: a rerun goes ahead
    (folder.parent / "notes.txt").write_text("mine")
    assert not is_demo_folder(folder.parent)


def test_demo_shares_the_cli_embedding_cache(tmp_path):
    """The README says every command shares runs/emb-cache; the demo kept its own <output>/cache."""
    result = runner.invoke(app, ["demo", "--help"], terminal_width=200)
    assert result.exit_code == 0 and "--cache-dir" in result.output and "runs/emb-cache" in result.output
    (tmp_path / "cache").write_text("not a folder")
    argv = ["demo", "--output", str(tmp_path / "demo"), "--cache-dir", str(tmp_path / "cache")]
    one_error_line(runner.invoke(app, argv), "--cache-dir")
    assert not (tmp_path / "demo").exists()


def test_plain_progress_shows_a_slow_first_step_and_no_done_line_for_a_failure(capsys, monkeypatch):
    """A first batch longer than the line interval used to print nothing until it ended (16 s for SciFact);
    a step that failed printed "done in 14s" before its error."""
    import time

    from adapter_retrievers import progress

    monkeypatch.setattr(progress, "interactive", lambda: False)
    monkeypatch.setattr(progress, "PLAIN_EVERY", 0.05)
    monkeypatch.setattr(progress, "PLAIN_AFTER", 0.0)
    with progress.progress_bar(10, "embedding documents", "text"):
        waited = 0.0
        while "embedding documents: 0/10" not in capsys.readouterr().err and waited < 10:  # no update yet
            time.sleep(0.05)
            waited += 0.05
    assert waited < 10
    capsys.readouterr()  # the first step's "done" line
    with pytest.raises(ConnectionError), progress.progress_bar(None, "exporting from Phoenix", "record") as bar:
        bar.update()
        raise ConnectionError("refused")
    time.sleep(0.2)
    assert "done" not in capsys.readouterr().err
