"""Every Python block of the README (and of docs/*.md) runs as written, in order, as if pasted into one
Python session started in an empty folder: the bundled model and data only, nothing downloaded.

Blocks that need a hosted service carry ``<!-- skip: next -->`` and are followed by their offline
stand-in. Parsing and skipping are Sybil's (https://sybil.readthedocs.io).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("sybil")
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
SYBIL = Sybil(parsers=[PythonCodeBlockParser(), SkipParser()])


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run_as_written(path, tmp_path, monkeypatch, embedding_cache):
    fences = len(re.findall(r"^```python\s*$", path.read_text(encoding="utf-8"), flags=re.MULTILINE))
    other = re.findall(r"^```(py|python3|pycon|Python)\b", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert not other, f"{path.name}: write Python blocks as ```python so they are tested"
    if not fences:
        return
    for module in ("all_minilm_l6_v2", "langchain_chroma", "llama_index.core", "chromadb"):
        pytest.importorskip(module)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "emb-cache").symlink_to(embedding_cache)  # warm across runs; the blocks are unchanged
    for run in ("first run", "run again"):  # as a user would: the same folder, a new session, nothing refused
        document = SYBIL.parse(path)
        examples = list(document.examples())
        assert len([e for e in examples if "```python" in path.read_text().splitlines()[e.line - 1]]) == fences
        for example in examples:
            try:
                example.evaluate()
            except Exception as exc:
                where = f"{path.name}, block at line {example.line} ({run})"
                raise AssertionError(f"{where}: {type(exc).__name__}: {exc}") from exc
        check_llamaindex_embeds_the_trained_texts(document.namespace)


def check_llamaindex_embeds_the_trained_texts(namespace: dict) -> None:
    """LlamaIndex embeds a node's metadata with its text unless told not to ("lang: es\n\n..."): the README's
    nodes must embed exactly the corpus texts that the adapter was trained on."""
    if "nodes" not in namespace or "corpus" not in namespace:
        return
    from llama_index.core.schema import MetadataMode

    corpus = namespace["corpus"]
    for node in namespace["nodes"]:
        assert node.get_content(metadata_mode=MetadataMode.EMBED) == corpus.texts[corpus.position(node.node_id)]
        assert node.get_content(metadata_mode=MetadataMode.LLM) == node.text
