import json

import pytest
from typer.testing import CliRunner

from adapter_retrievers.capture import RetrievalLog
from adapter_retrievers.cli import app

runner = CliRunner()


def write_beir(folder, n=12):
    (folder / "qrels").mkdir(parents=True)
    topics = [
        "volcano",
        "violin",
        "glacier",
        "compiler",
        "orchid",
        "satellite",
        "cheese",
        "desert",
        "piano",
        "tiger",
        "bridge",
        "pepper",
    ][:n]
    (folder / "corpus.jsonl").write_text(
        "".join(
            json.dumps({"_id": f"d{i}", "title": "", "text": f"A long article about the {t} and its history."}) + "\n"
            for i, t in enumerate(topics)
        )
    )
    (folder / "queries.jsonl").write_text(
        "".join(
            json.dumps({"_id": f"q{i}", "text": f"tell me something about the {t}"}) + "\n"
            for i, t in enumerate(topics)
        )
    )
    (folder / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(n))
    )


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path / "nope"), "--beir", str(tmp_path)])
    assert result.exit_code == 2 and "error:" in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1
    result = runner.invoke(app, ["train", "-o", str(tmp_path / "a")])
    assert result.exit_code == 2 and "exactly one of --beir, --pairs or --qa-json" in result.output


def test_harvest_command(tmp_path):
    write_beir(tmp_path / "data")
    log = RetrievalLog(tmp_path / "log.jsonl")
    for i in range(10):
        rid = log.log_retrieval(f"question {i}", [{"id": f"d{i}"}], timestamp=f"2026-01-{i + 1:02d}T00:00:00Z")
        log.add_feedback(rid, 1)
    with open(tmp_path / "log.jsonl", "a") as handle:
        handle.write("{broken\n")
    result = runner.invoke(
        app,
        [
            "harvest",
            str(tmp_path / "log.jsonl"),
            "--corpus",
            str(tmp_path / "data"),
            "-o",
            str(tmp_path / "pairs.jsonl"),
            "--held-out",
            str(tmp_path / "test.jsonl"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1 x malformed JSON line" in result.output and "wrote 8 pairs" in result.output
    newest = [json.loads(line)["query"] for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert sorted(newest) == ["question 8", "question 9"]


def test_train_and_eval_with_bundled_model(tmp_path):
    pytest.importorskip("all_minilm_l6_v2")
    write_beir(tmp_path / "data")
    cache = str(tmp_path / "cache")
    result = runner.invoke(
        app,
        [
            "train",
            "--beir",
            str(tmp_path / "data"),
            "-o",
            str(tmp_path / "adapter"),
            "--epochs",
            "3",
            "--no-progress",
            "--cache-dir",
            cache,
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "adapter" / "model.safetensors").exists() and "ndcg@10" in result.output
    result = runner.invoke(
        app,
        [
            "eval",
            str(tmp_path / "adapter"),
            "--beir",
            str(tmp_path / "data"),
            "--split",
            "train",
            "--json",
            str(tmp_path / "r.json"),
            "--plot",
            str(tmp_path / "r.png"),
            "--cache-dir",
            cache,
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n_queries"] == 12 and report["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert "groups" not in report and "new documents" not in result.output
    # naming the training data splits the report: every query here is about a document it trained on
    args = ["eval", str(tmp_path / "adapter"), "--beir", str(tmp_path / "data"), "--split", "train"]
    result = runner.invoke(
        app, [*args, "--seen-split", "train", "--json", str(tmp_path / "g.json"), "--cache-dir", cache]
    )
    assert result.exit_code == 0, result.output
    grouped = json.loads((tmp_path / "g.json").read_text())["groups"]
    assert grouped["seen"]["n_queries"] == 12 and grouped["new"]["n_queries"] == 0
    assert "12 about documents seen in training, 0 about new documents" in result.output
    assert "note: these training documents differ" not in result.output


def test_synth_needs_a_known_provider(tmp_path):
    write_beir(tmp_path / "data")
    base = ["synth", "--corpus", str(tmp_path / "data"), "-o", str(tmp_path / "s.jsonl")]
    result = runner.invoke(app, [*base, "--llm", "gpt4"])
    assert result.exit_code == 2 and "PROVIDER:MODEL" in result.output
    result = runner.invoke(app, [*base, "--llm", "anthropic:claude-x"])
    assert result.exit_code == 2 and "pip install langchain-anthropic" in result.output


@pytest.mark.parametrize("command", ["capture", "harvest", "synth"])
def test_help_example_runs_as_printed(tmp_path, monkeypatch, command):
    """The --help examples that run on bundled data work exactly as printed, from the repository root."""
    import shlex
    from pathlib import Path

    from adapter_retrievers import cli

    doc = getattr(cli, command).__doc__
    example = next(line.split("Example:", 1)[1].strip() for line in doc.splitlines() if "Example:" in line)
    argv = shlex.split(example)
    assert argv[0] == "adapter-retrievers" and argv[1] == command
    root = Path(__file__).resolve().parent.parent
    # same relative paths, outputs land in tmp_path
    (tmp_path / "adapter_retrievers").symlink_to(root / "adapter_retrievers")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, argv[1:])
    assert result.exit_code == 0, result.output
