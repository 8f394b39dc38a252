"""Torch twins of the numpy adapters, and the training losses. Imported only by the trainer."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from adapter_retrievers.adapters import QueryAdapter


class TorchAdapter(nn.Module):
    """Trainable form of a :class:`QueryAdapter`; :meth:`export` gives the numpy adapter back.

    The orthogonal kind is trained as ``R = exp(A − Aᵀ) R₀`` (a rotation for any A; A starts at 0).
    ``train_bias=False`` keeps the bias terms at their start (zero): a bias moves every query the same
    way, towards where the popular training documents are, which is no use to queries about new ones.

    A migration adapter (input and output models differ) trains like the others: ``linear`` its whole
    ``d_out × d_in`` matrix (from its start, the least-squares map), ``low_rank`` and ``residual_mlp`` their
    change on top of the fixed ``projection``, which stays what the closed form made it.
    """

    def __init__(self, adapter: QueryAdapter, train_bias: bool = True) -> None:
        super().__init__()
        self.template = adapter
        self.kind = adapter.kind
        if self.kind == "orthogonal":
            self.register_buffer("start_rotation", torch.tensor(adapter.params["rotation"]))
            self.skew = nn.Parameter(torch.zeros(adapter.dimension, adapter.dimension))
            self.weights = nn.ParameterDict()
        else:
            self.weights = nn.ParameterDict(
                {
                    k: nn.Parameter(torch.tensor(v), requires_grad=train_bias or k not in ("bias", "b2"))
                    for k, v in adapter.params.items()
                    if k != "projection"
                }
            )
        if "projection" in adapter.params:  # fixed: the closed-form map the change is learned on top of
            self.register_buffer("projection", torch.tensor(adapter.params["projection"]))
        else:
            self.projection = None
        self.start = {k: torch.tensor(v) for k, v in adapter.params.items()}

    def distance_from_start(self) -> torch.Tensor:
        """Squared size of the change from the start (the identity): the pull-toward-identity penalty."""
        w = self.weights
        if self.kind == "orthogonal":
            return (self.skew**2).sum()
        if self.kind == "low_rank":  # the change is V Uᵀ, whose squared norm is trace(VᵀV UᵀU)
            change = ((w["down"].T @ w["down"]) * (w["up"].T @ w["up"])).sum()
            return change + (w["bias"] ** 2).sum()
        if self.kind == "residual_mlp":  # the output layer is what moves the adapter off the identity
            return (w["w2"] ** 2).sum() + (w["b2"] ** 2).sum()
        return sum(((v - self.start[k].to(v.device)) ** 2).sum() for k, v in w.items())

    def rotation(self) -> torch.Tensor:
        return torch.linalg.matrix_exp(self.skew - self.skew.T) @ self.start_rotation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights
        start = x if self.projection is None else x @ self.projection.T
        if self.kind == "linear":
            y = x @ w["weight"].T + w["bias"]
        elif self.kind == "low_rank":
            y = start + (x @ w["down"]) @ w["up"].T + w["bias"]
        elif self.kind == "orthogonal":
            y = x @ self.rotation().T
        elif self.kind == "residual_mlp":
            y = start + F.gelu(x @ w["w1"].T + w["b1"], approximate="tanh") @ w["w2"].T + w["b2"]
        else:
            y = x
        return F.normalize(y, dim=-1) if self.template.normalize else y

    @torch.no_grad()
    def export(self) -> QueryAdapter:
        if self.kind == "orthogonal":
            params = {"rotation": self.rotation().cpu().numpy()}
        else:
            params = {k: v.detach().cpu().numpy().copy() for k, v in self.weights.items()}
        if self.projection is not None:
            params["projection"] = self.projection.cpu().numpy().copy()
        return replace(self.template, params=params, metadata={}, guard=None)


def pair_loss(
    name: str,
    scores: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None,
    temperature: float = 0.05,
    margin: float = 0.2,
    overwrite_scores: bool = False,
) -> torch.Tensor:
    """Loss over candidate scores ``(batch, m)``: column ``target`` is the positive, ``valid`` masks the rest
    (a boolean mask; or the ``(rows, columns)`` of the invalid cells, when they are few; ``None``: all valid).

    - ``infonce``: cross-entropy of the positive against all valid candidates (multiple-negatives
      ranking loss, as sentence-transformers and LlamaIndex use), scores divided by ``temperature``.
    - ``triplet``: mean hinge ``max(0, margin − s⁺ + s⁻)`` over the negatives (the Chroma report).
    - ``mse_cosine``: squared error of cosine to label +1 (positive) and −1 (negative), as in the
      Chroma report and the OpenAI cookbook.
    """
    if name == "infonce":
        # masked in place: a new tensor, or (``overwrite_scores``: the caller has no further use for them and
        # their backward does not need them) the scores themselves, saving a (batch, candidates) copy
        logits = scores if temperature == 1.0 and overwrite_scores else scores / temperature
        if isinstance(valid, tuple):
            logits.index_put_(valid, torch.tensor(float("-inf"), device=scores.device))
        elif valid is not None:
            logits.masked_fill_(~valid, float("-inf"))
        return F.cross_entropy(logits, target)
    rows = torch.arange(scores.shape[0], device=scores.device)
    positive = scores[rows, target]
    negative_mask = valid.clone() if isinstance(valid, torch.Tensor) else torch.ones_like(scores, dtype=torch.bool)
    if isinstance(valid, tuple):  # the hidden cells
        negative_mask[valid] = False
    negative_mask[rows, target] = False
    n_neg = negative_mask.sum(dim=1).clamp(min=1)
    if name == "triplet":
        hinge = F.relu(margin - positive[:, None] + scores) * negative_mask
        return (hinge.sum(dim=1) / n_neg).mean()
    if name == "mse_cosine":
        neg_error = ((scores + 1.0) ** 2 * negative_mask).sum(dim=1)
        return (((positive - 1.0) ** 2 + neg_error) / (1 + n_neg)).mean()
    raise ValueError(f"unknown loss {name!r}")


def consistency_loss(
    adapted: torch.Tensor, original: torch.Tensor, documents: torch.Tensor, temperature: float = 0.05
) -> torch.Tensor:
    """KL divergence from the base model's score distribution over ``documents`` to the adapted one.

    ``original`` are pseudo-queries (corpus documents, which cost no extra embedding) and ``adapted``
    their adapted form: the adapter is kept from re-ranking the corpus for inputs that carry no label,
    so it cannot pull every query toward the popular training documents.
    """
    with torch.no_grad():
        target = F.log_softmax((original / temperature) @ documents.T, dim=-1)
    current = F.log_softmax((adapted / temperature) @ documents.T, dim=-1)
    return F.kl_div(current, target, log_target=True, reduction="batchmean")
