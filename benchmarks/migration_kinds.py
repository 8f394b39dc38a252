"""Migration adapters of more capacity: does a non-linear map, distilled, lose less than the linear one?

XQuAD-es in both directions (MiniLM and mpnet), seeds 0-2, 10% and 100% of the paragraphs re-embedded plus the
training half of the questions as the query log (as in ``migration.py``): the least-squares map alone, and
ranking distillation (``fit_migration(distill=True)``) from it for ``kind`` linear, low_rank (rank 64) and
residual_mlp (256 hidden), with 25, 50, 200 or 500 full-batch steps chosen on the held-out paired texts.
Recall@10 of the test questions as a share of the old model's on its own index.

    python benchmarks/migration_kinds.py            # about 12 minutes with the vectors cached
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np

from adapter_retrievers.training.migration import migration_sample
from common import RESULTS, machine
from migration import DIRECTIONS, both_models, dataset, encoders, fit_on_sample, halves, scores

SEEDS = (0, 1, 2)
FRACTIONS = (0.1, 1.0)
STEPS = (25, 50, 200, 500)
VARIANTS = {
    "least-squares": {"kind": "linear"},
    "linear, distilled": {"kind": "linear", "distill": True, "distill_steps": STEPS},
    "low_rank 64, distilled": {"kind": "low_rank", "rank": 64, "distill": True, "distill_steps": STEPS},
    "residual_mlp 256, distilled": {"kind": "residual_mlp", "hidden": 256, "distill": True, "distill_steps": STEPS},
}


def main() -> None:
    encs = encoders()
    corpus, queries = dataset("xquad-es")
    docs, qvec = both_models(encs, corpus, queries)
    rows = []
    for old, new in DIRECTIONS:
        old_index = corpus.with_embeddings(docs[old])
        for seed, _train, test, tr, te in halves(queries, SEEDS):
            own = scores(qvec[old][te], test, old_index)["recall@10"]
            for fraction in FRACTIONS:
                at = [corpus.position(d) for d in migration_sample(corpus, fraction, seed)]
                for name, options in VARIANTS.items():
                    log = {"new_queries": qvec[new][tr], "old_queries": qvec[old][tr]}
                    fit = fit_on_sample(docs, at, encs, old, new, old_index, seed, **log, **options)
                    share = scores(fit.adapter.transform(qvec[new][te]), test, old_index)["recall@10"] / own
                    steps = fit.decision.get("distill", {}).get("steps")
                    row = {"old": old, "seed": seed, "fraction": fraction, "variant": name, "share": share}
                    rows.append({**row, "distill_steps": steps, "kept": fit.decision.get("kept")})
                    print(rows[-1], flush=True)
    out = {
        "benchmark": "migration_kinds",
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows": rows,
    }
    (RESULTS / "migration_kinds.json").write_text(json.dumps(out, indent=2) + "\n")
    for old in ("minilm", "mpnet"):
        for fraction in FRACTIONS:
            for name in VARIANTS:
                values = [r["share"] for r in rows if (r["old"], r["fraction"], r["variant"]) == (old, fraction, name)]
                print(f"old {old}, {fraction:.0%} + log, {name}: {np.mean(values):.1%} (worst seed {min(values):.1%})")


if __name__ == "__main__":
    main()
