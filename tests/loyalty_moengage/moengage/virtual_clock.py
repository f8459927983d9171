"""Virtual time for pacing tests: durations are computed, never measured, so they cannot flake.

Time moves only when every participating thread is asleep, and then jumps to the earliest
wake-up, as if the sleeps had really happened side by side. One thread (the test's own) is the
only participant unless :meth:`VirtualClock.run_threads` runs several.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

STALL_SECONDS = 30.0  # real seconds a sleeper waits for the others before the test fails


class VirtualClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self._cond = threading.Condition()
        self._participants = 1
        self._sleeping: list[float] = []  # wake-up times of participants asleep now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._cond:
            wake = self.now + seconds
            if wake <= self.now:
                return
            self._sleeping.append(wake)
            self._advance()
            while self.now < wake:
                if not self._cond.wait(STALL_SECONDS):
                    raise RuntimeError("virtual clock stalled: a participant neither slept nor finished")

    def run_threads(self, targets: list[Callable[[], Any]]) -> None:
        """Run the targets as concurrent participants (the caller waits outside virtual time)."""
        errors: list[BaseException] = []

        def run(target: Callable[[], Any]) -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                errors.append(exc)
            finally:
                with self._cond:
                    self._participants -= 1
                    self._advance()

        with self._cond:
            self._participants = len(targets)
        threads = [threading.Thread(target=run, args=(t,)) for t in targets]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with self._cond:
            self._participants = 1
        if errors:
            raise errors[0]

    def as_time_module(self, epoch: float) -> ModuleType:
        """A stand-in for the ``time`` module whose ``time()`` is ``epoch`` + virtual seconds."""
        fake = ModuleType("virtual_time")
        fake.__dict__.update(time.__dict__)
        fake.time = lambda: epoch + self.now
        return fake

    def _advance(self) -> None:
        # Called with the lock held: when nobody is awake, jump to the next wake-up and wake it.
        if self._sleeping and len(self._sleeping) >= self._participants:
            self.now = max(self.now, min(self._sleeping))
            self._sleeping = [w for w in self._sleeping if w > self.now]
            self._cond.notify_all()
