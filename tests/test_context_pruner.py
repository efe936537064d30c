"""The context pruner: the pruning rules on their own, then the node with a really fine-tuned cross-encoder."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langgraph.graph import START, StateGraph

from agentgraph.errors import EmptyInputError
from agentgraph.nodes.context_pruner import (
    ContextPrunerState,
    PruneSettings,
    Reranker,
    create_context_pruner,
    jaccard,
    prune_scored,
    word_set,
)
from agentgraph.records.decisions import SQLiteDecisionLog


def words(text: str) -> int:
    return len(text.split())


def test_pruning_walks_best_first_and_gives_every_dropped_chunk_its_reason():
    texts = [
        "refunds take five days",  # 0
        "refunds take five days!",  # 1: a copy of 0, scored higher
        "the newsletter is weekly",  # 2: under the minimum
        "track a parcel under orders",  # 3
        "change the delivery address in your account settings page",  # 4: too long for the budget left
        "cancel within a day",  # 5: beyond top_k
        "invoices are in the billing tab",  # 6
        "",  # 7: empty, never scored
    ]
    scores = [0.80, 0.90, 0.10, 0.70, 0.65, 0.50, 0.60, None]
    settings = PruneSettings(top_k=3, min_score=0.3, dedupe_threshold=0.9, token_budget=16)
    kept, dropped = prune_scored(texts, scores, settings, words)
    assert [(c.index, c.score, c.tokens) for c in kept] == [(1, 0.90, 4), (3, 0.70, 5), (6, 0.60, 6)]
    reasons = {d.index: (d.reason, d.duplicate_of) for d in dropped}
    assert reasons == {
        0: ("duplicate", 1),
        2: ("below_min_score", None),
        4: ("over_budget", None),
        5: ("beyond_top_k", None),
        7: ("empty", None),
    }
    assert sum(c.tokens for c in kept) <= 16


def test_switched_off_criteria_keep_everything_scored():
    texts = ["a b", "a b", "c d"]
    kept, dropped = prune_scored(texts, [0.1, 0.2, 0.3], PruneSettings(top_k=None, dedupe_threshold=None), words)
    assert [c.index for c in kept] == [2, 1, 0]
    assert dropped == []


def test_jaccard_of_word_sets_ignores_case_and_punctuation():
    assert jaccard(word_set("Refunds take 5 days."), word_set("refunds TAKE 5 days")) == 1.0
    assert jaccard(word_set("a b c d"), word_set("a b")) == 0.5


@pytest.fixture(scope="module")
def reranker(trained_reranker_folder):
    return Reranker(trained_reranker_folder, device="cpu")


def pruner_graph(node):
    builder = StateGraph(ContextPrunerState)
    builder.add_node("prune", node).add_edge(START, "prune")
    return builder.compile()


@pytest.mark.slow
def test_pruner_node_keeps_the_best_chunks_and_logs_what_it_dropped(reranker, support_splits, tmp_path):
    dev = support_splits["dev"]
    query = next(r for r in dev if r.intent == "get_refund")
    relevant = [r.response for r in dev if r.intent == "get_refund" and r is not query][:3]
    others = [r.response for r in dev if r.category != query.category][:5]
    chunks = [
        relevant[0],
        *others[:2],
        relevant[1],
        relevant[0],
        *others[2:],
        Document(relevant[2], metadata={"id": "kb-7"}),
    ]
    log = SQLiteDecisionLog(tmp_path / "decisions.db")
    node = create_context_pruner(reranker, top_k=3, token_budget=400, decision_log=log)
    final = pruner_graph(node).invoke({"query": query.text, "chunks": chunks}, {"configurable": {"thread_id": "t-1"}})

    scores = reranker.score(query.text, [c if isinstance(c, str) else c.page_content for c in chunks])
    kept = final["context"]
    assert [c.score for c in kept] == sorted((c.score for c in kept), reverse=True)
    assert all(c.score == pytest.approx(scores[c.index], abs=1e-5) for c in kept)
    assert sum(c.tokens for c in kept) <= 400
    assert all(c.tokens == reranker.count_tokens(c.text) for c in kept)
    decision = final["decisions"][0]
    dropped = decision.output["dropped"]
    # Every chunk is accounted for exactly once, and the exact copy at index 4 never sits beside index 0.
    assert sorted([c.index for c in kept] + [d["index"] for d in dropped]) == list(range(len(chunks)))
    assert not {0, 4} <= {c.index for c in kept}
    assert len(kept) <= 3
    # With no top-k and no budget, the first of the two copies is kept and the second dropped as its duplicate.
    unlimited = pruner_graph(create_context_pruner(reranker, top_k=None)).invoke(
        {"query": query.text, "chunks": chunks}
    )
    assert len(unlimited["context"]) == len(chunks) - 1
    assert unlimited["decisions"][0].output["dropped"] == [
        {"index": 4, "score": pytest.approx(scores[4], abs=1e-5), "reason": "duplicate", "duplicate_of": 0}
    ]
    assert next((c.metadata for c in kept if c.index == 8), {"id": "kb-7"}) == {"id": "kb-7"}
    assert decision.kind == "prune" and decision.model == str(reranker.model_name)
    assert [d.model_dump() for d in log.decisions(node="context_pruner")] == [decision.model_dump()]
    assert decision.thread_id == "t-1"


@pytest.mark.slow
def test_min_score_drops_exactly_the_chunks_scored_under_it(reranker, support_splits):
    dev = support_splits["dev"]
    query = next(r for r in dev if r.intent == "track_order")
    chunks = [r.response for r in dev if r is not query][:40:5]
    scores = reranker.score(query.text, chunks)
    threshold = sorted(scores)[len(scores) // 2]
    final = pruner_graph(
        create_context_pruner(reranker, top_k=None, min_score=threshold, dedupe_threshold=None)
    ).invoke({"query": query.text, "chunks": chunks})
    assert sorted(c.index for c in final["context"]) == [i for i, s in enumerate(scores) if s >= threshold]
    dropped = final["decisions"][0].output["dropped"]
    assert {d["reason"] for d in dropped} == {"below_min_score"}
    assert all(d["score"] < threshold for d in dropped)


@pytest.mark.slow
def test_bad_input_is_a_clear_error_and_no_chunks_keeps_nothing(reranker):
    graph = pruner_graph(create_context_pruner(reranker))
    with pytest.raises(EmptyInputError):
        graph.invoke({"query": " ", "chunks": ["text"]})
    with pytest.raises(TypeError, match="must be a list of chunks"):
        graph.invoke({"query": "refund", "chunks": "one long string"})
    with pytest.raises(TypeError, match="chunk 1 is a int"):
        graph.invoke({"query": "refund", "chunks": ["fine", 42]})
    final = graph.invoke({"query": "refund", "chunks": []})
    assert final["context"] == []
    assert final["decisions"][0].outcome == "nothing_kept"


def test_concurrent_scoring_runs_as_one_batch_with_the_scores_each_query_gets_alone(
    trained_reranker_folder, support_splits
):
    from concurrent.futures import ThreadPoolExecutor

    reranker = Reranker(trained_reranker_folder, device="cpu", batch_window_ms=50)
    dev = support_splits["dev"]
    queries = [row.text for row in dev[:6]]
    passages = [row.response for row in dev[10:14]]
    alone = [reranker.score(query, passages) for query in queries]
    pair_counts = []
    predict = reranker._model.predict

    def counted_predict(pairs, **kwargs):
        pair_counts.append(len(pairs))
        return predict(pairs, **kwargs)

    reranker._model.predict = counted_predict
    with ThreadPoolExecutor(2 * len(queries)) as pool:
        # Token counts while the batches run: the pruner counts the chunks it keeps as other requests score.
        counted = pool.map(lambda text: reranker.count_tokens(text), [*passages, *queries] * 20)
        together = list(pool.map(lambda query: reranker.score(query, passages), queries))
        assert set(counted) == {reranker.count_tokens(text) for text in [*passages, *queries]}
    assert max(pair_counts) > len(passages)  # several queries' pairs in one forward pass
    assert sum(pair_counts) == len(queries) * len(passages)
    for scores, expected in zip(together, alone, strict=True):
        assert scores == pytest.approx(expected, abs=1e-5)
    assert reranker.score(queries[0], []) == []


def test_a_reranker_given_a_function_calls_it_once_when_a_request_first_needs_the_model(
    trained_reranker_folder, support_splits
):
    from concurrent.futures import ThreadPoolExecutor

    asked = []

    def trained_folder():
        asked.append(trained_reranker_folder)
        return trained_reranker_folder

    reranker = Reranker(trained_folder, device="cpu")
    assert asked == [], "nothing is loaded, or trained, before a request needs it"
    dev = support_splits["dev"]
    queries, passages = [row.text for row in dev[:4]], [row.response for row in dev[10:13]]
    with ThreadPoolExecutor(len(queries)) as pool:
        together = list(pool.map(lambda query: reranker.score(query, passages), queries))
    assert len(asked) == 1, "concurrent first requests load the model once"
    assert reranker.model_name == str(trained_reranker_folder)
    eager = Reranker(trained_reranker_folder, device="cpu")
    for query, scores in zip(queries, together, strict=True):
        assert scores == pytest.approx(eager.score(query, passages), abs=1e-5)
    assert reranker.count_tokens(passages[0]) == eager.count_tokens(passages[0])
