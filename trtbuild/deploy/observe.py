"""Observability for the replicas: a Grafana dashboard, Prometheus alert rules and the prometheus-adapter
rule behind the HPA's queue-depth metric, all over the server's own /metrics (trtbuild/server/metrics.py).

Every query is PromQL over names `trtbuild serve` exports; tests/test_deploy.py parses each one and checks
each metric it names against a live server's /metrics. Series carry the scraper's `pod` label (Kubernetes
service discovery relabels it so), which is what "per replica" means here.
"""

from __future__ import annotations

RATE = "$__rate_interval"  # Grafana's rate window: at least 4 scrape intervals
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _quantiles(metric: str, rate: str = RATE) -> list[tuple[str, str]]:
    return [(f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket[{rate}])))", f"p{int(q * 100)}")
            for q in (0.5, 0.9, 0.99)]


def _panel(i: int, title: str, unit: str, targets: list[tuple[str, str]], description: str) -> dict:
    width, height = 12, 8
    return {
        "id": i + 1, "type": "timeseries", "title": title, "description": description, "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": width, "x": (i % 2) * width, "y": (i // 2) * height},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
                    "tooltip": {"mode": "multi"}},
        "targets": [{"refId": chr(ord("A") + n), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
                    for n, (expr, legend) in enumerate(targets)],
    }


def panels() -> list[tuple[str, str, list[tuple[str, str]], str]]:
    pod = '{pod=~"$pod"}'
    return [
        ("Requests running (per replica)", "short",
         [(f"sum by (pod) (trtbuild:num_requests_running{pod})", "{{pod}}")],
         "Sequences in the engine's batch."),
        ("Requests waiting (per replica): the HPA's queue depth", "short",
         [(f"sum by (pod) (trtbuild:num_requests_waiting{pod})", "{{pod}}")],
         "Queued in the engine, not yet scheduled; the autoscaler's metric."),
        ("Time to first token", "s", _quantiles("trtbuild:time_to_first_token_seconds"), "All replicas."),
        ("Inter-token latency", "s", _quantiles("trtbuild:inter_token_latency_seconds"), "All replicas."),
        ("End-to-end request latency", "s", _quantiles("trtbuild:e2e_request_latency_seconds"), "All replicas."),
        ("Queue time", "s", _quantiles("trtbuild:request_queue_time_seconds"),
         "Arrival to first scheduled: grows when replicas are saturated."),
        ("Output tokens/s (per replica)", "short",
         [(f"sum by (pod) (rate(trtbuild:generation_tokens_total{pod}[{RATE}]))", "{{pod}}"),
          (f"sum(rate(trtbuild:generation_tokens_total{pod}[{RATE}]))", "total")],
         "Generated tokens per second."),
        ("Prompt tokens/s (per replica)", "short",
         [(f"sum by (pod) (rate(trtbuild:prompt_tokens_total{pod}[{RATE}]))", "{{pod}}")],
         "Prompt tokens processed per second."),
        ("Finish reasons", "reqps",
         [(f"sum by (finished_reason) (rate(trtbuild:request_success_total{pod}[{RATE}]))", "{{finished_reason}}")],
         "stop, length, abort (client left or shutdown), error."),
        ("HTTP responses by status", "reqps",
         [(f"sum by (code) (rate(trtbuild:http_responses_total{pod}[{RATE}]))", "{{code}}")],
         "429: queue full (saturated); 503: not ready; 5xx: errors."),
    ]


def grafana_dashboard(title: str = "trtbuild serve") -> dict:
    """A Grafana dashboard (JSON model, importable as is) with a datasource and a pod variable."""
    return {
        "title": title, "uid": "trtbuild-serve", "tags": ["trtbuild", "llm"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "pod", "type": "query", "datasource": DATASOURCE, "label": "replica",
             "query": {"query": "label_values(trtbuild:num_requests_running, pod)", "refId": "pods"},
             "definition": "label_values(trtbuild:num_requests_running, pod)",
             "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2},
        ]},
        "panels": [_panel(i, *spec) for i, spec in enumerate(panels())],
    }


def alert_rules(waiting_per_pod: float = 8.0, error_ratio: float = 0.05) -> dict:
    """Prometheus rule file (rule_files: in prometheus.yml, or spec: of a PrometheusRule)."""
    responses = "trtbuild:http_responses_total"
    return {"groups": [{"name": "trtbuild-serve", "rules": [
        {"alert": "TrtbuildSaturated",
         "expr": f"avg by (namespace) (trtbuild:num_requests_waiting) > {waiting_per_pod:g}",
         "for": "10m", "labels": {"severity": "warning"},
         "annotations": {"summary": "trtbuild replicas have had more than {{ $value }} requests waiting on average "
                                    "for 10 minutes",
                         "description": "Add replicas (the HPA may be at maxReplicas) or lower --max-queue."}},
        {"alert": "TrtbuildQueueTimeHigh",
         "expr": "histogram_quantile(0.9, sum by (le, namespace) "
                 "(rate(trtbuild:request_queue_time_seconds_bucket[5m]))) > 2",
         "for": "10m", "labels": {"severity": "warning"},
         "annotations": {"summary": "p90 queue time above 2 s: requests wait for a batch slot"}},
        {"alert": "TrtbuildRejectingRequests",
         "expr": f'sum by (namespace) (rate({responses}{{code="429"}}[5m])) / '
                 f"sum by (namespace) (rate({responses}[5m])) > 0.01",
         "for": "5m", "labels": {"severity": "warning"},
         "annotations": {"summary": "more than 1% of requests get 429: queues are full"}},
        {"alert": "TrtbuildHighErrorRate",
         "expr": f'sum by (namespace) (rate({responses}{{code=~"5.."}}[5m])) / '
                 f"sum by (namespace) (rate({responses}[5m])) > {error_ratio:g}",
         "for": "5m", "labels": {"severity": "critical"},
         "annotations": {"summary": f"more than {error_ratio:.0%} of requests fail with 5xx"}},
        {"alert": "TrtbuildEngineErrors",
         "expr": 'sum by (namespace, pod) (rate(trtbuild:request_success_total{finished_reason="error"}[5m])) > 0',
         "for": "5m", "labels": {"severity": "critical"},
         "annotations": {"summary": "the engine of {{ $labels.pod }} fails requests"}},
    ]}]}


def adapter_rules() -> dict:
    """prometheus-adapter's custom-metrics rule serving the HPA's metric (kube.HPA_METRIC) per pod."""
    from trtbuild.deploy.kube import HPA_METRIC, WAITING_METRIC

    return {"rules": [{
        "seriesQuery": f'{WAITING_METRIC}{{namespace!="",pod!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": f"^{WAITING_METRIC}$", "as": HPA_METRIC},
        "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
    }]}


def queries(dashboard: dict, rules: dict, adapter: dict) -> list[str]:
    """Every PromQL expression in the three (Grafana's variables replaced by values), for checking."""
    out = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    out += [v["definition"].replace("label_values(", "").split(",")[0] for v in dashboard["templating"]["list"]
            if v.get("definition")]
    out += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    out += [r["seriesQuery"] for r in adapter["rules"]]
    return [q.replace(RATE, "5m").replace("$pod", ".*") for q in out]
