"""Which models are loaded: one state machine per model, all under one lock, the only code that loads,
expires, evicts or unloads a model.

    (no slot) ──use()──▶ LOADING ──built──▶ READY ──unload / keep_alive ran out / evicted──▶ DRAINING ──▶ GONE
                            └─────load failed──────────────────────────────────────────────────────────▶ GONE

- A slot exists only for a model that is being loaded, is loaded or is being unloaded; GONE removes it.
  The name is checked against the store (``prepare``) before a slot is made, so unknown names leave no
  state behind.
- One slot per name: a request for a model that is DRAINING waits until it is GONE and then loads it
  again, as Ollama does when a request arrives while its runner expires; one for a model that is
  LOADING waits for that load. Two copies of a model can never be alive at once.
- Memory: every slot counts, LOADING by its estimate and READY/DRAINING by its handles, so a load that
  would go over ``max_memory_mb`` first moves least recently used idle models to DRAINING (and waits
  for them to be gone before building), or fails with 503 when every loaded model is serving.
- ``LoadedModel.serving`` counts the requests admitted to a model (from ``use()`` to ``done()``); it
  only changes under the lock, and only a READY model with ``serving == 0`` may start to drain by
  expiry or eviction. An explicit unload drains a serving model: its admitted requests finish (or are
  aborted after the timeout) before its handles close.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Union

from .errors import ModelUnavailable

log = logging.getLogger(__name__)

KeepAlive = Union[Optional[float], str]  # seconds, None = forever, "default" = leave as it is


class State(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"


@dataclass
class LoadPlan:
    """What ``prepare`` found out about a model before anything is reserved for it."""

    need_mb: float
    build: Callable[[], object]  # -> LoadedModel; runs outside the lock


@dataclass
class Slot:
    name: str
    state: State
    reserved_mb: float
    entry: Optional[object] = None  # the LoadedModel once built

    @property
    def memory_mb(self) -> float:
        return self.entry.memory_mb if self.entry is not None else self.reserved_mb


class ModelLifecycle:
    def __init__(self, prepare: Callable[[str, Optional[int]], LoadPlan], max_memory_mb: Optional[float] = None,
                 on_change: Callable[[], None] = lambda: None, on_release: Callable[[], None] = lambda: None):
        self._prepare = prepare
        self.max_memory_mb = max_memory_mb
        self._on_change = on_change  # after a load, an unload or a keep_alive change (state file, reaper)
        self._on_release = on_release  # after a request is done (the reaper may have work)
        self._cond = threading.Condition()
        self._slots: Dict[str, Slot] = {}

    # -- admitting requests ---------------------------------------------------------------------------

    def use(self, name: str, keep_alive: KeepAlive = "default", instances: Optional[int] = None):
        """The loaded model ``name`` (loading it first if needed), admitted for one request: the caller
        must call :meth:`done` once. A given ``keep_alive`` replaces the model's, as an Ollama request's."""
        plan: Optional[LoadPlan] = None
        while True:
            with self._cond:
                entry = self._admit_loaded(name)
                if entry is not None:
                    changed = self._set_keep_alive(entry, keep_alive)
                    break
                if plan is not None:
                    victims = self._reserve(name, plan.need_mb)
                    slot = Slot(name, State.LOADING, plan.need_mb)
                    self._slots[name] = slot
                    entry = None
                    break
            plan = self._prepare(name, instances)  # outside the lock: validates the name, reads the Modelfile
        if entry is not None:
            if changed:
                self._on_change()
            return entry
        return self._build(slot, plan, victims, keep_alive)

    def _admit_loaded(self, name: str):
        """Under the lock: the READY model admitted (serving + 1), after waiting out a load or a drain in
        progress; None when the model has no slot."""
        while True:
            slot = self._slots.get(name)
            if slot is None:
                return None
            if slot.state is State.READY:
                slot.entry.serving += 1
                return slot.entry
            self._cond.wait()

    def _build(self, slot: Slot, plan: LoadPlan, victims: List[Slot], keep_alive: KeepAlive):
        try:
            for victim in victims:
                self._drain(victim, timeout=60.0)
            entry = plan.build()
        except BaseException:
            with self._cond:
                self._slots.pop(slot.name, None)
                self._cond.notify_all()
            raise
        with self._cond:
            slot.entry = entry
            slot.state = State.READY
            entry.serving += 1
            self._set_keep_alive(entry, keep_alive)
            self._cond.notify_all()
        self._on_change()
        return entry

    def done(self, entry) -> None:
        """One request admitted by :meth:`use` is over."""
        with self._cond:
            entry.serving -= 1
            entry.last_used = time.time()
            self._cond.notify_all()
        self._on_release()

    def set_keep_alive(self, name: str, keep_alive: KeepAlive) -> bool:
        """Change a loaded model's keep_alive; False when it is not loaded."""
        with self._cond:
            slot = self._slots.get(name)
            if slot is None or slot.state is not State.READY:
                return False
            changed = self._set_keep_alive(slot.entry, keep_alive)
        if changed:
            self._on_change()
        return True

    @staticmethod
    def _set_keep_alive(entry, keep_alive: KeepAlive) -> bool:
        if keep_alive == "default" or keep_alive == entry.keep_alive_s:
            return False
        entry.keep_alive_s = keep_alive
        return True

    # -- memory ---------------------------------------------------------------------------------------

    def _reserve(self, name: str, need_mb: float) -> List[Slot]:
        """Under the lock: make ``need_mb`` fit under max_memory_mb by moving idle models to DRAINING
        (returned, for the caller to drain outside the lock). Raises 503 when that cannot be done."""
        limit = self.max_memory_mb
        if limit is None:
            return []
        if need_mb > limit:
            raise ModelUnavailable(f"model {name} needs about {need_mb:.0f} MB, more than --max-memory-mb "
                                   f"{limit:.0f}", code="insufficient_memory")
        victims: List[Slot] = []
        while True:
            used = self.accounted_mb_locked()
            freeing = sum(v.memory_mb for v in victims)
            if used - freeing + need_mb <= limit:
                return victims
            idle = sorted((s for s in self._slots.values() if s.state is State.READY and not s.entry.serving),
                          key=lambda s: s.entry.last_used)
            if idle:
                victim = idle[0]
                victim.state = State.DRAINING
                victims.append(victim)
                log.info("unloading %s (idle since %.1f s, %.0f MB) to make room for %s", victim.name,
                         time.time() - victim.entry.last_used, victim.memory_mb, name)
                continue
            if any(s.state is State.DRAINING and s not in victims for s in self._slots.values()):
                self._cond.wait()  # memory another unload is freeing
                continue
            for victim in victims:  # nothing was freed: they stay loaded
                victim.state = State.READY
            self._cond.notify_all()
            raise ModelUnavailable(
                f"loading {name} (about {need_mb:.0f} MB) would exceed --max-memory-mb {limit:.0f} "
                f"({used:.0f} MB in use) and every loaded model is serving; retry later",
                code="insufficient_memory", headers={"Retry-After": "5"})

    def accounted_mb_locked(self) -> float:
        return sum(s.memory_mb for s in self._slots.values())

    def accounted_mb(self) -> float:
        """Memory of every slot: loading (estimated), loaded and draining models."""
        with self._cond:
            return self.accounted_mb_locked()

    # -- unloading ------------------------------------------------------------------------------------

    def unload(self, name: str, timeout: float = 60.0) -> bool:
        """Drain and unload ``name``; False when it is not loaded. A serving model's requests finish
        first (or are aborted after ``timeout``)."""
        with self._cond:
            while True:
                slot = self._slots.get(name)
                if slot is None:
                    return False
                if slot.state is State.READY:
                    slot.state = State.DRAINING
                    break
                if slot.state is State.DRAINING:  # someone else unloads it: wait until it is gone
                    while self._slots.get(name) is slot:
                        self._cond.wait()
                    return True
                self._cond.wait()  # LOADING: unload what is being loaded once it is
        self._drain(slot, timeout)
        return True

    def _drain(self, slot: Slot, timeout: float) -> None:
        entry = slot.entry
        if not self._wait_unused(entry, timeout):
            log.warning("unloading %s while %d request(s) still run: aborting them", slot.name, entry.serving)
            for handle in entry.queue.handles:
                handle.abort()
            self._wait_unused(entry, timeout)
        for handle in entry.queue.handles:
            handle.close()
        with self._cond:
            if self._slots.get(slot.name) is slot:
                del self._slots[slot.name]
            self._cond.notify_all()
        log.info("unloaded %s", slot.name)
        self._on_change()

    def _wait_unused(self, entry, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while entry.serving:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def expire(self, now: float) -> float:
        """Unload the idle models whose keep_alive ran out; returns the seconds until the next may."""
        sleep = float("inf")
        with self._cond:
            expired = []
            for slot in self._slots.values():
                if slot.state is not State.READY or slot.entry.serving or slot.entry.expires_at is None:
                    continue
                if slot.entry.expires_at <= now:
                    slot.state = State.DRAINING
                    expired.append(slot)
                else:
                    sleep = min(sleep, slot.entry.expires_at - now)
        for slot in expired:
            log.info("unloading %s: idle for its keep_alive of %gs", slot.name, slot.entry.keep_alive_s)
            self._drain(slot, timeout=60.0)
        return sleep

    # -- views ----------------------------------------------------------------------------------------

    def loaded(self) -> list:
        """The READY models, in load order."""
        with self._cond:
            return [s.entry for s in self._slots.values() if s.state is State.READY]

    def entries(self) -> list:
        """Every built model with its state (READY or DRAINING), for /health."""
        with self._cond:
            return [(s.state.value, s.entry) for s in self._slots.values() if s.entry is not None]

    def slot_count(self) -> int:
        """How many names have any state here (loading, loaded or draining)."""
        with self._cond:
            return len(self._slots)

    def names(self) -> List[str]:
        with self._cond:
            return list(self._slots)
