"""Fair admission: which waiting request takes the next free slot when several callers (API keys) share an engine.

Requests wait in one queue per owner. A free slot goes to the first waiting request of the owner that holds the
fewest slots now (ties: the one that has waited longest), so one owner's 32 requests cannot keep another owner's
single request waiting behind them: it starts at the next free slot. With `reserved` slots, an owner that holds a
slot already may not take the last `reserved` free ones; they are kept for owners that hold none, whose first request
then starts at once rather than when some slot frees. With one owner (a server without keys, or one key) the order
is first come, first served, as a plain queue's.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any, Iterator, Mapping, Optional, Protocol


class Waiting(Protocol):
    owner: Optional[str]
    submitted: float
    cancelled: bool
    params: Any  # SamplingParams: num_beams > 1 needs no slot


class FairQueue:
    def __init__(self, reserved: int = 0):
        self.reserved = reserved
        self._queues: OrderedDict[Optional[str], deque[Waiting]] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Waiting]:
        for q in self._queues.values():
            yield from q

    def append(self, request: Waiting) -> None:
        self._queues.setdefault(request.owner, deque()).append(request)
        self._count += 1

    def clear(self) -> None:
        self._queues.clear()
        self._count = 0

    def drop_cancelled(self) -> list[Waiting]:
        """Take out and return the requests cancelled while waiting that are first in their owner's queue (the
        others go when they get there)."""
        dropped = []
        for owner in list(self._queues):
            q = self._queues[owner]
            while q and q[0].cancelled:
                dropped.append(q.popleft())
            if not q:
                del self._queues[owner]
        self._count -= len(dropped)
        return dropped

    def pop(self, free: int, held: Mapping[Optional[str], int]) -> Optional[Waiting]:
        """The request to admit now, given `free` slots and the slots each owner `held`; None when none may start.
        A beam search request needs no slot, so it may start with none free."""
        best, best_rank = None, None  # the owner (None is one too) and its rank
        for owner, q in self._queues.items():
            head, holding = q[0], held.get(owner, 0)
            needs_slot = head.params.num_beams <= 1
            if needs_slot and (free == 0 or (holding > 0 and free <= self.reserved)):
                continue
            rank = (holding, head.submitted)
            if best_rank is None or rank < best_rank:
                best, best_rank = owner, rank
        if best_rank is None:
            return None
        q = self._queues[best]
        request = q.popleft()
        if not q:
            del self._queues[best]
        self._count -= 1
        return request
