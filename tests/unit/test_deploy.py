"""The deployment files agree with the Compose Specification, with each other and with Vigil itself.

docker-compose.yml, deploy/prometheus, deploy/grafana and deploy/kubernetes are read as they are on
disk: a service added to one and not the others, a renamed metric or a missing probe fails here.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from shared.settings import DEFAULT_HTTP_PORTS, SERVICE_NAMES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA_DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_PROVIDERS = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "vigil.yml"
GRAFANA_DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "vigil.json"
KUBERNETES_DIR = ROOT / "deploy" / "kubernetes"

# Every metric Vigil exposes, as Prometheus sees it (counters carry the _total suffix).
COUNTERS_AND_GAUGES = frozenset(
    {
        "vigil_events_consumed_total",
        "vigil_events_handled_total",
        "vigil_events_dead_lettered_total",
        "vigil_consumer_lag",
        "vigil_outbox_backlog",
        "vigil_outbox_published_total",
        "vigil_incidents",
        "vigil_detector_alerts_total",
        "vigil_incidents_opened_total",
    }
)
HISTOGRAMS = frozenset({"vigil_handler_duration_seconds"})
KNOWN_SERIES = COUNTERS_AND_GAUGES | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}

REQUIRED_ENV = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    # safe_load resolves the YAML anchors and `<<` merge keys, as Compose does.
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict), "docker-compose.yml is not a mapping"
    return document


@cache
def compose_schema() -> dict[str, Any]:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    assert isinstance(schema, dict)
    return schema


@cache
def prometheus_config() -> dict[str, Any]:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert isinstance(config, dict)
    return config


@cache
def dashboard() -> dict[str, Any]:
    board = json.loads(GRAFANA_DASHBOARD.read_text())
    assert isinstance(board, dict)
    return board


def kubernetes_files() -> list[Path]:
    return sorted(p for p in KUBERNETES_DIR.iterdir() if p.suffix in (".yaml", ".yml"))


@cache
def kubernetes_documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    """Every document of every manifest (kustomization.yaml included), with its file name."""
    documents = []
    for path in kubernetes_files():
        for document in yaml.safe_load_all(path.read_text()):
            if document is None:  # an empty document, e.g. after a trailing ---
                continue
            assert isinstance(document, dict), f"{path.name}: a document is not a mapping"
            documents.append((path.name, document))
    return tuple(documents)


def service_env(service: dict[str, Any]) -> dict[str, Any]:
    """A Compose service's environment as a mapping, whichever of the two spellings it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    assert isinstance(env, dict)
    return env


def vigil_services() -> dict[str, dict[str, Any]]:
    """The Compose services that run a Vigil service (`vigil service NAME`), by NAME."""
    found: dict[str, dict[str, Any]] = {}
    for key, service in compose()["services"].items():
        command = service.get("command")
        if isinstance(command, str):
            command = command.split()
        if command and command[0] == "service":
            assert len(command) == 2, f"compose service {key}: command should be ['service', NAME], got {command}"
            assert command[1] == key, f"compose service {key} runs Vigil service {command[1]}"
            found[command[1]] = service
    return found


def scrape_targets() -> list[tuple[str, str, str, int]]:
    """(job, metrics path, host, port) of every static Prometheus target."""
    targets = []
    for job in prometheus_config()["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                assert host and port.isdigit(), f"job {job['job_name']}: target {target!r} is not host:port"
                targets.append((job["job_name"], job.get("metrics_path", "/metrics"), host, int(port)))
    return targets


# ---------------------------------------------------------------------------------------------
# PromQL: which metric names does an expression read?
# ---------------------------------------------------------------------------------------------

_PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless"}
    | {"inf", "nan"}
)


def promql_metric_names(expr: str) -> set[str]:
    """Return the metric names an expression selects: identifiers that are not functions, labels or keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        before = text[match.start() - 1] if match.start() else " "
        if before == "$" or before.isdigit() or before == ".":  # Grafana variable, or a number like 1e3 / 5m
            continue
        if text[match.end() :].lstrip().startswith("("):  # function or aggregation
            continue
        if match.group().lower() in _PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel of the dashboard, including those inside (collapsed) rows."""
    found = []
    for panel in items:
        found.append(panel)
        found.extend(panels(panel.get("panels", [])))
    return found


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every panel query."""
    return [
        (panel.get("title", "?"), target["expr"])
        for panel in panels(dashboard()["panels"])
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def test_promql_metric_names_reads_expressions_as_prometheus_does() -> None:
    assert promql_metric_names('sum by (severity) (vigil_incidents{state!="resolved"})') == {"vigil_incidents"}
    assert promql_metric_names(
        'histogram_quantile(0.99, sum by (service, le) (rate(vigil_handler_duration_seconds_bucket{service=~"$service"}'
        "[$__rate_interval])))"
    ) == {"vigil_handler_duration_seconds_bucket"}
    assert promql_metric_names("rate(up[5m]) / on (job) group_left (instance) node_load1 > 1e3") == {"up", "node_load1"}
    assert promql_metric_names("vigil_consumer_lag offset 5m") == {"vigil_consumer_lag"}


# ---------------------------------------------------------------------------------------------
# (a) docker-compose.yml follows the Compose Specification
# ---------------------------------------------------------------------------------------------


def test_compose_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft7Validator.check_schema(compose_schema())
    assert compose_schema()["title"] == "Compose Specification"


def test_compose_file_validates_against_the_compose_specification() -> None:
    validator = jsonschema.Draft7Validator(compose_schema())
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.absolute_path))
    messages = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
    assert not messages, "docker-compose.yml breaks the Compose Specification:\n" + "\n".join(messages)


def test_compose_schema_rejects_what_compose_rejects() -> None:
    validator = jsonschema.Draft7Validator(compose_schema())
    broken = copy.deepcopy(compose())
    broken["services"]["reporter"]["restart_policy"] = "always"  # not a service attribute
    broken["services"]["detector"]["depends_on"] = {"kafka": {"condition": "when_ready"}}
    paths = {tuple(e.absolute_path)[:3] for e in validator.iter_errors(broken)}
    assert ("services", "reporter") in {p[:2] for p in paths}
    assert ("services", "detector", "depends_on") in paths


def test_compose_runs_every_vigil_service_from_the_one_dockerfile() -> None:
    services = vigil_services()
    assert sorted(services) == sorted(SERVICE_NAMES)
    assert (ROOT / "Dockerfile").is_file()
    for name, service in services.items():
        build = service.get("build")
        context = build if isinstance(build, str) else (build or {}).get("context")
        assert context == ".", f"{name}: should be built from the repository's Dockerfile"
        assert service.get("restart") == "unless-stopped", name
        depends = service.get("depends_on")
        assert isinstance(depends, dict), f"{name}: depends_on must name conditions"
        for dependency in ("kafka", "postgres"):
            assert depends.get(dependency, {}).get("condition") == "service_healthy", f"{name} -> {dependency}"
            assert "healthcheck" in compose()["services"][dependency], f"{dependency} has no healthcheck"
        test = service.get("healthcheck", {}).get("test")
        assert test and "/healthz" in " ".join(test if isinstance(test, list) else [test]), name
        assert str(service_env(service).get("VIGIL_HTTP_PORT")) == str(DEFAULT_HTTP_PORTS[name]), name
        assert service_env(service).get("VIGIL_HTTP_HOST") == "0.0.0.0", name


@pytest.mark.parametrize("name", ["reporter", "coordinator"])
def test_compose_publishes_the_api_ports(name: str) -> None:
    port = DEFAULT_HTTP_PORTS[name]
    ports = [str(p) for p in vigil_services()[name].get("ports", [])]
    assert f"{port}:{port}" in ports, f"{name}: port {port} not published ({ports})"


def test_compose_mounts_the_monitoring_config_that_exists() -> None:
    services = compose()["services"]
    mounts = {
        (volume.split(":")[0], volume.split(":")[1])
        for name in ("prometheus", "grafana")
        for volume in services[name].get("volumes", [])
        if volume.startswith("./")
    }
    for source, _target in mounts:
        assert (ROOT / source).exists(), f"compose mounts {source}, which does not exist"
    assert ("./deploy/prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml") in mounts
    assert ("./deploy/grafana/provisioning", "/etc/grafana/provisioning") in mounts
    assert ("./deploy/grafana/dashboards", "/var/lib/grafana/dashboards") in mounts
    grafana_env = service_env(services["grafana"])
    assert str(grafana_env.get("GF_AUTH_ANONYMOUS_ENABLED")).lower() == "true"
    assert grafana_env.get("GF_AUTH_ANONYMOUS_ORG_ROLE") == "Viewer"


def test_compose_kafka_is_a_single_node_kraft_broker() -> None:
    kafka = compose()["services"]["kafka"]
    env = {key: str(value) for key, value in service_env(kafka).items()}
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
        assert env[key] == "1", key
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])


# ---------------------------------------------------------------------------------------------
# (b) every Vigil service is scraped by Prometheus, and every target is a service
# ---------------------------------------------------------------------------------------------


def test_prometheus_scrapes_every_vigil_service_and_nothing_unknown() -> None:
    config = prometheus_config()
    assert config["global"]["scrape_interval"] == "15s"
    services = compose()["services"]
    vigil = vigil_services()
    scraped: dict[str, int] = {}
    for job, path, host, port in scrape_targets():
        assert host in services, f"job {job}: target host {host} is not a compose service"
        if host in vigil:
            assert host not in scraped, f"{host} is scraped twice"
            assert path == "/metrics", f"job {job}: metrics path {path}"
            scraped[host] = port
    assert sorted(scraped) == sorted(vigil), "Prometheus targets and compose services differ"
    for name, port in scraped.items():
        assert str(port) == str(service_env(vigil[name])["VIGIL_HTTP_PORT"]), f"{name}: scraped on the wrong port"


def test_prometheus_job_names_are_unique() -> None:
    jobs = [job["job_name"] for job in prometheus_config()["scrape_configs"]]
    assert len(jobs) == len(set(jobs)), jobs


# ---------------------------------------------------------------------------------------------
# (c) the Grafana dashboard charts only metrics Vigil exposes
# ---------------------------------------------------------------------------------------------


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    datasources = yaml.safe_load(GRAFANA_DATASOURCES.read_text())["datasources"]
    by_uid = {ds["uid"]: ds for ds in datasources}
    assert by_uid["prometheus"]["type"] == "prometheus"
    url = urlsplit(by_uid["prometheus"]["url"])
    assert url.hostname == "prometheus" and url.port == 9090
    assert "prometheus" in compose()["services"]
    providers = yaml.safe_load(GRAFANA_PROVIDERS.read_text())["providers"]
    assert [p["options"]["path"] for p in providers if p["type"] == "file"] == ["/var/lib/grafana/dashboards"]


def test_dashboard_is_a_real_dashboard() -> None:
    board = dashboard()
    assert board["schemaVersion"] == 39
    assert board["title"] and board["uid"]
    all_panels = panels(board["panels"])
    ids = [panel["id"] for panel in all_panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    charts = [panel for panel in all_panels if panel["type"] != "row"]
    assert len(charts) >= 10
    for panel in charts:
        assert panel.get("title"), panel["id"]
        assert panel.get("gridPos", {}).keys() >= {"h", "w", "x", "y"}, panel["title"]
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target.get("expr"), f"panel {panel['title']!r}: a target has no expr"
        datasource = panel.get("datasource") or {}
        assert datasource.get("uid") == "prometheus", f"panel {panel['title']!r} uses datasource {datasource}"


def test_dashboard_queries_use_only_vigil_metrics() -> None:
    exprs = dashboard_exprs()
    assert exprs
    for title, expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"panel {title!r}: no metric in {expr!r}"
        unknown = names - KNOWN_SERIES
        assert not unknown, f"panel {title!r}: {sorted(unknown)} are not Vigil metrics ({expr!r})"
    for variable in dashboard().get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        for metric in re.findall(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,", query):
            assert metric in KNOWN_SERIES, f"variable {variable['name']}: {metric} is not a Vigil metric"


def test_dashboard_charts_every_vigil_metric() -> None:
    used = set().union(*(promql_metric_names(expr) for _, expr in dashboard_exprs()))
    for metric in COUNTERS_AND_GAUGES:
        assert metric in used, f"no panel charts {metric}"
    for histogram in HISTOGRAMS:
        assert f"{histogram}_bucket" in used, f"no panel charts {histogram}"
    exprs = [re.sub(r"\s+", "", expr) for _, expr in dashboard_exprs()]
    assert 'sumby(severity)(vigil_incidents{state!="resolved"})' in exprs
    assert any("histogram_quantile(0.5," in e and "vigil_handler_duration_seconds_bucket" in e for e in exprs), (
        "no p50 latency panel"
    )
    assert any("histogram_quantile(0.99," in e and "vigil_handler_duration_seconds_bucket" in e for e in exprs), (
        "no p99 latency panel"
    )


# ---------------------------------------------------------------------------------------------
# (d) the Kubernetes manifests
# ---------------------------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    documents = [doc for name, doc in kubernetes_documents() if name == "kustomization.yaml"]
    assert len(documents) == 1, "deploy/kubernetes needs one kustomization.yaml"
    return documents[0]


def manifests(kind: str) -> list[dict[str, Any]]:
    return [doc for name, doc in kubernetes_documents() if name != "kustomization.yaml" and doc["kind"] == kind]


def test_kubernetes_documents_are_well_formed() -> None:
    documents = [(name, doc) for name, doc in kubernetes_documents() if name != "kustomization.yaml"]
    assert documents
    for name, doc in documents:
        assert doc.get("apiVersion") and doc.get("kind"), f"{name}: document without apiVersion/kind"
        assert doc.get("metadata", {}).get("name"), f"{name}: {doc['kind']} without a name"
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == kustomization()["namespace"], f"{name}: {doc['kind']}"
    assert [doc["metadata"]["name"] for doc in manifests("Namespace")] == [kustomization()["namespace"]]


def test_kustomization_lists_every_manifest_in_the_folder() -> None:
    resources = kustomization()["resources"]
    assert len(resources) == len(set(resources)), "a resource is listed twice"
    on_disk = {path.name for path in kubernetes_files()} - {"kustomization.yaml"}
    assert not set(resources) - on_disk, f"listed but missing: {sorted(set(resources) - on_disk)}"
    assert not on_disk - set(resources), f"not listed in kustomization.yaml: {sorted(on_disk - set(resources))}"


def test_kubernetes_deploys_every_vigil_service_with_probes() -> None:
    deployments = {
        d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in manifests("Deployment")
    }
    assert sorted(deployments) == sorted(SERVICE_NAMES)
    for name, deployment in deployments.items():
        template = deployment["spec"]["template"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= template["metadata"]["labels"].items(), f"{name}: selector misses its pods"
        (container,) = template["spec"]["containers"]
        port = DEFAULT_HTTP_PORTS[name]
        named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert port in named_ports.values(), f"{name}: container port is not {port}"
        assert container.get("args") == ["service", name], f"{name}: args {container.get('args')}"
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env.get("VIGIL_HTTP_PORT") == str(port), f"{name}: VIGIL_HTTP_PORT"
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            http = container.get(probe, {}).get("httpGet")
            assert http, f"{name}: no {probe}"
            assert http["path"] == path, f"{name}: {probe} on {http['path']}"
            assert named_ports.get(http["port"], http["port"]) == port, f"{name}: {probe} on the wrong port"
        resources = container.get("resources", {})
        assert resources.get("requests", {}).keys() >= {"cpu", "memory"}, f"{name}: resource requests"
        assert resources.get("limits", {}).keys() >= {"memory"}, f"{name}: resource limits"
        annotations = template["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", f"{name}: not scraped"
        assert annotations.get("prometheus.io/port") == str(port), f"{name}: scraped on the wrong port"
        assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
        refs = container.get("envFrom", [])
        config_maps = {ref["configMapRef"]["name"] for ref in refs if "configMapRef" in ref}
        secrets = {ref["secretRef"]["name"] for ref in refs if "secretRef" in ref}
        assert config_maps, f"{name}: takes no settings from a ConfigMap"
        assert config_maps <= {c["metadata"]["name"] for c in manifests("ConfigMap")}, name
        assert secrets, f"{name}: takes no settings from a Secret"
        assert secrets <= {s["metadata"]["name"] for s in manifests("Secret")}, name


def test_kubernetes_services_select_their_deployments() -> None:
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in manifests("Deployment")}
    services = manifests("Service")
    assert len(services) == len(SERVICE_NAMES)
    for service in services:
        selector = service["spec"]["selector"]
        matched = [name for name, labels in pods.items() if selector.items() <= labels.items()]
        assert len(matched) == 1, f"service {service['metadata']['name']} selects {matched}"
        component = pods[matched[0]]["app.kubernetes.io/component"]
        assert [p["port"] for p in service["spec"]["ports"]] == [DEFAULT_HTTP_PORTS[component]]


def test_kubernetes_config_carries_the_settings_and_no_real_secret() -> None:
    (config,) = manifests("ConfigMap")
    (secret,) = manifests("Secret")
    settings = set(config["data"]) | set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for key in (*REQUIRED_ENV, "KAFKA_SECURITY_PROTOCOL", "VIGIL_LOG_LEVEL"):
        assert key in settings, f"{key} is set neither in the ConfigMap nor in the Secret"
    assert "DATABASE_URL" not in config["data"], "DATABASE_URL carries a password: it belongs in the Secret"
    for key, value in secret.get("stringData", {}).items():
        assert "CHANGE-ME" in value, f"secret {key} should hold a clearly marked placeholder"


# ---------------------------------------------------------------------------------------------
# (e) every Vigil service can reach Kafka and Postgres
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_compose_service_env_names_kafka_and_postgres(name: str) -> None:
    services = compose()["services"]
    env = service_env(vigil_services()[name])
    for key in REQUIRED_ENV:
        assert env.get(key), f"{name}: {key} is not set"
    for server in str(env["KAFKA_BOOTSTRAP_SERVERS"]).split(","):
        host, _, _port = server.strip().rpartition(":")
        assert host in services, f"{name}: Kafka bootstrap host {host} is not a compose service"
    database = urlsplit(str(env["DATABASE_URL"]))
    assert database.scheme in ("postgresql", "postgres"), f"{name}: DATABASE_URL scheme {database.scheme}"
    assert database.hostname in services, f"{name}: Postgres host {database.hostname} is not a compose service"
    postgres_env = service_env(services[database.hostname])
    assert database.username == postgres_env["POSTGRES_USER"]
    assert database.password == postgres_env["POSTGRES_PASSWORD"]
    assert database.path.lstrip("/") == postgres_env["POSTGRES_DB"]
