"""The workers that can take a request now: registered, healthy, with a free slot.

The scheduler keeps them up to date as leases come and go (`OpenWorkers.refresh` after each
change of a worker), so no decision walks the whole registry, and hands them to the policy as
`Candidates`. Beside the open list (in no order), two views the simple policies use, each
costing about one check per worker it yields rather than one per open worker:

- every registered worker in registration order (`Registered`), for round robin;
- the open workers by load (`ByLoad`: the share of their slots in use, then their requests in
  flight), each load's workers in registration order, for least busy (kept only once a policy
  asked for it).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

from gollama.hub.registry import Registry, Worker
from gollama.hub.routing.policy import Candidates, Registered, Want, load

Load = tuple[float, int]


class ByLoad:
    """Open workers grouped by load, lightest first; each group in registration order."""

    def __init__(self) -> None:
        self._groups: dict[Load, list[Worker]] = {}
        self._loads: list[Load] = []  # the groups' loads, sorted
        self._load_of: dict[Worker, Load] = {}

    def put(self, worker: Worker) -> None:
        """`worker` is open, at its current load."""
        now = load(worker)
        before = self._load_of.get(worker)
        if before == now:
            return
        if before is not None:
            self.remove(worker)
        group = self._groups.get(now)
        if group is None:
            group = self._groups[now] = []
            bisect.insort(self._loads, now)
        bisect.insort(group, worker, key=_seq)
        self._load_of[worker] = now

    def remove(self, worker: Worker) -> None:
        """`worker` is open no more."""
        before = self._load_of.pop(worker, None)
        if before is None:
            return
        group = self._groups[before]
        del group[bisect.bisect_left(group, worker.seq, key=_seq)]
        if not group:
            del self._groups[before]
            del self._loads[bisect.bisect_left(self._loads, before)]

    def lightest(self, after: int, takes: Callable[[Worker], bool]) -> Worker | None:
        """Of the lightest open workers that `takes`, the first registered after the worker
        whose `seq` is `after`, going round."""
        for each_load in self._loads:
            group = self._groups[each_load]
            start, count = bisect.bisect_right(group, after, key=_seq), len(group)
            for place in range(start, start + count):
                worker = group[place % count]
                if takes(worker):
                    return worker
        return None


class OpenWorkers:
    """The open workers of `registry`, rebuilt whenever workers came, went or changed there
    (`current`), and kept up to date in between (`refresh`)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.workers: list[Worker] = []  # in no order: a worker closes by a swap with the last
        self.positions: dict[Worker, int] = {}  # each open worker's index in `workers`
        self.registered = Registered((), ())
        # built when a policy first asks for the lightest (least busy), kept up to date from
        # then on: the other policies pay nothing for it
        self._by_load: ByLoad | None = None
        self.total_slots = 0  # of the registered workers
        self._seen_changes = -1  # the registry's `changes` these were built for

    def current(self) -> None:
        if self.registry.changes != self._seen_changes:
            self.rebuild()

    def candidates(self, want: Want) -> Candidates:
        """The open workers that can take `want`, as a policy sees them."""
        return Candidates(self.workers, self.positions, want, self.registered, self)

    def lightest(self, after: int, takes: Callable[[Worker], bool]) -> Worker | None:
        """As `ByLoad.lightest`, over the open workers."""
        if self._by_load is None:
            self._by_load = ByLoad()
            for worker in self.workers:
                self._by_load.put(worker)
        return self._by_load.lightest(after, takes)

    def refresh(self, worker: Worker) -> None:
        """Keep `worker` open exactly when it can take a request now, at its current load."""
        is_open = (
            worker.free_slots > 0 and worker.available and self.registry.get(worker.id) is worker
        )
        if not is_open:
            self.close(worker)
            return
        if worker not in self.positions:
            self.positions[worker] = len(self.workers)
            self.workers.append(worker)
        if self._by_load is not None:
            self._by_load.put(worker)

    def close(self, worker: Worker) -> None:
        """Take `worker` out (a swap with the last, so it costs the same at any place)."""
        position = self.positions.pop(worker, None)
        if position is None:
            return
        if self._by_load is not None:
            self._by_load.remove(worker)
        last = self.workers.pop()
        if last is not worker:
            self.workers[position] = last
            self.positions[last] = position

    def rebuild(self) -> None:
        self._seen_changes = self.registry.changes
        self.total_slots = sum(worker.slots for worker in self.registry)
        self.workers, self.positions, self._by_load = [], {}, None
        self.registered = Registered.of(self.registry)
        for worker in self.registry:
            self.refresh(worker)


def _seq(worker: Worker) -> int:
    return worker.seq
