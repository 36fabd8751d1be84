"""Many models per machine: workers in front of real router-mode llama-servers (started
without a model, on a folder of generated models), the hub loading models where requests need
them."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import openai
import pytest

from gollama.tools.testmodel import ModelShape, write_test_model
from tests.procs import Processes, stats, wait_until

pytestmark = pytest.mark.e2e

# Models of different sizes; worker 1 has alpha and beta, worker 2 beta, gamma and slow.
SHAPES = {
    "alpha": ModelShape(d_model=64, layers=2),
    "beta": ModelShape(d_model=128, layers=2),
    "gamma": ModelShape(d_model=256, layers=4),
}
LLAMA_ARGS = "--llama-args=-np 2 -c 1024 -t 1"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> dict[str, Path]:
    made = tmp_path_factory.mktemp("router-models")
    files = {name: write_test_model(made / f"{name}.gguf", shape) for name, shape in SHAPES.items()}
    files["slow"] = models["slow"]  # 85 MB, ~140 tokens/s: a request stays in flight a while
    folders = {}
    for worker, names in {"w1": ("alpha", "beta"), "w2": ("beta", "gamma", "slow")}.items():
        folder = made / worker
        folder.mkdir()
        for name in names:
            shutil.copy(files[name], folder / f"{name}.gguf")
        folders[worker] = folder
    return folders


def chat(model: str, tokens: int = 8, **extra: object) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": f"Hi {model}"}],
        "max_tokens": tokens,
        **extra,
    }


def where(hub_url: str) -> dict[str, tuple[list[str], list[str]]]:
    """Each model of /v1/models: (the workers that can serve it, those where it is loaded)."""
    listing = httpx.get(hub_url + "/v1/models", timeout=5).json()["data"]
    return {m["id"]: (sorted(m["workers"]), sorted(m["loaded_on"])) for m in listing}


def states(hub_url: str, worker_id: str) -> dict[str, str]:
    worker = next(w for w in stats(hub_url)["workers"] if w["id"] == worker_id)
    return {model: entry["state"] for model, entry in worker["router"]["models"].items()}


def test_two_router_workers_serve_every_model_loaded_where_requests_need_it(
    procs: Processes, folders: dict[str, Path], clients: list[openai.OpenAI]
) -> None:
    hub = procs.hub()
    w1 = procs.worker(
        "w1", hub, "--models-dir", str(folders["w1"]), "--models-max", "1", LLAMA_ARGS
    )
    w2 = procs.worker(
        "w2", hub, "--models-dir", str(folders["w2"]), "--models-max", "2", LLAMA_ARGS
    )
    assert where(hub.url) == {
        "alpha": (["w1"], []),
        "beta": (["w1", "w2"], []),
        "gamma": (["w2"], []),
        "slow": (["w2"], []),
    }

    client = openai.OpenAI(base_url=hub.url + "/v1", api_key="none", max_retries=0)
    clients.append(client)
    for model in ("alpha", "gamma", "beta"):  # each unloaded: it waits for its load, no error
        reply = client.chat.completions.create(**chat(model))  # type: ignore[call-overload]
        assert reply.model == model and reply.choices[0].finish_reason == "length"
    loaded = where(hub.url)
    assert loaded["alpha"][1] == ["w1"] and loaded["gamma"][1] == ["w2"]
    assert loaded["beta"][1] == ["w2"]  # w2 had room; w1 would have had to unload alpha
    assert states(hub.url, "w1") == {"alpha": "loaded", "beta": "unloaded"}
    listing = httpx.get(hub.url + "/v1/models").json()["data"]
    entry = next(m for m in listing if m["id"] == "gamma")
    assert entry["meta"]["n_embd"] == 256  # llama-server's own entry of the loaded model

    body = stats(hub)
    assert body["placement"]["loads"] == 3 and body["placement"]["failures"] == 0
    metrics = httpx.get(hub.url + "/metrics", timeout=5).text
    assert 'gollama_worker_model_loaded{model="alpha",worker="w1"} 1.0' in metrics
    assert 'gollama_worker_model_loaded{model="beta",worker="w1"} 0.0' in metrics
    assert 'gollama_model_placement_total{action="loads"} 3.0' in metrics
    w1_models = next(w for w in body["workers"] if w["id"] == "w1")["router"]
    assert w1_models["max_models"] == 1 and w1_models["models"]["alpha"]["load_s"] > 0

    # The operator: load beta on w1 by hand (alpha, idle, makes room), then unload it.
    answer = httpx.post(
        hub.url + "/admin/models/load", json={"model": "beta", "worker": "w1"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["evicted"] == "alpha" and answer.json()["state"] == "loaded"
    assert states(hub.url, "w1") == {"alpha": "unloaded", "beta": "loaded"}
    answer = httpx.post(hub.url + "/admin/models/unload", json={"model": "beta", "worker": "w1"})
    assert answer.status_code == 200 and answer.json()["unloaded_on"] == ["w1"]
    assert states(hub.url, "w1")["beta"] == "unloaded"
    for wrong, status in (
        ({"model": "nope"}, 404),
        ({"model": "beta", "worker": "w9"}, 400),
        ({"worker": "w1"}, 400),
    ):
        answer = httpx.post(hub.url + "/admin/models/load", json=wrong)
        assert answer.status_code == status, answer.text
        assert answer.json()["error"]["message"]

    # A model a hub had loaded for its waiting requests is kept from other hubs until one of
    # them starts there (another hub's swap would otherwise unload it first), not from that hub.
    for path, bad in (("load", {"model": "alpha", "awaited_by": 1}), ("unload", {"by": "h"})):
        answer = httpx.post(w1.url + f"/models/{path}", json=bad, timeout=10)
        assert answer.status_code == 400, answer.text
    for unloader in ("hub-a", "hub-b"):
        done = httpx.post(
            w1.url + "/models/load", json={"model": "alpha", "awaited_by": "hub-a"}, timeout=30
        )
        assert done.status_code == 200, done.text
        unload = {"model": "alpha", "by": unloader}
        answer = httpx.post(w1.url + "/models/unload", json=unload, timeout=10)
        if unloader == "hub-b":
            assert answer.status_code == 409 and "not come yet" in answer.text, answer.text
            assert httpx.post(w1.url + "/v1/chat/completions", json=chat("alpha")).is_success
            answer = httpx.post(w1.url + "/models/unload", json=unload, timeout=10)
        assert answer.status_code == 200, answer.text
    # A request for a model not loaded there is turned away as busy (the hub loads models
    # where it decides): llama-server would load it, evicting another.
    refused = httpx.post(w1.url + "/v1/chat/completions", json=chat("alpha"), timeout=10)
    assert refused.status_code == 503 and "not loaded" in refused.text, refused.text
    assert refused.json()["error"]["code"] == "worker_busy"

    # The worker itself never unloads a model a request of its own is using.
    health = httpx.get(w2.url + "/health", timeout=5).json()
    assert health["router"]["models"]["gamma"]["state"] == "loaded"
    with httpx.stream(
        "POST", hub.url + "/v1/chat/completions", json=chat("slow", 300, stream=True), timeout=60
    ) as streaming:
        chunks = streaming.iter_bytes()
        next(chunks)  # under way, for about two seconds more (one iterator: closing it ends it)
        refused = httpx.post(w2.url + "/models/unload", json={"model": "slow"}, timeout=10)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "model_in_use"
        rest = b"".join(chunks)
    assert rest.rstrip().endswith(b"data: [DONE]")

    # A request without a model cannot be routed to workers of several models each.
    no_model = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    answer = httpx.post(hub.url + "/v1/chat/completions", json=no_model)
    assert answer.status_code == 400 and "name a model" in answer.json()["error"]["message"]
    assert w1.alive() and w2.alive()


async def test_alternating_models_on_one_instance_never_fail_nor_evict_a_model_in_use(
    procs: Processes, folders: dict[str, Path], tmp_path: Path
) -> None:
    """On a worker of a preset (llama-server's --models-preset): its sections are the models,
    and a preset's alias names its model through the hub."""
    preset = tmp_path / "models.ini"
    preset.write_text(
        "version = 1\n\n"
        f"[alpha]\nmodel = {folders['w1'] / 'alpha.gguf'}\nalias = first\n\n"
        f"[beta]\nmodel = {folders['w1'] / 'beta.gguf'}\n"
    )
    hub = procs.hub()
    procs.worker("w1", hub, "--models-preset", str(preset), "--models-max", "1", LLAMA_ARGS)
    assert where(hub.url) == {"alpha": (["w1"], []), "beta": (["w1"], [])}
    listing = httpx.get(hub.url + "/v1/models", timeout=5).json()["data"]
    assert {m["id"]: m["aliases"] for m in listing} == {"alpha": ["first"], "beta": []}

    async def one(client: httpx.AsyncClient, model: str) -> tuple[str, bytes]:
        async with client.stream(
            "POST", "/v1/chat/completions", json=chat(model, 64, stream=True)
        ) as reply:
            assert reply.status_code == 200
            return model, b"".join([part async for part in reply.aiter_bytes()])

    async with httpx.AsyncClient(base_url=hub.url, timeout=60) as client:
        models = ["alpha", "beta", "first", "beta"] * 4
        answers = await asyncio.wait_for(
            asyncio.gather(*(one(client, m) for m in models)), timeout=120
        )
    for model, body in answers:  # a model evicted mid-stream would end it with an error event
        assert body.rstrip().endswith(b"data: [DONE]"), body[-300:]
        assert b'"error"' not in body
        served = "alpha" if model == "first" else model  # the alias's model answers
        assert f'"model":"{served}"'.encode() in body, (model, body[:300])
    placement = stats(hub)["placement"]
    assert placement["loads"] >= 2 and placement["failures"] == 0
    totals = stats(hub)["requests"]
    assert totals["completed"] == len(models) and totals["failed"] == 0


def test_demand_loads_a_model_on_a_second_worker_and_pins_hold(
    procs: Processes, folders: dict[str, Path]
) -> None:
    hub = procs.hub("--pin-models", "gamma=1")
    one_slot = "--llama-args=-np 1 -c 1024 -t 1"
    procs.worker("w1", hub, "--models-dir", str(folders["w1"]), "--models-max", "2", one_slot)
    procs.worker("w2", hub, "--models-dir", str(folders["w2"]), "--models-max", "2", one_slot)
    wait_until(lambda: where(hub.url)["gamma"][1] == ["w2"], "the pinned model loaded", hub)

    async def burst() -> list[str]:
        async with httpx.AsyncClient(base_url=hub.url, timeout=60) as client:
            replies = await asyncio.gather(
                *(client.post("/v1/chat/completions", json=chat("beta", 200)) for _ in range(8))
            )
        assert all(r.status_code == 200 for r in replies)
        return [r.headers["x-gollama-worker"] for r in replies]

    served_by = asyncio.run(burst())
    assert where(hub.url)["beta"][1] == ["w1", "w2"]  # 8 waiting outgrew one slot: a second copy
    assert set(served_by) == {"w1", "w2"}
    assert where(hub.url)["gamma"][1] == ["w2"]  # pinned: still loaded


async def test_two_hubs_share_one_router_worker_without_failures(
    procs: Processes, folders: dict[str, Path]
) -> None:
    redis = procs.redis()
    hubs = [procs.hub("--redis", redis.redis_url, name=f"hub-{n}") for n in "ab"]
    worker = procs.worker(
        "w1", hubs[0], "--models-dir", str(folders["w1"]), "--models-max=1", LLAMA_ARGS
    )

    def on_both() -> bool:
        return all(any(w["id"] == "w1" for w in stats(hub)["workers"]) for hub in hubs)

    wait_until(on_both, "w1 on both hubs", worker, timeout=15)

    async def one(client: httpx.AsyncClient, n: int) -> bytes:
        model = ("alpha", "beta")[n % 2]
        hub = hubs[(n // 2) % 2]  # each hub gets both models
        async with client.stream(
            "POST", hub.url + "/v1/chat/completions", json=chat(model, 48, stream=True)
        ) as reply:
            assert reply.status_code == 200
            return b"".join([part async for part in reply.aiter_bytes()])

    async with httpx.AsyncClient(timeout=90) as client:
        bodies = await asyncio.wait_for(asyncio.gather(*(one(client, n) for n in range(16))), 150)
    for body in bodies:
        assert body.rstrip().endswith(b"data: [DONE]"), body[-300:]
        assert b'"error"' not in body
    placements = [stats(hub)["placement"] for hub in hubs]
    assert sum(p["loads"] for p in placements) >= 2  # the models took turns on the one instance
    for hub in hubs:
        assert stats(hub)["requests"]["failed"] == 0
