"""Synthetic training queries from an LLM, for corpora without logs.

Works with a LangChain chat model or LLM (``ainvoke``), a LlamaIndex LLM (``acomplete``) or any
``async``/sync callable ``prompt -> text``. The prompt can be steered with example production queries
and a description of the application (as in Chroma's generative benchmarking). Output is appended to
a JSONL of pairs after every chunk, so an interrupted run resumes where it stopped; requests run
concurrently under a rate limit, with a progress bar.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from adapter_retrievers.data import Corpus, TrainingSet

PROMPT = """You write search queries that real users of an application would type.
{description}{examples}Write {n} different queries that the following document answers. Write one query per line, \
with no numbering and no other text.

Document:
{document}
"""

_PREAMBLE = re.compile(r"^(here (are|is)|sure|certainly|okay|ok\b|queries|questions)\b.*", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*•]+|\d+[.)]|q\d+[:.)]|query\s*\d*[:.)])\s*", re.IGNORECASE)


def parse_queries(text: str, limit: int, min_chars: int = 8, min_words: int = 2) -> list[str]:
    """Queries from an LLM answer: one per line, without bullets, numbering, quotes or preambles."""
    queries: list[str] = []
    seen: set[str] = set()
    for raw in text.splitlines():
        line = _BULLET.sub("", raw).strip().strip("\"“”'`").strip()
        if not line or line.endswith(":") or _PREAMBLE.match(line):
            continue
        if len(line) < min_chars or len(line.split()) < min_words:
            continue
        key = " ".join(line.lower().split())
        if key in seen:
            continue
        seen.add(key)
        queries.append(line)
        if len(queries) >= limit:
            break
    return queries


@dataclass
class SynthReport:
    chunks_done: int = 0
    chunks_resumed: int = 0
    queries: int = 0
    duplicates_dropped: int = 0
    failed_chunks: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return (
            f"{self.chunks_done} chunks queried ({self.chunks_resumed} resumed from a previous run), "
            f"{self.queries} queries kept, {self.duplicates_dropped} duplicates dropped, "
            f"{len(self.failed_chunks)} chunks failed"
        )


class _RateLimiter:
    """At most ``per_second`` request starts per second."""

    def __init__(self, per_second: float | None) -> None:
        self.interval = 1.0 / per_second if per_second else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


async def _ask(llm: Any, prompt: str) -> str:
    if hasattr(llm, "ainvoke"):  # LangChain chat model or LLM
        answer = await llm.ainvoke(prompt)
        return answer if isinstance(answer, str) else str(getattr(answer, "content", answer))
    if hasattr(llm, "acomplete"):  # LlamaIndex LLM
        return (await llm.acomplete(prompt)).text
    if callable(llm):
        answer = llm(prompt)
        if inspect.isawaitable(answer):
            answer = await answer
        return str(answer)
    raise TypeError("llm must be a LangChain model, a LlamaIndex LLM, or a callable prompt -> text")


def extractive_llm(prompt: str) -> str:
    """An offline stand-in for an LLM: turns the document's first sentences into questions.

    For smoke tests and demos without a provider; real models write far better queries.
    """
    document = prompt.split("Document:", 1)[-1]
    n_match = re.search(r"Write (\d+) different queries", prompt)
    n = int(n_match.group(1)) if n_match else 2
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", document) if len(s.split()) > 5]
    return "\n".join(f"{_whole_words(s, 120).rstrip('.,;:')}?" for s in sentences[:n])


def _whole_words(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary (never mid-word)."""
    if len(text) <= limit:
        return text
    cut = text[: limit + 1].rsplit(None, 1)[0]
    return cut if len(cut) <= limit else text[:limit]


def is_synth_output(path: os.PathLike | str) -> bool:
    """True for a file :func:`generate_queries` wrote: JSON lines of exactly ``{"query", "doc_id"}`` (the last
    line may be cut short by an interrupted run). Only such a file is resumed; anything else is refused."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines(keepends=True)
    except (OSError, UnicodeDecodeError):
        return False
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) - 1 and not line.endswith("\n"):  # cut by an interrupted write
                continue
            return False
        if not isinstance(row, dict) or set(row) != {"query", "doc_id"}:
            return False
    return True


def build_prompt(document: str, n: int, description: str = "", examples: Sequence[str] = ()) -> str:
    desc = f"The application: {description.strip()}\n" if description.strip() else ""
    ex = "".join(f"- {e}\n" for e in examples)
    ex = f"Examples of real queries (match their style and length):\n{ex}" if ex else ""
    return PROMPT.format(description=desc, examples=ex, n=n, document=document)


def generate_queries(
    corpus: Corpus,
    llm: Any,
    output: os.PathLike | str,
    queries_per_chunk: int = 2,
    max_chunks: int | None = None,
    description: str = "",
    examples: Sequence[str] = (),
    concurrency: int = 4,
    requests_per_second: float | None = None,
    max_document_chars: int = 4000,
    progress: bool = True,
    seed: int = 0,
    overwrite: bool = False,
) -> tuple[TrainingSet, SynthReport]:
    """Generate queries for up to ``max_chunks`` documents (a seeded sample) and return them as pairs.

    Pairs are appended to ``output`` (JSONL) as each chunk finishes; chunks already there are skipped,
    so running again after an interruption costs only the missing chunks. Only a file this function
    wrote is resumed: any other existing file is refused unless ``overwrite=True``, which starts afresh.
    """
    import random

    from adapter_retrievers.outputs import check_output
    from adapter_retrievers.progress import progress_bar

    output = check_output(
        output, overwrite, name="output", continues=is_synth_output, continues_what="a previous synth output"
    )
    if overwrite and output.exists():
        output.unlink()
    report = SynthReport()
    done: set[str] = set()
    seen: set[str] = set()
    if output.exists():
        existing = TrainingSet.from_pairs_jsonl(output, errors="skip")
        done = {d for docs in existing.relevant.values() for d in docs}
        seen = {" ".join(t.lower().split()) for t in existing.queries.values()}
        report.chunks_resumed = len(done)
    ids = list(corpus.ids)
    random.Random(seed).shuffle(ids)
    if max_chunks is not None:
        ids = ids[:max_chunks]
    todo = [i for i in ids if i not in done]
    output.parent.mkdir(parents=True, exist_ok=True)

    async def run() -> None:
        limiter = _RateLimiter(requests_per_second)
        semaphore = asyncio.Semaphore(max(1, concurrency))
        bar = progress_bar(len(todo), "generating queries", "chunk", enabled=progress)

        async def one(doc_id: str) -> None:
            text = corpus.texts[corpus.position(doc_id)][:max_document_chars]
            async with semaphore:
                await limiter.wait()
                try:
                    answer = await _ask(llm, build_prompt(text, queries_per_chunk, description, examples))
                except Exception as exc:  # one failed request must not lose the others
                    report.failed_chunks[doc_id] = f"{type(exc).__name__}: {exc}"
                    bar.update(1)
                    return
            kept = []
            for q in parse_queries(answer, queries_per_chunk):
                key = " ".join(q.lower().split())
                if key in seen:
                    report.duplicates_dropped += 1
                    continue
                seen.add(key)
                kept.append(q)
            with open(output, "a", encoding="utf-8") as handle:  # one write per chunk: resumable
                handle.write(
                    "".join(json.dumps({"query": q, "doc_id": doc_id}, ensure_ascii=False) + "\n" for q in kept)
                )
            report.chunks_done += 1
            report.queries += len(kept)
            bar.update(1)

        try:
            await asyncio.gather(*(one(doc_id) for doc_id in todo))
        finally:
            bar.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(run())
    else:  # inside a running loop (a notebook): run in a worker thread
        import threading

        error: list[BaseException] = []

        def target() -> None:
            try:
                asyncio.run(run())
            except BaseException as exc:  # pragma: no cover - re-raised below
                error.append(exc)

        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
        if error:
            raise error[0]
    training_set = TrainingSet.from_pairs_jsonl(output, errors="skip") if output.exists() else TrainingSet({}, {})
    return training_set, report
