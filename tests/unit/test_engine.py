"""The serving engine's scheduler over a fake Generator whose next token depends on each row's own history.

A row mixed up by merge/select bookkeeping would therefore produce different tokens.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from slm_toolkit.runtime.base import GenerationConfig
from slm_toolkit.runtime.decoding import Sampler, generate, next_tokens
from slm_toolkit.serving.engine import Engine, EngineUnavailable, GenRequest, QueueFull, SamplingParams, score_job
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
        return generate(self, input_ids, config)

    def score(self, prompt_ids, candidates):
        return [-float(len(c)) for c in candidates]


def expected(prompt, max_tokens, min_tokens=0, ignore_eos=False):
    h, new = list(prompt), []
    while len(new) < max_tokens:
        t = next_token(h)
        if t == EOS and not ignore_eos:  # with ignore_eos, EOS is an ordinary token
            if len(new) >= min_tokens:
                return new, "stop"
            t = (t + 1) % V  # masked before min_tokens: the runner-up
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
            tokens.append(ev[2])
        elif ev[0] == "finish":
            return tokens, ev[2]
        else:
            return tokens, ("error", ev[2])


PROMPTS = [[2 + i % 5] * (1 + i % 7) for i in range(24)]


@pytest.mark.parametrize("scheduler", ["continuous", "naive"])
def test_outputs_equal_one_at_a_time(scheduler):
    gen = FakeGenerator()
    eng = make_engine(gen, max_batch_size=5, scheduler=scheduler)
    gen.batches.clear()  # the warm-up's

    async def main():
        params = [SamplingParams(max_tokens=3 + i % 11, ignore_eos=i % 3 == 0, min_tokens=i % 4) for i in range(24)]
        got = await asyncio.gather(*(run_one(eng, p, sp) for p, sp in zip(PROMPTS, params)))
        want = [expected(p, sp.max_tokens, sp.min_tokens, sp.ignore_eos) for p, sp in zip(PROMPTS, params)]
        return got, want

    got, want = asyncio.run(main())
    eng.stop()
    assert [tuple(g) for g in got] == [tuple(w) for w in want]
    assert {r for _, r in want} == {"stop", "length"}  # both endings exercised
    assert max(gen.batches) == (5 if scheduler == "continuous" else 1)  # batched, never above the limit


def test_unbatched_engine_decodes_every_sequence_alone():
    """batch_invariant=False (e.g. ONNX dynamic int8): every model call sees one sequence, and
    requests still interleave token by token."""
    gen = FakeGenerator()
    prefills = []
    real = gen.prefill
    gen.prefill = lambda rows: (prefills.append(len(rows)), real(rows))[1]
    eng = make_engine(gen, max_batch_size=5, batch_invariant=False)

    async def main():
        params = [SamplingParams(max_tokens=3 + i % 11, ignore_eos=True) for i in range(12)]
        got = await asyncio.gather(*(run_one(eng, p, sp) for p, sp in zip(PROMPTS, params)))
        return got, [expected(p, sp.max_tokens, ignore_eos=True) for p, sp in zip(PROMPTS, params)]

    got, want = asyncio.run(main())
    eng.stop()
    assert [tuple(g) for g in got] == [tuple(w) for w in want]
    assert set(gen.batches) == {1} and set(prefills) == {1}
    observed = {x.name: x.value for m in eng.metrics.registry.collect() if m.name == "batch_size" for x in m.samples}
    assert observed["batch_size_sum"] > observed["batch_size_count"]  # several ran at once


@pytest.mark.parametrize("seed", [0, 7])
def test_one_sampler_same_seed_same_tokens_on_every_path(seed):
    """A sampled request (temperature 1, top_p 0.95, penalties) gives the same tokens through
    runtime generate, the naive scheduler and the continuous one among other requests."""
    gen = FakeGenerator()
    kw = dict(temperature=1.0, top_p=0.95, seed=seed, presence_penalty=0.3, frequency_penalty=0.1)
    cfg = GenerationConfig(max_new_tokens=12, ignore_eos=True, **kw)
    want = generate(gen, [PROMPTS[3]], cfg)[0]
    assert want != expected(PROMPTS[3], 12, ignore_eos=True)[0]  # it really sampled
    outs = []
    for scheduler in ("naive", "continuous"):
        eng = make_engine(FakeGenerator(), max_batch_size=4, scheduler=scheduler)

        async def main(eng=eng):
            others = [SamplingParams(max_tokens=9, temperature=0.8, seed=i) for i in range(5)]
            mine = SamplingParams(max_tokens=12, ignore_eos=True, **kw)
            return await asyncio.gather(
                *(run_one(eng, p, sp) for p, sp in zip(PROMPTS[5:], others)), run_one(eng, PROMPTS[3], mine)
            )

        outs.append(asyncio.run(main())[-1])
        eng.stop()
    assert outs == [(want, "length")] * 2


def test_naive_scheduler_times_out_while_generating():
    gen = FakeGenerator()
    slow = gen.decode_step
    gen.decode_step = lambda ids, st: (time.sleep(0.01), slow(ids, st))[1]
    eng = make_engine(gen, scheduler="naive")
    t0 = time.perf_counter()
    tokens, reason = asyncio.run(run_one(eng, [2], SamplingParams(max_tokens=500, ignore_eos=True), timeout=0.1))
    eng.stop()
    assert reason == ("error", 408) and 0 < len(tokens) < 500 and time.perf_counter() - t0 < 2.0


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
    assert (ev[0], ev[2]) == ("error", 500) and second[1] == ("error", 500)
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

    assert asyncio.run(main()) == [("finish", 0, "length")] * 5
    assert not eng.alive()


def test_sampler_top_p_seed_and_penalties():
    row = np.array([0.0, 3.0, 2.9, -5.0], dtype=np.float32)
    assert Sampler(0.0).pick(row) == 1
    assert {Sampler(1.0, 0.5, seed=s).pick(row) for s in range(50)} == {1}  # token 1 alone holds > half the mass
    assert {Sampler(1.0, 0.9, seed=s).pick(row) for s in range(50)} == {1, 2}
    assert len({Sampler(1.5, 1.0, seed=3).pick(row) for _ in range(3)}) == 1
    assert Sampler(0.0).pick(row, banned=[1]) == 2
    pen = Sampler(0.0, presence_penalty=0.2)  # greedy with a penalty: 1, then 2 (3.0 - 0.2 < 2.9)
    assert [pen.pick(row) for _ in range(3)] == [1, 2, 1]
    batched = Sampler(0.0, presence_penalty=0.2)  # the batch path counts the tokens too
    assert [next_tokens(row[None], [batched])[0] for _ in range(3)] == [1, 2, 1]
    freq = Sampler(0.0, frequency_penalty=0.06)
    assert [freq.pick(row) for _ in range(4)] == [1, 1, 2, 1]


def test_score_jobs_run_on_the_engine_thread():
    gen = FakeGenerator()
    eng = make_engine(gen)

    async def main():
        loop = asyncio.get_running_loop()
        job = score_job([2, 3], [[4], [5, 6]], loop, loop.create_future(), time.perf_counter(), None)
        eng.submit(job)
        late = score_job([2], [[4]], loop, loop.create_future(), 0.0, 0.0)  # deadline already passed
        eng.submit(late)
        return await asyncio.wait_for(job.future, 5), await asyncio.gather(late.future, return_exceptions=True)

    got, (late_error,) = asyncio.run(main())
    eng.stop()
    assert got == [-1.0, -2.0] and late_error.status == 408
