"""Kubernetes manifests and the Containerfile, validated offline (no cluster, no image build).

The checks are the ones a reviewer would make: required fields, pinned images, resources, a
locked-down security context, health probes on the right paths and ports, arguments that probed's
own parser accepts, embedded configs that probed's own loader accepts, shard count equal to the
replica count, and a PodMonitor that selects the pods and names their ports.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from probed.cli import build_parser
from probed.config import parse_config
from probed.sharding import Shard

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
CONTAINERFILE = ROOT / "deploy" / "container" / "Containerfile"


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(KUBE.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == kind]


def workloads() -> list[dict[str, Any]]:
    return of_kind("Deployment") + of_kind("StatefulSet")


def probed_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["image"].rsplit("/", 1)[-1].startswith("probed:"))


def expand(arg: str, env: dict[str, str]) -> str:
    # Kubernetes expands $(VAR) in args from the container's env.
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)


def test_every_document_has_the_required_fields() -> None:
    docs = documents()
    kinds = {d["kind"] for d in docs}
    assert {
        "ConfigMap",
        "Deployment",
        "StatefulSet",
        "Service",
        "PodMonitor",
        "PrometheusRule",
    } <= kinds
    for doc in docs:
        assert doc["apiVersion"] and doc["metadata"]["name"], doc
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])


@pytest.mark.parametrize("workload", workloads(), ids=lambda w: w["kind"])
def test_containers_are_pinned_limited_and_locked_down(workload: dict[str, Any]) -> None:
    spec = workload["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    volumes = {v["name"]: v for v in pod["volumes"]}
    for c in pod["containers"]:
        image = c["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
        assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        for mount in c.get("volumeMounts", []):
            assert mount["name"] in volumes
            assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"


@pytest.mark.parametrize("workload", workloads(), ids=lambda w: w["kind"])
def test_probed_container_health_args_and_config(
    workload: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    pod = workload["spec"]["template"]["spec"]
    c = probed_container(workload)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert c["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] in ports

    env = {e["name"]: "probed-2" if e["name"] == "POD_NAME" else "x" for e in c.get("env", [])}
    args = build_parser().parse_args([expand(a, env) for a in c["args"]])
    assert args.command == "run"
    assert args.listen.endswith(f":{ports[next(iter(ports))]}")
    assert args.log_format == "json"

    # The config the args point at comes from a ConfigMap in the same file, and loads.
    mount = next(
        m for m in c["volumeMounts"] if args.config.startswith(m["mountPath"].rstrip("/") + "/")
    )
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = next(
        d for d in of_kind("ConfigMap") if d["metadata"]["name"] == volume["configMap"]["name"]
    )
    for name in env:
        monkeypatch.setenv(name, "token-from-secret")
    config = parse_config(cm["data"][Path(args.config).name], source="<configmap>")
    assert config.probes

    # Every other container that mounts the config is the reloader, and it calls /-/reload.
    for other in pod["containers"]:
        if other is not c and any(
            m["name"] == mount["name"] for m in other.get("volumeMounts", [])
        ):
            assert any(a.endswith(f":{ports[next(iter(ports))]}/-/reload") for a in other["args"])


def test_statefulset_shards_by_ordinal_across_all_replicas() -> None:
    (sts,) = of_kind("StatefulSet")
    c = probed_container(sts)
    replicas = sts["spec"]["replicas"]
    owned: list[str] = []
    cm = next(d for d in of_kind("ConfigMap") if d["metadata"]["name"] == "probed")
    names = [p["name"] for p in yaml.safe_load(cm["data"]["probed.yaml"])["probes"]]
    for ordinal in range(replicas):
        env = {"POD_NAME": f"{sts['metadata']['name']}-{ordinal}", "CHAT_TOKEN": "x"}
        args = build_parser().parse_args([expand(a, env) for a in c["args"]])
        shard = Shard.parse(args.shard)
        assert (shard.index, shard.count) == (ordinal, replicas), "--shard N must equal replicas"
        owned += [n for n in names if shard.owns(n)]
    assert sorted(owned) == sorted(names), "every probe runs exactly once across the replicas"
    services = [
        s for s in of_kind("Service") if s["metadata"]["name"] == sts["spec"]["serviceName"]
    ]
    assert services and services[0]["spec"]["clusterIP"] == "None"


def test_podmonitor_selects_the_pods_and_names_their_ports() -> None:
    (monitor,) = of_kind("PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    endpoints = {e["port"]: e for e in monitor["spec"]["podMetricsEndpoints"]}
    for workload in workloads():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), workload["metadata"]["name"]
        port_names = {p["name"] for p in probed_container(workload)["ports"]}
        assert port_names & endpoints.keys(), workload["metadata"]["name"]
    for endpoint in endpoints.values():
        # The shipped rules select job="probed".
        assert {"targetLabel": "job", "replacement": "probed"} in endpoint["relabelings"]


def test_containerfile_runs_as_non_root_without_writing() -> None:
    lines = [
        line.strip()
        for line in CONTAINERFILE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    final_stage = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    users = [line.split()[1] for line in final_stage if line.startswith("USER ")]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert any("PYTHONDONTWRITEBYTECODE=1" in line for line in final_stage)
    base = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert all(":" in image and not image.endswith(":latest") for image in base)
    # ENTRYPOINT + CMD make a command line probed's own parser accepts.
    entry = next(line for line in final_stage if line.startswith("ENTRYPOINT "))
    cmd = next(line for line in final_stage if line.startswith("CMD "))
    argv = yaml.safe_load(entry.split(" ", 1)[1]) + yaml.safe_load(cmd.split(" ", 1)[1])
    assert argv[0] == "/opt/probed/bin/probed"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.listen == ":9464"
    # The image build installs the package from the files it copies.
    assert "COPY probed /src/probed" in lines and any("pip install /src" in line for line in lines)
    assert shlex.split(cmd)  # well-formed
