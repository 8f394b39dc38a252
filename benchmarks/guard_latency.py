"""Benchmark: the per-query guard's serving cost, side by side with the same adapter without it.

A linear adapter at d=384 (identity plus noise) with each kind of guard (16 centroids, the default; a Gaussian
of 32 directions, the first guard) summarised from 1,000 random queries and calibrated on 1,000 others;
``transform`` timed on one query and on batches of 64, 2,000 calls after 50 warm-up calls, same process, same
run. Set ``OPENBLAS_NUM_THREADS=1`` for serving-like figures.

    OPENBLAS_NUM_THREADS=1 python benchmarks/guard_latency.py
"""

from __future__ import annotations

import time

import numpy as np

from adapter_retrievers.adapters import LinearAdapter, QueryGuard

DIM, CALLS = 384, 2000


def per_query_us(adapter: LinearAdapter, x: np.ndarray) -> float:
    for _ in range(50):
        adapter.transform(x)
    start = time.perf_counter()
    for _ in range(CALLS):
        adapter.transform(x)
    return (time.perf_counter() - start) / CALLS / (1 if x.ndim == 1 else len(x)) * 1e6


def main() -> None:
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((2000, DIM)).astype(np.float32)
    weight = np.eye(DIM, dtype=np.float32) + 0.01 * rng.standard_normal((DIM, DIM)).astype(np.float32)
    plain = LinearAdapter(DIM, "bench/model", {"weight": weight, "bias": np.zeros(DIM, np.float32)})
    guarded = {}
    for kind, components in (("centroids", 16), ("gaussian", 32)):
        summary = QueryGuard.summarise(queries[:1000], components, kind)
        guarded[f"{kind} ({components})"] = plain.with_guard(summary.calibrated(summary.distance(queries[1000:])))
    for batch in (1, 64):
        x = queries[0] if batch == 1 else queries[:batch]
        without = per_query_us(plain, x)
        cells = []
        for name, adapter in guarded.items():
            with_guard = per_query_us(adapter, x)
            cells.append(f"{name} guard {with_guard:6.1f} ({with_guard / without:.2f}x, +{with_guard - without:.1f})")
        print(f"batch {batch:3d}: {without:6.1f} us/query without a guard; " + "; ".join(cells))


if __name__ == "__main__":
    main()
