"""The serving engine's scheduler over a fake Generator whose next token depends on each row's own history.

A row mixed up by merge/select bookkeeping would therefore produce different tokens.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from slm_toolkit.serving.engine import Engine, EngineUnavailable, GenRequest, QueueFull, SamplingParams, sample_token
from slm_toolkit.serving.metrics import ServerMetrics

V, EOS = 16, 1


def next_token(history: list[int]) -> int:
    return (sum(history) * 7 + len(history)) % V


class FakeGenerator:
    backend, eos_token_id, eos_token_ids, pad_token_id, max_length = "fake", EOS, (EOS,), 0, 512

    def __init__(self, fail_prefill: int | None = None, fail_decode: int | None = None):
        self.fail_prefill, self.fail_decode, self.batches = fail_prefill, fail_decode, []

    def _logits(self, rows):
        out = np.zeros((len(rows), V), dtype=np.float32)
        for i, h in enumerate(rows):
            out[i, next_token(h)] = 5.0
            out[i, (next_token(h) + 1) % V] = 4.0  # a runner-up, so masking EOS picks something defined
        return out

    def prefill(self, input_ids):
        if self.fail_prefill is not None and any(self.fail_prefill in r for r in input_ids):
            raise ValueError("bad prompt")
        rows = [list(r) for r in input_ids]
        return self._logits(rows), rows

    def decode_step(self, next_ids, state):
        self.batches.append(len(state))
        if self.fail_decode is not None and self.fail_decode in next_ids:
            raise ValueError("bad token")
        rows = [h + [t] for h, t in zip(state, next_ids)]
        return self._logits(rows), rows

    def merge(self, states):
        return [r for s in states for r in s]

    def select(self, state, keep):
        return [state[i] for i in keep]

    def generate(self, input_ids, config):
        out = []
        for ids in input_ids:
            h, new = list(ids), []
            for _ in range(config.max_new_tokens):
                t = next_token(h)
                if t == EOS and len(new) < config.min_new_tokens:
                    t = (t + 1) % V
                elif t == EOS and not config.ignore_eos:
                    break
                new.append(t)
                h.append(t)
            out.append(new)
        return out

    def score(self, prompt_ids, candidates):
        return [-float(len(c)) for c in candidates]


def expected(prompt, max_tokens, min_tokens=0, ignore_eos=False):
    h, new = list(prompt), []
    while len(new) < max_tokens:
        t = next_token(h)
        if t == EOS and len(new) < min_tokens:
            t = (t + 1) % V
        elif t == EOS and not ignore_eos:
            return new, "stop"
        new.append(t)
        h.append(t)
    return new, "length"


def make_engine(gen, **kw) -> Engine:
    eng = Engine(lambda: gen, ServerMetrics(), **kw)
    eng.start()
    assert eng.ready.wait(5)
    return eng


async def run_one(eng: Engine, prompt, params: SamplingParams, timeout: float | None = None):
    loop = asyncio.get_running_loop()
    now = time.perf_counter()
    req = GenRequest(list(prompt), params, loop, asyncio.Queue(), now, now + timeout if timeout else None)
    eng.submit(req)
    tokens = []
    while True:
        ev = await asyncio.wait_for(req.events.get(), 10)
        if ev[0] == "token":
            tokens.append(ev[1])
        elif ev[0] == "finish":
            return tokens, ev[1]
        else:
            return tokens, ("error", ev[1])


PROMPTS = [[2 + i % 5] * (1 + i % 7) for i in range(24)]


@pytest.mark.parametrize("scheduler", ["continuous", "naive"])
def test_outputs_equal_one_at_a_time(scheduler):
    gen = FakeGenerator()
    eng = make_engine(gen, max_batch_size=5, scheduler=scheduler)

    async def main():
        params = [SamplingParams(max_tokens=3 + i % 11, ignore_eos=i % 3 == 0, min_tokens=i % 4) for i in range(24)]
        got = await asyncio.gather(*(run_one(eng, p, sp) for p, sp in zip(PROMPTS, params)))
        want = [expected(p, sp.max_tokens, sp.min_tokens, sp.ignore_eos) for p, sp in zip(PROMPTS, params)]
        return got, want

    got, want = asyncio.run(main())
    eng.stop()
    assert [tuple(g) for g in got] == [tuple(w) for w in want]
    assert {r for _, r in want} == {"stop", "length"}  # both endings exercised
    if scheduler == "continuous":
        assert max(gen.batches) == 5  # batched, never above the limit


def test_continuous_engine_stops_on_every_eos_id():
    """A second EOS id of the model ends a request like the first (and is masked by min_tokens)."""
    prompt = [3, 3]
    second = next_token(prompt)  # the first token the fake generates for this prompt
    gen = FakeGenerator()
    gen.eos_token_ids = (EOS, second)
    eng = make_engine(gen, scheduler="continuous")

    async def main():
        stopped = await run_one(eng, prompt, SamplingParams(max_tokens=4))
        forced = await run_one(eng, prompt, SamplingParams(max_tokens=4, min_tokens=1))
        ignored = await run_one(eng, prompt, SamplingParams(max_tokens=1, ignore_eos=True))
        return stopped, forced, ignored

    stopped, forced, ignored = asyncio.run(main())
    eng.stop()
    assert second != EOS and stopped == ([], "stop")
    assert forced[0][0] not in (EOS, second)  # masked: the runner-up was taken
    assert ignored == ([second], "length")


def test_token_budget_limits_one_step_admission():
    gen = FakeGenerator()
    eng = Engine(lambda: gen, ServerMetrics(), max_batch_size=8, token_budget=10)
    seen = []
    real_prefill = gen.prefill
    gen.prefill = lambda rows: (seen.append(sum(map(len, rows))), real_prefill(rows))[1]
    eng.start()
    assert eng.ready.wait(5)
    seen.clear()

    async def main():
        return await asyncio.gather(
            *(run_one(eng, [3] * 4, SamplingParams(max_tokens=4, ignore_eos=True)) for _ in range(6))
        )

    asyncio.run(main())
    eng.stop()
    assert sum(seen) == 24 and max(seen) <= 10


def test_queue_full_and_not_ready():
    gen = FakeGenerator()
    eng = Engine(lambda: gen, ServerMetrics(), max_queue=2, max_batch_size=1)

    async def main():
        loop = asyncio.get_running_loop()
        req = lambda: GenRequest([2], SamplingParams(max_tokens=2), loop, asyncio.Queue(), 0.0, None)  # noqa: E731
        with pytest.raises(EngineUnavailable, match="not loaded"):
            eng.submit(req())
        eng.ready.set()  # pretend loaded, but the thread is not running: requests stay queued
        for _ in range(3):  # 2 waiting + 1 for the free batch slot
            eng.submit(req())
        with pytest.raises(QueueFull):
            eng.submit(req())

    asyncio.run(main())


def test_cancel_drops_the_sequence_at_the_next_step():
    gen = FakeGenerator()
    slow = gen.decode_step
    gen.decode_step = lambda ids, st: (time.sleep(0.002), slow(ids, st))[1]
    eng = make_engine(gen, max_batch_size=4)
    metrics = eng.metrics

    async def main():
        loop = asyncio.get_running_loop()
        req = GenRequest([2, 3], SamplingParams(max_tokens=400, ignore_eos=True), loop, asyncio.Queue(), 0.0, None)
        eng.submit(req)
        for _ in range(3):
            assert (await req.events.get())[0] == "token"
        eng.cancel(req)
        other = await run_one(eng, [4], SamplingParams(max_tokens=5, ignore_eos=True))
        return other

    tokens, reason = asyncio.run(main())
    eng.stop()
    assert reason == "length" and len(tokens) == 5
    assert metrics.finished.labels("cancelled")._value.get() == 1
    assert metrics.generation_tokens._value.get() < 100


@pytest.mark.parametrize("where", ["prefill", "decode"])
def test_a_failing_request_fails_alone(where):
    # prefill: the third prompt holds the poisoned id; decode: its first generated token is the poisoned one
    bad = 9 if where == "prefill" else next_token([5])
    gen = FakeGenerator(fail_prefill=9) if where == "prefill" else FakeGenerator(fail_decode=bad)
    eng = make_engine(gen, max_batch_size=8)
    prompts = [[2, 3], [4], [bad] if where == "prefill" else [5], [6, 6, 6]]

    async def main():
        return await asyncio.gather(*(run_one(eng, p, SamplingParams(max_tokens=6, ignore_eos=True)) for p in prompts))

    got = asyncio.run(main())
    eng.stop()
    assert got[2][1] == ("error", 500)
    for i in (0, 1, 3):
        if where == "decode":  # the others never feed the poisoned token
            assert bad not in expected(prompts[i], 6, ignore_eos=True)[0][:-1]
        assert got[i] == expected(prompts[i], 6, ignore_eos=True)


def test_an_engine_bug_fails_the_step_and_the_engine_keeps_serving():
    gen = FakeGenerator()
    real_merge, calls = gen.merge, []

    def merge_once_broken(states):
        calls.append(1)
        if len(calls) == 2:  # the first merge is the warm-up
            raise RuntimeError("bug")
        return real_merge(states)

    gen.merge = merge_once_broken
    slow = gen.decode_step
    gen.decode_step = lambda ids, st: (time.sleep(0.002), slow(ids, st))[1]
    eng = make_engine(gen, max_batch_size=4)

    async def main():
        loop = asyncio.get_running_loop()
        first = GenRequest([2], SamplingParams(max_tokens=500, ignore_eos=True), loop, asyncio.Queue(), 0.0, None)
        eng.submit(first)
        assert (await first.events.get())[0] == "token"
        second = await run_one(eng, [3], SamplingParams(max_tokens=3))  # admitting it calls merge: bug
        while (ev := await first.events.get())[0] == "token":
            pass
        third = await run_one(eng, [4], SamplingParams(max_tokens=3, ignore_eos=True))
        return ev, second, third

    ev, second, third = asyncio.run(main())
    eng.stop()
    assert ev[:2] == ("error", 500) and second[1] == ("error", 500)
    assert third == expected([4], 3, ignore_eos=True)


def test_timeout_answers_408():
    gen = FakeGenerator()
    slow = gen.decode_step
    gen.decode_step = lambda ids, st: (time.sleep(0.01), slow(ids, st))[1]
    eng = make_engine(gen)
    tokens, reason = asyncio.run(run_one(eng, [2], SamplingParams(max_tokens=500, ignore_eos=True), timeout=0.1))
    eng.stop()
    assert reason == ("error", 408) and 0 < len(tokens) < 500


def test_load_failure_is_reported():
    called = []

    def boom():
        raise RuntimeError("no weights here")

    eng = Engine(boom, ServerMetrics(), on_load_failure=lambda: called.append(1))
    eng.start()
    eng._thread.join(5)
    assert not eng.ready.is_set() and "no weights" in str(eng.load_error) and called == [1]


def test_stop_drains_accepted_requests():
    gen = FakeGenerator()
    eng = make_engine(gen, max_batch_size=2)

    async def main():
        loop = asyncio.get_running_loop()
        reqs = [
            GenRequest([2 + i], SamplingParams(max_tokens=8, ignore_eos=True), loop, asyncio.Queue(), 0.0, None)
            for i in range(5)
        ]
        for r in reqs:
            eng.submit(r)
        await asyncio.to_thread(eng.stop, True, 10)
        with pytest.raises(EngineUnavailable, match="shutting down"):
            eng.submit(reqs[0])
        return [[r.events.get_nowait() for _ in range(r.events.qsize())][-1] for r in reqs]

    assert asyncio.run(main()) == [("finish", "length")] * 5
    assert not eng.alive()


def test_sample_token_top_p_and_seed():
    row = torch.tensor([0.0, 3.0, 2.9, -5.0])
    assert sample_token(row, 0.0, 1.0, None) == 1
    draws = {sample_token(row, 1.0, 0.5, torch.Generator().manual_seed(s)) for s in range(50)}
    assert draws == {1}  # token 1 alone holds more than half the mass
    draws = {sample_token(row, 1.0, 0.9, torch.Generator().manual_seed(s)) for s in range(50)}
    assert draws == {1, 2}
    a = [sample_token(row, 1.5, 1.0, torch.Generator().manual_seed(3)) for _ in range(3)]
    assert len(set(a)) == 1


def test_score_jobs_run_on_the_engine_thread():
    from slm_toolkit.serving.sequences import ScoreJob

    gen = FakeGenerator()
    eng = make_engine(gen)

    async def main():
        loop = asyncio.get_running_loop()
        job = ScoreJob([2, 3], [[4], [5, 6]], loop, loop.create_future(), time.perf_counter(), None)
        eng.submit(job)
        late = ScoreJob([2], [[4]], loop, loop.create_future(), 0.0, 0.0)  # deadline already passed
        eng.submit(late)
        return await asyncio.wait_for(job.future, 5), await asyncio.gather(late.future, return_exceptions=True)

    got, (late_error,) = asyncio.run(main())
    eng.stop()
    assert got == [-1.0, -2.0] and late_error.status == 408
