"""The trainer: fits a query-only adapter on (query, relevant document) pairs, with torch.

Embeddings are computed once (documents are read from the corpus when it already has vectors), so
training never calls the embedding model again. Validation queries are held out (by document, by
query, or both: ``validation_split``); after every epoch the adapter is scored by nDCG@10 on
validation against the whole corpus, training stops when it stops improving, and the identity (no
adapter) is kept as a candidate: the returned adapter is never worse than the base model on
validation, and, where validation has queries about documents no training query had ("new"
documents), never worse on those either. Small training sets use k-fold cross-validation (folds
grouped by document) instead of one small validation split, then refit on all pairs.

The stages, one module each:

- :mod:`.config`: :class:`TrainingConfig`, what decides a fit;
- :mod:`.run`: one run, the epochs of one adapter over pairs and negatives;
- :mod:`.validation`: held-out queries (a split, or folds grouped by document) and their scoring;
- :mod:`.selection`: pure functions over validation curves (epoch, blend, early stopping, best option);
- :mod:`.gate`: is the selected adapter better than no adapter, by what validation can see;
- :mod:`.executor`: independent runs in parallel threads;
- :mod:`.trainer`: :class:`AdapterTrainer`, the stages in order, and the refit;
- :mod:`.result`: :class:`TrainingResult`; :mod:`.curve`: :func:`learning_curve`;
- :mod:`.migration`: :func:`fit_migration`, an adapter from a new model's queries into an old model's index.
"""

from __future__ import annotations

from adapter_retrievers.adapters import blend
from adapter_retrievers.training.config import (
    BLENDABLE,
    LOSSES,
    VALIDATION_SPLITS,
    Loss,
    Negatives,
    TrainingConfig,
    ValidationSplit,
)
from adapter_retrievers.training.curve import learning_curve
from adapter_retrievers.training.migration import MigrationResult, fit_migration
from adapter_retrievers.training.result import TrainingResult
from adapter_retrievers.training.trainer import AdapterTrainer

__all__ = [
    "BLENDABLE",
    "LOSSES",
    "VALIDATION_SPLITS",
    "AdapterTrainer",
    "Loss",
    "MigrationResult",
    "Negatives",
    "TrainingConfig",
    "TrainingResult",
    "ValidationSplit",
    "blend",
    "fit_migration",
    "learning_curve",
]
