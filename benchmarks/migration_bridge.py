"""Public text as more paired rows for a migration adapter: does it stand in for re-embedding the corpus?

XQuAD-es (both directions, MiniLM and mpnet), 10% of the 240 paragraphs re-embedded, the training half of
the questions as the query log (as in ``migration.py``), and SciFact's 5,183 abstracts, a public corpus of
another domain embedded by both models, as extra paired rows (``fit_migration(new_queries=, old_queries=)``).
Recall@10 of the test questions through the least-squares map, as a share of the old model's on its own index.

    python benchmarks/migration_bridge.py            # about 10 minutes with the vectors cached
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np

from adapter_retrievers.training.migration import migration_sample
from common import RESULTS, machine
from migration import DIRECTIONS, both_models, dataset, encoders, fit_on_sample, halves, scores

SEEDS = (0, 1, 2)
FRACTION = 0.10


def main() -> None:
    encs = encoders()
    corpus, queries = dataset("xquad-es")
    bridge_corpus, _ = dataset("scifact")
    docs, qvec = both_models(encs, corpus, queries)
    bridge = {m: e.embed_documents(bridge_corpus.texts) for m, e in encs.items()}
    rows = []
    for old, new in DIRECTIONS:
        old_index = corpus.with_embeddings(docs[old])
        for seed, _train, test, tr, te in halves(queries, SEEDS):
            own = scores(qvec[old][te], test, old_index)["recall@10"]
            at = [corpus.position(d) for d in migration_sample(corpus, FRACTION, seed)]
            extras = {
                "sample + query log": (qvec[new][tr], qvec[old][tr]),
                "sample + query log + SciFact abstracts": (
                    np.concatenate([qvec[new][tr], bridge[new]]),
                    np.concatenate([qvec[old][tr], bridge[old]]),
                ),
                "sample + SciFact abstracts": (bridge[new], bridge[old]),
            }
            row = {"old": old, "new": new, "seed": seed, "old_own_recall@10": own}
            for name, (new_rows, old_rows) in extras.items():
                fit = fit_on_sample(
                    docs, at, encs, old, new, old_index, seed, new_queries=new_rows, old_queries=old_rows
                )
                row[name] = scores(fit.adapter.transform(qvec[new][te]), test, old_index)["recall@10"] / own
            print(row, flush=True)
            rows.append(row)
    out = {
        "benchmark": "migration_bridge",
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fraction": FRACTION,
        "rows": rows,
    }
    (RESULTS / "migration_bridge.json").write_text(json.dumps(out, indent=2) + "\n")
    for old in ("minilm", "mpnet"):
        mine = [r for r in rows if r["old"] == old]
        for name in extras:
            values = [r[name] for r in mine]
            print(f"old {old}: {name}: {np.mean(values):.1%} (worst seed {min(values):.1%})")


if __name__ == "__main__":
    main()
