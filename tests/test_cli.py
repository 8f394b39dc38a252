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
            "--no-refit",
            "--no-progress",
            "--cache-dir",
            cache,
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "adapter" / "model.safetensors").exists() and "ndcg@10" in result.output
    assert (
        json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["metadata"]["training"]["refit"] is False
    )
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
    assert result.output.index("model: loaded in ") > result.output.index("model: loading")  # ~10 s: say when done
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n_queries"] == 12 and report["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG" and f"chart: {tmp_path / 'r.png'}" in result.output
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # the model's weights stay in one place
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
    chart = (tmp_path / "r.png").read_bytes()
    again = ["train", "--beir", str(tmp_path / "data"), "-o", str(tmp_path / "adapter"), "--epochs", "2"]
    again += ["--no-refit", "--no-progress", "--cache-dir", cache]
    assert runner.invoke(app, again).exit_code == 2  # an existing adapter is replaced only when asked
    result = runner.invoke(app, [*again, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["metadata"]["training"]["epochs"] == 2
    plot_again = ["eval", str(tmp_path / "adapter"), "--beir", str(tmp_path / "data"), "--split", "train"]
    plot_again += ["--plot", str(tmp_path / "r.png"), "--cache-dir", cache]
    assert runner.invoke(app, plot_again).exit_code == 2 and (tmp_path / "r.png").read_bytes() == chart
    assert runner.invoke(app, [*plot_again, "--overwrite"]).exit_code == 0


def test_synth_needs_a_known_provider(tmp_path):
    write_beir(tmp_path / "data")
    base = ["synth", "--corpus", str(tmp_path / "data"), "-o", str(tmp_path / "s.jsonl")]
    result = runner.invoke(app, [*base, "--llm", "gpt4"])
    assert result.exit_code == 2 and "PROVIDER:MODEL" in result.output
    result = runner.invoke(app, [*base, "--llm", "anthropic:claude-x"])
    assert result.exit_code == 2 and "pip install langchain-anthropic" in result.output


def help_example(command: str, width: int = 80) -> list[str]:
    """The example printed by ``command --help`` at ``width`` columns, joined over its ``\\`` line ends."""
    import shlex

    result = runner.invoke(app, [command, "--help"], terminal_width=width)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    too_long = [line for line in lines if len(line) > width]
    assert not too_long, f"--help of {command} is wider than {width} columns: {too_long}"
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Example")) + 1
    text = ""
    for line in lines[start:]:
        text += line.strip()
        if not line.rstrip().endswith("\\"):
            break
        text = text[:-1] + " "
    argv = shlex.split(text)
    assert argv[:2] == ["adapter-retrievers", command], text
    return argv[1:]


def test_help_examples_run_as_printed_at_80_columns(tmp_path, monkeypatch, embedding_cache):
    """Each --help fits 80 columns; the examples that use bundled data run as printed, one after another
    (harvest writes the pairs that train reads; eval reads train's adapter; refresh fills the store that
    the store commands read), from the repository root."""
    pytest.importorskip("all_minilm_l6_v2")
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    (tmp_path / "adapter_retrievers").symlink_to(root / "adapter_retrievers")  # same relative paths
    monkeypatch.chdir(tmp_path)
    commands = ("capture", "harvest", "synth", "train", "eval", "curve", "demo", "refresh")
    outputs = {}
    for command in (*commands, "status", "history", "rollback", "promote"):
        argv = help_example(command)
        if command in ("curve", "demo"):  # need data from outside the repository, or minutes
            continue
        if command in ("train", "eval", "refresh"):
            argv += ["--cache-dir", str(embedding_cache)]
        if command in ("train", "refresh"):
            argv += ["--epochs", "3", "--no-progress"]
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, f"{argv}: {result.output}"
        outputs[command] = result.output
    assert "chart: runs/eval.png" in outputs["eval"] and Path("runs/eval.png").read_bytes()[:4] == b"\x89PNG"
    assert "v0001" in outputs["status"] and outputs["promote"].startswith("live: v0001")


def one_error_line(result, *expected):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def invoke_in_a_fresh_process(
    cases: dict[str, list[str]], watched: tuple[str, ...]
) -> tuple[dict[str, tuple[int, str]], list[str]]:
    """Each argv through the CLI in one new Python process: ``({case: (exit code, output)}, the watched modules
    that got imported)``, to show that a command stopped before loading what is heavy."""
    import subprocess
    import sys

    code = (
        "import sys, json\n"
        "from typer.testing import CliRunner\n"
        "from adapter_retrievers.cli import app\n"
        "cases, watched = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n"
        "out = {k: [r.exit_code, r.output] for k, argv in cases.items() for r in [CliRunner().invoke(app, argv)]}\n"
        "print(json.dumps([out, [m for m in watched if m in sys.modules]]))\n"
    )
    argv = [sys.executable, "-c", code, json.dumps(cases), json.dumps(watched)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    out, imported = json.loads(done.stdout.splitlines()[-1])
    return {k: (exit_code, output) for k, (exit_code, output) in out.items()}, imported


def test_flags_are_refused_before_any_model_is_loaded(tmp_path):
    """Wrong flags end in one line naming the flag, in a fresh process that never imported torch or the model."""
    write_beir(tmp_path / "data")
    (tmp_path / "a-file").write_text("x")
    beir = str(tmp_path / "data")
    cases = {
        "--kind": ["train", "--beir", beir, "-o", str(tmp_path / "a"), "--kind", "bogus"],
        "--negatives": ["train", "--beir", beir, "-o", str(tmp_path / "a"), "--negatives", "abc"],
        "--beir": ["train", "--beir", str(tmp_path / "missing-folder"), "-o", str(tmp_path / "a")],
        "--output": ["train", "--beir", beir, "-o", str(tmp_path / "a-file")],
        "--sizes": ["curve", "--beir", beir, "-o", str(tmp_path / "c.png"), "--sizes", "10,abc"],
        "--format": [
            "harvest",
            str(tmp_path / "a-file"),
            "--corpus",
            beir,
            "-o",
            str(tmp_path / "p.jsonl"),
            "--format",
            "bogus",
        ],
    }
    results, heavy = invoke_in_a_fresh_process(cases, ("torch", "sentence_transformers"))
    assert heavy == []
    out = {flag: output for flag, (_, output) in results.items()}
    expected = {
        "--kind": "--kind must be one of linear, low_rank, orthogonal, residual_mlp; got 'bogus'",
        "--negatives": "--negatives must be a whole number",
        "--beir": "missing-folder: no such folder",
        "--output": "a-file: exists and is not a folder",
        "--sizes": "--sizes must be comma-separated whole numbers",
        "--format": "--format must be one of ours, openinference",
    }
    for flag, text in expected.items():
        lines = [line for line in out[flag].splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], (flag, out[flag])
    assert not (tmp_path / "a").exists()


def test_train_refuses_to_replace_a_folder_that_is_not_an_adapter(tmp_path):
    write_beir(tmp_path / "data")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["train", "--beir", str(tmp_path / "data"), "-o", str(tmp_path / "notes")])
    one_error_line(result, "--output", "other files in it")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_unavailable_model_is_one_line_naming_the_flag(tmp_path, monkeypatch):
    """Downloads allowed or not (HF_HUB_OFFLINE unset), a model that is not here is refused at once: no
    minute of network retries first."""
    pytest.importorskip("sentence_transformers")
    write_beir(tmp_path / "data")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    result = runner.invoke(
        app, ["train", "--beir", str(tmp_path / "data"), "-o", str(tmp_path / "a"), "--model", "intfloat/e5-small-v2"]
    )
    one_error_line(result, "--model intfloat/e5-small-v2: not a local folder and not in the Hugging Face cache")


def test_bad_rows_hint_names_the_cli_flag(tmp_path):
    write_beir(tmp_path / "data")
    (tmp_path / "pairs.jsonl").write_text('{"query": "tell me about the violin", "doc_id": "d1"}\n{broken\n')
    argv = [
        "train",
        "--pairs",
        str(tmp_path / "pairs.jsonl"),
        "--corpus",
        str(tmp_path / "data"),
        "-o",
        str(tmp_path / "a"),
    ]
    line = one_error_line(runner.invoke(app, argv), "pass --lenient to skip and count bad rows")
    assert "errors=" not in line


def test_ctrl_c_prints_a_line_and_exits_130(capsys):
    import typer

    from adapter_retrievers.cli import _friendly_errors

    @_friendly_errors
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(typer.Exit) as exit_info:
        interrupted()
    assert exit_info.value.exit_code == 130 and "interrupted" in capsys.readouterr().err


def test_eval_refuses_a_mismatched_adapter_before_embedding(tmp_path):
    pytest.importorskip("all_minilm_l6_v2")
    from adapter_retrievers import QueryAdapter
    from adapter_retrievers.encoders import DEFAULT_MODEL_ID

    write_beir(tmp_path / "data")
    QueryAdapter.create("linear", 32, DEFAULT_MODEL_ID).save(tmp_path / "small")
    QueryAdapter.create("linear", 384, "intfloat/e5-small-v2").save(tmp_path / "other")
    for name, text in (("small", "expects 32-dimensional"), ("other", "trained on embeddings of 'intfloat/e5")):
        cache = tmp_path / f"cache-{name}"
        result = runner.invoke(
            app,
            [
                "eval",
                str(tmp_path / name),
                "--beir",
                str(tmp_path / "data"),
                "--split",
                "train",
                "--cache-dir",
                str(cache),
            ],
        )
        one_error_line(result, text)
        assert not cache.exists()  # refused before the model was loaded: nothing was embedded


def test_synth_extractive_is_not_rate_limited(tmp_path, monkeypatch):
    """The offline stand-in has no provider to protect: no request waits for the rate limiter."""
    import asyncio

    waits = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay, *args, **kwargs):
        if delay > 0:
            waits.append(delay)
        return await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", recording_sleep)
    write_beir(tmp_path / "data")
    base = ["synth", "--corpus", str(tmp_path / "data"), "--llm", "extractive"]
    result = runner.invoke(app, [*base, "-o", str(tmp_path / "a.jsonl")])
    assert result.exit_code == 0, result.output
    assert waits == []
    result = runner.invoke(app, [*base, "-o", str(tmp_path / "b.jsonl"), "--requests-per-second", "2"])
    assert result.exit_code == 0 and waits  # an explicit limit still applies
