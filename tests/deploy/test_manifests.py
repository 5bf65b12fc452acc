"""The Kubernetes manifests: schema-valid, Pod Security "restricted", and wired to each other.

Every manifest file and every rendering (base, dev, prod) is validated offline against the
Kubernetes JSON schemas shipped by kubernetes-validate (strict: unknown fields fail), for the
oldest Kubernetes we support and the newest the package knows; the Prometheus Operator kinds
against `crd_schemas`. Rendering is `tests/deploy/kustomize.py`, checked against
`kubectl kustomize` where that is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service import config
from tests.deploy import crd_schemas, kustomize

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
BUILDS = ("base", "overlays/dev", "overlays/prod")
OVERLAYS = ("overlays/dev", "overlays/prod")
OLDEST_SUPPORTED = "1.29"
VERSIONS = (OLDEST_SUPPORTED, kubernetes_validate.latest_version())
MANIFEST_FILES = sorted(
    path.relative_to(KUBERNETES)
    for path in KUBERNETES.rglob("*.yaml")
    if path.name != "kustomization.yaml"
)
# Volume types the restricted profile allows.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}

Resource = dict[str, Any]


@cache
def _rendered(build: str) -> tuple[Resource, ...]:
    return tuple(kustomize.build(KUBERNETES / build))


def rendered(build: str) -> list[Resource]:
    return [yaml.safe_load(yaml.safe_dump(r)) for r in _rendered(build)]  # a private copy


def one(resources: list[Resource], kind: str, name: str) -> Resource:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_templates(resources: list[Resource]) -> Iterator[tuple[Resource, Resource]]:
    """(workload, pod template) for every workload that runs pods."""
    for resource in resources:
        spec = resource.get("spec", {})
        if resource["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec:
            yield resource, spec["template"]


def validate(resource: Resource) -> None:
    key = (resource["apiVersion"], resource["kind"])
    if key in crd_schemas.SCHEMAS:
        jsonschema.validate(resource, crd_schemas.SCHEMAS[key])
        return
    for version in VERSIONS:
        kubernetes_validate.validate(resource, version, strict=True)


def selects(selector: Resource, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels / matchExpressions, or a plain map) matches."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value, operator = labels.get(expression["key"]), expression["operator"]
        matched = {
            "In": value in expression.get("values", []),
            "NotIn": value not in expression.get("values", []),
            "Exists": value is not None,
            "DoesNotExist": value is None,
        }[operator]
        if not matched:
            return False
    return True


def pods_selected(resources: list[Resource], selector: Resource) -> set[str]:
    return {
        workload["metadata"]["name"]
        for workload, template in pod_templates(resources)
        if selects(selector, template["metadata"]["labels"])
    }


def configuration_variables() -> set[str]:
    """The variables in the README's Configuration table."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row)}


# --- schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=str)
def test_every_manifest_file_validates_against_the_kubernetes_schemas(path: Path) -> None:
    documents = kustomize.load_documents(KUBERNETES / path)
    assert documents
    for document in documents:
        validate(document)


@pytest.mark.parametrize("build", BUILDS)
def test_every_rendered_resource_validates_against_the_kubernetes_schemas(build: str) -> None:
    resources = rendered(build)
    assert len(resources) >= 11
    for resource in resources:
        validate(resource)


def test_a_misspelt_field_fails_validation() -> None:
    web = one(rendered("base"), "Deployment", "web")
    web["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(jsonschema.ValidationError):
        validate(web)
    monitor = one(rendered("overlays/prod"), "ServiceMonitor", "convoai-ledger")
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
@pytest.mark.parametrize("build", BUILDS)
def test_the_python_rendering_equals_kubectl_kustomize(build: str) -> None:
    output = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES / build)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout

    def key(r: Resource) -> tuple[str, str, str, str]:
        metadata = r["metadata"]
        return (r["apiVersion"], r["kind"], metadata.get("namespace", ""), metadata["name"])

    real = {key(r): r for r in yaml.safe_load_all(output) if r}
    assert {key(r): r for r in rendered(build)} == real


# --- Pod Security "restricted" ------------------------------------------------------------------


@pytest.mark.parametrize("build", BUILDS)
def test_every_pod_meets_the_restricted_pod_security_profile(build: str) -> None:
    templates = list(pod_templates(rendered(build)))
    assert {w["metadata"]["name"] for w, _ in templates} == {"web", "worker", "migrate"}
    for workload, template in templates:
        pod, where = template["spec"], workload["metadata"]["name"]
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, where
        assert context["runAsUser"] > 0 and context["runAsGroup"] > 0, where
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod["automountServiceAccountToken"] is False, where
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(host), where
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, where
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["runAsNonRoot"] is True, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert not security.get("privileged"), where
            assert all("hostPort" not in port for port in container.get("ports", [])), where
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) == {"cpu", "memory"}, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_create_their_namespace_enforcing_the_restricted_profile(overlay: str) -> None:
    resources = rendered(overlay)
    (namespace,) = [r for r in resources if r["kind"] == "Namespace"]
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {r["metadata"].get("namespace") for r in resources if r["kind"] != "Namespace"} == {
        namespace["metadata"]["name"]
    }


# --- workloads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("build", BUILDS)
def test_web_serves_with_probes_and_drains_within_its_grace_period(build: str) -> None:
    resources = rendered(build)
    pod = one(resources, "Deployment", "web")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["serve"]
    assert container["ports"] == [
        {"name": "http", "containerPort": 8000, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9100, "protocol": "TCP"},
    ]
    probes = {
        probe: (container[probe]["httpGet"]["path"], container[probe]["httpGet"]["port"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes == {
        "startupProbe": ("/healthz", "http"),
        "readinessProbe": ("/readyz", "http"),
        "livenessProbe": ("/healthz", "http"),
    }
    settings = config.load(one(resources, "ConfigMap", "convoai-ledger")["data"])
    assert (settings.host, settings.port, settings.metrics_port) == ("0.0.0.0", 8000, 9100)
    drain = settings.shutdown_drain_s + settings.shutdown_timeout_s
    assert pod["terminationGracePeriodSeconds"] > drain + 5


@pytest.mark.parametrize("build", BUILDS)
def test_web_keeps_two_or_more_replicas_through_its_autoscaler(build: str) -> None:
    resources = rendered(build)
    assert "replicas" not in one(resources, "Deployment", "web")["spec"]
    hpa = one(resources, "HorizontalPodAutoscaler", "web")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    pdb = one(resources, "PodDisruptionBudget", "web")["spec"]
    assert pods_selected(resources, pdb["selector"]) == {"web"}
    assert pdb["minAvailable"] < hpa["minReplicas"]


@pytest.mark.parametrize("build", BUILDS)
def test_worker_and_migrate_run_their_commands_from_the_same_image(build: str) -> None:
    resources = rendered(build)
    commands = {
        workload["metadata"]["name"]: (c["image"], c["args"])
        for workload, template in pod_templates(resources)
        for c in template["spec"]["containers"]
    }
    images = {image for image, _ in commands.values()}
    assert len(images) == 1
    assert {name: args for name, (_, args) in commands.items()} == {
        "web": ["serve"],
        "worker": ["worker"],
        "migrate": ["migrate"],
    }
    worker = one(resources, "Deployment", "worker")["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] >= 30


@pytest.mark.parametrize("build", BUILDS)
def test_worker_probes_its_loop_and_database_on_its_metrics_port(build: str) -> None:
    resources = rendered(build)
    (container,) = one(resources, "Deployment", "worker")["spec"]["template"]["spec"]["containers"]
    settings = config.load(one(resources, "ConfigMap", "convoai-ledger")["data"])
    assert container["ports"] == [
        {"name": "metrics", "containerPort": settings.metrics_port, "protocol": "TCP"}
    ]
    probes = {
        probe: (container[probe]["httpGet"]["path"], container[probe]["httpGet"]["port"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes == {
        "startupProbe": ("/healthz", "metrics"),
        "readinessProbe": ("/readyz", "metrics"),
        "livenessProbe": ("/healthz", "metrics"),
    }
    # /healthz fails after a minute without a loop round: the probe must not restart sooner.
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30


@pytest.mark.parametrize("build", BUILDS)
def test_the_migration_job_runs_once_before_the_rollout(build: str) -> None:
    job = one(rendered(build), "Job", "migrate")
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "Sync"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert 0 < job["spec"]["backoffLimit"] <= 5
    assert job["spec"]["activeDeadlineSeconds"] > 0


def wave(resource: Resource) -> int:
    annotations = resource["metadata"].get("annotations", {})
    return int(annotations.get("argocd.argoproj.io/sync-wave", "0"))


@pytest.mark.parametrize("build", BUILDS)
def test_argo_cd_creates_what_the_migration_needs_before_it_and_rolls_out_after_it(
    build: str,
) -> None:
    """A first sync creates everything: hooks of the Sync phase run in wave order with the other
    resources, and each wave waits for the one before to be healthy (a Job: complete). The
    Secret is created beforehand by the operator (README, "Argo CD")."""
    resources = rendered(build)
    job = one(resources, "Job", "migrate")
    assert "PreSync" not in job["metadata"]["annotations"]["argocd.argoproj.io/hook"]
    pod = job["spec"]["template"]["spec"]
    needs = [("ServiceAccount", pod["serviceAccountName"])] + [
        ("ConfigMap", source["configMapRef"]["name"])
        for source in pod["containers"][0]["envFrom"]
        if "configMapRef" in source
    ]
    needs += [
        ("NetworkPolicy", r["metadata"]["name"]) for r in resources if r["kind"] == "NetworkPolicy"
    ]
    for kind, name in needs:
        assert wave(one(resources, kind, name)) < wave(job), (kind, name)
    for workload, _ in pod_templates(resources):
        if workload is not job:
            assert wave(workload) > wave(job), workload["metadata"]["name"]
    for namespace in (r for r in resources if r["kind"] == "Namespace"):
        assert wave(namespace) < min(wave(one(resources, kind, name)) for kind, name in needs)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_set_a_registry_image_with_a_tag(overlay: str) -> None:
    images = {
        c["image"]
        for _, template in pod_templates(rendered(overlay))
        for c in template["spec"]["containers"]
    }
    (image,) = images
    assert re.fullmatch(r"[a-z0-9.-]+/[a-z0-9/_.-]+(:[\w.-]+|@sha256:[0-9a-f]{64})", image)


# --- wiring -------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", BUILDS)
def test_the_service_sends_traffic_to_the_web_port(build: str) -> None:
    resources = rendered(build)
    service = one(resources, "Service", "web")["spec"]
    assert pods_selected(resources, service["selector"]) == {"web"}
    assert [p["targetPort"] for p in service["ports"]] == ["http"]


@pytest.mark.parametrize("build", BUILDS)
def test_pods_read_the_configmap_and_the_secret_that_exist(build: str) -> None:
    resources = rendered(build)
    names = {(r["kind"], r["metadata"]["name"]) for r in resources}
    for _, template in pod_templates(resources):
        pod = template["spec"]
        assert ("ServiceAccount", pod["serviceAccountName"]) in names
        for container in pod["containers"]:
            sources = container["envFrom"]
            assert [s["configMapRef"]["name"] for s in sources if "configMapRef" in s] == [
                "convoai-ledger"
            ]
            assert [s["secretRef"]["name"] for s in sources if "secretRef" in s] == [
                "convoai-ledger"
            ]
    assert ("ConfigMap", "convoai-ledger") in names
    # The Secret is created by the operator, never by an apply (it would overwrite it).
    assert ("Secret", "convoai-ledger") not in names


def test_the_secret_example_holds_placeholders_only() -> None:
    (secret,) = kustomize.load_documents(KUBERNETES / "base" / "secret.example.yaml")
    assert secret["metadata"]["name"] == "convoai-ledger"
    assert "data" not in secret
    for key, value in secret["stringData"].items():
        assert "REPLACE_ME" in value, key


@pytest.mark.parametrize("build", BUILDS)
def test_configmap_and_secret_together_are_a_valid_documented_configuration(build: str) -> None:
    (secret,) = kustomize.load_documents(KUBERNETES / "base" / "secret.example.yaml")
    data = one(rendered(build), "ConfigMap", "convoai-ledger")["data"]
    environment = {**data, **secret["stringData"]}
    assert set(environment) <= configuration_variables()
    settings = config.load(environment)
    assert settings.database_url is not None
    assert [len(app.webhook_secrets) for app in settings.apps.values()] == [1]


@pytest.mark.parametrize("build", BUILDS)
def test_network_policies_let_in_only_the_web_port_and_out_only_dns_postgres_and_agora(
    build: str,
) -> None:
    resources = rendered(build)
    policies = [r["spec"] for r in resources if r["kind"] == "NetworkPolicy"]
    every = {"web", "worker", "migrate"}
    # Default deny both ways for all our pods.
    assert any(
        pods_selected(resources, p["podSelector"]) == every
        and set(p["policyTypes"]) == {"Ingress", "Egress"}
        and "ingress" not in p
        and "egress" not in p
        for p in policies
    )

    def allowed(direction: str, pod: str) -> set[tuple[int, str]]:
        return {
            (port["port"], port["protocol"])
            for p in policies
            if pod in pods_selected(resources, p["podSelector"])
            for rule in p.get(direction, [])
            for port in rule["ports"]
        }

    assert allowed("ingress", "web") == {(8000, "TCP"), (9100, "TCP")}
    assert allowed("ingress", "worker") == {(9100, "TCP")}  # its /metrics and probes
    assert allowed("ingress", "migrate") == set()
    dns_postgres = {(53, "UDP"), (53, "TCP"), (5432, "TCP")}
    assert allowed("egress", "web") == dns_postgres
    assert allowed("egress", "migrate") == dns_postgres
    assert allowed("egress", "worker") == dns_postgres | {(443, "TCP")}
    (agora,) = [p for p in policies if pods_selected(resources, p["podSelector"]) == {"worker"}]
    (block,) = [peer["ipBlock"] for rule in agora["egress"] for peer in rule["to"]]
    assert block["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(
        block["except"]
    )


def test_prod_scrapes_web_and_worker_metrics_through_its_service_monitor() -> None:
    resources = rendered("overlays/prod")
    monitor = one(resources, "ServiceMonitor", "convoai-ledger")["spec"]
    services = [
        r
        for r in resources
        if r["kind"] == "Service" and selects(monitor["selector"], r["metadata"]["labels"])
    ]
    scraped = {
        (s["metadata"]["name"], endpoint["path"])
        for s in services
        for endpoint in monitor["endpoints"]
        if endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}
    }
    assert scraped == {("web-metrics", "/metrics"), ("worker-metrics", "/metrics")}
    for name, pods in (("web-metrics", {"web"}), ("worker-metrics", {"worker"})):
        service = one(resources, "Service", name)["spec"]
        assert pods_selected(resources, service["selector"]) == pods
        assert [p["targetPort"] for p in service["ports"]] == ["metrics"]
    # The Service the Ingress routes to carries no metrics port.
    assert [p["name"] for p in one(resources, "Service", "web")["spec"]["ports"]] == ["http"]
    assert one(resources, "PrometheusRule", "convoai-ledger")["spec"]["groups"]


def test_the_monitoring_component_is_optional() -> None:
    kinds = {r["kind"] for r in rendered("base") + rendered("overlays/dev")}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}


# --- exposure -----------------------------------------------------------------------------------


def test_the_public_ingress_routes_only_webhooks_and_the_internal_one_no_metrics() -> None:
    resources = rendered("overlays/prod")
    ingresses = {r["metadata"]["name"]: r for r in resources if r["kind"] == "Ingress"}
    assert set(ingresses) == {"web-public", "web-internal"}

    def routes(name: str) -> set[tuple[str, str, str]]:
        return {
            (
                path["path"],
                path["backend"]["service"]["name"],
                path["backend"]["service"]["port"]["name"],
            )
            for rule in ingresses[name]["spec"]["rules"]
            for path in rule["http"]["paths"]
        }

    assert routes("web-public") == {("/v1/webhooks", "web", "http")}
    internal = routes("web-internal")
    assert {path for path, _, _ in internal} >= {"/v1", "/console"}
    assert not any(path.startswith("/metrics") for path, _, _ in internal)
    assert {(service, port) for _, service, port in internal} == {("web", "http")}
    public, private = (
        ingresses[n]["spec"]["ingressClassName"] for n in ("web-public", "web-internal")
    )
    assert public != private
    annotations = ingresses["web-public"]["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert annotations[prefix + "proxy-body-size"] == "2m"  # over the service's own 1 MiB limit
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert 10 < int(annotations[prefix + timeout]) <= 30  # past NCS's 10 s, not forever
    assert annotations[prefix + "force-ssl-redirect"] == "true"
    assert all(ingress["spec"]["tls"] for ingress in ingresses.values())


def test_the_ingress_component_is_optional() -> None:
    kinds = {r["kind"] for r in rendered("base") + rendered("overlays/dev")}
    assert "Ingress" not in kinds


def with_apps_file(tmp_path: Path) -> list[Resource]:
    """The base with components/apps-file, as an overlay using it would render (relative paths:
    kustomize refuses absolute ones); checked against `kubectl kustomize` where installed."""
    root = Path(os.path.relpath(KUBERNETES, tmp_path))
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(root / "base")],
                "components": [str(root / "components" / "apps-file")],
            }
        )
    )
    resources = kustomize.build(tmp_path)
    if shutil.which("kubectl") is not None:
        output = subprocess.run(
            ["kubectl", "kustomize", str(tmp_path)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        assert [r for r in yaml.safe_load_all(output) if r] == sorted_like(resources, output)
    return resources


def sorted_like(resources: list[Resource], output: str) -> list[Resource]:
    """`resources` in the order kubectl printed them (it sorts by kind)."""
    order = [(r["kind"], r["metadata"]["name"]) for r in yaml.safe_load_all(output) if r]
    return sorted(resources, key=lambda r: order.index((r["kind"], r["metadata"]["name"])))


def test_the_apps_file_component_mounts_it_from_a_secret_in_every_pod(tmp_path: Path) -> None:
    resources = with_apps_file(tmp_path)
    for resource in resources:
        validate(resource)
    templates = list(pod_templates(resources))
    assert {w["metadata"]["name"] for w, _ in templates} == {"web", "worker", "migrate"}
    for workload, template in templates:
        pod, where = template["spec"], workload["metadata"]["name"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "apps-file"]
        assert volume["secret"] == {"secretName": "convoai-ledger-apps", "defaultMode": 0o440}
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"], where
        (container,) = pod["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "apps-file"]
        assert mount["readOnly"] is True
        (variable,) = container["env"]
        assert variable["name"] == "LEDGER_APPS_FILE"
        assert variable["value"] == f"{mount['mountPath']}/apps.toml"


def test_the_apps_secret_example_is_a_valid_apps_file_of_placeholders(tmp_path: Path) -> None:
    (secret,) = kustomize.load_documents(
        KUBERNETES / "components/apps-file/apps-secret.example.yaml"
    )
    assert secret["metadata"]["name"] == "convoai-ledger-apps"
    (content,) = secret["stringData"].values()
    apps_file = tmp_path / "apps.toml"
    apps_file.write_text(content)
    data = one(rendered("overlays/prod"), "ConfigMap", "convoai-ledger")["data"]
    settings = config.load({**data, "LEDGER_APPS_FILE": str(apps_file)})
    assert len(settings.apps) == 2
    for app in settings.apps.values():
        assert "REPLACE_ME" in app.app_id
        assert [str(s) for s in app.webhook_secrets] and [str(t) for t in app.read_tokens]
        assert all("REPLACE_ME" in str(t) for t in (*app.webhook_secrets, *app.read_tokens))
