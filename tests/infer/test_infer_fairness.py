"""Fair admission between owners (API keys): the owner holding the fewest slots goes first, one owner's many requests
do not keep another's waiting, reserved slots stay for owners holding none; one owner alone is served in order."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

from support import loaded
from mulm_jax.infer import Engine, SamplingParams
from mulm_jax.infer.fairness import FairQueue

_clock = itertools.count()


@dataclass
class Waiting:
    owner: str
    params: SamplingParams = SamplingParams()
    cancelled: bool = False
    submitted: float = field(default_factory=lambda: float(next(_clock)))


def test_one_owner_is_served_first_come_first_served():
    queue = FairQueue()
    requests = [Waiting("a") for _ in range(5)]
    for r in requests:
        queue.append(r)
    assert [queue.pop(1, {}) for _ in range(5)] == requests and len(queue) == 0
    assert queue.pop(1, {}) is None


def test_the_owner_holding_fewest_slots_goes_first_then_the_longest_waiting():
    queue = FairQueue()
    many = [Waiting("many") for _ in range(32)]
    one = Waiting("one")
    for r in [*many, one]:
        queue.append(r)
    assert queue.pop(4, {}) is many[0]  # both hold none: the one waiting longest
    assert queue.pop(3, {"many": 1}) is one  # behind 31 others in a plain queue
    assert queue.pop(2, {"many": 2, "one": 1}) is many[1]
    assert queue.pop(0, {"many": 3, "one": 1}) is None  # no free slot
    assert len(queue) == 30


def test_reserved_slots_are_kept_for_an_owner_holding_none():
    queue = FairQueue(reserved=1)
    for _ in range(3):
        queue.append(Waiting("many"))
    assert queue.pop(2, {}) is not None
    assert queue.pop(1, {"many": 1}) is None  # the last free slot is reserved
    newcomer = Waiting("one")
    queue.append(newcomer)
    assert queue.pop(1, {"many": 1}) is newcomer
    assert queue.pop(2, {"many": 1, "one": 1}) is not None  # two free: one may go to an owner holding one


def test_beam_searches_need_no_free_slot_and_cancelled_requests_are_dropped():
    queue = FairQueue()
    beam = Waiting("a", SamplingParams(num_beams=2))
    cancelled = Waiting("b", cancelled=True)
    queue.append(cancelled)
    queue.append(beam)
    assert queue.drop_cancelled() == [cancelled] and len(queue) == 1
    assert queue.pop(0, {"a": 3}) is beam


def engine_events(slots: int, reserved: int, owners: list[str]) -> list[tuple[str, int]]:
    """Every token event, in order, as (owner and number of the request, token index), of the real Engine serving
    requests of `owners` (in that order, all queued before it starts), each 4 greedy tokens."""
    events: list[tuple[str, int]] = []
    engine = Engine(loaded(max_seq_len=16), slots=slots, max_queue=64, reserved_slots=reserved)
    numbers: Counter = Counter()
    requests = []
    for owner in owners:
        name = f"{owner}{numbers[owner]}"
        numbers[owner] += 1
        params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
        on_token = lambda e, name=name: events.append((name, e.index))  # noqa: E731
        requests.append(engine.submit("ab", params, on_token=on_token, owner=owner))
    with engine:
        for r in requests:
            r.result(60)
    return events


def test_the_engine_starts_one_keys_single_request_before_another_keys_32():
    events = engine_events(slots=2, reserved=0, owners=["many"] * 32 + ["one"])
    first_tokens = [name for name, index in events if index == 0]
    assert first_tokens.index("one0") == 1  # in the first pair of slots; a plain queue would start it 33rd
    finished = [name for name, index in events if index == 3]
    assert finished.index("one0") <= 1


def test_an_owner_holding_a_slot_leaves_the_reserved_one_free():
    events = engine_events(slots=2, reserved=1, owners=["many"] * 4)
    running, most = set(), 0
    for name, index in events:
        running.add(name)
        most = max(most, len(running))
        if index == 3:
            running.discard(name)
    assert most == 1  # one at a time (without the reserve, two): the second slot stays for another owner
