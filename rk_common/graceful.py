"""Stopping a waitress front the way systemd and Kubernetes stop things: the first SIGTERM (or SIGINT) stops
accepting connections and lets the running replies finish for a grace period, then cuts what is left and
ends the server loop; the process then exits 0. A second signal exits at once."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

POLL_S = 0.05
CUT_WAIT_S = 10.0  # after the cut: time for the cut replies' last lines to be written


class GracefulStop:
    """Signal handling for ``server`` (a :class:`rk_common.http_front.FrontServer`).

    ``begin()`` is called first (refuse new work), ``busy()`` counts the work still running, ``cut()`` ends
    it (each reply with a clear finish reason) once ``grace_s`` has passed."""

    def __init__(self, server, *, grace_s: float, begin: Callable[[], None], busy: Callable[[], int],
                 cut: Callable[[], None], name: str):
        self.server = server
        self.grace_s = grace_s
        self.begin, self.busy, self.cut = begin, busy, cut
        self.name = name
        self.stopping = threading.Event()
        self.was_cut = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)

    def on_signal(self, signum, frame) -> None:
        if self.stopping.is_set():
            log.warning("%s: second signal (%s): exiting now", self.name, signal.Signals(signum).name)
            logging.shutdown()
            os._exit(1)
        self.stopping.set()
        threading.Thread(target=self.drain, args=(signal.Signals(signum).name,), name="graceful-stop",
                         daemon=True).start()

    def _pending(self) -> int:
        return self.busy() + self.server.busy_channels()

    def drain(self, why: str = "stop") -> None:
        self.begin()
        self.server.stop_accepting()
        running = self._pending()
        log.info("%s: %s: not accepting new requests; %d in progress get up to %g s to finish", self.name, why,
                 running, self.grace_s)
        if not self._wait(self.grace_s):
            log.warning("%s: %d requests still running after the %g s grace period: ending them (finish "
                        "'shutdown')", self.name, self.busy(), self.grace_s)
            self.was_cut = True
            self.cut()
            self._wait(CUT_WAIT_S)
        self.server.request_stop()

    def _wait(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self._pending():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True
