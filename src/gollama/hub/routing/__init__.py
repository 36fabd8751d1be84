"""Which worker gets a request: the policy seam (`policy.py`) and the policies, by name.

To add a policy: write a class with the `Policy` methods (a module of its own, or `simple.py`
for one that learns nothing) and add it to `POLICIES`; `--policy` and its help follow.
"""

from __future__ import annotations

from gollama.hub.routing.cache_aware import CacheAware
from gollama.hub.routing.policy import Policy
from gollama.hub.routing.simple import LeastBusy, RoundRobin

POLICIES: dict[str, type[CacheAware] | type[LeastBusy] | type[RoundRobin]] = {
    CacheAware.name: CacheAware,
    LeastBusy.name: LeastBusy,
    RoundRobin.name: RoundRobin,
}


def make_policy(name: str) -> Policy:
    return POLICIES[name]()
