"""Team-draft interleaving: the draft itself, credit assignment, detection, and the serving wrappers that use it
(real LangChain and LlamaIndex classes, real OpenInference spans)."""

import json
import random
from collections import Counter

import numpy as np
import pytest

from adapter_retrievers import Corpus, QueryAdapter
from adapter_retrievers.data import ReadReport
from adapter_retrievers.evidence import betting_test
from adapter_retrievers.harvest import harvest, read_traces
from adapter_retrievers.harvest.records import LoggedRetrieval
from adapter_retrievers.interleaving import (
    CANDIDATE,
    LIVE,
    SHARED,
    credit,
    outcome,
    shown_probabilities,
    team_draft,
)
from adapter_retrievers.registry import AdapterRegistry, pin_adapter
from adapter_retrievers.store import AdapterStore
from conftest import langchain_spans, write_spans

MODEL, DIM = "test/fake-16", 16
TEXTS = {f"d{i}": f"paragraph {i} on subject {i % 7} and detail {i * 13 % 11}" for i in range(40)}


def rankings(rng, n=30, overlap=0.5):
    live = [f"d{i}" for i in rng.permutation(n)]
    candidate = list(live) if overlap == 1 else [f"d{i}" for i in rng.permutation(n)]
    return live, candidate


def test_team_draft_follows_the_draft_rules():
    rng = np.random.default_rng(0)
    coins = random.Random(0)
    for trial in range(300):
        live, candidate = rankings(rng, n=int(rng.integers(3, 30)))
        live, candidate = live[: int(rng.integers(1, len(live) + 1))], candidate[: int(rng.integers(1, 20))]
        k = int(rng.integers(1, 12))
        drafted = team_draft(live, candidate, k, coins)
        assert len(drafted.keys) == len(set(drafted.keys)) == min(k, len(set(live) | set(candidate)))
        shown: set = set()
        n_live = n_candidate = 0
        shared_pick = False  # the last pick was shared: made by whichever team the coin chose
        for key, team in zip(drafted.keys, drafted.teams):
            if team == SHARED:  # a coin's pick that either ranker would have made here
                assert key == next(d for d in live if d not in shown) == next(d for d in candidate if d not in shown)
                shown.add(key)
                if shared_pick:  # a round of two shared picks: one each
                    n_live, n_candidate = n_live + 1, n_candidate + 1
                shared_pick = not shared_pick
                continue
            if shared_pick:  # the other team made the shared pick before this one
                n_live, n_candidate = n_live + (team == CANDIDATE), n_candidate + (team == LIVE)
                shared_pick = False
            ranking = live if team == LIVE else candidate
            # each pick is the picking ranker's best document not shown yet
            assert key == next(d for d in ranking if d not in shown), trial
            other = candidate if team == LIVE else live
            mine, theirs = (n_live, n_candidate) if team == LIVE else (n_candidate, n_live)
            # the team behind picks; at a tie a coin decides; a team picks out of turn only when the other ran out
            assert mine <= theirs or all(d in shown for d in other), trial
            shown.add(key)
            n_live, n_candidate = n_live + (team == LIVE), n_candidate + (team == CANDIDATE)


def test_identical_rankings_show_the_ranking_and_credit_neither():
    ranking = [f"d{i}" for i in range(20)]
    for seed in range(20):
        drafted = team_draft(ranking, ranking, 10, random.Random(seed))
        assert drafted.keys == ranking[:10] and drafted.propensities == [1.0] * 10
        # every place shows the same document whichever way the coins fell: a click there says nothing
        assert drafted.teams == [SHARED] * 10 and outcome(credit(drafted.teams)) == 0


def test_only_documents_placed_by_a_coin_alone_are_shared():
    # both rank d0 first: round 1 shows d0 first whoever picks it (shared); then live's d1 or the candidate's
    # d2, a real pick; from round 2 on the teams are the two rankers' own picks
    live, candidate = ["d0", "d1", "d3", "d4"], ["d0", "d2", "d3", "d5"]
    for seed in range(20):
        drafted = team_draft(live, candidate, 4, random.Random(seed))
        assert drafted.teams[0] == SHARED and drafted.keys[0] == "d0"
        team = dict(zip(drafted.keys, drafted.teams))
        assert team.get("d1", LIVE) == LIVE and team.get("d2", CANDIDATE) == CANDIDATE
    # the same list under both coins of a round, each team's pick swapped: both shared
    drafted = team_draft(["a", "b", "c"], ["a", "b", "d"], 3, random.Random(0))
    assert drafted.keys == ["a", "b", "c"] or drafted.keys == ["a", "b", "d"]
    assert drafted.teams[:2] == [SHARED, SHARED] and drafted.teams[2] in (LIVE, CANDIDATE)


def test_propensities_are_the_frequencies_over_the_coin_flips():
    rng = np.random.default_rng(3)
    live, candidate = rankings(rng, n=12)
    exact = shown_probabilities(live, candidate, 5)  # odd k: the last pick is a coin's
    coins = random.Random(1)
    counts = Counter(key for _ in range(20000) for key in team_draft(live, candidate, 5, coins).keys)
    assert {k for k, p in exact.items() if p > 0} == set(counts)
    assert max(abs(exact[k] - counts[k] / 20000) for k in exact) < 0.015
    assert sorted(set(exact.values())) == [0.5, 1.0]  # each team's top two for sure, the fifth a coin


def test_credit_goes_to_the_team_that_picked_each_named_document():
    assert credit([LIVE, CANDIDATE, CANDIDATE, None]) == {LIVE: 1, CANDIDATE: 2}
    assert outcome({LIVE: 1, CANDIDATE: 2}) == 1 and outcome({LIVE: 2, CANDIDATE: 0}) == -1
    assert outcome({LIVE: 1, CANDIDATE: 1}) == 0


def simulate(rng, coins, rankers: str, queries: int) -> list[int]:
    """Users click the one relevant document when shown. ``rankers``: ``"better"``, the candidate ranks it
    first and live ranks it fourth (otherwise the same ranking); ``"identical"``, one ranking for both;
    ``"equally good"``, two different rankings, each with it at a random one of its first eight places."""
    results = []
    for _ in range(queries):
        live, candidate = rankings(rng, n=20, overlap=0.5 if rankers == "equally good" else 1.0)
        relevant = live[int(rng.integers(0, 8))]
        if rankers == "better":
            live.remove(relevant)
            live.insert(3, relevant)
            candidate.remove(relevant)
            candidate.insert(0, relevant)
        elif rankers == "equally good":
            candidate.remove(relevant)
            candidate.insert(int(rng.integers(0, 8)), relevant)
        drafted = team_draft(live, candidate, 10, coins)
        teams = [team for key, team in zip(drafted.keys, drafted.teams) if key == relevant]
        results.append(outcome(credit(teams)))
    return results


def test_a_ranker_that_always_wins_is_detected():
    rng, coins = np.random.default_rng(4), random.Random(4)
    results = simulate(rng, coins, "better", queries=60)
    assert Counter(results)[1] > 50  # the candidate's pick of the relevant document comes first in most drafts
    assert betting_test(results).significant


def test_identical_rankers_tie():
    rng, coins = np.random.default_rng(5), random.Random(5)
    assert set(simulate(rng, coins, "identical", queries=500)) == {0}  # every click is on a shared pick
    results = np.array(simulate(rng, coins, "equally good", queries=4000))
    wins, losses = (results == 1).sum(), (results == -1).sum()
    assert wins + losses > 2000 and abs(wins - losses) < 4 * np.sqrt(wins + losses)
    detected = sum(
        betting_test(simulate(rng, coins, "equally good", queries=200)).significant for _ in range(100)
    )  # looked at after the last query; the test would hold at every one of them
    assert detected <= 8


# ----------------------------------------------------------------------------------------- serving


def random_linear(seed):
    adapter = QueryAdapter.create("linear", DIM, MODEL)
    adapter.params["weight"] = np.random.default_rng(seed).standard_normal((DIM, DIM)).astype(np.float32)
    return adapter


@pytest.fixture
def store(tmp_path):
    store = AdapterStore(tmp_path / "store")
    store.set_live(store.add_version(random_linear(1), {}), "promoted")
    store.set_candidate(store.add_version(random_linear(2), {}))
    return store


def test_the_registry_interleaves_the_configured_fraction_with_the_stores_candidate(store):
    registry = AdapterRegistry.from_store(store, MODEL, DIM, check_interval=0, interleave=0.3, seed=0)
    pins = [pin_adapter(registry) for _ in range(2000)]
    interleaved = [p for p in pins if p.interleaved]
    assert 0.26 < len(interleaved) / len(pins) < 0.34
    assert {(p.version, p.candidate_version) for p in interleaved} == {("v0001", "v0002")}
    assert {p.candidate_version for p in pins if not p.interleaved} == {None}
    store.promote("v0002")  # the candidate went live: nothing left to compare
    assert not any(pin_adapter(registry).interleaved for _ in range(200))
    with pytest.raises(ValueError, match="fraction of traffic"):
        registry.interleave = 1.5


def _embeddings():
    from langchain_core.embeddings import DeterministicFakeEmbedding

    return DeterministicFakeEmbedding(size=DIM)


def _vectorstore():
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore

    vectorstore = InMemoryVectorStore(_embeddings())
    vectorstore.add_documents([Document(page_content=t, metadata={"id": i}) for i, t in TEXTS.items()], ids=list(TEXTS))
    return vectorstore


def _alone(vectorstore, adapter, query, k):
    from adapter_retrievers.integrations.langchain import AdapterRetriever

    retriever = AdapterRetriever(vectorstore=vectorstore, embeddings=_embeddings(), adapter=adapter, k=k)
    return [d.id for d in retriever.invoke(query)]


def test_langchain_retriever_interleaves_logs_the_rankers_and_harvest_credits_them(store, tmp_path):
    from adapter_retrievers.integrations.langchain import AdapterRetriever, RetrievalLogger

    vectorstore = _vectorstore()
    registry = AdapterRegistry.from_store(store, MODEL, DIM, check_interval=0, interleave=1.0, seed=1)
    retriever = AdapterRetriever(vectorstore=vectorstore, embeddings=_embeddings(), adapter=registry, k=6)
    logger = RetrievalLogger(tmp_path / "log.jsonl")
    queries = [f"question about subject {i}" for i in range(8)]
    for q in queries:
        docs = retriever.invoke(q, config={"callbacks": [logger]})
        live, candidate = _alone(vectorstore, store.load("v0001"), q, 6), _alone(vectorstore, store.load("v0002"), q, 6)
        assert live != candidate  # the two rankers differ
        assert len(docs) == 6 and {d.metadata["adapter_ranker"] for d in docs} >= {"live", "candidate"}
        for d in docs:  # each document comes from the ranker it names
            assert d.id in (live if d.metadata["adapter_ranker"] == "live" else candidate)
            assert 0 < d.metadata["adapter_propensity"] <= 1
        assert vectorstore.get_by_ids([docs[0].id])[0].metadata == {"id": docs[0].id}  # the store is untouched
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(r["interleaving"] == {"method": "team_draft", "candidate": "v0002"} for r in records)
    assert all(r["adapter_version"] == "v0001" and "ranker" in r["documents"][0] for r in records)
    clicked = {}
    for r in records:  # each user clicks the last shown document
        last = r["documents"][-1]
        logger.log.add_click(r["id"], last["id"])
        clicked[r["id"]] = last["ranker"]
    result = harvest(tmp_path / "log.jsonl", Corpus(list(TEXTS), list(TEXTS.values())))
    assert {f.retrieval_id: f.rankers for f in result.feedback} == {rid: [team] for rid, team in clicked.items()}
    assert all(f.positions == [5] and f.candidate_version == "v0002" for f in result.feedback)
    credited = sum(team != SHARED for team in clicked.values())  # a click on a shared pick credits neither
    assert sum(f.credit[team] for f in result.feedback for team in (LIVE, CANDIDATE)) == credited

    registry.interleave = 0.0  # off: plain results, nothing added to the documents
    plain = retriever.invoke(queries[0])
    assert [d.id for d in plain] == _alone(vectorstore, store.load("v0001"), queries[0], 6)
    assert all("adapter_ranker" not in d.metadata for d in plain)


def test_openinference_spans_name_the_candidate_and_each_documents_ranker(store):
    from adapter_retrievers.integrations.langchain import AdapterRetriever

    registry = AdapterRegistry.from_store(store, MODEL, DIM, check_interval=0, interleave=1.0, seed=2)
    retriever = AdapterRetriever(vectorstore=_vectorstore(), embeddings=_embeddings(), adapter=registry, k=4)
    with langchain_spans() as exporter:
        shown = retriever.invoke("what about subject 3")
    path = store.root / "spans.jsonl"
    write_spans(exporter.get_finished_spans(), path)
    (item,) = [i for i in read_traces([path], "openinference", ReadReport()) if isinstance(i, LoggedRetrieval)]
    assert (item.adapter_version, item.candidate_version) == ("v0001", "v0002")
    assert [d.ranker for d in item.documents] == [d.metadata["adapter_ranker"] for d in shown]
    assert [d.propensity for d in item.documents] == [d.metadata["adapter_propensity"] for d in shown]


def test_llamaindex_retriever_interleaves_and_logs_the_rankers(store, tmp_path):
    pytest.importorskip("llama_index.core")
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.schema import TextNode

    from adapter_retrievers.integrations.llamaindex import AdapterVectorRetriever, RetrievalEventLogger

    embed = MockEmbedding(embed_dim=DIM)
    nodes = [TextNode(id_=i, text=t) for i, t in TEXTS.items()]
    index = VectorStoreIndex(nodes, embed_model=embed)
    registry = AdapterRegistry.from_store(store, MODEL, DIM, check_interval=0, interleave=1.0, seed=3)
    retriever = AdapterVectorRetriever(index, registry, embed_model=embed, similarity_top_k=4)
    handler = RetrievalEventLogger(tmp_path / "log.jsonl")
    get_dispatcher().add_event_handler(handler)
    try:
        results = retriever.retrieve("first")
    finally:
        get_dispatcher().event_handlers.remove(handler)
    assert len(results) == 4 and all(n.node.metadata["adapter_ranker"] in (LIVE, CANDIDATE, SHARED) for n in results)
    assert all("adapter_ranker" not in n.metadata for n in nodes)  # the index's nodes are left as they are
    (record,) = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert record["interleaving"]["candidate"] == "v0002" and record["adapter_version"] == "v0001"
    assert [d["ranker"] for d in record["documents"]] == [n.node.metadata["adapter_ranker"] for n in results]
