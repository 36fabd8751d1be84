"""With several hubs, how long the requests on a worker will hold their slots.

A hub knows the seconds its routing policy predicted for each request it sent (`Lease.work`),
but not for those the other hubs sent to the same worker; without them it can only guess when
a slot they hold frees, and a conversation that waits for the worker holding its prompt waits
too long, or gives up on it too soon. So a hub sends each request with two headers:

    X-GoLlama-Hub   the hub's id (its id in the shared Redis)
    X-GoLlama-Work  the seconds it predicted the request holds its slot

and the worker reports, in every heartbeat to every hub, the requests now holding its slots
that came with them: `"running": [[hub, seconds, age], ...]` (age: seconds since the request
started). A hub counts the others' entries (`Worker.others`).

Nor does a hub know the others' waiters that hold out for the worker (the one holding their
prompt): when a slot frees there, the hub that hears first would give it to a cold request of
its own while another hub's conversation waited for exactly that worker. So each hub answers a
worker's heartbeat with its id and the seconds of each of its waiters holding out for that
worker (`"hub_id"`, `"waiting": [seconds, ...]`), and the worker passes them on to every hub in
its heartbeats, `"waiting": [[hub, seconds], ...]`: load on the worker, ahead of newcomers
(`Worker.waiting_elsewhere`). A worker also keeps a free slot from a request when waiters of
other hubs that need it for less time hold out for it (`kept_for_others`): the hub that hears
first of a freed slot would otherwise give it to a request that goes as well elsewhere.

A waiter stops holding out the moment its hub hears the slot freed and sends it there: the
hub's answer to that very heartbeat would list no one, and a cold request another hub sent at
the same moment would take the slot first (traced: the reservation then never fired). So a
hub also lists, as waiting, its requests on their way to the worker: those it sent there
within `ON_THE_WAY` seconds that the worker's report does not show yet (`on_the_way`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gollama.errors import BadRequest

HUB_HEADER = "X-GoLlama-Hub"
WORK_HEADER = "X-GoLlama-Work"
MAX_HUB_ID = 64  # characters
MAX_SECONDS = 86_400.0  # more than any prediction or request's age
MAX_RUNNING = 10_000  # entries a heartbeat may carry
ON_THE_WAY = 1.0  # seconds: a request sent this recently and not reported yet is on its way


@dataclass(frozen=True)
class Predicted:
    """A request sent by hub `hub`, predicted to hold its slot `seconds`."""

    hub: str
    seconds: float


def from_headers(hub: str | None, work: str | None) -> Predicted | None:
    """The prediction a request's headers carry; None without them. A malformed one is a
    `BadRequest`: the hub that sent it is broken."""
    if hub is None and work is None:
        return None
    if hub is None or not 0 < len(hub) <= MAX_HUB_ID:
        raise BadRequest(f"{HUB_HEADER} must name the hub (1 to {MAX_HUB_ID} characters)")
    try:
        seconds = float(work) if work is not None else math.nan
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_SECONDS:  # false for NaN
        raise BadRequest(f"{WORK_HEADER} must be a number of seconds from 0 to {MAX_SECONDS:g}")
    return Predicted(hub, seconds)


def kept_for_others(waiting: Iterable[tuple[str, float]], predicted: Predicted, free: int) -> bool:
    """Whether all `free` slots of a worker are wanted by waiters of other hubs than the one
    that sent a request `predicted` that long (`waiting`: (hub, seconds) of each waiter that
    holds out for the worker), each needing them for less time."""
    shorter = sum(
        1 for hub, seconds in waiting if hub != predicted.hub and seconds < predicted.seconds
    )
    return shorter >= free


def on_the_way(sent: Sequence[tuple[float, float]], reported: int, now: float) -> list[float]:
    """The predicted seconds of a hub's requests on their way to a worker: of those it sent
    there (`sent`: (when, seconds) of each, oldest first), the ones beyond the `reported` the
    worker's heartbeat shows, sent within `ON_THE_WAY` seconds of `now` (an older one the
    report lacks has ended there while its answer is still being relayed)."""
    return [seconds for when, seconds in sent[reported:] if now - when < ON_THE_WAY]


def parse_running(value: object) -> tuple[tuple[str, float, float], ...]:
    """A heartbeat's `running`: `[[hub, seconds, age], ...]`; a `BadRequest` when malformed."""
    entries = _entries(value, "running", ("seconds", "age"))
    return tuple((hub, seconds, age) for hub, (seconds, age) in entries)


def parse_waiting(value: object) -> tuple[tuple[str, float], ...]:
    """A heartbeat's `waiting`: `[[hub, seconds], ...]`; a `BadRequest` when malformed."""
    return tuple((hub, seconds) for hub, (seconds,) in _entries(value, "waiting", ("seconds",)))


def _entries(
    value: object, field: str, numbers: tuple[str, ...]
) -> list[tuple[str, tuple[float, ...]]]:
    """`[[hub, number, ...], ...]` (None: none), each number a count of seconds as `numbers`
    names them; a `BadRequest` naming `field` when it is anything else."""
    if value is None:
        return []
    shape = f"[hub, {', '.join(numbers)}]"
    if not isinstance(value, list) or len(value) > MAX_RUNNING:
        raise BadRequest(
            f"'{field}' must be an array of at most {MAX_RUNNING} {shape} entries", param=field
        )
    entries = []
    for entry in value:
        if not (
            isinstance(entry, list)
            and len(entry) == 1 + len(numbers)
            and isinstance(entry[0], str)
            and 0 < len(entry[0]) <= MAX_HUB_ID
            and all(_seconds(number) for number in entry[1:])
        ):
            raise BadRequest(
                f"each entry of '{field}' must be {shape}: a hub's id and "
                f"{len(numbers)} number(s) of seconds from 0 to {MAX_SECONDS:g}",
                param=field,
            )
        entries.append((entry[0], tuple(float(number) for number in entry[1:])))
    return entries


def _seconds(value: object) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= MAX_SECONDS
    )


def waiting_heard(body: object) -> tuple[str, tuple[float, ...]] | None:
    """A hub's answer to a heartbeat: its id and its waiters' seconds; None when it names no
    id (one hub alone) or says something else than expected."""
    if not isinstance(body, dict):
        return None
    hub, waiting = body.get("hub_id"), body.get("waiting", [])
    if not isinstance(hub, str) or not 0 < len(hub) <= MAX_HUB_ID:
        return None
    if not isinstance(waiting, list) or len(waiting) > MAX_RUNNING:
        return None
    if not all(_seconds(seconds) for seconds in waiting):
        return None
    return hub, tuple(float(seconds) for seconds in waiting)
