"""The deployment files agree with the Compose Specification, with each other and with Vigil itself.

docker-compose.yml, deploy/prometheus, deploy/grafana and deploy/kubernetes are read as they are on
disk: a service added to one and not the others, a renamed metric or a missing probe fails here.
The metrics Vigil exposes are collected from its code (every module that defines Prometheus
metrics is imported and the registry lists them), so a dashboard panel or alerting rule that reads
a metric no code defines fails too. Where promtool is installed, the rules and every panel's query
are checked by it and the rules' unit tests run.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from prometheus_client import REGISTRY

from shared.settings import DEFAULT_HTTP_PORTS, SERVICE_NAMES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_RULES_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
GRAFANA_DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_PROVIDERS = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "vigil.yml"
GRAFANA_DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "vigil.json"
KUBERNETES_DIR = ROOT / "deploy" / "kubernetes"
KUBERNETES_MONITORING_DIR = KUBERNETES_DIR / "monitoring"
PROMETHEUS_KUBERNETES_CONFIG = ROOT / "deploy" / "prometheus" / "kubernetes.yml"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus); .ci/run installs it"
)

# Series Prometheus makes itself: per target, and for alerting rules.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})
# The services' jobs, as the rules and the dashboard name them (`up{job=...}`).
VIGIL_JOBS = frozenset(SERVICE_NAMES)
ALERT_SEVERITIES = frozenset({"critical", "warning", "info"})

# What an operator must find on the dashboard, by metric family.
MUST_CHART = frozenset(
    {
        "vigil_incidents_open",
        "vigil_incidents_sla_breaching",
        "vigil_incidents",
        "vigil_incidents_opened",
        "vigil_incident_time_to_detect_seconds",
        "vigil_incident_time_to_acknowledge_seconds",
        "vigil_incident_time_to_contain_seconds",
        "vigil_incident_time_to_recover_seconds",
        "vigil_incident_time_to_resolve_seconds",
        "vigil_detector_alerts",
        "vigil_detector_records",
        "vigil_ingest_requests",
        "vigil_ingest_refused",
        "vigil_events_consumed",
        "vigil_events_handled",
        "vigil_events_dead_lettered",
        "vigil_handler_duration_seconds",
        "vigil_consumer_lag",
        "vigil_outbox_backlog",
        "vigil_outbox_published",
        "vigil_outbox_parked",
        "vigil_timers",
        "vigil_effects_queued",
        "vigil_effects_parked",
        "vigil_effects_finished",
        "vigil_responder_steps",
    }
)

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
# The metrics Vigil's code defines
# ---------------------------------------------------------------------------------------------

# The series names a family exposes, by family type, besides the ones it has samples for now.
_SERIES_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "info": ("_info",),
}


def metric_modules() -> list[str]:
    """Modules of shared/ and services/ that use prometheus_client, as dotted names."""
    return [
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for package in ("shared", "services")
        for path in sorted((ROOT / package).rglob("*.py"))
        if "prometheus_client" in path.read_text()
    ]


@cache
def exposed_metrics() -> dict[str, frozenset[str]]:
    """Every metric family a Vigil service serves on /metrics, with the series names PromQL sees.

    The registry is what /metrics renders, so once the modules that define metrics are imported
    it lists them all: plain counters, gauges and histograms, custom collectors (the reporter's
    response-time histograms) and prometheus_client's process and platform collectors.
    """
    for module in metric_modules():
        importlib.import_module(module)
    families: dict[str, frozenset[str]] = {}
    for family in REGISTRY.collect():
        series = {family.name + suffix for suffix in _SERIES_SUFFIXES.get(family.type, ("",))}
        families[family.name] = frozenset(series | {sample.name for sample in family.samples})
    return families


def known_series() -> frozenset[str]:
    """Every series name a query may select: what Vigil exposes, and what Prometheus adds."""
    return frozenset().union(*exposed_metrics().values()) | PROMETHEUS_SERIES


def test_exposed_metrics_holds_every_metric_the_code_declares() -> None:
    # A second reading of the code: each literal name given to a metric constructor.
    declared = set()
    for module in metric_modules():
        source = (ROOT / Path(*module.split("."))).with_suffix(".py").read_text()
        declared |= set(re.findall(r"\b(?:Counter|Gauge|Histogram|Summary|Info|Enum)\(\s*\"(\w+)\"", source))
    assert declared >= {"vigil_events_consumed", "vigil_consumer_lag", "vigil_handler_duration_seconds"}
    assert not declared - exposed_metrics().keys(), (
        f"declared but not in the registry: {declared - exposed_metrics().keys()}"
    )
    series = known_series()
    assert {"vigil_events_consumed_total", "vigil_outbox_backlog", "vigil_handler_duration_seconds_bucket"} <= series
    assert {"vigil_handler_duration_seconds_sum", "vigil_handler_duration_seconds_count"} <= series
    assert "vigil_events_consumed" not in series, "a counter is only seen with its _total suffix"
    assert "process_start_time_seconds" in series


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


# Every service's API is the CLI's: the ingest, evidence, approvals and blocklists, commands, reads.
@pytest.mark.parametrize("name", ["detector", "analyzer", "responder", "coordinator", "reporter"])
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
        unknown = names - known_series()
        assert not unknown, f"panel {title!r}: {sorted(unknown)} are not Vigil metrics ({expr!r})"
    for variable in dashboard().get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        for metric in re.findall(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,", query):
            assert metric in known_series(), f"variable {variable['name']}: {metric} is not a Vigil metric"


def test_dashboard_charts_what_an_operator_needs() -> None:
    used = set().union(*(promql_metric_names(expr) for _, expr in dashboard_exprs()))
    for family in sorted(MUST_CHART):
        assert family in exposed_metrics(), f"{family} is not defined in Vigil's code"
        assert used & exposed_metrics()[family], f"no panel charts {family}"
    exprs = [re.sub(r"\s+", "", expr) for _, expr in dashboard_exprs()]
    assert "sumby(severity)(maxby(severity,type,state)(vigil_incidents_open))" in exprs
    assert any("histogram_quantile(0.5," in e and "vigil_handler_duration_seconds_bucket" in e for e in exprs), (
        "no p50 latency panel"
    )
    assert any("histogram_quantile(0.99," in e and "vigil_handler_duration_seconds_bucket" in e for e in exprs), (
        "no p99 latency panel"
    )
    assert any("vigil_incident_time_to_acknowledge_seconds_sum" in e for e in exprs), "no MTTA panel"
    assert any("vigil_incident_time_to_resolve_seconds_sum" in e for e in exprs), "no MTTR panel"


# Values standing in for Grafana's variables, so that promtool can read a panel's query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$service": ".*"}


def as_promql(expr: str) -> str:
    """A panel query with Grafana's variables replaced by values of the same kind."""
    for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(variable, GRAFANA_VARIABLES[variable])
    assert "$" not in expr.replace("$1", ""), f"unknown Grafana variable in {expr!r}"
    return expr


def promtool_check_exprs(exprs: list[str], directory: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check rules` on a rules file recording each expression: it parses them all."""
    rules = [{"record": f"vigil:dashboard_query:{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = directory / "queries.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert PROMTOOL
    return subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)


@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    exprs = [as_promql(expr) for _, expr in dashboard_exprs()]
    check = promtool_check_exprs(exprs, tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in check.stdout


@needs_promtool
def test_promtool_refuses_a_query_that_does_not_parse(tmp_path: Path) -> None:
    check = promtool_check_exprs(["sum by (service) (rate(vigil_events_consumed_total[1m])"], tmp_path)
    assert check.returncode != 0


# ---------------------------------------------------------------------------------------------
# (c') the alerting rules
# ---------------------------------------------------------------------------------------------


@cache
def alert_rules() -> tuple[dict[str, Any], ...]:
    document = yaml.safe_load(ALERT_RULES.read_text())
    return tuple(rule for group in document["groups"] for rule in group["rules"])


@cache
def alert_rule_tests() -> dict[str, Any]:
    document = yaml.safe_load(ALERT_RULES_TESTS.read_text())
    assert isinstance(document, dict)
    return document


def rule_jobs(expr: str) -> set[str]:
    """The jobs an expression names in `job="..."` or `job=~"a|b"` matchers."""
    return {job for match in re.findall(r'job\s*=~?\s*"([^"]*)"', expr) for job in match.split("|")}


def test_alert_rules_read_only_metrics_vigil_exposes() -> None:
    assert alert_rules()
    for rule in alert_rules():
        name = rule.get("alert") or rule.get("record")
        names = promql_metric_names(rule["expr"])
        assert names, f"{name}: no metric in {rule['expr']!r}"
        unknown = names - known_series()
        assert not unknown, f"{name}: {sorted(unknown)} are not Vigil metrics ({rule['expr']!r})"


def test_alert_rules_name_the_jobs_prometheus_scrapes() -> None:
    scraped = {job["job_name"] for job in prometheus_config()["scrape_configs"]}
    named = set().union(*(rule_jobs(rule["expr"]) for rule in alert_rules()))
    assert named == VIGIL_JOBS, f"rules name jobs {sorted(named)}"
    assert scraped >= VIGIL_JOBS, f"jobs the rules read and Prometheus does not scrape: {sorted(VIGIL_JOBS - scraped)}"


def test_alert_rules_carry_a_severity_and_say_what_happened() -> None:
    alerts = [rule for rule in alert_rules() if "alert" in rule]
    assert alerts
    for rule in alerts:
        name = rule["alert"]
        assert name.startswith("Vigil"), name
        assert rule.get("labels", {}).get("severity") in ALERT_SEVERITIES, f"{name}: severity label"
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), f"{name}: summary and description"


def test_alert_rules_cover_what_the_pipeline_needs() -> None:
    alerts = {rule["alert"] for rule in alert_rules() if "alert" in rule}
    needed = {
        "VigilIncidentSlaBreached",
        "VigilSev1Unacknowledged",
        "VigilConsumerLagHigh",
        "VigilDeadLetters",
        "VigilOutboxBacklogHigh",
        "VigilEffectsParked",
        "VigilServiceDown",
    }
    assert needed <= alerts, f"missing: {sorted(needed - alerts)}"


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    tests = alert_rule_tests()
    assert tests["rule_files"] == [ALERT_RULES.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in tests["tests"]:
        assert group.get("input_series"), f"test {group['name']!r} has no series"
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    alerts = {rule["alert"] for rule in alert_rules() if "alert" in rule}
    assert alerts - firing == set(), f"never seen firing in alerts.test.yml: {sorted(alerts - firing)}"
    assert alerts - quiet == set(), f"never seen quiet in alerts.test.yml: {sorted(alerts - quiet)}"
    assert firing | quiet <= alerts, f"tests of alerts that do not exist: {sorted((firing | quiet) - alerts)}"


def test_compose_prometheus_loads_the_rules() -> None:
    rule_files = prometheus_config().get("rule_files", [])
    assert rule_files, "prometheus.yml loads no rule file"
    config_target = "/etc/prometheus/prometheus.yml"
    mounts = dict(
        (volume.split(":")[1], volume.split(":")[0])
        for volume in compose()["services"]["prometheus"]["volumes"]
        if volume.startswith("./")
    )
    assert mounts.get(config_target) == "./deploy/prometheus/prometheus.yml"
    for rule_file in rule_files:
        target = str(Path(config_target).parent / rule_file)
        assert target in mounts, f"prometheus.yml loads {target}, which compose does not mount"
        assert (ROOT / mounts[target]).resolve() == (PROMETHEUS_CONFIG.parent / rule_file).resolve(), target
    assert ALERT_RULES.name in rule_files


@needs_promtool
def test_prometheus_config_and_rules_pass_promtool_check() -> None:
    assert PROMTOOL
    for command in (["check", "config", str(PROMETHEUS_CONFIG)], ["check", "rules", str(ALERT_RULES)]):
        check = subprocess.run([PROMTOOL, *command], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr


@needs_promtool
def test_alert_rules_pass_their_unit_tests() -> None:
    assert PROMTOOL
    run = subprocess.run(
        [PROMTOOL, "test", "rules", str(ALERT_RULES_TESTS)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
def test_promtool_fails_a_wrong_expectation(tmp_path: Path) -> None:
    # A service that answers all along is not down: expecting it to be must fail the run.
    wrong = {
        "rule_files": [str(ALERT_RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": 'up{job="detector", instance="detector:8081"}', "values": "1x10"}],
                "alert_rule_test": [
                    {
                        "eval_time": "5m",
                        "alertname": "VigilServiceDown",
                        "exp_alerts": [{"exp_labels": {"severity": "critical", "job": "detector"}}],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "wrong.test.yml"
    path.write_text(yaml.safe_dump(wrong))
    assert PROMTOOL
    run = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0, run.stdout + run.stderr


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


@cache
def monitoring_documents() -> dict[str, dict[str, Any]]:
    """The documents of deploy/kubernetes/monitoring, by kind (one of each)."""
    documents: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBERNETES_MONITORING_DIR.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                assert document["kind"] not in documents, f"{path.name}: a second {document['kind']}"
                documents[document["kind"]] = document
    return documents


def test_kubernetes_monitoring_kustomization_lists_its_manifests() -> None:
    kustomization = monitoring_documents()["Kustomization"]
    on_disk = {path.name for path in KUBERNETES_MONITORING_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(on_disk)
    assert kustomization["namespace"] == kustomization_namespace()
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert monitoring_documents()[kind]["metadata"]["namespace"] == kustomization_namespace(), kind


def kustomization_namespace() -> str:
    namespace = kustomization()["namespace"]
    assert isinstance(namespace, str)
    return namespace


def test_service_monitor_scrapes_every_vigil_service_under_its_own_job() -> None:
    monitor = monitoring_documents()["ServiceMonitor"]["spec"]
    selector = monitor["selector"]["matchLabels"]
    (endpoint,) = monitor["endpoints"]
    jobs = {}
    for service in manifests("Service"):
        labels = service["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"the ServiceMonitor misses {service['metadata']['name']}"
        assert endpoint["port"] in {port.get("name") for port in service["spec"]["ports"]}, service["metadata"]["name"]
        jobs[labels[monitor["jobLabel"]]] = service["metadata"]["name"]
    assert set(jobs) == VIGIL_JOBS, f"jobs {sorted(jobs)}: the rules and the dashboard expect the service names"
    assert endpoint.get("path", "/metrics") == "/metrics"
    # Without it the operator's own `service` label (the Kubernetes Service) pushes Vigil's aside.
    assert endpoint.get("honorLabels") is True


def test_prometheus_rule_is_the_alerting_rules_file() -> None:
    rule = monitoring_documents()["PrometheusRule"]
    alerts = yaml.safe_load(ALERT_RULES.read_text())
    assert rule["spec"]["groups"] == alerts["groups"], "prometheusrule.yaml differs from deploy/prometheus/alerts.yml"


def relabel(configs: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, str] | None:
    """Apply Prometheus relabel_configs (replace, keep, drop) to a target's labels; None if dropped."""
    labels = dict(labels)
    for config in configs:
        action = config.get("action", "replace")
        value = config.get("separator", ";").join(labels.get(name, "") for name in config.get("source_labels", []))
        match = re.fullmatch(config.get("regex", "(.*)"), value)
        if action in ("keep", "drop"):
            if (match is None) == (action == "keep"):
                return None
        elif action == "replace":
            if match is not None:
                replacement = re.sub(r"\$(\d+)", r"\\g<\1>", config.get("replacement", "$1"))  # $1 -> \g<1>
                labels[config["target_label"]] = match.expand(replacement)
        else:
            raise AssertionError(f"relabel action {action} is not simulated here")
    return labels


def pod_target(deployment: dict[str, Any], port: int) -> dict[str, str]:
    """The labels Kubernetes pod discovery gives one container port of a Deployment's pod."""

    def meta(kind: str, items: dict[str, str]) -> dict[str, str]:
        return {f"__meta_kubernetes_pod_{kind}_{re.sub(r'[^A-Za-z0-9_]', '_', k)}": v for k, v in items.items()}

    template = deployment["spec"]["template"]["metadata"]
    return {
        "__address__": f"10.0.0.7:{port}",
        "__metrics_path__": "/metrics",
        "__meta_kubernetes_namespace": deployment["metadata"]["namespace"],
        "__meta_kubernetes_pod_name": f"{deployment['metadata']['name']}-5d9c7-x2x4q",
        **meta("label", template["labels"]),
        **meta("annotation", template.get("annotations", {})),
    }


def test_kubernetes_scrape_config_finds_each_pod_on_its_port_under_its_own_job() -> None:
    config = yaml.safe_load(PROMETHEUS_KUBERNETES_CONFIG.read_text())
    assert config["rule_files"] == prometheus_config()["rule_files"]
    (job,) = config["scrape_configs"]
    found = {}
    for deployment in manifests("Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        for port in container["ports"]:
            target = relabel(job["relabel_configs"], pod_target(deployment, port["containerPort"]))
            assert target is not None, f"{deployment['metadata']['name']}: dropped"
            name = target["job"]
            found[name] = (target["__address__"], target["__metrics_path__"], target["namespace"])
    assert set(found) == VIGIL_JOBS
    for name, (address, path, namespace) in found.items():
        assert address == f"10.0.0.7:{DEFAULT_HTTP_PORTS[name]}", name
        assert path == "/metrics" and namespace == kustomization_namespace(), name
    # A pod that does not ask to be scraped is left alone.
    quiet = copy.deepcopy(manifests("Deployment")[0])
    quiet["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] = "false"
    assert relabel(job["relabel_configs"], pod_target(quiet, 8080)) is None


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
