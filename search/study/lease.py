"""One driver per study: a lease kept in the study, renewed by a heartbeat.

Two drivers on one study would both sample, and each would mark the other's running
trials FAIL as "left by a killed driver". So a driver takes the study's lease before it
touches a trial, and a second driver refuses to start while the lease is live. A lease is
live while its heartbeat is fresh, and, on this host, while its process exists: a driver
killed with SIGKILL leaves a lease that the rerun on the same host takes over at once; one
on another host is taken over once its heartbeat is ``stale_after_s`` old.

Wall clocks jump (NTP steps, a resumed VM), so a heartbeat's age alone never ends a lease
that may be live: where the signs disagree (this host's driver still exists but its heartbeat
looks stale, or a heartbeat is dated in the future) the lease is watched for two heartbeat
intervals on the monotonic clock, and it is live if its heartbeat moves.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

import optuna

from search.config import UserError
from search.study.keys import DRIVER

HEARTBEAT_S = 10.0
STALE_AFTER_S = 60.0
# A second look after taking the lease: of two drivers that took it at the same moment,
# the one whose write landed first sees the other's token and steps back.
SETTLE_S = 0.5


@dataclass(frozen=True)
class Holder:
    """Who holds a study's lease, and when it last said so (``time.time()``)."""

    host: str
    pid: int
    token: str
    heartbeat: float

    def describe(self, now: float) -> str:
        return f"pid {self.pid} on {self.host}, last heartbeat {now - self.heartbeat:.0f} s ago"


class DriverLease:
    """The study's lease for this process, as a context manager with a heartbeat thread.

    Args:
        study: The study to lead.
        heartbeat_s: Seconds between heartbeats.
        stale_after_s: Age after which another host's lease is taken over.

    Raises:
        ValueError: ``heartbeat_s`` is not positive or ``stale_after_s`` is not above it.
        UserError: On enter, another live driver holds the lease.
    """

    def __init__(
        self, study: optuna.Study, *, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S
    ) -> None:
        if heartbeat_s <= 0:
            raise ValueError(f"heartbeat_s must be > 0, got {heartbeat_s!r}")
        if stale_after_s <= heartbeat_s:
            raise ValueError(f"stale_after_s must be > heartbeat_s ({heartbeat_s!r}), got {stale_after_s!r}")
        self.study = study
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.me = Holder(socket.gethostname(), os.getpid(), uuid.uuid4().hex, time.time())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="resnet-search-lease", daemon=True)

    def __enter__(self) -> DriverLease:
        self.acquire()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._holder() == self.me.token:
            self.study.set_user_attr(DRIVER, None)

    def acquire(self) -> None:
        """Take the lease, or raise UserError naming the live driver that holds it."""
        self._refuse_if_held()
        self._write()
        time.sleep(SETTLE_S)
        self._refuse_if_held()

    def _refuse_if_held(self) -> None:
        record = self.study.user_attrs.get(DRIVER)
        if not record or record["token"] == self.me.token:
            return
        holder = Holder(**record)
        if self._is_live(holder):
            raise UserError(
                f"study {self.study.study_name} is being run by another driver ({holder.describe(time.time())}); "
                "wait for it to finish or stop it, then run this again"
            )

    def _is_live(self, holder: Holder) -> bool:
        age = time.time() - holder.heartbeat
        if holder.host == self.me.host:
            if not _process_exists(holder.pid):
                return False
            return 0 <= age <= self.stale_after_s or self._still_beating(holder)
        if age < -self.stale_after_s:  # dated in the future: one of the two clocks jumped
            return self._still_beating(holder)
        return age <= self.stale_after_s

    def _still_beating(self, holder: Holder) -> bool:
        """Whether ``holder``'s heartbeat moves within two intervals, timed on the monotonic clock
        (which no clock jump moves), or the lease changed hands meanwhile."""
        deadline = time.monotonic() + 2 * self.heartbeat_s + SETTLE_S
        while time.monotonic() < deadline:
            time.sleep(min(self.heartbeat_s / 4, max(0.0, deadline - time.monotonic())))
            record = self.study.user_attrs.get(DRIVER)
            if not record:
                return False  # it let go
            if record["token"] != holder.token or record["heartbeat"] != holder.heartbeat:
                return True
        return False

    def _holder(self) -> str | None:
        record = self.study.user_attrs.get(DRIVER)
        return record["token"] if record else None

    def _write(self) -> None:
        self.study.set_user_attr(DRIVER, asdict(Holder(self.me.host, self.me.pid, self.me.token, time.time())))

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write()
            except Exception:  # a missed heartbeat is harmless; the storage's retries cover outages
                continue


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: does the process exist?
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True
