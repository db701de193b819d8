"""Ranking and retrieval scorers on cached histories equal the trained modules' full forward passes."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from gr_lightning.batch import JaggedBatch
from gr_lightning.data.ranking import RankingBatch
from gr_lightning.module import GRModule
from gr_lightning.ranking import RankingModule, TaskSpec
from gr_lightning.serving import RankingScorer, RetrievalScorer
from gr_lightning.zoo.hstu import HSTU
from gr_lightning.zoo.sasrec import SASRec

TASKS = [TaskSpec("click", "binary", "bit:0"), TaskSpec("value", "regression", "value", 0.5)]
TOL = dict(rtol=1e-10, atol=1e-10)


def hstu(d, n, kernel="pytorch"):
    model = HSTU(d, n, num_blocks=2, num_heads=2, attention_dim=8, linear_dim=8, dropout=0.2, kernel=kernel)
    for block in model.blocks:
        torch.nn.init.normal_(block.pos_bias, std=0.5)
        torch.nn.init.normal_(block.time_bias, std=0.5)
    return model


def ranking_model(contexts=True, prefix=True, actions=True, kernel="pytorch", dtype=torch.float64):
    torch.manual_seed(0)
    spec = {"num_actions": 4, "context_sizes": [3, 5] if contexts else [], "num_candidates": 3}
    model = RankingModule(partial(hstu, kernel=kernel), TASKS, num_items=20, max_seq_len=10, data_spec=spec,
                          embedding_dim=16, input_dropout=0.3, head_dropout=0.1, use_actions=actions,
                          contextual_prefix_mask=prefix)
    return model.to(dtype).eval()


def ranking_batch(lengths, candidates, seed=0) -> RankingBatch:
    g = torch.Generator().manual_seed(seed)
    n, k = sum(lengths), sum(candidates)
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    cand_offsets = torch.tensor([0, *torch.tensor(candidates).cumsum(0).tolist()])
    ts = 1_700_000_000 + torch.randint(0, 20000, (n + k,), generator=g).cumsum(0)
    hist_ts, cand_ts = ts[:n], ts[n:]
    return RankingBatch(
        items=torch.randint(1, 21, (n,), generator=g), actions=torch.randint(0, 4, (n,), generator=g),
        timestamps=hist_ts, offsets=offsets, max_len=max(lengths),
        candidates=torch.randint(1, 21, (k,), generator=g), candidate_timestamps=cand_ts,
        candidate_offsets=cand_offsets, max_candidates=max(candidates), labels=torch.randint(0, 4, (k,), generator=g),
        contexts=torch.randint(1, 3, (len(lengths), 2), generator=g),
        query_times=cand_ts[cand_offsets[:-1]])  # the request time: the first candidate's


def truncated(batch: RankingBatch, keep: list[int]) -> tuple[RankingBatch, dict]:
    """The batch with each history cut to its first ``keep[b]`` events, and the cut events (jagged)."""
    rows = [torch.arange(int(a), int(a) + k) for a, k in zip(batch.offsets[:-1], keep, strict=True)]
    rest = [torch.arange(int(a) + k, int(b)) for a, b, k in zip(batch.offsets[:-1], batch.offsets[1:], keep,
                                                                  strict=True)]
    rows, rest_rows = torch.cat(rows), torch.cat(rest)
    head = RankingBatch(**{**batch.__dict__, "items": batch.items[rows], "actions": batch.actions[rows],
                           "timestamps": batch.timestamps[rows], "max_len": max(keep),
                           "offsets": torch.tensor([0, *torch.tensor(keep).cumsum(0).tolist()])})
    counts = (batch.offsets[1:] - batch.offsets[:-1]) - torch.tensor(keep)
    tail = dict(items=batch.items[rest_rows], actions=batch.actions[rest_rows],
                timestamps=batch.timestamps[rest_rows], offsets=torch.cat([torch.zeros(1, dtype=torch.int64),
                                                                          counts.cumsum(0)]))
    return head, tail


@pytest.mark.parametrize("contexts,prefix,actions", [(True, True, True), (True, False, True), (False, True, True),
                                                     (False, True, False)])
def test_ranking_scores_equal_the_module_forward(contexts, prefix, actions):
    model = ranking_model(contexts, prefix, actions)
    batch = ranking_batch([3, 1, 6], [2, 3, 1])
    scorer = RankingScorer(model)
    cache = scorer.prefill(batch)
    torch.testing.assert_close(scorer.score_batch(cache, batch), model(batch), **TOL)


@pytest.mark.parametrize("contexts", [False, True])
def test_ranking_append_events_then_score(contexts):
    model = ranking_model(contexts, prefix=False)  # contextual tokens stay causal: appends are exact
    batch = ranking_batch([4, 2, 6], [3, 1, 2], seed=1)
    head, tail = truncated(batch, [1, 2, 3])  # user 1 gets no new events
    scorer = RankingScorer(model)
    cache = scorer.prefill(head)
    scorer.append(cache, **tail)
    torch.testing.assert_close(scorer.score_batch(cache, batch), model(batch), **TOL)


def test_ranking_triton_kernel_equals_the_module_forward():
    model = ranking_model(kernel="triton", dtype=torch.float32)
    batch = ranking_batch([3, 1], [2, 3], seed=2)
    scorer = RankingScorer(model)
    torch.testing.assert_close(scorer.score_batch(scorer.prefill(batch), batch), model(batch), rtol=1e-4, atol=1e-4)


def test_ranking_bad_requests_give_clear_errors():
    batch = ranking_batch([3, 2], [2, 1], seed=3)
    scorer = RankingScorer(ranking_model(prefix=True))
    cache = scorer.prefill(batch)
    head, tail = truncated(batch, [1, 1])
    with pytest.raises(ValueError, match="contextual prefix of 2 rows"):
        scorer.append(cache, **tail)
    with pytest.raises(ValueError, match="the cache was built for request times"):
        scorer.score(cache, batch.candidates, batch.candidate_timestamps, batch.candidate_offsets,
                     batch.query_times + 1)
    with pytest.raises(ValueError, match="describe 3 sequences but the cache holds 2"):
        scorer.score(cache, batch.candidates, batch.candidate_timestamps, torch.tensor([0, 1, 2, 3]),
                     batch.query_times)
    no_times = RankingBatch(**{**batch.__dict__, "query_times": None})
    with pytest.raises(ValueError, match="needs query_times"):
        scorer.prefill(no_times)
    scorer = RankingScorer(ranking_model(contexts=False))
    cache = scorer.prefill(head)
    with pytest.raises(ValueError, match="unknown action value 9"):
        scorer.append(cache, **{**tail, "actions": torch.full_like(tail["actions"], 9)})
    torch.manual_seed(0)
    sasrec = RankingModule(lambda d, n: SASRec(d, n, num_blocks=1, num_heads=1), TASKS, num_items=20, max_seq_len=10,
                           data_spec={"num_actions": 4, "context_sizes": [], "num_candidates": 3}, embedding_dim=16)
    with pytest.raises(TypeError, match="SASRec has no KV cache"):
        RankingScorer(sasrec)


def retrieval_model(dtype=torch.float64) -> GRModule:
    torch.manual_seed(0)
    return GRModule(hstu, num_items=30, max_seq_len=12, embedding_dim=16, input_dropout=0.3).to(dtype).eval()


def retrieval_batch(lengths, seed=0) -> JaggedBatch:
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(1, 31, (n,), generator=g).tolist() for n in lengths]
    times = [(1_700_000_000 + torch.randint(0, 9000, (n,), generator=g).cumsum(0)).tolist() for n in lengths]
    batch = JaggedBatch.from_sequences(seqs, times)
    batch.query_times = torch.tensor([t[-1] + 777 for t in times])
    return batch


def test_retrieval_append_gives_the_full_user_embedding():
    model = retrieval_model()
    full = retrieval_batch([5, 1, 8], seed=4)
    keep = [2, 1, 4]
    head = JaggedBatch.from_sequences(
        [full.items[a:a + k].tolist() for a, k in zip(full.offsets[:-1], keep, strict=True)],
        [full.timestamps[a:a + k].tolist() for a, k in zip(full.offsets[:-1], keep, strict=True)])
    rest = torch.cat([torch.arange(int(a) + k, int(b)) for a, b, k in zip(full.offsets[:-1], full.offsets[1:], keep,
                                                                          strict=True)])
    counts = full.lengths - torch.tensor(keep)
    scorer = RetrievalScorer(model)
    cache = scorer.prefill(head)
    got = scorer.append(cache, full.items[rest], full.timestamps[rest],
                        torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)]), full.query_times)
    want = model.encode(full)[full.last_index()]
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(scorer.user_embedding(cache, full.query_times), want, **TOL)
    torch.testing.assert_close(scorer.score_catalogue(cache, full.query_times), model.score_catalogue(full), **TOL)


def test_retrieval_capacity_is_the_models_history_limit():
    model = retrieval_model()
    scorer = RetrievalScorer(model)
    batch = retrieval_batch([3, 2], seed=5)
    with pytest.raises(ValueError, match="exceeds max_seq_len 12"):
        scorer.prefill(batch, capacity=13)
    cache = scorer.prefill(batch)
    with pytest.raises(ValueError, match="beyond the cache's capacity 12"):
        scorer.append(cache, torch.ones(10, dtype=torch.int64), torch.arange(10) + 1_800_000_000,
                      torch.tensor([0, 10, 10]))
    model.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        scorer.prefill(batch)
