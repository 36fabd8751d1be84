"""The Kubernetes manifests in deploy/k8s, checked offline.

What is tested: every resource validates against the Kubernetes schema (kubernetes-validate, in
strict mode so that an unknown or misspelt field fails; for the oldest and the newest version
we claim; with the network cut off), yamllint passes, and the manifests agree with the code:
the GOLLAMA_* variables they set are settings of `gollama hub` / `gollama worker` and their
values are accepted by the same settings code the commands run, the probes ask open paths the
hub and the worker serve, the ports are the defaults, the hubs are several and their
disruption budget selects them, the grace period covers the drain.

What is not: nothing is deployed to a cluster and no image is built (deploy/Dockerfile needs a
Docker daemon and the network); whether a cluster has GPUs, the NVIDIA device plugin or the
model file on its nodes is up to that cluster.
"""

from __future__ import annotations

import argparse
import functools
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]
from yamllint import linter  # type: ignore[import-untyped]
from yamllint.config import YamlLintConfig  # type: ignore[import-untyped]

from gollama._auth import check_secret
from gollama._guard import Access
from gollama.config import HUB_OPTIONS, WORKER_OPTIONS, Option, hub_config, worker_config
from gollama.errors import KeyFileError, SettingError
from gollama.hub.app import endpoint_at
from gollama.worker import app as worker_app

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
OPTIONS: dict[str, tuple[Option, ...]] = {"hub": HUB_OPTIONS, "worker": WORKER_OPTIONS}
# What the downward API gives a pod, in these tests.
FIELDS = {"status.podIP": "10.1.2.3", "spec.nodeName": "gpu-node-1"}
SAMPLE_SECRET = "sample-secret-0123456789"  # long enough for gollama
REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")  # $(NAME) in env values and args

Resource = dict[str, Any]


def manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def load(path: Path) -> list[Resource]:
    return [cast(Resource, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]


@functools.cache
def resources() -> tuple[Resource, ...]:
    return tuple(resource for path in manifests() for resource in load(path))


def one(kind: str, name: str) -> Resource:
    found = [r for r in resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def workloads() -> list[Resource]:
    return [r for r in resources() if r["kind"] in ("Deployment", "DaemonSet")]


def pod_labels(workload: Resource) -> dict[str, str]:
    return cast(dict[str, str], workload["spec"]["template"]["metadata"]["labels"])


def gollama_containers() -> Iterator[tuple[str, Resource, Resource]]:
    """(command, pod spec, container) of each container that runs `gollama hub|worker`."""
    for workload in workloads():
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            args = container.get("args", [])
            if args and args[0] in OPTIONS:
                yield args[0], pod, container


def the_container(command: str) -> Resource:
    found = [container for cmd, _, container in gollama_containers() if cmd == command]
    assert len(found) == 1, f"{len(found)} containers run gollama {command}"
    return found[0]


def secret_values() -> dict[str, str]:
    (secret,) = load(SECRET_EXAMPLE)
    return cast(dict[str, str], secret["stringData"])


def environment(container: Resource, secrets: dict[str, str]) -> dict[str, str]:
    """The environment Kubernetes gives `container`, with `secrets` for the Secret's values:
    `$(NAME)` expands to a variable defined above it in the list (Kubernetes leaves any other
    reference as literal text, silently: here it fails)."""
    env: dict[str, str] = {}
    for variable in container.get("env", []):
        name = variable["name"]
        if "value" in variable:
            for used in REFERENCE.findall(variable["value"]):
                assert used in env, f"{name} uses $({used}) before it is defined"
            env[name] = REFERENCE.sub(lambda m: env[m.group(1)], variable["value"])
        elif "secretKeyRef" in variable["valueFrom"]:
            ref = variable["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "gollama-secrets"
            env[name] = secrets[ref["key"]]
        else:
            env[name] = FIELDS[variable["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def validation_errors(path: Path, version: str) -> list[str]:
    """Why each resource in `path` does not validate (strictly) against `version`; a kind
    without a schema raises."""
    errors = []
    for resource in load(path):
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            errors.append(f"{resource['kind']}/{resource['metadata']['name']} {where}: {exc}")
    return errors


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the validation tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# The schema and the linter


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize("version", VERSIONS)
def test_every_resource_validates_strictly_offline(version: str) -> None:
    for path in manifests():
        assert validation_errors(path, version) == [], path.name
    kinds = {resource["kind"] for resource in resources()}
    expected = "Namespace Secret Deployment Service PodDisruptionBudget NetworkPolicy DaemonSet"
    assert kinds == set(expected.split())


@pytest.mark.usefixtures("no_network")
def test_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    documents = load(K8S / "hub.yaml")
    copy = tmp_path / "hub.yaml"
    copy.write_text(yaml.safe_dump_all(documents))
    assert validation_errors(copy, VERSIONS[-1]) == []  # the copy as such is valid
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    copy.write_text(yaml.safe_dump_all(documents))
    (error,) = validation_errors(copy, VERSIONS[-1])
    assert "Deployment/gollama-hub" in error and "readinesProbe" in error


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    (kustomization,) = load(K8S / "kustomization.yaml")
    expected = {p.name for p in manifests()} - {SECRET_EXAMPLE.name}
    assert sorted(kustomization["resources"]) == sorted(expected)


def test_yamllint_passes() -> None:
    config = YamlLintConfig(file=str(K8S / ".yamllint"))
    files = [p for p in K8S.iterdir() if config.is_yaml_file(str(p))]
    assert len(files) > len(manifests())  # the manifests, kustomization.yaml, .yamllint
    for path in files:
        problems = list(linter.run(path.read_text(), config, str(path)))
        assert [f"{p.line}:{p.column} {p.desc} ({p.rule})" for p in problems] == [], path.name
    bad = list(linter.run("---\nkey: value   \n", config))
    assert [p.rule for p in bad] == ["trailing-spaces"]


# The manifests and the code


def test_gollama_variables_are_settings_of_the_command() -> None:
    commands = set()
    for command, _, container in gollama_containers():
        commands.add(command)
        known = {option.env for option in OPTIONS[command]}
        names = {v["name"] for v in container.get("env", []) if v["name"].startswith("GOLLAMA_")}
        assert names, f"gollama {command} gets no GOLLAMA_* variable"
        assert names <= known, f"not settings of gollama {command}: {sorted(names - known)}"
        flags = {arg.partition("=")[0] for arg in container["args"][1:] if arg.startswith("-")}
        assert flags <= {option.flag for option in OPTIONS[command]}
    assert commands == set(OPTIONS)


def test_the_settings_code_accepts_the_hub_environment() -> None:
    samples = {key: SAMPLE_SECRET for key in secret_values()}
    config = hub_config(argparse.Namespace(), environment(the_container("hub"), samples))
    assert config.redis_url == f"redis://:{SAMPLE_SECRET}@gollama-redis:6379/0"
    assert config.advertise_url == f"http://{FIELDS['status.podIP']}:{config.port}"
    assert config.worker_token == SAMPLE_SECRET
    assert config.api_keys is not None and config.admin_key is not None


def test_the_settings_code_accepts_the_worker_environment(tmp_path: Path) -> None:
    samples = {key: SAMPLE_SECRET for key in secret_values()}
    env = environment(the_container("worker"), samples)
    model = tmp_path / Path(env["GOLLAMA_MODEL"]).name  # a stand-in for the node's file
    model.write_bytes(b"GGUF")
    config = worker_config(argparse.Namespace(), {**env, "GOLLAMA_MODEL": str(model)})
    assert config.advertise_url == f"http://{FIELDS['status.podIP']}:{config.port}"
    assert config.name == FIELDS["spec.nodeName"]
    assert config.worker_token == SAMPLE_SECRET
    hub = one("Service", "gollama-hub")
    assert config.hub_url == f"http://gollama-hub:{hub['spec']['ports'][0]['port']}"


def test_the_example_secret_is_refused_until_replaced() -> None:
    placeholders = secret_values()
    assert all("REPLACE-ME" in value for value in placeholders.values())
    for _, _, container in gollama_containers():
        for variable in container.get("env", []):
            ref = variable.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None and variable["name"].startswith("GOLLAMA_"):
                with pytest.raises(KeyFileError):
                    check_secret(placeholders[ref["key"]], variable["name"])
    with pytest.raises(SettingError):
        hub_config(argparse.Namespace(), environment(the_container("hub"), placeholders))


def probes(container: Resource) -> dict[str, Resource]:
    kinds = ("startupProbe", "readinessProbe", "livenessProbe")
    return {kind: container[kind] for kind in kinds if kind in container}


def test_hub_probes_ask_open_paths_of_the_endpoint_table() -> None:
    found = probes(the_container("hub"))
    assert {"readinessProbe", "livenessProbe"} <= set(found)
    for kind, probe in found.items():
        path = probe["httpGet"]["path"]
        endpoint = endpoint_at(path)
        assert endpoint is not None, f"{kind}: the hub serves no {path}"
        assert endpoint.method == "GET" and endpoint.access is Access.OPEN, path


def test_worker_probes_ask_open_paths() -> None:
    found = probes(the_container("worker"))
    assert {"readinessProbe", "livenessProbe"} <= set(found)
    paths = [probe["httpGet"]["path"] for probe in found.values() if "httpGet" in probe]
    assert paths
    assert all(worker_app.access(path) is Access.OPEN for path in paths)


def test_ports_are_the_defaults() -> None:
    for command, _, container in gollama_containers():
        default = next(o.default for o in OPTIONS[command] if o.dest == "port")
        assert [p["containerPort"] for p in container["ports"]] == [default]
        named = {p["name"] for p in container["ports"]}
        for probe in probes(container).values():
            action = probe.get("httpGet") or probe["tcpSocket"]
            assert action["port"] in named | {default}
    (port,) = one("Service", "gollama-hub")["spec"]["ports"]
    assert port["port"] == 9000 and port["targetPort"] in ("http", 9000)


def test_several_hubs_and_a_budget_that_selects_them() -> None:
    hub = one("Deployment", "gollama-hub")
    assert hub["spec"]["replicas"] >= 2
    budget = one("PodDisruptionBudget", "gollama-hub")
    assert budget["spec"]["minAvailable"] == 1
    for selector in (budget["spec"]["selector"]["matchLabels"], hub["spec"]["selector"]):
        matches = selector.get("matchLabels", selector)
        chosen = [w for w in workloads() if matches.items() <= pod_labels(w).items()]
        assert chosen == [hub]
    service = one("Service", "gollama-hub")["spec"]["selector"]
    assert [w for w in workloads() if service.items() <= pod_labels(w).items()] == [hub]


def test_grace_period_covers_the_drain() -> None:
    for command, pod, container in gollama_containers():
        drain_default = next(o.default for o in OPTIONS[command] if o.dest == "drain_timeout")
        values = {v["name"]: v.get("value") for v in container.get("env", [])}
        drain = float(values.get("GOLLAMA_DRAIN_TIMEOUT") or drain_default)
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
        sleep = float(pre_stop["command"][1]) if pre_stop.get("command", [""])[0] == "sleep" else 0
        assert pod["terminationGracePeriodSeconds"] > drain + sleep, command


def test_pods_are_locked_down_and_sized() -> None:
    for workload in workloads():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        # A Service's link variables (NAME_PORT=tcp://...) could collide with GOLLAMA_*.
        assert pod["enableServiceLinks"] is False
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert {"requests", "limits"} <= set(container["resources"])
    worker = one("DaemonSet", "gollama-worker")["spec"]["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in worker["tolerations"])


def test_redis_keeps_nothing_on_disk() -> None:
    redis = one("Deployment", "gollama-redis")["spec"]["template"]["spec"]["containers"][0]
    args = redis["args"]
    assert args[args.index("--save") + 1] == ""
    assert args[args.index("--appendonly") + 1] == "no"
    environment(redis, secret_values())  # its $(REDIS_PASSWORD) is defined
    assert set(REFERENCE.findall(" ".join(args))) <= {v["name"] for v in redis["env"]}
    hub_env = environment(the_container("hub"), secret_values())
    assert urlsplit(hub_env["GOLLAMA_REDIS_URL"]).hostname == "gollama-redis"
