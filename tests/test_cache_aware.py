"""The cache-aware policy as pure units: affinity, balance, eviction, self-correction."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from gollama._tokens import Timings
from gollama.hub.registry import Registration, Registry, Worker
from gollama.hub.routing.cache_aware import CacheAware
from gollama.hub.routing.policy import Backlog, Candidates, Choice, Outcome, Want
from gollama.hub.routing.prompts import PromptKey, chat_key

DOC = "The quick brown fox jumps over the lazy dog. " * 60  # ~2,700 characters


@pytest.fixture(autouse=True)
def nothing_runs() -> Iterator[None]:
    RUNNING.clear()
    yield
    RUNNING.clear()


def workers(count: int, slots: int = 1) -> list[Worker]:
    registry = Registry(heartbeat_interval=2.0)
    return [
        registry.register(Registration(f"http://10.0.0.{i}:9001", ("m",), slots, True, f"w{i}"), 0)
        for i in range(1, count + 1)
    ]


def chat(messages: list[dict[str, Any]]) -> Want:
    return Want("m", "/v1/chat/completions", prompt=chat_key("m", messages))


def conversation(doc: str, *turns: str) -> list[dict[str, Any]]:
    messages = [{"role": "system", "content": doc}]
    for n, question in enumerate(turns):
        if n:
            messages.append({"role": "assistant", "content": f"answer {n}"})
        messages.append({"role": "user", "content": question})
    return messages


@dataclass(frozen=True)
class Running:
    """A request on a worker: when it started and the slot time predicted for it."""

    started: float
    work: float


RUNNING: dict[Worker, list[Running]] = {}


def busy(worker: Worker, work: float, started: float = 0.0) -> None:
    """One more request runs on `worker` (seen by `choose` at time 0)."""
    worker.in_flight += 1
    RUNNING.setdefault(worker, []).append(Running(started, work))


def choose(
    policy: CacheAware,
    want: Want,
    pool: Sequence[Worker],
    ahead: dict[Worker, list[float]] | None = None,
    *,
    patient: bool = True,
    crowd: float = 0.0,
) -> Choice:
    open_workers = [w for w in pool if w.in_flight < w.slots]
    candidates = Candidates(open_workers, {w: i for i, w in enumerate(open_workers)}, want)
    backlog = Backlog(ahead or {}, crowd, 0.0, RUNNING)
    choice = policy.choose(want, candidates, backlog, patient=patient)
    assert choice is not None
    return choice


def serve(
    policy: CacheAware,
    want: Want,
    worker: Worker,
    *,
    cached: int | None = None,
    reply: str | None = None,
    seconds: float = 0.5,
) -> int:
    """Place `want` on `worker` and report it done; llama.cpp reports `cached` prompt tokens
    (by default what was predicted: the index was right). Returns the predicted characters."""
    assert want.prompt is not None
    prediction = policy.placed(want, worker)
    assert prediction is not None
    total = want.prompt.chars  # one token per character, like the byte-vocabulary test model
    reused = prediction.cached_chars if cached is None else cached
    # prefill at 2,000 tokens a second, 8 tokens generated in `seconds` less the prefill
    prompt_ms = (total - reused) / 2.0
    decode_ms = max(1.0, seconds * 1000 - prompt_ms)
    timings = Timings(total - reused, reused, 8, prompt_ms=prompt_ms, predicted_ms=decode_ms)
    policy.observe(worker, Outcome(want.prompt, prediction, timings, reply, seconds))
    return prediction.cached_chars


def test_the_next_turn_goes_back_to_the_worker_holding_the_conversation() -> None:
    pool = workers(4)
    policy = CacheAware(rng=random.Random(1))
    first = chat(conversation(DOC, "first question"))
    home = choose(policy, first, pool).worker
    serve(policy, first, home, reply="answer 1")
    second = chat(conversation(DOC, "first question", "second question"))
    for _ in range(20):
        choice = choose(policy, second, pool)
        assert choice.worker is home and not choice.wait


def test_the_reply_extends_the_chain_so_the_whole_previous_turn_matches() -> None:
    pool = workers(2)
    policy = CacheAware()
    first = chat(conversation(DOC, "first question"))
    serve(policy, first, pool[0], reply="answer 1")
    second = chat(conversation(DOC, "first question", "second question"))
    assert first.prompt is not None and second.prompt is not None
    extended = first.prompt.extended("assistant", "answer 1")
    assert second.prompt.links[: len(extended.links)] == extended.links
    assert serve(policy, second, pool[0]) == extended.chars


def test_a_shared_system_document_draws_other_conversations_to_its_worker() -> None:
    pool = workers(4)
    policy = CacheAware()
    serve(policy, chat(conversation(DOC, "what is the fox?")), pool[2])
    other = chat(conversation(DOC, "and the dog?"))
    assert choose(policy, other, pool).worker is pool[2]
    matched = policy.index.matches(other.prompt or PromptKey((), ()))
    assert matched[pool[2]] >= len(DOC)


def test_cold_requests_spread_evenly() -> None:
    pool = workers(4)
    policy = CacheAware(rng=random.Random(2))
    counts = dict.fromkeys(pool, 0)
    for n in range(400):
        want = chat(conversation(f"document {n}", "hello"))
        worker = choose(policy, want, pool).worker
        counts[worker] += 1
        serve(policy, want, worker)
    assert sorted(counts.values()) == [100, 100, 100, 100]


def test_cold_requests_go_to_the_least_busy_worker() -> None:
    pool = workers(3, slots=4)
    for worker, count in zip(pool, (3, 1, 2), strict=True):
        for _ in range(count):
            busy(worker, 1.0)
    policy = CacheAware()
    assert choose(policy, chat(conversation("fresh", "hi")), pool).worker is pool[1]


def test_a_request_waits_for_its_busy_worker_when_that_is_cheaper() -> None:
    pool = workers(2)
    policy = CacheAware()
    want = chat(conversation(DOC, "q1"))
    serve(policy, want, pool[0], seconds=0.2)
    serve(policy, chat(conversation("other", "x")), pool[1], seconds=0.2)
    busy(pool[0], 0.2)  # its request has 0.2 s left; the whole document elsewhere takes longer
    choice = choose(policy, chat(conversation(DOC, "q2")), pool)
    assert choice.worker is pool[0] and choice.wait
    assert choice.expected_wait == pytest.approx(0.2)
    assert choice.patience > 1  # computing the document elsewhere: worth waiting that long


def test_a_choice_to_wait_names_the_workers_that_could_change_it() -> None:
    """It stands unless another worker holding enough of the prompt to be cheaper, were it
    idle, opens (the scheduler need not ask again at every freed slot); it says what it would
    be if it could not wait."""
    pool = workers(3)
    policy = CacheAware()
    want = chat(conversation(DOC, "q1"))
    serve(policy, want, pool[0], seconds=0.2)
    serve(policy, want, pool[1], seconds=0.2)
    busy(pool[0], 0.2)
    busy(pool[1], 0.2)
    choice = choose(policy, chat(conversation(DOC, "q1", "q2")), pool)
    assert choice.wait and choice.worker in pool[:2]
    other_holder = pool[1] if choice.worker is pool[0] else pool[0]
    assert choice.unless_open is not None and list(choice.unless_open) == [other_holder]
    assert choice.otherwise is not None
    assert choice.otherwise.worker is pool[2] and not choice.otherwise.wait
    impatient = choose(policy, chat(conversation(DOC, "q1", "q2")), pool, patient=False)
    assert impatient.worker is pool[2] and impatient.work == choice.otherwise.work


def test_a_holder_of_too_little_of_the_prompt_cannot_change_a_choice_to_wait() -> None:
    pool = workers(3)
    policy = CacheAware()
    serve(policy, chat(conversation(DOC, "q1")), pool[0], seconds=0.2)
    serve(policy, chat(conversation(DOC[:600], "x")), pool[1], seconds=0.2)  # a small part
    serve(policy, chat(conversation("other", "y")), pool[2], seconds=0.2)
    busy(pool[0], 0.2)
    busy(pool[1], 0.2)
    choice = choose(policy, chat(conversation(DOC, "q1", "q2")), pool)
    assert choice.wait and choice.worker is pool[0]
    assert choice.unless_open is not None and list(choice.unless_open) == []


def test_a_choice_to_wait_made_with_no_open_worker_is_asked_again_when_one_opens() -> None:
    """Nothing open to compare with: it stands only if waiting beats what a worker holding
    none of the prompt would cost with one slot just freed."""
    pool = workers(2)
    policy = CacheAware()
    serve(policy, chat(conversation(DOC, "q1")), pool[0], seconds=0.2)
    serve(policy, chat(conversation("other", "x")), pool[1], seconds=0.2)
    busy(pool[0], 0.2)
    busy(pool[1], 0.2)
    soon = choose(policy, chat(conversation(DOC, "q1", "q2")), pool)
    assert soon.wait and soon.unless_open is not None  # 0.2 s beats the whole document
    RUNNING.clear()
    for worker in pool:
        worker.in_flight = 0
    busy(pool[0], 60.0)
    busy(pool[1], 0.2)
    late = choose(policy, chat(conversation(DOC, "q1", "q2")), pool)
    assert late.wait and late.worker is pool[0] and late.otherwise is None
    assert late.unless_open is None  # a minute: any worker that opens is worth a look


def test_affinity_never_piles_work_on_one_worker_while_another_idles() -> None:
    pool = workers(2)
    policy = CacheAware()
    # A request holds a slot 1 s; computing the document elsewhere takes 1.35 s.
    serve(policy, chat(conversation(DOC, "q1")), pool[0], seconds=1.0)
    serve(policy, chat(conversation("other", "x")), pool[1], seconds=1.0)
    busy(pool[0], 1.0)
    want = chat(conversation(DOC, "q2"))
    assert choose(policy, want, pool).wait  # waiting for one request is worth it
    # With three requests of a second each already waiting for it, the idle worker is cheaper.
    choice = choose(policy, want, pool, {pool[0]: [1.0, 1.0, 1.0]})
    assert choice.worker is pool[1] and not choice.wait


def test_a_busy_holder_about_to_free_is_waited_for() -> None:
    """Its request has run 5.9 of its 6 predicted seconds: the wait is what is left, not a
    mean slot time, so the conversation stays where it is cached."""
    pool = workers(2)
    policy = CacheAware()
    serve(policy, chat(conversation(DOC, "q1")), pool[0], seconds=6.0)
    serve(policy, chat(conversation("other", "x")), pool[1], seconds=6.0)
    busy(pool[0], 6.0, started=-5.9)
    choice = choose(policy, chat(conversation(DOC, "q1", "q2")), pool)
    assert choice.worker is pool[0] and choice.wait
    assert choice.expected_wait == pytest.approx(0.1)


def test_a_long_cold_job_on_the_holder_sends_a_newcomer_elsewhere() -> None:
    """The holder just began a long cold job: waiting for it costs more than the prompt."""
    pool = workers(2)
    policy = CacheAware()
    serve(policy, chat(conversation(DOC, "q1")), pool[0], seconds=0.5)
    serve(policy, chat(conversation("other", "x")), pool[1], seconds=0.5)
    busy(pool[0], 30.0, started=-0.1)
    choice = choose(policy, chat(conversation(DOC, "q1", "q2")), pool)
    assert choice.worker is pool[1] and not choice.wait


def test_a_job_past_its_predicted_time_is_given_a_share_of_its_overrun() -> None:
    """A prediction that was too short does not make the holder look about to free forever."""
    pool = workers(2)
    policy = CacheAware()
    serve(policy, chat(conversation(DOC, "q1")), pool[0], seconds=0.5)
    serve(policy, chat(conversation("other", "x")), pool[1], seconds=0.5)
    busy(pool[0], 0.5, started=-40.0)  # predicted 0.5 s, running for 40 s
    choice = choose(policy, chat(conversation(DOC, "q1", "q2")), pool)
    assert choice.worker is pool[1] and not choice.wait


def test_when_many_requests_queue_recomputing_a_held_prompt_costs_more() -> None:
    pool = workers(2)
    policy = CacheAware()
    serve(policy, chat(conversation(DOC, "q1")), pool[0], seconds=1.0)
    serve(policy, chat(conversation("other", "x")), pool[1], seconds=1.0)
    busy(pool[0], 1.0)
    want = chat(conversation(DOC, "q2"))
    ahead = {pool[0]: [1.0, 1.0, 1.0]}
    assert not choose(policy, want, pool, ahead).wait
    # Eight requests wait per slot: the compute spent elsewhere would delay all of them.
    choice = choose(policy, want, pool, ahead, crowd=8.0)
    assert choice.worker is pool[0] and choice.wait


def test_an_impatient_request_takes_a_free_worker() -> None:
    pool = workers(2)
    policy = CacheAware()
    serve(policy, chat(conversation(DOC, "q1")), pool[0])
    busy(pool[0], 0.1)
    choice = choose(policy, chat(conversation(DOC, "q2")), pool, patient=False)
    assert choice.worker is pool[1] and not choice.wait


def test_an_impatient_request_with_one_candidate_counts_what_that_worker_holds() -> None:
    """One open worker and no waiting allowed: the choice is forced, and its work there is what
    the full comparison estimates (only that worker's share of the prompt is looked up)."""
    pool = workers(2)
    policy = CacheAware(rng=random.Random(1))
    serve(policy, chat(conversation(DOC, "q1")), pool[0], reply="answer 1")
    follow_up = chat(conversation(DOC, "q1", "q2"))
    held = choose(policy, follow_up, pool[:1], patient=False)
    compared = choose(policy, follow_up, pool[:1], patient=True)  # the full comparison
    cold = choose(policy, follow_up, pool[1:], patient=False)
    assert (held.worker, compared.worker, cold.worker) == (pool[0], pool[0], pool[1])
    assert not (held.wait or compared.wait or cold.wait)
    assert held.work == compared.work < cold.work


def test_the_index_is_bounded_and_evicts_the_least_recently_used() -> None:
    (worker,) = workers(1)
    policy = CacheAware(max_links=50)
    wants = [chat(conversation(f"doc {n}", "q")) for n in range(40)]
    for want in wants:
        serve(policy, want, worker)
    cache = policy.index.caches[worker]
    assert len(cache.links) <= 50
    assert sum(mask.bit_count() for mask in policy.index.holders.values()) == len(cache.links)
    assert worker not in policy.index.matches(wants[0].prompt or PromptKey((), ()))
    assert worker in policy.index.matches(wants[-1].prompt or PromptKey((), ()))


def test_a_miss_corrects_the_index_and_learns_the_servers_real_capacity() -> None:
    a, b = workers(2)
    policy = CacheAware()
    ancient = chat(conversation("ancient " + DOC, "q"))
    serve(policy, ancient, a)
    old = chat(conversation(DOC, "q1"))
    serve(policy, old, a)
    for n in range(5):  # others push it out of the server's real cache
        serve(policy, chat(conversation(f"{n} " + DOC, "x")), a)
    serve(policy, chat(conversation("elsewhere " + DOC, "q1")), b)
    # The index still thinks `a` holds the conversation; llama.cpp says it reused nothing.
    again = chat(conversation(DOC, "q1", "q2"))
    assert choose(policy, again, [a, b]).worker is a
    assert serve(policy, again, a, cached=0) > 0
    accuracy = policy.describe()["prediction"]
    assert accuracy["missed_hits"] == 1 and accuracy["predictions"] == 9
    assert accuracy["accuracy"] == round(8 / 9, 4)
    assert policy.index.caches[a].capacity < 6 * len(DOC)
    # What was as old as the lost conversation or older is dropped; what came after is kept.
    assert a not in policy.index.matches(ancient.prompt or PromptKey((), ()))
    latest = chat(conversation("4 " + DOC, "x"))
    assert a in policy.index.matches(latest.prompt or PromptKey((), ()))
    # From now on, links further back than the learned capacity are evicted as others come.
    for n in range(10):
        serve(policy, chat(conversation(f"later {n} " + DOC, "x")), a)
    assert a not in policy.index.matches(latest.prompt or PromptKey((), ()))


def test_speeds_are_learned_from_timings_apart() -> None:
    (worker,) = workers(1)
    policy = CacheAware()
    want = chat(conversation(DOC, "q"))
    serve(policy, want, worker, seconds=2.0)  # cold: the whole prompt computed
    speeds = policy.index.caches[worker].speeds
    assert speeds.prefill_tps == 2000.0  # prompt_ms is tokens / 2 in `serve`
    assert speeds.tokens_per_char == 1.0
    assert speeds.reply_tokens == 8
    decode = speeds.decode_tps
    assert decode is not None
    # a warm turn (its prompt from the cache) changes neither speed: each is learned apart
    serve(policy, chat(conversation(DOC, "q", "q2")), worker, seconds=(8 / decode))
    assert speeds.prefill_tps == 2000.0
    assert speeds.decode_tps == pytest.approx(decode, rel=0.01)
    described = policy.describe()["workers"]["w1"]
    assert described["prefill_tokens_per_s"] == 2000.0
    assert described["reply_tokens"] == 8


def greeted(policy: CacheAware, worker: Worker) -> None:
    """A short chat ("Hi", as a client's first check sends) served on `worker`: a few
    characters, dozens of tokens of chat template around them."""
    hello = chat([{"role": "user", "content": "Hi"}])
    assert hello.prompt is not None and hello.prompt.chars < 20
    prediction = policy.placed(hello, worker)
    timings = Timings(56, 0, 1, prompt_ms=70.0, predicted_ms=1.0)
    policy.observe(worker, Outcome(hello.prompt, prediction, timings, "Hello", 0.1))


def test_a_short_prompt_does_not_skew_the_tokens_per_character() -> None:
    """Tokens per character weigh each prompt by its length: a greeting's template tokens
    must not make the long prompts after it look several times longer than they are."""
    (worker,) = workers(1)
    policy = CacheAware()
    greeted(policy, worker)
    serve(policy, chat(conversation(DOC, "q")), worker)  # one token per character
    for speeds in (policy.index.caches[worker].speeds, policy.overall):
        assert speeds.tokens_per_char == pytest.approx(1.0, rel=0.1)  # not 4.7
    want = chat(conversation(DOC, "q", "q2"))
    assert want.prompt is not None
    work = choose(policy, want, [worker]).work
    cold_prefill = want.prompt.chars / 2000  # its speeds: 2,000 tokens a second, 1 per char
    assert work < cold_prefill  # held: only the new turn is computed, not 4.7x the prompt


def test_a_hit_is_judged_a_hit_whatever_the_learned_tokens_per_character() -> None:
    """Whether a predicted hit was one is read from llama.cpp's own counts: a skewed
    tokens-per-character must not turn a hit into a "miss" that shrinks the learned capacity
    and drops the conversations the server holds."""
    (worker,) = workers(1)
    policy = CacheAware()
    greeted(policy, worker)
    policy.index.caches[worker].speeds.tokens_per_char = 5.0  # skewed, as a greeting once made it
    first = chat(conversation(DOC, "q"))
    serve(policy, first, worker, reply="answer 1")
    policy.index.caches[worker].speeds.tokens_per_char = 5.0
    second = chat(conversation(DOC, "q", "q2"))
    assert serve(policy, second, worker) > 0  # predicted a hit, and llama.cpp reused it
    accuracy = policy.describe()["prediction"]
    assert accuracy["missed_hits"] == 0 and accuracy["confirmed_hits"] == 1
    assert policy.describe()["workers"]["w1"]["capacity_chars"] is None  # not shrunk
    assert worker in policy.index.matches(second.prompt or PromptKey((), ()))


def test_a_prompt_computed_beside_another_counts_as_computed_alone() -> None:
    """llama.cpp computes its busy slots together: a prompt that shared a two-slot worker with
    another request was computed slower than the worker computes one alone."""
    (worker,) = workers(1, slots=2)
    policy = CacheAware()
    worker.in_flight = 2  # placed while another request ran: half the compute was taken
    serve(policy, chat(conversation(DOC, "q")), worker, seconds=2.0)
    assert policy.index.caches[worker].speeds.prefill_tps == 3000.0  # 2,000 measured x 1.5


def test_a_worker_that_leaves_is_forgotten() -> None:
    a, b = workers(2)
    policy = CacheAware()
    want = chat(conversation(DOC, "q"))
    serve(policy, want, a)
    policy.forget(a)
    assert policy.index.holders == {}
    assert choose(policy, want, [b]).worker is b


def test_a_worker_that_comes_after_one_that_left_holds_nothing_of_it() -> None:
    """Holders are bits numbered per worker; a newcomer takes the number of one that left
    (masks stay short) and inherits none of its prompts."""
    a, b, c = workers(3)
    policy = CacheAware()
    kept, lost = chat(conversation(DOC, "kept")), chat(conversation("other " + DOC, "lost"))
    serve(policy, kept, b)
    serve(policy, lost, a)
    serve(policy, kept, a)
    number = policy.index.numbers[a]
    policy.forget(a)
    serve(policy, chat(conversation("third " + DOC, "q")), c)
    assert policy.index.numbers[c] == number  # `a`'s, free again
    assert policy.index.matches(lost.prompt or PromptKey((), ())) == {}
    assert set(policy.index.matches(kept.prompt or PromptKey((), ()))) == {b}


def test_a_decision_looks_at_a_sample_of_a_thousand_workers() -> None:
    pool = workers(1000, slots=4)
    policy = CacheAware(rng=random.Random(3))
    want = chat(conversation(DOC, "q"))
    serve(policy, want, pool[777])
    assert choose(policy, chat(conversation(DOC, "q", "q2")), pool).worker is pool[777]
    chosen = {choose(policy, chat(conversation(f"cold {n}", "q")), pool).worker for n in range(50)}
    assert len(chosen) > 30  # spread, not always the first open worker


def test_noise_in_measured_speeds_does_not_pile_cold_requests_on_one_worker() -> None:
    a, b = workers(2)
    policy = CacheAware()
    policy.index.cache(a).speeds.prefill_tps = 2000.0
    policy.index.cache(b).speeds.prefill_tps = 1200.0  # slower, but within the noise band
    chosen = [choose(policy, chat(conversation(f"doc {n}", "q")), [a, b]).worker for n in range(6)]
    assert chosen.count(a) == chosen.count(b) == 3
    policy.index.cache(b).speeds.prefill_tps = 100.0  # really slower: cold requests avoid it
    chosen = [
        choose(policy, chat(conversation(DOC + str(n), "q")), [a, b]).worker for n in range(6)
    ]
    assert chosen == [a] * 6


def test_a_placement_the_worker_refused_is_forgotten_and_what_it_held_is_kept() -> None:
    """With several hubs, a worker busy with another hub's requests refuses one before
    starting it: the index does not count that prompt's new part as held there."""
    pool = workers(2)
    policy = CacheAware()
    first = chat(conversation(DOC, "q1"))
    serve(policy, first, pool[0], reply="answer 1")
    second = chat(conversation(DOC, "q1", "q2"))
    assert second.prompt is not None
    prediction = policy.placed(second, pool[0])
    assert prediction is not None
    policy.refused(pool[0], second.prompt, prediction)
    held = policy.index.matches(second.prompt)
    assert 0 < held[pool[0]] == prediction.cached_chars < second.prompt.chars


def test_another_hubs_requests_on_the_holder_count_as_half_done() -> None:
    """The holder's slot is held by another hub's request (its prediction unknown here): the
    wait is half this request's slot time, so the conversation waits for its holder."""
    pool = workers(2)
    policy = CacheAware()
    serve(policy, chat(conversation(DOC, "q1")), pool[0], seconds=2.0)
    serve(policy, chat(conversation("other", "x")), pool[1], seconds=2.0)
    pool[0].elsewhere = 1
    choice = choose(policy, chat(conversation(DOC, "q1", "q2")), pool)
    assert choice.worker is pool[0] and choice.wait
    assert 0 < choice.expected_wait == pytest.approx(choice.work / 2)


def test_another_hubs_request_counts_as_its_hub_predicted() -> None:
    """The other hub said how long its request on the holder runs (`Worker.others`): a short
    one is waited for exactly that long; a long one sends the conversation elsewhere, where
    the guess of half this request's slot time would have kept it waiting."""
    pool = workers(2)
    policy = CacheAware()
    serve(policy, chat(conversation(DOC, "q1")), pool[0], seconds=2.0)
    serve(policy, chat(conversation("other", "x")), pool[1], seconds=2.0)
    second = chat(conversation(DOC, "q1", "q2"))
    pool[0].elsewhere = 1
    pool[0].others = [(0.5, -0.2)]  # predicted 0.5 s, started 0.2 s ago
    choice = choose(policy, second, pool)
    assert choice.worker is pool[0] and choice.wait
    assert choice.expected_wait == pytest.approx(0.3)
    pool[0].others = [(60.0, 0.0)]
    assert choose(policy, second, pool).worker is pool[1]


def test_other_hubs_waiters_count_only_once_the_worker_is_full() -> None:
    """Waiters another hub holds out for the holder (`Worker.waiting_elsewhere`) lengthen the
    wait for it once it is full; while it has a free slot they do not keep this hub from it
    (each hub leaving a free slot to the others' waiters, none would take it)."""
    pool = workers(2)
    policy = CacheAware()
    serve(policy, chat(conversation(DOC, "q1")), pool[0], seconds=2.0)
    serve(policy, chat(conversation("other", "x")), pool[1], seconds=2.0)
    second = chat(conversation(DOC, "q1", "q2"))
    pool[0].waiting_elsewhere = [0.4]
    assert not choose(policy, second, pool).wait  # the free holder is taken
    pool[0].elsewhere = 1
    pool[0].others = [(0.5, 0.0)]
    choice = choose(policy, second, pool)
    assert choice.worker is pool[0] and choice.wait
    assert choice.expected_wait == pytest.approx(0.9)  # its request, then the other's waiter


def test_a_hint_from_another_hub_draws_the_conversation_to_its_holder() -> None:
    pool = workers(3)
    policy = CacheAware(rng=random.Random(3))
    second = chat(conversation(DOC, "q1", "q2"))
    assert second.prompt is not None
    held = PromptKey(second.prompt.links[:-1], second.prompt.ends[:-1])
    policy.hinted(pool[2], held)
    for _ in range(10):
        assert choose(policy, second, pool).worker is pool[2]
