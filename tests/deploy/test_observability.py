"""The Grafana dashboard and the alert rules name only metrics the service exports.

Three checks: against what `service/metrics.py` defines (names and labels; every panel selects
the dashboard's `$app_id` wherever the metric has an `app_id`), against the agreed metric names,
and against what a running app actually serves on GET /metrics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase
from starlette.testclient import TestClient

from service import metrics
from tests.factories import deliver, payload, post

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "convoai-ledger.json"
RULES = REPO / "deploy" / "kubernetes" / "components" / "monitoring" / "prometheusrule.yaml"

# The agreed metric names and types (prefix ledger_); histograms export _bucket, _sum, _count.
AGREED: dict[str, str] = {
    "ledger_notifications_total": "counter",
    "ledger_ingest_duration_seconds": "histogram",
    "ledger_out_of_order_total": "counter",
    "ledger_transitions_total": "counter",
    "ledger_pcu_current": "gauge",
    "ledger_pcu_cap": "gauge",
    "ledger_pcu_peak": "gauge",
    "ledger_pcu_threshold_crossings_total": "counter",
    "ledger_history_jobs": "gauge",
    "ledger_history_oldest_due_seconds": "gauge",
    "ledger_history_completed_total": "counter",
    "ledger_agora_requests_total": "counter",
    "ledger_agora_request_duration_seconds": "histogram",
    "ledger_reconcile_repairs_total": "counter",
    "ledger_reconcile_pass_duration_seconds": "histogram",
    "ledger_reconcile_errors_total": "counter",
    "ledger_agent_errors_total": "counter",
    "ledger_sessions_ended_total": "counter",
    "ledger_agent_seconds_total": "counter",
    "ledger_turn_latency_seconds": "histogram",
}
_SERIES_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}
_NOT_METRICS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def series_names(families: dict[str, str]) -> set[str]:
    """Sample names a scrape shows for metric families of the given types."""
    names = set()
    for name, kind in families.items():
        names |= {name + suffix for suffix in _SERIES_SUFFIXES.get(kind, ("",))}
        if kind == "counter" and not name.endswith("_total"):
            names.add(name + "_total")
    return names


def service_families() -> dict[str, tuple[str, set[str]]]:
    """Every family `service/metrics.py` defines, name → (type, labels), the scrape-time gauges
    included."""
    families = {
        found._name: (found._type, set(found._labelnames))
        for found in vars(metrics).values()
        if isinstance(found, MetricWrapperBase)
    }
    scraped = metrics.database_families(pcu={"app": (1, 2, 3)}, history_jobs={}, oldest_due_s=0.0)
    for family in scraped:
        labels = {label for sample in family.samples for label in sample.labels}
        families[family.name] = (family.type, labels)
    return families


def series_labels() -> dict[str, set[str]]:
    """Every series name a scrape can show, with its family's labels."""
    return {
        series: labels
        for name, (kind, labels) in service_families().items()
        for series in series_names({name: kind})
    }


def selectors(expr: str, name: str) -> list[str]:
    """The label matchers of each selection of metric `name` in `expr` ("" when bare)."""
    found = re.finditer(rf"(?<![\w:$.]){re.escape(name)}(?![\w:])(?:\s*\{{([^}}]*)\}})?", expr)
    return [match[1] or "" for match in found]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, keywords removed)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text, flags=re.I
    )
    found = re.findall(r"(?<![\w$.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text)
    return {name for name in found if name.lower() not in _NOT_METRICS}


def dashboard_queries(*, variables: bool = True) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and template variable of the dashboard."""
    document = json.loads(DASHBOARD.read_text())

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    for panel in panels(document["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for variable in document["templating"]["list"] if variables else []:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            values = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)
            yield f"variable {variable['name']}", values[1] if values else query


def alert_queries() -> Iterator[tuple[str, str]]:
    (rule_document,) = yaml.safe_load_all(RULES.read_text())
    for group in rule_document["spec"]["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule['alert']}", rule["expr"]


def used_metrics() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for where, expr in [*dashboard_queries(), *alert_queries()]:
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    return used


def exported(exposition: str) -> set[str]:
    """Every series name a Prometheus text exposition offers, sampled yet or not."""
    families = {}
    samples = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            families[name] = kind.strip()
        elif line and not line.startswith("#"):
            samples.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return series_names(families) | samples


def test_promql_metric_names_are_found_and_nothing_else() -> None:
    expr = (
        'sum by (app_id, kind) (rate(ledger_a_total{reason="x", app_id=~"$app_id"}[$__rate_interval]))'
        " / on (app_id) group_left max(ledger_b) > 0.5 and absent(up{job='web'}) offset 5m"
        " or histogram_quantile(0.99, sum by (le) (rate(ledger_c_bucket[5m]))) > bool 1e3"
    )
    assert metric_names(expr) == {"ledger_a_total", "ledger_b", "up", "ledger_c_bucket"}


def test_an_exposition_offers_its_families_sampled_or_not() -> None:
    exposition = (
        "# HELP ledger_a_total A.\n# TYPE ledger_a_total counter\n"
        "# TYPE ledger_h_seconds histogram\n"
        'ledger_h_seconds_bucket{le="+Inf"} 1.0\nledger_h_seconds_count 1.0\n'
        "# TYPE ledger_g gauge\nledger_g 3\n"
    )
    assert exported(exposition) == {
        "ledger_a_total",
        "ledger_h_seconds_bucket",
        "ledger_h_seconds_sum",
        "ledger_h_seconds_count",
        "ledger_g",
    }


def test_selectors_are_found_with_their_matchers() -> None:
    expr = (
        'rate(ledger_a_total{app_id=~"$app_id", x="ledger_a_total"}[5m])'
        ' / ledger_a_total or ledger_a_total_more{y="1"} or ledger_a_total {z="2"}'
    )
    assert selectors(expr, "ledger_a_total") == [
        'app_id=~"$app_id", x="ledger_a_total"',
        "",
        'z="2"',
    ]


def test_dashboard_and_alerts_name_only_agreed_metrics() -> None:
    used = used_metrics()
    unknown = {
        name: sorted(where) for name, where in used.items() if name not in series_names(AGREED)
    }
    assert unknown == {}
    assert len(used) >= 12


def test_the_agreed_metrics_are_defined_by_the_service() -> None:
    families = {name: kind for name, (kind, _) in service_families().items()}
    assert series_names(AGREED) - series_names(families) == set()


def test_every_panel_selects_the_chosen_apps_where_the_metric_has_an_app() -> None:
    labels = series_labels()
    missed = [
        (where, name)
        for where, expr in dashboard_queries(variables=False)
        for name in metric_names(expr)
        if "app_id" in labels[name]
        for matchers in selectors(expr, name)
        if 'app_id=~"$app_id"' not in matchers
    ]
    assert missed == []


def test_expected_history_404s_are_not_agora_errors() -> None:
    [expr] = [expr for where, expr in dashboard_queries() if where == "panel 'Agora REST errors/s'"]
    assert selectors(expr, "ledger_agora_requests_total") == [
        'app_id=~"$app_id", status!~"2..|404"',
        'app_id=~"$app_id", status="404", endpoint!="history"',
    ]


def test_the_dashboard_shows_what_operators_asked_for() -> None:
    exprs = " ".join(expr for _, expr in dashboard_queries())
    for wanted in (
        "ledger_pcu_current",
        "ledger_pcu_cap",
        "ledger_pcu_peak",
        "ledger_notifications_total",
        'reason="invalid_signature"',
        "histogram_quantile(0.5, sum by (le) (rate(ledger_ingest_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(ledger_ingest_duration_seconds_bucket",
        "ledger_history_jobs",
        "ledger_history_oldest_due_seconds",
        "ledger_reconcile_repairs_total",
        "ledger_agora_requests_total",
        'ledger_turn_latency_seconds_bucket{app_id=~"$app_id", stage="e2e"}',
        "histogram_quantile(0.9, sum by (le, stage) (rate(ledger_turn_latency_seconds_bucket",
        "sum by (module, code) (rate(ledger_agent_errors_total",
        "topk(10, sum by (module, code) (increase(ledger_agent_errors_total",
        "sum by (app_id, outcome) (increase(ledger_sessions_ended_total",
        "ledger_agent_seconds_total",
    ):
        assert wanted in exprs


def test_the_readme_explains_every_alert() -> None:
    readme = (REPO / "README.md").read_text()
    alerts = {where.removeprefix("alert ") for where, _ in alert_queries()}
    assert alerts
    assert {alert for alert in alerts if f"`{alert}`" not in readme} == set()


def test_the_running_app_exports_every_metric_the_dashboard_and_alerts_use(
    client: TestClient,
) -> None:
    assert post(client, deliver(101, payload("a1", start_ts=1_751_400_000))).status_code == 200
    response = client.get("/metrics")
    assert response.status_code == 200
    missing = {
        name: sorted(where)
        for name, where in used_metrics().items()
        if name not in exported(response.text)
    }
    assert missing == {}
