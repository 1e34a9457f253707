"""Quotas per key beyond the per-minute rates (ratelimit): sequences whose answers are open at once, jobs running at
once and their training steps.

Past a quota because of what the key runs now: 429 with Retry-After, the quota named in the message and as the
code. A request that alone asks for more than its quota could ever allow: 403 with the quota as the code (waiting
would not help).
"""

from __future__ import annotations

import threading
from typing import Optional

from mulm_jax.api.errors import ApiError, too_many_requests
from mulm_jax.api.keys import Caller

STREAM_RETRY_S = 1  # Retry-After past max_streams: a sequence ends within a second or so
JOB_RETRY_S = 30  # past max_jobs or max_steps: jobs take minutes


def over_quota(quota: str, message: str, retry_after: int) -> ApiError:
    return too_many_requests(f"{message} ({quota})", retry_after, quota)


def beyond_quota(quota: str, message: str) -> ApiError:
    return ApiError(403, f"{message} ({quota})", type="permission_error", code=quota)


class Hold:
    """Sequences of one answer, counted against its caller's max_streams until released."""

    def __init__(self, count: int):
        self.count, self.released = count, False

    def release(self) -> None:
        self.released = True


class Streams:
    """The sequences of each caller's answers still open: queued, generating or still being sent (a stream counts
    until its last byte or its client's leaving, so that a client reading slowly cannot open more)."""

    def __init__(self) -> None:
        self._holds: dict[str, list[Hold]] = {}
        self._lock = threading.Lock()

    def held(self, client: str) -> int:
        with self._lock:
            return sum(h.count for h in self._prune(client))

    def _prune(self, client: str) -> list[Hold]:
        live = self._holds[client] = [h for h in self._holds.get(client, ()) if not h.released]
        return live

    def admit(self, who: Caller, count: int) -> None:
        """Raise when `count` more sequences would take `who` past its max_streams."""
        limit = who.quotas.max_streams
        if not limit:
            return
        if count > limit:
            raise beyond_quota(
                "max_streams", f"the request asks for {count} sequences; this key may generate at most {limit} at once"
            )
        held = self.held(who.client)
        if held + count > limit:
            raise over_quota(
                "max_streams",
                f"this key is generating {held} of the {limit} sequences it may at once; the request asks for {count}",
                STREAM_RETRY_S,
            )

    def add(self, who: Caller, count: int) -> Hold:
        """Count `count` more sequences for `who` until the Hold returned is released."""
        hold = Hold(count)
        with self._lock:
            self._prune(who.client).append(hold)
        return hold


def steps_taken(running: list[dict]) -> int:
    """The train.steps of the running training jobs among `running`, together."""
    return sum(job["steps"] or 0 for job in running if job["object"] == "training.job")


def admit_job(who: Caller, running: list[dict], steps: Optional[int]) -> None:
    """Raise when one more job (a training job of `steps`, or a data set job: None) would take `who` past its
    max_jobs or max_steps; `running`: its running jobs, each with the `steps` it was started with (training)."""
    jobs, max_steps = who.quotas.max_jobs, who.quotas.max_steps
    if jobs and len(running) >= jobs:
        raise over_quota(
            "max_jobs", f"this key has {len(running)} jobs running, as many as it may at once", JOB_RETRY_S
        )
    if steps is None or not max_steps:
        return
    if steps > max_steps:
        raise beyond_quota(
            "max_steps",
            f"train.steps={steps} is more than this key's running jobs may take together: ask for at most {max_steps}",
        )
    taken = steps_taken(running)
    if taken + steps > max_steps:
        raise over_quota(
            "max_steps",
            f"this key's running training jobs take {taken} of its {max_steps} steps; this one asks for {steps}",
            JOB_RETRY_S,
        )
