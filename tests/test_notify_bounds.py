"""A notification's sender is bounded (issue 29, finding 8): a webhook that sends one header byte every
5 s kept its sender alive past the documented 30 s with nothing in notify.log (the timeout was per
read), and a background child of notify.command outlived it. Now the whole of each attempt and of all
attempts has a deadline, logged when it passes, and the command runs in a process group of its own
that is killed at its deadline."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from gpujob import notify, procs


class Drip:
    """A TCP server on loopback that reads the request, then behaves as told: ``drip`` sends one byte of
    a never-ending header every ``every`` s, ``silent`` says nothing, ``body`` sends headers then the body
    a byte at a time, ``close`` hangs up."""

    def __init__(self, how: str, every: float) -> None:
        self.how, self.every = how, every
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            if self.how == "close":
                return
            if self.how == "body":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            while not self.closed.is_set():
                if self.how != "silent":
                    conn.sendall(b"X" if self.how == "drip" else b"x")
                time.sleep(self.every)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.closed.set()
        self.sock.close()


def deliver(tmp_path: Path, cfg: dict) -> tuple[bool, float, str]:
    started = time.monotonic()
    ok = notify.Notifier(tmp_path, cfg).deliver({"event": "succeeded", "id": "abc123"})
    return ok, time.monotonic() - started, (tmp_path / notify.LOG).read_text()


@pytest.mark.slow
def test_a_webhook_dripping_a_header_byte_every_5_s_is_given_up_at_the_documented_30_s(tmp_path):
    """The report's example, with the real limits: before, the sender was still waiting after 60 s."""
    server = Drip("drip", every=5.0)
    try:
        ok, took, log = deliver(tmp_path, {"webhook": server.url})
    finally:
        server.close()
    assert not ok and took <= notify.DEADLINE_S + 2, took
    assert "no complete answer within 10 s; abandoned" in log and "gave up" in log


@pytest.mark.parametrize("how", ["drip", "silent", "body", "close"])
def test_any_slow_or_broken_webhook_ends_within_the_deadline_and_says_so(tmp_path, monkeypatch, how):
    """Fault injection for the class: whatever the server does (a header a byte at a time, nothing,
    a body a byte at a time, hanging up), delivery ends by DEADLINE_S and notify.log says why."""
    monkeypatch.setattr(notify, "DEADLINE_S", 3.0)
    monkeypatch.setattr(notify, "ATTEMPT_TIMEOUT_S", 1.0)
    server = Drip(how, every=0.2)  # never 1 s without a byte: a per-read timeout of 1 s never fires
    try:
        ok, took, log = deliver(tmp_path, {"webhook": server.url})
    finally:
        server.close()
    assert took <= 3.0 + 0.8, (how, took)
    if how == "body":  # the status line and headers came: delivered (the body is not read)
        assert ok and "attempt 1: HTTP 200" in log, log
    else:
        assert not ok and "attempt 1:" in log and "gave up; the job's status is not affected" in log, log


BACKGROUND = "sleep 300 & echo $! > {pids}; {tail}"


@pytest.mark.parametrize("tail", ["exit 0", "sleep 300", "exec 2>&-; exit 0"])
def test_a_notify_command_leaves_no_process_behind(tmp_path, monkeypatch, tail):
    """The report's example (a background child was orphaned), and its kin: the command itself hangs,
    or exits at once with its child holding no pipe. Nothing of its process group outlives delivery."""
    monkeypatch.setattr(notify, "ATTEMPT_TIMEOUT_S", 1.5)
    monkeypatch.setattr(notify, "DEADLINE_S", 2.0)
    pids = tmp_path / "pids"
    ok, took, log = deliver(tmp_path, {"command": ["sh", "-c", BACKGROUND.format(pids=pids, tail=tail)]})
    child = int(pids.read_text())
    assert not procs.alive(child, None), f"the background child {child} still runs"
    assert took <= 2.0 + 1.0, took
    if tail == "sleep 300":
        assert not ok and "killed with its process group" in log, log
    else:
        assert ok and "exit 0; what it left running was killed" in log, log
