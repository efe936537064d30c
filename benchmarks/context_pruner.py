"""Ranking quality and latency of the example cross-encoder against a bi-encoder baseline.

Held out: the fixed-seed test split of the customer-support data (the
reranker trains on the train split only). Each query gets a pool of 20
passages: reference responses written for other requests of its own intent
(relevant) and of other intents, half of those from the same category (hard).
Both rankers order the same pools:

- cross-encoder: the example graph's, ``support_reranker_folder()`` (trained on first use);
- bi-encoder: cosine similarity of the packaged all-MiniLM-L6-v2 embeddings.

Printed: nDCG@5 and recall@5 for each, the cross-encoder's training time,
and p50/p95 latency of scoring 20 chunks and of one whole pruner call.

Run: ``python benchmarks/context_pruner.py [--queries 300] [--relevant 4]``
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from collections import defaultdict

import numpy as np

from agentgraph.cross_encoder import packaged_minilm, training_info
from agentgraph.graphs.customer_support import support_reranker_folder
from agentgraph.graphs.customer_support.bitext import SupportRequest, load_customer_support, split_customer_support
from agentgraph.nodes.context_pruner import Reranker, create_context_pruner

POOL_SIZE = 20
K = 5
SEED = 7


def build_pools(
    rows: list[SupportRequest], *, queries: int, relevant: int, seed: int = SEED
) -> list[tuple[SupportRequest, list[str], list[bool]]]:
    """``(query, passages, is_relevant)`` triples; a query's own response is never in its pool."""
    rng = random.Random(seed)
    by_intent: dict[str, list[SupportRequest]] = defaultdict(list)
    for row in rows:
        by_intent[row.intent].append(row)
    pools = []
    for query in rng.sample(rows, min(queries, len(rows))):
        positives = rng.sample([r for r in by_intent[query.intent] if r is not query], relevant)
        others = [r for r in rows if r.intent != query.intent]
        near = [r for r in others if r.category == query.category]
        negatives_needed = POOL_SIZE - relevant
        hard = rng.sample(near, min(len(near), negatives_needed // 2))
        rest = rng.sample([r for r in others if r not in hard], negatives_needed - len(hard))
        candidates = [(r.response, True) for r in positives] + [(r.response, False) for r in hard + rest]
        rng.shuffle(candidates)
        pools.append((query, [text for text, _ in candidates], [flag for _, flag in candidates]))
    return pools


def ndcg_at_k(relevance_in_rank_order: list[bool], total_relevant: int, k: int = K) -> float:
    dcg = sum(1.0 / math.log2(rank + 2) for rank, rel in enumerate(relevance_in_rank_order[:k]) if rel)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(k, total_relevant)))
    return dcg / ideal


def recall_at_k(relevance_in_rank_order: list[bool], total_relevant: int, k: int = K) -> float:
    return sum(relevance_in_rank_order[:k]) / total_relevant


def ranking_metrics(all_scores: list[list[float]], pools) -> dict[str, float]:
    ndcgs, recalls = [], []
    for scores, (_, _, relevance) in zip(all_scores, pools, strict=False):
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        ranked = [relevance[i] for i in order]
        ndcgs.append(ndcg_at_k(ranked, sum(relevance)))
        recalls.append(recall_at_k(ranked, sum(relevance)))
    return {"ndcg@5": statistics.fmean(ndcgs), "recall@5": statistics.fmean(recalls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--relevant", type=int, default=4, help="relevant passages per pool of 20")
    parser.add_argument("--latency-runs", type=int, default=50)
    args = parser.parse_args()

    test = split_customer_support(load_customer_support())["test"]
    pools = build_pools(test, queries=args.queries, relevant=args.relevant)
    print(f"held-out pools: {len(pools)} queries x {POOL_SIZE} passages, {args.relevant} relevant each (test split)")

    started = time.perf_counter()
    folder = support_reranker_folder()
    info = training_info(folder)
    print(
        f"cross-encoder: {folder} (recipe {info['recipe']}, {info['pairs']} pairs, trained in "
        f"{info['training_seconds']} s, {info['training_cpu_seconds']} s of CPU; "
        f"ready in {time.perf_counter() - started:.1f} s now)"
    )
    reranker = Reranker(folder, device="cpu")

    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(packaged_minilm()), device="cpu", local_files_only=True)
    bi_scores = []
    for query, passages, _ in pools:
        embeddings = encoder.encode([query.text, *passages], normalize_embeddings=True, show_progress_bar=False)
        bi_scores.append((embeddings[1:] @ embeddings[0]).tolist())
    cross_scores = [reranker.score(query.text, passages) for query, passages, _ in pools]

    print(f"{'ranker':<28}{'nDCG@5':>10}{'recall@5':>10}")
    for name, scores in (("bi-encoder (MiniLM cosine)", bi_scores), ("cross-encoder (trained)", cross_scores)):
        metrics = ranking_metrics(scores, pools)
        print(f"{name:<28}{metrics['ndcg@5']:>10.3f}{metrics['recall@5']:>10.3f}")

    pruner = create_context_pruner(reranker, top_k=5, token_budget=600)
    score_ms, node_ms = [], []
    for query, passages, _ in pools[: args.latency_runs]:
        tick = time.perf_counter()
        reranker.score(query.text, passages)
        score_ms.append((time.perf_counter() - tick) * 1000)
        tick = time.perf_counter()
        pruner({"query": query.text, "chunks": passages}, {})
        node_ms.append((time.perf_counter() - tick) * 1000)
    print(f"latency for {POOL_SIZE} chunks over {len(score_ms)} queries (CPU):")
    print(
        f"  cross-encoder scoring  p50 {np.percentile(score_ms, 50):7.1f} ms  p95 {np.percentile(score_ms, 95):7.1f} ms"
    )
    print(
        f"  whole pruner call      p50 {np.percentile(node_ms, 50):7.1f} ms  p95 {np.percentile(node_ms, 95):7.1f} ms"
    )


if __name__ == "__main__":
    main()
