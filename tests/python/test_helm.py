"""The Helm chart ``helm/llmgw``, checked without a cluster or the helm binary.

Helm's own Go SDK (the ``helm-python-sdk`` wheel) lints the chart and renders it with
the default values and with every documented profile (``helm/llmgw/profiles/*.yaml``);
every manifest is validated against the Kubernetes 1.30 schemas (strict: an unknown
field fails). ServiceMonitor is a CRD the schemas do not know: its structure is checked
by hand. Then the properties that matter: one Deployment per service (split) or one
(all), headless Services for gRPC, probes on every container, no secret value in any
manifest, grace periods longer than the drain, and each pod's gateway.yaml accepted by
the real ``llmgw`` binary (``llmgw check --config FILE``).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "llmgw"
PROFILES = sorted(p.stem for p in (CHART / "profiles").glob("*.yaml"))
RENDERS = ["default", *PROFILES]
KUBE_VERSION = "1.30.0"
RELEASE, NAMESPACE = "llmgw", "llmgw"
SPLIT_ROLES = {"edge", "auth", "router", "adapter", "metering"}
GRPC_SERVICES = {"auth": "llmgw.v1.Auth", "router": "llmgw.v1.Router", "adapter": "llmgw.v1.Adapter", "metering": "llmgw.v1.Metering"}
CONTRACT_PORTS = {"auth": 50061, "router": 50062, "adapter": 50063, "metering": 50064}
# Custom resources: the Kubernetes schemas do not describe them.
CRD_KINDS = {"ServiceMonitor"}
# Provider settings that hold credentials (kit::config::ProviderSpec).
SECRET_FIELDS = ("api_key", "azure_ad_token", "credentials", "access_key_id", "secret_access_key", "session_token")
ENV_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------


def profile_values(name: str) -> dict[str, Any]:
    if name == "default":
        return {}
    return yaml.safe_load((CHART / "profiles" / f"{name}.yaml").read_text()) or {}


def render(values: dict[str, Any] | None = None, release: str = RELEASE) -> list[dict[str, Any]]:
    """Every manifest of the chart rendered with ``values`` (as ``helm install`` would)."""
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values=values or {}, name=release, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


@functools.cache
def _rendered(name: str) -> str:
    return json.dumps(render(profile_values(name)))


def rendered(name: str) -> list[dict[str, Any]]:
    """The manifests of a named render (default values or a profile); a fresh copy each call."""
    return json.loads(_rendered(name))


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def by_name(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in kinds(docs, kind)}


def role(deployment: dict[str, Any]) -> str:
    return deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{deployment['metadata']['name']}: one container expected"
    return containers[0]


def pod_config(docs: list[dict[str, Any]], deployment: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The gateway.yaml a Deployment's pods read: its ConfigMap key, as text and parsed."""
    pod = deployment["spec"]["template"]["spec"]
    mount = next(m for m in container(deployment)["volumeMounts"] if m["mountPath"] == "/etc/llmgw")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    items = {i["path"]: i["key"] for i in volume["configMap"]["items"]}
    args = container(deployment)["args"]
    assert args[args.index("--config") + 1] == "/etc/llmgw/gateway.yaml" and "gateway.yaml" in items
    cm = by_name(docs, "ConfigMap")[volume["configMap"]["name"]]
    text = cm["data"][items["gateway.yaml"]]
    return text, yaml.safe_load(text)


def helm_error(values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmError) as e:
        render(values)
    return str(e.value)


# ---------------------------------------------------------------------------------------
# Lint and schemas
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_lint_has_no_errors_or_warnings(name: str) -> None:
    report = helm.lint(str(CHART), profile_values(name), kube_version=f"v{KUBE_VERSION}", strict=True)
    # Severity: 1 info (e.g. "icon is recommended"), 2 warning, 3 error.
    found = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report.get("errors") or []]
    assert not found, f"helm lint --strict ({name}): {found}"


@pytest.mark.parametrize("name", RENDERS)
def test_every_manifest_validates_against_kubernetes_schemas(name: str) -> None:
    docs = rendered(name)
    assert docs
    for doc in docs:
        what = f"{name}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        if doc["kind"] in CRD_KINDS:
            check_service_monitor(doc, docs)
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{what}: {e.message} at {list(e.path)}")


def check_service_monitor(sm: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    """The ServiceMonitor CRD's structure, and that it selects this release's Services and ports."""
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
    assert sm["metadata"]["namespace"] == NAMESPACE
    spec = sm["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels"}
    match = spec["selector"]["matchLabels"]
    services = [s for s in kinds(docs, "Service") if match.items() <= s["metadata"]["labels"].items()]
    assert services, "the ServiceMonitor selects no Service"
    ports = {p["name"] for s in services for p in s["spec"]["ports"]}
    for ep in spec["endpoints"]:
        assert set(ep) <= {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels", "relabelings", "metricRelabelings"}
        assert ep["port"] in ports, f"endpoint port {ep['port']} is on no selected Service ({ports})"
        assert ep["path"] == "/metrics" and ep["scheme"] in ("http", "https")
        assert re.fullmatch(r"\d+[smh]", ep["interval"]) and re.fullmatch(r"\d+[smh]", ep["scrapeTimeout"])
    scraped = {ep["port"] for ep in spec["endpoints"]}
    # Every service's metrics are scraped: the edge's http port, every internal gRPC port.
    for s in services:
        assert scraped & {p["name"] for p in s["spec"]["ports"]}, f"Service {s['metadata']['name']} is not scraped"


def test_values_schema_refuses_unknown_and_chart_owned_keys() -> None:
    assert "mdoe" in helm_error({"mdoe": "all"})
    assert "replicaz" in helm_error({"components": {"edge": {"replicaz": 3}}})
    assert helm_error({"config": {"edge": {"http_addr": "0.0.0.0:9000"}}})
    assert helm_error({"config": {"data_dir": "/x"}})
    assert helm_error({"mode": "both"})


# ---------------------------------------------------------------------------------------
# Shape
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_one_deployment_per_service_or_one_in_all_mode(name: str) -> None:
    docs = rendered(name)
    mode = profile_values(name).get("mode", "split")
    deployments = kinds(docs, "Deployment")
    roles = sorted(role(d) for d in deployments)
    if mode == "all":
        assert roles == ["all"]
    else:
        assert roles == sorted(SPLIT_ROLES)
    for d in deployments:
        c = container(d)
        assert c["args"][:3] == [role(d), "--config", "/etc/llmgw/gateway.yaml"], c["args"]
        assert "command" not in c, "the image's entrypoint is the llmgw binary"
        # One image for every service.
        assert c["image"] == container(deployments[0])["image"]


@pytest.mark.parametrize("name", RENDERS)
def test_services_headless_for_grpc_and_a_normal_one_for_the_edge(name: str) -> None:
    docs = rendered(name)
    services = by_name(docs, "Service")
    deployments = {role(d): d for d in kinds(docs, "Deployment")}
    edge = services[RELEASE]
    assert edge["spec"].get("clusterIP") != "None"
    assert {p["name"]: p["port"] for p in edge["spec"]["ports"]} == {"http": 8080, "grpc-api": 8081}
    entry = "all" if "all" in deployments else "edge"
    assert edge["spec"]["selector"]["app.kubernetes.io/component"] == entry
    internal = {n: s for n, s in services.items() if n != RELEASE}
    if entry == "all":
        assert not internal
        return
    assert set(internal) == {f"{RELEASE}-{r}" for r in CONTRACT_PORTS}
    for r, port in CONTRACT_PORTS.items():
        s = internal[f"{RELEASE}-{r}"]
        assert s["spec"]["clusterIP"] == "None"
        assert [(p["name"], p["port"], p["targetPort"]) for p in s["spec"]["ports"]] == [("grpc", port, "grpc")]
        pod_labels = deployments[r]["spec"]["template"]["metadata"]["labels"]
        assert s["spec"]["selector"].items() <= pod_labels.items()
        assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in container(deployments[r])["ports"]


@pytest.mark.parametrize("name", RENDERS)
def test_probes_on_every_container(name: str) -> None:
    for d in kinds(rendered(name), "Deployment"):
        c, r = container(d), role(d)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = c.get(kind)
            assert probe, f"{d['metadata']['name']}: no {kind}"
            if r in GRPC_SERVICES:
                # grpc.health.v1, served by every llmgw gRPC server.
                assert probe["grpc"]["port"] == ports["grpc"]
                if kind == "readinessProbe":
                    assert probe["grpc"]["service"] == GRPC_SERVICES[r]
            else:
                # Readiness: every dependency up; liveness only the process.
                path = "/health" if kind == "readinessProbe" else "/livez"
                assert probe["httpGet"] == {"path": path, "port": "http"}


# ---------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------

# Secret values that must never reach a manifest: the chart only ever sees refs.
PLAINTEXT = "sk-live-PLAINTEXT-9f8e7d6c5b4a"


def secret_refs_values() -> dict[str, Any]:
    values = profile_values("production")
    values["extraEnv"] = [{"name": "LLMGW_LOG", "value": "info"}]
    values["envFromSecrets"] = ["llmgw-extra"]
    return values


def test_no_secret_value_is_inlined() -> None:
    docs = render(secret_refs_values())
    text = json.dumps(docs)
    assert PLAINTEXT not in text
    assert not kinds(docs, "Secret"), "the chart creates no Secret: it references existing ones"
    secret_env = {"LLMGW_MASTER_KEY", "LLMGW_MASTER_KEY_PREVIOUS", "LLMGW_DATABASE_URL", "LLMGW_REDIS_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"}
    seen = set()
    for d in kinds(docs, "Deployment"):
        c = container(d)
        assert c["envFrom"] == [{"secretRef": {"name": "llmgw-extra"}}]
        for env in c["env"]:
            if env["name"] in secret_env:
                seen.add(env["name"])
                assert "value" not in env and "secretKeyRef" in env["valueFrom"], env
        _, config = pod_config(docs, d)
        for p in config.get("providers", []):
            for field in SECRET_FIELDS:
                if field in p:
                    assert ENV_REF.match(p[field]), f"providers {p['name']}.{field} is not a ${{VAR}} reference"
        for key in ("database", "redis"):
            if key in config:
                assert ENV_REF.match(config[key]["url"]), f"{key}.url is not a ${{VAR}} reference"
    assert seen == secret_env


def test_secrets_go_only_to_the_services_that_use_them() -> None:
    docs = render(secret_refs_values())
    env = {role(d): {e["name"] for e in container(d)["env"]} for d in kinds(docs, "Deployment")}
    holders = lambda var: {r for r, names in env.items() if var in names}  # noqa: E731
    assert holders("LLMGW_MASTER_KEY") == {"auth"}
    assert holders("LLMGW_DATABASE_URL") == {"auth", "metering"}
    assert holders("LLMGW_REDIS_URL") == {"edge"}
    # Every service parses the providers: the router and the edge must see the same ones enabled.
    assert holders("OPENAI_API_KEY") == SPLIT_ROLES
    for d in kinds(docs, "Deployment"):
        _, config = pod_config(docs, d)
        assert ("database" in config) == (role(d) in {"auth", "metering"})
        assert ("redis" in config) == (role(d) == "edge")


def test_a_literal_provider_key_is_refused() -> None:
    values = profile_values("split-static")
    values["config"]["providers"][0]["api_key"] = PLAINTEXT
    message = helm_error(values)
    assert "config.providers[0].api_key" in message and "${VAR}" in message
    assert PLAINTEXT not in message


# ---------------------------------------------------------------------------------------
# Pods
# ---------------------------------------------------------------------------------------


def duration_seconds(text: str) -> int:
    m = re.fullmatch(r"(\d+)s", text)
    assert m, f"unexpected drain {text!r}"
    return int(m.group(1))


@pytest.mark.parametrize("name", RENDERS)
def test_pods_run_non_root_read_only_and_outlive_the_drain(name: str) -> None:
    docs = rendered(name)
    pvcs = by_name(docs, "PersistentVolumeClaim")
    for d in kinds(docs, "Deployment"):
        pod, c = d["spec"]["template"]["spec"], container(d)
        _, config = pod_config(docs, d)
        drain = duration_seconds(config["shutdown"]["drain"])
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        assert pod["terminationGracePeriodSeconds"] > drain + pre_stop
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        # data_dir is a writable volume: an emptyDir, or a claim this release makes.
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == config["data_dir"])
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] in pvcs
            assert d["spec"]["strategy"]["type"] == "Recreate"
        else:
            assert volume["emptyDir"] == {}
        assert c["resources"]["requests"]
        env = {e["name"]: e for e in c["env"]}
        assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"


@pytest.mark.parametrize("name", RENDERS)
def test_discovery_addresses(name: str) -> None:
    docs = rendered(name)
    services = by_name(docs, "Service")
    for d in kinds(docs, "Deployment"):
        r = role(d)
        _, config = pod_config(docs, d)
        s = config["services"]
        assert config["edge"]["http_addr"] == "0.0.0.0:8080" and config["edge"]["grpc_addr"] == "0.0.0.0:8081"
        if s["discovery"] == "consul":
            # Registered at the pod's IP with the node's agent (or the one the values name).
            assert s["consul"]["advertise_host"] == "${POD_IP}"
            assert s["consul"]["addr"].startswith(("http://", "https://"))
        else:
            assert s["discovery"] == "static" and "consul" not in s
        for svc, port in CONTRACT_PORTS.items():
            addr = s[svc]["addr"]
            if s["discovery"] == "consul" or r in (svc, "all"):
                assert addr == f"0.0.0.0:{port}", f"{r} listens on {addr} for {svc}"
            else:
                # Static: the headless Service of the service called.
                host = f"{RELEASE}-{svc}.{NAMESPACE}.svc.cluster.local"
                assert addr == f"{host}:{port}"
                assert services[f"{RELEASE}-{svc}"]["spec"]["clusterIP"] == "None"


def test_static_addresses_follow_the_release_name() -> None:
    docs = render({}, release="prod")
    services = by_name(docs, "Service")
    assert "prod-llmgw" in services
    edge = next(d for d in kinds(docs, "Deployment") if role(d) == "edge")
    _, config = pod_config(docs, edge)
    for svc, port in CONTRACT_PORTS.items():
        host, _, p = config["services"][svc]["addr"].rpartition(":")
        assert int(p) == port
        name, ns = host.split(".")[:2]
        assert ns == NAMESPACE and services[name]["spec"]["clusterIP"] == "None"
        assert services[name]["spec"]["selector"]["app.kubernetes.io/component"] == svc


def test_consul_agent_from_the_node_or_a_value() -> None:
    docs = rendered("split-consul")
    for d in kinds(docs, "Deployment"):
        _, config = pod_config(docs, d)
        assert config["services"]["consul"]["addr"] == "http://${HOST_IP}:8500"
        assert config["telemetry"]["otlp_endpoint"] == "http://${HOST_IP}:4317"
    values = profile_values("split-consul")
    values["discovery"]["consul"]["addr"] = "http://consul-server.consul.svc:8500"
    docs = render(values)
    for d in kinds(docs, "Deployment"):
        _, config = pod_config(docs, d)
        assert config["services"]["consul"]["addr"] == "http://consul-server.consul.svc:8500"


def test_a_new_config_rolls_the_pods() -> None:
    def checksums(values: dict[str, Any]) -> dict[str, str]:
        return {
            role(d): d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for d in kinds(render(values), "Deployment")
        }

    before = checksums({})
    after = checksums({"config": {"metering": {"retention": "30d"}}})
    assert before.keys() == after.keys() and all(before[r] != after[r] for r in before)


def test_shared_stores_are_guarded() -> None:
    # SQLite is one pod's: a second auth replica would have other keys.
    assert "components.auth" in helm_error({"components": {"auth": {"replicas": 2}}})
    assert "components.all" in helm_error({"mode": "all", "components": {"all": {"hpa": {"enabled": True}}}})
    # A database without a master key from a Secret: each auth pod would make its own.
    assert "secrets.masterKey" in helm_error({"secrets": {"database": {"existingSecret": "pg"}}})


# ---------------------------------------------------------------------------------------
# HPA, PDB, ServiceMonitor, dashboards
# ---------------------------------------------------------------------------------------


def test_production_autoscales_and_budgets_disruptions() -> None:
    docs = rendered("production")
    deployments = by_name(docs, "Deployment")
    hpas, pdbs = kinds(docs, "HorizontalPodAutoscaler"), kinds(docs, "PodDisruptionBudget")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == set(deployments)
    for h in hpas:
        target = deployments[h["spec"]["scaleTargetRef"]["name"]]
        assert h["apiVersion"] == "autoscaling/v2" and h["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert "replicas" not in target["spec"], "the HPA owns the replica count"
        assert 1 <= h["spec"]["minReplicas"] <= h["spec"]["maxReplicas"]
        assert h["spec"]["metrics"]
    assert len(pdbs) == len(deployments)
    for p in pdbs:
        assert p["apiVersion"] == "policy/v1"
        matched = [
            d for d in deployments.values()
            if p["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, f"PDB {p['metadata']['name']} selects {len(matched)} Deployments"
    assert len(kinds(docs, "ServiceMonitor")) == 1
    # Spread constraints without a selector in the values spread each service's own pods.
    for d in deployments.values():
        tscs = d["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert len(tscs) == 2
        for t in tscs:
            assert t["labelSelector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"]


def test_production_ingress_routes_to_the_edge_http_port() -> None:
    docs = rendered("production")
    (ingress,) = kinds(docs, "Ingress")
    edge = by_name(docs, "Service")[RELEASE]
    backends = [p["backend"]["service"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends and all(b == {"name": RELEASE, "port": {"name": "http"}} for b in backends)
    assert "http" in {p["name"] for p in edge["spec"]["ports"]}


def test_optional_parts_are_off_by_default() -> None:
    docs = rendered("default")
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor", "PersistentVolumeClaim", "Ingress"):
        assert not kinds(docs, kind), kind
    assert [c["metadata"]["name"] for c in kinds(docs, "ConfigMap")] == [f"{RELEASE}-config"]


def test_grafana_dashboards_one_configmap_each() -> None:
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert files, "helm/llmgw/dashboards/ holds no dashboard"
    docs = render({"grafana": {"dashboards": {"enabled": True}}})
    maps = [c for c in kinds(docs, "ConfigMap") if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    assert len(maps) == len(files)
    shipped = {k: v for c in maps for k, v in c["data"].items()}
    for f in files:
        assert json.loads(shipped[f.name]) == json.loads(f.read_text()), f.name


# ---------------------------------------------------------------------------------------
# Each pod's gateway.yaml, read by the real binary
# ---------------------------------------------------------------------------------------

def llmgw_check(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Runs `llmgw check --config FILE`."""
    binary = os.environ["LLMGW_BIN"]  # the tests are marked `gateway`: conftest skips them without it
    return subprocess.run(
        [binary, "check", "--config", str(config)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def fake_secret(var: str) -> str:
    """A value of the right shape for a secret the pod would get from a Secret."""
    return {
        "LLMGW_DATABASE_URL": "postgres://llmgw:secret@postgres.db.svc:5432/llmgw",
        "LLMGW_REDIS_URL": "redis://:secret@redis.db.svc:6379/0",
    }.get(var, "test-secret-value-0123456789")


def pod_env(c: dict[str, Any]) -> dict[str, str]:
    """The environment Kubernetes would give the container (downward API and secrets faked)."""
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            # Kubernetes expands $(VAR) from variables defined before it.
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        elif "fieldRef" in e["valueFrom"]:
            field = e["valueFrom"]["fieldRef"]["fieldPath"]
            env[e["name"]] = {"status.podIP": "10.244.1.7", "status.hostIP": "10.0.0.5"}[field]
        elif "secretKeyRef" in e["valueFrom"]:
            env[e["name"]] = fake_secret(e["name"])
    return env


@pytest.mark.gateway
@pytest.mark.parametrize("name", RENDERS)
def test_each_pods_gateway_yaml_is_accepted_by_llmgw(name: str, tmp_path: Path) -> None:
    docs = rendered(name)
    for d in kinds(docs, "Deployment"):
        text, _ = pod_config(docs, d)
        path = tmp_path / f"{role(d)}.yaml"
        path.write_text(text)
        out = llmgw_check(path, pod_env(container(d)))
        assert out.returncode == 0, f"{name}/{role(d)}: llmgw refused its gateway.yaml:\n{out.stderr}\n{text}"


@pytest.mark.gateway
def test_llmgw_check_refuses_a_broken_config(tmp_path: Path) -> None:
    """The check above can fail: a key llmgw does not know is refused."""
    docs = rendered("default")
    _, config = pod_config(docs, kinds(docs, "Deployment")[0])
    config["edge"]["max_bodybytes"] = 1
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    out = llmgw_check(path, {})
    assert out.returncode != 0 and "max_bodybytes" in out.stderr


# ---------------------------------------------------------------------------------------
# The image: deploy/Dockerfile and .dockerignore (no Docker engine here: read them)
# ---------------------------------------------------------------------------------------

DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments), continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word.upper(), rest.strip()))
    return stages


def test_dockerfile_builds_llmgw_and_runs_it_as_non_root() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a build stage and a small runtime stage"
    build, final = stages[0], stages[-1]
    args = dict(
        line[len("ARG "):].split("=", 1)
        for line in DOCKERFILE.read_text().splitlines()
        if line.startswith("ARG ") and "=" in line
    )
    base = build[0][1].split(" AS ")[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert re.fullmatch(r"(docker\.io/library/)?rust:[\d.]+-bookworm", base), base
    run = " ".join(a for w, a in build if w == "RUN")
    assert "cargo build --locked --release -p llmgw" in run
    final_base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], final[0][1])
    assert "distroless/cc" in final_base or "bookworm-slim" in final_base, final_base
    user = [a for w, a in final if w == "USER"]
    assert user and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", user[-1]), "a numeric non-root USER (runAsNonRoot checks it)"
    chart_uid = yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]["runAsUser"]
    assert user[-1].split(":")[0] == str(chart_uid)
    assert [json.loads(a) for w, a in final if w == "ENTRYPOINT"] == [["/usr/local/bin/llmgw"]]
    assert [json.loads(a) for w, a in final if w == "CMD"] == [["all", "--config", "/etc/llmgw/gateway.yaml"]]
    exposed = {int(p) for w, a in final if w == "EXPOSE" for p in a.split()}
    assert exposed == {8080, 8081, *CONTRACT_PORTS.values()}
    copied = " ".join(a for w, a in final if w == "COPY")
    assert "/usr/local/bin/llmgw" in copied and "/etc/llmgw/gateway.yaml" in copied


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker's .dockerignore rules (last match wins, `!` re-includes) leave `path` out."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        rx = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if re.fullmatch(rx + "(/.*)?", path):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_cargo_needs_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    members = re.search(r"members\s*=\s*\[(.*?)\]", (ROOT / "Cargo.toml").read_text(), re.S)
    assert members
    needed_dirs = re.findall(r'"([^"]+)"', members.group(1))
    needed = {"Cargo.toml", "Cargo.lock", "deploy/container.yaml"}
    needed |= {f for f in files if any(f.startswith(d + "/") for d in needed_dirs)}
    # include_str!/include_bytes! reach outside their crate (deploy/gateway.yaml, fixtures).
    for f in files:
        if f.endswith(".rs"):
            for rel in re.findall(r'include_(?:str|bytes)!\("([^"]+)"\)', (ROOT / f).read_text()):
                needed.add(os.path.normpath(os.path.join(os.path.dirname(f), rel)))
    lost = sorted(f for f in needed if dockerignored(f, patterns))
    assert not lost, f".dockerignore leaves out files the build needs: {lost}"
    for f in ("target/debug/llmgw", ".git/config", "data/auth.db", "tests/python/test_helm.py", "helm/llmgw/values.yaml"):
        assert dockerignored(f, patterns), f"{f} should not be in the build context"


@pytest.mark.gateway
def test_the_images_config_is_accepted_by_llmgw() -> None:
    out = llmgw_check(ROOT / "deploy" / "container.yaml", {"OPENAI_API_KEY": "test-secret-value-0123456789"})
    assert out.returncode == 0, out.stderr


# What gcr.io/distroless/cc-debian12 provides besides glibc's own loader.
DISTROLESS_CC_LIBS = {"linux-vdso.so.1", "libc.so.6", "libm.so.6", "libgcc_s.so.1", "libpthread.so.0", "libdl.so.2", "librt.so.1"}


@pytest.mark.gateway
def test_the_binary_needs_only_what_the_runtime_image_has() -> None:
    """The Dockerfile's runtime stage is distroless `cc`: glibc and libgcc, no OpenSSL or SQLite."""
    binary = os.environ["LLMGW_BIN"]
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30, check=True).stdout
    libs = {line.split()[0] for line in out.splitlines() if line.strip()}
    extra = {lib for lib in libs if lib not in DISTROLESS_CC_LIBS and not lib.startswith(("/lib64/ld-linux", "/lib/ld-linux"))}
    assert not extra, f"llmgw links libraries the runtime image lacks: {sorted(extra)}"
