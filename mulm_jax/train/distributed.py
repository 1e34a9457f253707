"""Joining a multi-process (multi-host) run through JAX's own runtime, from flags or environment variables."""

from __future__ import annotations

import os
from typing import Optional

import jax

from mulm_jax.errors import MulmError


def initialize(
    coordinator: Optional[str] = None, num_processes: Optional[int] = None, process_id: Optional[int] = None
) -> bool:
    """Call jax.distributed.initialize when a coordinator is given (flag or JAX_COORDINATOR_ADDRESS).

    Returns whether this is a multi-process run. Must run before anything touches a JAX device.
    """
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not coordinator:
        return False
    num_processes = num_processes if num_processes is not None else int(os.environ.get("JAX_NUM_PROCESSES", "1"))
    process_id = process_id if process_id is not None else int(os.environ.get("JAX_PROCESS_ID", "0"))
    if not 0 <= process_id < num_processes:
        raise MulmError(f"process id {process_id} is not in [0, number of processes {num_processes})")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    return True
