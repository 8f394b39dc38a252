"""Shared set-up for the benchmarks: datasets from ../shared/data, the bundled model, cached vectors."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

from adapter_retrievers import Corpus, TrainingSet
from adapter_retrievers.encoders import CachedEncoder, minilm_encoder

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("ADAPTER_RETRIEVERS_DATA", ROOT.parent / "shared" / "data"))
CACHE = Path(os.environ.get("ADAPTER_RETRIEVERS_CACHE", ROOT / "benchmarks" / ".cache"))
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def encoder() -> CachedEncoder:
    return CachedEncoder(minilm_encoder(CACHE / "models"), CACHE)


def embedded_corpus(corpus: Corpus, enc: CachedEncoder) -> Corpus:
    return corpus.with_embeddings(enc.embed_documents(corpus.texts))


def scifact(enc: CachedEncoder) -> tuple[Corpus, TrainingSet, TrainingSet]:
    folder = DATA / "scifact"
    corpus = embedded_corpus(Corpus.from_beir(folder), enc)
    return corpus, TrainingSet.from_beir(folder, "train"), TrainingSet.from_beir(folder, "test")


def query_vectors(enc: CachedEncoder, queries: TrainingSet) -> np.ndarray:
    return enc.embed_queries(list(queries.queries.values()))
