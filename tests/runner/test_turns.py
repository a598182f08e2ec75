"""Runners' turns for their CPU-heavy steps (runner/turns.py): the zygote's queue and a runner's side of it."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from openrobomaker.runner import turns, zygote
from openrobomaker.runner.zygote import RunnerKind, RunnerLife, RunnerLink, Zygote


def test_turns_are_granted_in_the_order_asked_and_never_more_than_the_slots():
    queue = turns.TurnQueue(slots=2, lease=10.0)
    assert queue.ask("a", 1, now=0.0) == [("a", 1)]
    assert queue.ask("b", 1, now=0.0) == [("b", 1)]
    assert queue.ask("c", 1, now=0.0) == []  # two out already
    assert queue.ask("d", 1, now=0.0) == []
    assert queue.give_back("b", 1, now=0.1) == [("c", 1)]  # the first in line, not the last
    assert queue.drop("a", now=0.2) == [("d", 1)]  # a runner gone gives its turn back too


def test_a_turn_held_past_its_lease_stops_counting():
    queue = turns.TurnQueue(slots=1, lease=0.1)
    queue.ask("slow", 1, now=0.0)
    assert queue.ask("next", 1, now=0.0) == []
    assert queue.seconds_to_next_expiry(now=0.04) == pytest.approx(0.06)
    assert queue.expire(now=0.05) == []
    assert queue.expire(now=0.1) == [("next", 1)]
    # The slow runner gives its lapsed turn back late: that frees nothing of the next one's.
    queue.ask("third", 1, now=0.2)
    assert queue.give_back("slow", 1, now=0.2) == []


def test_a_withdrawn_or_stale_request_changes_nothing_else():
    queue = turns.TurnQueue(slots=1, lease=10.0)
    queue.ask("a", 1, now=0.0)
    queue.ask("b", 1, now=0.0)
    assert queue.give_back("b", 1, now=0.0) == []  # b gave up waiting: out of the queue
    assert queue.give_back("a", 7, now=0.0) == []  # not a's current request: a keeps its turn
    assert queue.ask("c", 1, now=0.0) == []
    assert queue.give_back("a", 1, now=0.0) == [("c", 1)]
    assert queue.seconds_to_next_expiry(now=0.0) is None  # nobody waits: no expiry to wake up for


def test_a_runner_waits_for_its_turn_and_gives_it_back():
    runner_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with runner_end, zygote_end:
        taker = turns.TurnTaker(runner_end)
        taken = threading.Event()
        thread = threading.Thread(target=lambda: (taker.take(), taken.set()))
        thread.start()
        assert zygote_end.recv(64) == b"turn 1"
        time.sleep(0.05)
        assert not taken.is_set()  # no `go` yet
        zygote_end.send(b"go 1")
        thread.join(5)
        assert taken.is_set()
        taker.take()  # already held: no second request
        taker.give()
        assert zygote_end.recv(64) == b"done 1"
        taker.give()  # not held: nothing sent
        taker.take()
        assert zygote_end.recv(64) == b"turn 2"


def test_a_runner_does_not_wait_without_a_zygote_nor_past_the_limit(monkeypatch):
    runner_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with runner_end:
        taker = turns.TurnTaker(runner_end)
        monkeypatch.setattr(turns, "WAIT_LIMIT_SECONDS", 0.1)
        started = time.monotonic()
        taker.take()
        assert time.monotonic() - started < 2
        assert zygote_end.recv(64) == b"turn 1"
        assert zygote_end.recv(64) == b"done 1"  # the request withdrawn
        zygote_end.send(b"go 1")  # granted too late: ignored by the next request
        zygote_end.close()
        monkeypatch.setattr(turns, "WAIT_LIMIT_SECONDS", 30.0)
        started = time.monotonic()
        taker.take()  # the zygote is gone (EOF): no waiting at all
        assert time.monotonic() - started < 2
        assert taker.link is None
    turns.NO_TURNS.take()  # a runner started on its own has no turns to take
    turns.NO_TURNS.give()


def test_an_idle_runner_skips_a_late_go_before_its_next_job():
    runner_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with runner_end, zygote_end:
        life = RunnerLife(runner_end, RunnerKind("none", 0), zygote=0)
        zygote_end.send(b"go 3")
        zygote_end.send(json.dumps({"spec": "/x/spec.json"}).encode())
        assert life._receive_job() == {"spec": "/x/spec.json"}


def test_an_idle_runner_still_leaves_in_time_after_a_late_go(monkeypatch):
    monkeypatch.setattr(zygote, "IDLE_SECONDS", 0.2)
    runner_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with runner_end, zygote_end:
        life = RunnerLife(runner_end, RunnerKind("none", 0), zygote=0)
        zygote_end.send(b"go 3")
        answered = threading.Thread(target=lambda: zygote_end.recv(64) == b"bye" and zygote_end.send(b"ok"))
        answered.start()
        started = time.monotonic()
        assert life._receive_job() is None
        assert time.monotonic() - started < 5
        answered.join(5)


def test_the_zygote_hands_turns_out_one_runner_after_another():
    zygote = Zygote()
    zygote.turns = turns.TurnQueue(slots=1, lease=10.0)
    runners = {}
    for pid in (101, 102):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        zygote.links[ours.fileno()] = RunnerLink(pid, ours, RunnerKind("none", 0))
        runners[pid] = (ours, theirs)
    try:
        for pid in (101, 102):
            ours, theirs = runners[pid]
            theirs.send(b"turn 1")
            zygote.on_message(ours)
        first, second = runners[101][1], runners[102][1]
        assert first.recv(64) == b"go 1"
        second.setblocking(False)
        with pytest.raises(BlockingIOError):
            second.recv(64)  # still waiting
        first.close()  # the first runner dies holding its turn: the zygote sees EOF
        zygote.on_message(runners[101][0])
        second.setblocking(True)
        assert second.recv(64) == b"go 1"
    finally:
        zygote.close()
        for _, theirs in runners.values():
            theirs.close()
