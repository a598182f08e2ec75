"""Drives simulation job batches from the store: starts member jobs as the batch's concurrency allows,
times batches out, winds cancelled ones down and gives each its final status.

Everything it knows comes from the store on every pass, so a restart resumes where the last pass ended.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from openrobomaker.controllers.base import Controller
from openrobomaker.services import simulation_job_batches as batches
from openrobomaker.services import simulation_jobs as jobs
from openrobomaker.store import simulation_job_batches as store

log = logging.getLogger("openrobomaker.controllers.simulation_job_batches")


@dataclass(frozen=True)
class BatchState:
    """What one pass needs to know of a batch, read in one snapshot."""

    batch_id: str
    status: str
    deadline_at: float
    room: int  # member jobs it may still start now
    pending: int
    active_members: int


class SimulationJobBatchController(Controller):
    signal_name = "simulation_batches"
    # A member ending frees a slot, and every way a job ends notifies this controller (its runner's final
    # report, a dead runner, a cancel, a failed admission). So the interval (the base's 0.5 s) bounds only
    # how late a deadline is noticed; at 0.2 s the idle passes alone cost the server ~5 ms of CPU a second.

    def __init__(self, platform: Any):
        super().__init__(platform)
        self._ended: deque[str] = deque()  # batches whose member reported its end since the last pass
        self._full_pass_wanted = False
        platform.signals[jobs.BATCH_MEMBER_ENDED] = self.member_ended

    def wake(self) -> None:
        """Something changed that only a full pass sees (a new batch, a cancel, a member ended otherwise)."""
        self._full_pass_wanted = True
        super().wake()

    def member_ended(self, batch_arn: str) -> None:
        """A member's final report was recorded (in that report's thread, which answers the runner at once).
        The next pass starts the batch's next member straight away and skips the full pass when that is all
        there was to do: the snapshot of every active batch, taken for each member of a batch of hundreds of
        short jobs, was half the time between a member's end and its successor's creation."""
        self._ended.append(batch_arn)
        super().wake()

    def reconcile(self) -> None:
        # A wake() between these two lines is not lost: it also set the loop's event, so another pass
        # follows, and a pass with no ended member is always a full one.
        full = self._full_pass_wanted
        self._full_pass_wanted = False
        ended = self._take_ended()
        if self._start_successors(ended) and ended and not full:
            return
        self._full_pass()

    def _take_ended(self) -> list[str]:
        ended = []
        while self._ended:
            ended.append(self._ended.popleft())
        return ended

    def _start_successors(self, ended: list[str]) -> bool:
        """Each ended member's successor, where the batch allows it without a full pass (services:
        start_successors, once per batch); True when every one was started. The job controller is woken
        either way: successors to admit, or the host capacity the members freed."""
        started_all = True
        for batch_arn, count in Counter(ended).items():
            try:
                started_all &= batches.start_successors(self.platform, batch_arn, count, time.time())
            except Exception:  # the full pass retries whatever this did not do
                log.exception("batch %s: starting members' successors failed", batch_arn)
                started_all = False
        if ended:
            self.platform.notify("simulation_jobs")
        return started_all

    def _full_pass(self) -> None:
        now = time.time()
        states = self._snapshot()
        # Fair share of the account's job quota: the batch with the fewest active members goes first.
        states.sort(key=lambda s: s.active_members)
        woke_jobs = False
        for state in states:
            try:
                woke_jobs |= self._advance(state, now)
            except Exception:  # one broken batch must not stall the others; the next pass retries it
                log.exception("batch %s: pass failed", state.batch_id)
        if woke_jobs:
            self.platform.notify("simulation_jobs")

    def _snapshot(self) -> list[BatchState]:
        with self.platform.db.reader() as connection:
            rows = store.active_batch_states(connection)
        return [
            BatchState(
                batch_id=row.batch_id,
                status=row.status,
                deadline_at=row.deadline_at,
                room=max(0, row.max_concurrency - row.active_members),
                pending=row.pending,
                active_members=row.active_members,
            )
            for row in rows
        ]

    def _advance(self, state: BatchState, now: float) -> bool:
        """One step for one batch; True when the job controller has new work (members to start or stop)."""
        if state.status in batches.DRIVING_STATUSES and now >= state.deadline_at:
            return self._in_transaction(state.batch_id, batches.start_timeout, now)
        if state.status in batches.WINDING_DOWN_STATUSES:
            return self._in_transaction(state.batch_id, batches.wind_down, now)
        if state.pending and state.room:
            return self._start_members(state, now) > 0
        if not state.pending and (state.active_members == 0 or state.status != "Completing"):
            self._in_transaction(state.batch_id, batches.settle, now)
        return False

    def _in_transaction(self, batch_id: str, step, now: float) -> bool:
        with self.platform.db.transaction() as session:
            batch = store.get_batch(session, batch_id, for_update=True)
            if batch is None or batch.status in store.TERMINAL_BATCH_STATUSES:
                return False
            before = batch.status
            result = bool(step(session, batch, now))
            after = batch.status
        if after != before:
            log.info("batch %s: %s -> %s", batch_id, before, after)
        return result

    def _start_members(self, state: BatchState, now: float) -> int:
        made = batches.create_members(self.platform, state.batch_id, state.room, now)
        if made:
            log.info("batch %s: started %d member job(s)", state.batch_id, made)
        return made


def build(platform: Any) -> SimulationJobBatchController:
    return SimulationJobBatchController(platform)
