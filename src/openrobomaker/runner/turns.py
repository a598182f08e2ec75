"""Turns: the runners of one host take the CPU-heavy steps of their jobs one after another, in the order they
asked, instead of all at once.

Why: a job's start (namespaces, bundle, processes) and its wind-down cost tens of milliseconds of CPU. When k
of them are due together (the slots of a batch that started together), the kernel shares the CPU equally
between them, so every one of them takes about as long as all k together, and they all finish at the same
moment: their jobs start together again, end together one job length later, and contend again, every
cycle (measured on 2 cores: 200 one-second jobs at maxConcurrency 20 kept dropping to 9-14 processes
running at once every 1.25 s). Served in order, the first start is done after its own work, the next after
two, and so on: the mean wait halves, and the slots drift apart over the cycle, so that later starts rarely
meet another one (the same batch then holds 18-19 processes running throughout).

The zygote (runner/zygote.py), which every forked runner has a socket to, keeps the queue: `turn N` asks for
a turn, `go N` grants it, `done N` gives it back (or withdraws the request). At most `TURN_SLOTS` turns are
out at once (half the CPUs: the other half stays for the control plane and the jobs' own processes), and
a turn is a lease: one held longer than `LEASE_SECONDS` (a step that waits on the network, on a ROS master)
stops counting, so waiting is bounded whatever a runner does. A runner waits at most `WAIT_LIMIT_SECONDS`
for its turn, and not at all when it has no zygote (a runner started on its own, or after the zygote died:
its socket is closed); a runner that dies holding a turn gives it back by closing its socket.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections import deque
from collections.abc import Hashable

TURN_SLOTS = max(1, (os.cpu_count() or 1) // 2)
LEASE_SECONDS = 0.1
WAIT_LIMIT_SECONDS = 2.0
_MESSAGE_BYTES = 64


def parse(message: bytes) -> tuple[bytes, int] | None:
    """(b"turn" | b"go" | b"done", N) for a turn message, else None."""
    word, _, number = message.partition(b" ")
    if word not in (b"turn", b"go", b"done") or not number.isdigit():
        return None
    return word, int(number)


class TurnTaker:
    """A runner's side: take a turn before a CPU-heavy step, give it back after."""

    def __init__(self, link: socket.socket | None):
        self.link = link
        self._asked = 0  # number of the last request
        self._held = False

    def take(self) -> None:
        if self.link is None or self._held:
            return
        self._asked += 1
        try:
            self.link.send(b"turn %d" % self._asked)
            self._held = self._await_go(time.monotonic() + WAIT_LIMIT_SECONDS)
        except OSError:
            self.link = None  # the zygote is gone: no more turns to wait for
        if not self._held:
            self._withdraw()

    def give(self) -> None:
        if self._held:
            self._held = False
            self._withdraw()

    def _await_go(self, deadline: float) -> bool:
        assert self.link is not None
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.link], [], [], left)
            if not ready:
                break
            message = self.link.recv(_MESSAGE_BYTES)
            if not message:
                self.link = None
                return False
            if parse(message) == (b"go", self._asked):
                return True
            # else a `go` for a request given up on earlier: stale
        return False

    def _withdraw(self) -> None:
        if self.link is not None:
            with contextlib.suppress(OSError):
                self.link.send(b"done %d" % self._asked)


NO_TURNS = TurnTaker(None)


class TurnQueue:
    """The zygote's side: who holds a turn, who waits, in order. A key names a runner (its pid)."""

    def __init__(self, slots: int = TURN_SLOTS, lease: float = LEASE_SECONDS):
        self.slots, self.lease = slots, lease
        self._holders: dict[Hashable, tuple[int, float]] = {}  # key -> (request number, lease ends)
        self._waiting: deque[tuple[Hashable, int]] = deque()

    def ask(self, key: Hashable, number: int, now: float) -> list[tuple[Hashable, int]]:
        """Queue a request; returns the requests granted now, as (key, number)."""
        self._remove(key)  # one request per runner: a new one replaces whatever it had
        self._waiting.append((key, number))
        return self._grant(now)

    def give_back(self, key: Hashable, number: int, now: float) -> list[tuple[Hashable, int]]:
        """A turn given back, or a request withdrawn (only that request: a stale number changes nothing)."""
        held = self._holders.get(key)
        if held is not None and held[0] == number:
            del self._holders[key]
        self._waiting = deque(entry for entry in self._waiting if entry != (key, number))
        return self._grant(now)

    def drop(self, key: Hashable, now: float) -> list[tuple[Hashable, int]]:
        """A runner gone: its turn or its place in the queue with it."""
        self._remove(key)
        return self._grant(now)

    def _remove(self, key: Hashable) -> None:
        self._holders.pop(key, None)
        self._waiting = deque(entry for entry in self._waiting if entry[0] != key)

    def expire(self, now: float) -> list[tuple[Hashable, int]]:
        for key in [key for key, (_, ends) in self._holders.items() if ends <= now]:
            del self._holders[key]
        return self._grant(now)

    def seconds_to_next_expiry(self, now: float) -> float | None:
        if not self._holders or not self._waiting:
            return None  # nothing would be granted by an expiry
        return max(0.0, min(ends for _, ends in self._holders.values()) - now)

    def _grant(self, now: float) -> list[tuple[Hashable, int]]:
        granted = []
        while self._waiting and len(self._holders) < self.slots:
            key, number = self._waiting.popleft()
            self._holders[key] = (number, now + self.lease)
            granted.append((key, number))
        return granted
