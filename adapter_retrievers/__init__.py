"""adapter-retrievers: fit a small query-only adapter that makes RAG retrieval more accurate.

Documents keep their stored vectors; the adapter transforms query embeddings only. The core imports
numpy alone: torch (training), LangChain, LlamaIndex and Chroma load only when you use them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Corpus": "adapter_retrievers.data",
    "TrainingSet": "adapter_retrievers.data",
    "DataFormatError": "adapter_retrievers.data",
    "ReadReport": "adapter_retrievers.data",
    "QueryAdapter": "adapter_retrievers.adapters",
    "AdapterFileError": "adapter_retrievers.adapters",
    "AdapterMismatchError": "adapter_retrievers.adapters",
    "Encoder": "adapter_retrievers.encoders",
    "CachedEncoder": "adapter_retrievers.encoders",
    "as_encoder": "adapter_retrievers.encoders",
    "AdapterTrainer": "adapter_retrievers.training",
    "TrainingConfig": "adapter_retrievers.training",
    "TrainingResult": "adapter_retrievers.training",
    "learning_curve": "adapter_retrievers.training",
    "fit_migration": "adapter_retrievers.training",
    "Comparison": "adapter_retrievers.evaluation",
    "compare": "adapter_retrievers.evaluation",
    "evaluate_adapter": "adapter_retrievers.evaluation",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from adapter_retrievers.adapters import AdapterFileError, AdapterMismatchError, QueryAdapter
    from adapter_retrievers.data import Corpus, DataFormatError, ReadReport, TrainingSet
    from adapter_retrievers.encoders import CachedEncoder, Encoder, as_encoder
    from adapter_retrievers.evaluation import Comparison, compare, evaluate_adapter
    from adapter_retrievers.training import (
        AdapterTrainer,
        TrainingConfig,
        TrainingResult,
        fit_migration,
        learning_curve,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'adapter_retrievers' has no attribute {name!r}")
