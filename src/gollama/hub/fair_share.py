"""Fair shares of the slots between tenants, and priority classes: who of the waiters goes next.

A tenant is a client API key (or, without keys, everyone; or one tenant per value of a header
the operator names). When requests wait for slots, a freed slot goes to the tenant that has had
the least service, weighted by its `weight`, not to the oldest waiter overall; within a
tenant, in the order the scheduler and its routing policy choose.

- Service is slot seconds. Each tenant has a virtual time that grows by the seconds it is
  granted divided by its weight: at the grant by the policy's estimate of the request's work
  (prompt and reply), so the very next decision counts it, corrected at the release by how long
  the slot was really held. So a tenant of long prompts and one of short ones, or of long and
  short replies, get equal slot time, not equal request counts; with weights 3:1, 75/25.
- A tenant that starts waiting after a quiet spell starts at the virtual time of the tenants
  being served, never below (`clock`): idle time banks no credit, and a newcomer is next as
  soon as the tenants waiting before it have each been granted what it is owed.
- Priority classes: `interactive` lines go before `batch` ones. A batch line whose oldest
  request has waited `aging` seconds competes as interactive, so batch work waits long but
  never starves (and never past its deadline or the queue timeout, which the caller keeps).
- A retry goes first: it has waited its turn already.

A line is one tenant's waiters of one class, oldest first (a retry at the front). Each line
keeps its rank (class, virtual time, head's arrival) and its place among the others, worked out
again only when one of them changed (and for batch lines, which age): ordering 100 lines per
freed slot then moves the two or three whose rank changed, however many requests each holds.
"""

from __future__ import annotations

import math
from bisect import insort
from collections import OrderedDict
from dataclasses import dataclass
from enum import IntEnum
from operator import attrgetter
from typing import Any, Generic, Protocol, TypeVar

_RANK = attrgetter("rank")  # a key in C: lines are placed by it at every freed slot
MAX_TENANTS = 1000  # past this many, idle tenants are forgotten
TYPICAL_WORK = 1.0  # seconds charged for a request of a tenant whose slot times are unknown
HALF_LIFE = 60.0  # seconds: the service and waits shown in /stats are of about the last minute
DEFAULT_AGING = 30.0  # seconds a batch request waits before it competes as interactive


class Priority(IntEnum):
    INTERACTIVE = 0
    BATCH = 1

    @classmethod
    def named(cls, name: str) -> Priority:
        """The class called `name` (a `ValueError` naming the classes otherwise)."""
        try:
            return cls[name.strip().upper()]
        except KeyError:
            names = ", ".join(p.name.lower() for p in cls)
            raise ValueError(f"{name!r} is not a priority class ({names})") from None


@dataclass(frozen=True, slots=True)
class Share:
    """Whose request it is, for the fair share: its tenant, the tenant's weight, its class."""

    tenant: str = ""
    weight: float = 1.0
    priority: Priority = Priority.INTERACTIVE


PRIORITIES = tuple(Priority)  # iterating a tuple is several times cheaper than an enum
ANYONE = Share()  # requests without a key or tenant


class Waiting(Protocol):
    """A request waiting in a line: when it arrived (loop time) and whether it is a retry."""

    @property
    def since(self) -> float: ...

    @property
    def retry(self) -> bool: ...


W = TypeVar("W", bound=Waiting)


class Tenant:
    __slots__ = (
        "held",
        "held_n",
        "lines",
        "name",
        "running",
        "served",
        "served_at",
        "virtual",
        "waited",
        "waited_n",
        "waiting",
        "weight",
    )

    def __init__(self, name: str, weight: float) -> None:
        self.name = name
        self.weight = weight
        self.virtual = 0.0  # slot seconds granted / weight
        self.lines = 0  # lines of this tenant with waiters
        self.waiting = 0  # its waiters in them
        self.running = 0  # slots it holds
        self.held = 0.0  # slot seconds of its released requests, and their count
        self.held_n = 0
        # Decayed sums (half-life `HALF_LIFE`), as of `served_at`: slot seconds held, and the
        # queue waits of the requests granted (their sum, their count).
        self.served = 0.0
        self.waited = 0.0
        self.waited_n = 0.0
        self.served_at = 0.0

    def typical(self) -> float:
        """The seconds one of its requests holds a slot, on average (charged when the policy
        estimates none)."""
        return self.held / self.held_n if self.held_n else TYPICAL_WORK

    def decay(self, now: float) -> None:
        if now > self.served_at:
            factor = math.exp2(-(now - self.served_at) / HALF_LIFE)
            self.served *= factor
            self.waited *= factor
            self.waited_n *= factor
            self.served_at = now


class Line(Generic[W]):
    """One tenant's waiters of one class, oldest first."""

    __slots__ = ("key", "ordered", "priority", "rank", "tenant", "waiters")

    def __init__(self, tenant: Tenant, key: tuple[str, Priority]) -> None:
        self.tenant = tenant
        self.key = key  # (tenant, class)
        self.priority = key[1]
        self.waiters: OrderedDict[W, None] = OrderedDict()
        self.rank: tuple[int, float, float] = (-1, 0.0, 0.0)  # see `FairShare.lines`
        self.ordered = False  # whether it has its place in `FairShare._order`

    def ranked(self, aged: float) -> tuple[int, float, float]:
        """Its place among the lines (lowest first): its class (-1 for a retry at its head; a
        batch line whose head came by `aged` as interactive), its tenant's virtual time, when
        its head came."""
        head = next(iter(self.waiters))
        if head.retry:
            return (-1, self.tenant.virtual, head.since)
        priority = self.priority if head.since > aged else Priority.INTERACTIVE
        return (priority, self.tenant.virtual, head.since)


class FairShare(Generic[W]):
    """The waiters in lines, and the service each tenant had. With `enabled` false, one line in
    arrival order (retries first), as a plain FIFO queue."""

    def __init__(self, *, enabled: bool = True, aging: float = DEFAULT_AGING) -> None:
        self.enabled = enabled
        self.aging = aging
        self.clock = 0.0  # the virtual time of the tenants being served
        self.tenants: dict[str, Tenant] = {}
        self._lines: dict[tuple[str, Priority], Line[W]] = {}
        self._order: list[Line[W]] = []  # the lines, in the order of their ranks
        # lines whose rank may have changed since they took their place in `_order` (or that
        # have none yet)
        self._changed: set[Line[W]] = set()
        self._batch: set[Line[W]] = set()  # the batch lines among them
        self._line_of: dict[W, Line[W]] = {}
        self._tenant_of: dict[W, Tenant] = {}
        self._everyone = Tenant("", 1.0)  # the owner of the one line when not `enabled`

    def join(self, waiter: W, share: Share) -> None:
        """`waiter` waits, at the end of its line (a retry at the front)."""
        tenant = self._tenant(share)
        tenant.waiting += 1
        self._tenant_of[waiter] = tenant
        if self.enabled:
            key, owner = (tenant.name, share.priority), tenant
        else:  # one line for everyone
            key, owner = ("", Priority.INTERACTIVE), self._everyone
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = Line(owner, key)
            if not owner.lines:  # it was not waiting: no credit for the quiet spell
                owner.virtual = max(owner.virtual, self.clock)
            owner.lines += 1
            self._changed.add(line)
            if line.priority is Priority.BATCH:
                self._batch.add(line)
        line.waiters[waiter] = None
        if waiter.retry:
            line.waiters.move_to_end(waiter, last=False)
            self._changed.add(line)
        self._line_of[waiter] = line

    def leave(self, waiter: W) -> None:
        """`waiter` waits no more (served, cancelled or failed); safe to call twice."""
        line = self._line_of.pop(waiter, None)
        if line is None:
            return
        self._tenant_of.pop(waiter).waiting -= 1
        del line.waiters[waiter]
        if not line.waiters:
            del self._lines[line.key]
            line.tenant.lines -= 1
            if line.ordered:
                self._order.remove(line)
            self._changed.discard(line)
            self._batch.discard(line)
        else:
            self._changed.add(line)  # its head may have left

    def crowding(self, share: Share) -> tuple[W, str] | str:
        """The queue is full and a request of `share` comes: the newest waiter to refuse
        instead, of the tenant with the most waiters for its weight, if `share`'s tenant would
        still hold less (and whose waiter it is); else how many of the waiters are its own."""
        mine = self.tenants.get(share.tenant)
        waiting = mine.waiting if mine is not None else 0
        own = f", {waiting} of them from {_who(share.tenant)}" if self.enabled else ""
        crowded = max(
            (t for t in self.tenants.values() if t.waiting),
            key=lambda t: t.waiting / t.weight,
            default=None,
        )
        if (
            not self.enabled
            or crowded is None
            or crowded.name == share.tenant
            or (waiting + 1) / share.weight >= crowded.waiting / crowded.weight
        ):
            return own
        for priority in sorted(Priority, reverse=True):  # its lowest class first
            line = self._lines.get((crowded.name, priority))
            if line is None:
                continue
            for waiter in reversed(line.waiters):
                if not waiter.retry:
                    return waiter, _who(crowded.name)
        return own

    def lines(self, now: float) -> list[Line[W]]:
        """The lines with waiters, the one to serve first first: by class (a retry at the head
        first; a batch line whose head waited `aging` seconds as interactive), then the
        tenant's virtual time, then when the head came (`Line.ranked`)."""
        order, changed = self._order, self._changed
        changed.update(self._batch)  # they age as time goes by
        aged = now - self.aging  # a head that came by then has waited `aging`
        for line in changed:  # each takes its new place; the others keep theirs
            if line.ordered:
                del order[order.index(line)]
            line.rank = line.ranked(aged)
            insort(order, line, key=_RANK)
            line.ordered = True
        changed.clear()
        return list(order)

    def granted(self, waiter: W, share: Share, work: float, now: float) -> float:
        """`waiter` (which leaves its line) was granted a slot that the policy predicts it
        holds for `work` seconds (0: no estimate); `now - waiter.since` is its queue wait.
        Returns the seconds charged, for `released`."""
        self.leave(waiter)
        tenant = self._tenant(share)
        tenant.decay(now)
        tenant.waited += now - waiter.since
        tenant.waited_n += 1
        return self._charge(tenant, work, advance=not waiter.retry)

    def started(self, share: Share, work: float, now: float) -> float:
        """A request took a free slot without waiting: it is service all the same."""
        tenant = self._tenant(share)
        tenant.decay(now)
        tenant.waited_n += 1  # a wait of 0
        if not tenant.waiting:
            tenant.virtual = max(tenant.virtual, self.clock)
        return self._charge(tenant, work, advance=True)

    def released(self, share: Share, charged: float, held: float, now: float) -> None:
        """A slot charged `charged` seconds was held `held` seconds."""
        tenant = self._tenant(share)
        tenant.virtual += (held - charged) / tenant.weight
        self._moved(tenant)
        tenant.running -= 1
        tenant.decay(now)
        tenant.served += held
        tenant.held += held
        tenant.held_n += 1
        if len(self.tenants) > MAX_TENANTS:
            self._forget_idle()

    def _charge(self, tenant: Tenant, work: float, *, advance: bool) -> float:
        if advance:  # the tenants being served are this far on
            self.clock = max(self.clock, tenant.virtual)
        charged = work if work > 0 else tenant.typical()
        tenant.virtual += charged / tenant.weight
        tenant.running += 1
        self._moved(tenant)
        return charged

    def _moved(self, tenant: Tenant) -> None:
        """`tenant`'s virtual time changed: so may the ranks of its lines."""
        if tenant.lines:
            for priority in PRIORITIES:
                line = self._lines.get((tenant.name, priority))
                if line is not None:
                    self._changed.add(line)

    def describe(self, now: float) -> dict[str, Any]:
        """Per tenant: requests waiting, mean queue wait and share of the slot time served,
        both over about the last minute."""
        for tenant in self.tenants.values():
            tenant.decay(now)
        total = sum(t.served for t in self.tenants.values())
        return {
            tenant.name: {
                "weight": tenant.weight,
                "queued": tenant.waiting,
                "mean_wait_s": round(tenant.waited / tenant.waited_n, 3)
                if tenant.waited_n > 1e-9
                else None,
                "service_share": round(tenant.served / total, 3) if total > 0 else None,
                "slot_seconds": round(tenant.held, 3),
            }
            for tenant in self.tenants.values()
        }

    def _forget_idle(self) -> None:
        """Drop the tenants with nothing waiting or running (one that comes back starts at
        `clock`, as it would anyway after a quiet spell)."""
        idle = [n for n, t in self.tenants.items() if not t.waiting and not t.running]
        for name in idle:
            del self.tenants[name]

    def _tenant(self, share: Share) -> Tenant:
        tenant = self.tenants.get(share.tenant)
        if tenant is None:
            tenant = self.tenants[share.tenant] = Tenant(share.tenant, share.weight)
        else:
            tenant.weight = share.weight  # every request carries its key's weight
        return tenant


def _who(tenant: str) -> str:
    return repr(tenant) if tenant else "clients without a key"
