"""Build ALA's Grafana dashboards as JSON (`python deploy/grafana/build.py` writes deploy/grafana/dashboards/).

Plain dicts in Grafana's dashboard schema, so a reader sees every panel's query in one place; the committed JSON is
what compose and Helm provision, and a test checks that it matches this file and that every query parses and names
only metrics the services export (or recording rules in deploy/prometheus/rules.yml).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

OUT = Path(__file__).parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}


@dataclass(frozen=True)
class Panel:
    title: str
    queries: dict[str, str]
    """legend -> PromQL."""
    unit: str = "short"
    threshold: float | None = None
    """A red line: the budget or target."""
    description: str = ""


def _panel(panel: Panel, index: int) -> dict[str, object]:
    thresholds = [{"color": "green", "value": None}]
    if panel.threshold is not None:
        thresholds.append({"color": "red", "value": panel.threshold})
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {
            "defaults": {
                "unit": panel.unit,
                "thresholds": {"mode": "absolute", "steps": thresholds},
                "custom": {"thresholdsStyle": {"mode": "line" if panel.threshold is not None else "off"}},
            },
            "overrides": [],
        },
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for i, (legend, expr) in enumerate(panel.queries.items())
        ],
    }


def dashboard(uid: str, title: str, description: str, panels: list[Panel]) -> dict[str, object]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["ala"],
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "panels": [_panel(panel, i) for i, panel in enumerate(panels)],
    }


DASHBOARDS = [
    dashboard(
        "ala-budgets",
        "ALA / Latency budgets",
        "Each service against its budget: router < 50 ms, actor step 10-15 ms, advisor 3-5 s.",
        [
            Panel("Router processing p99", {"p99": "ala:router_processing_seconds:p99"}, "s", 0.05),
            Panel("Actor step p99", {"{{instance}}": "ala:actor_step_seconds:p99"}, "s", 0.015),
            Panel(
                "Actor policy forward p99",
                {"{{instance}}": "ala:actor_policy_forward_seconds:p99"},
                "s",
                0.01,
                description="The forward alone (torch or ONNX Runtime: TensorRT on a Jetson), without sampling or the"
                " env step.",
            ),
            Panel("Advisor answer p95", {"{{advisor}}": "ala:advisor_llm_seconds:p95"}, "s", 5.0),
            Panel(
                "Advice to bias at the actor, p99",
                {"p99": "ala:advice_to_bias_seconds:p99"},
                "s",
                description="From the advice's creation to the bias being in force at the actor (advisor + router"
                " + two hops).",
            ),
            Panel(
                "Publish p99 by service",
                {
                    "{{job}} {{kind}}": "histogram_quantile(0.99, sum by (le, job, kind) "
                    '(rate({__name__=~"ala_.+_nats_publish_seconds_bucket"}[1m])))'
                },
                "s",
            ),
            Panel("Services up", {"{{job}}": 'up{job=~"ala-.+"}'}),
        ],
    ),
    dashboard(
        "ala-training",
        "ALA / Training",
        "How fast and how well the learner learns: throughput, evaluation (advice off), policy lag, IS weights.",
        [
            Panel("Env steps/s (all actors)", {"steps/s": "ala:actor_env_steps:rate1m"}),
            Panel("Samples trained/s", {"samples/s": "ala:learner_samples:rate1m"}),
            Panel(
                "Evaluation return (advice off)",
                {"{{mode}}": "ala_eval_return", "success {{mode}}": "ala_eval_success_rate"},
                threshold=0.8,
            ),
            Panel("Training return (with advice)", {"{{instance}}": "ala_actor_mean_return"}),
            Panel(
                "Policy versions",
                {"learner": "ala_learner_policy_version", "actor {{instance}}": "ala_actor_policy_version"},
            ),
            Panel("Policy lag (versions)", {"actor {{instance}}": "ala_actor_policy_lag"}, threshold=4),
            Panel(
                "Importance weights pi_prox / mu",
                {
                    "mean": 'ala_learner_training{stat="is/weight_mean"}',
                    "max": 'ala_learner_training{stat="is/weight_max"}',
                    "truncated share": 'ala_learner_training{stat="is/fraction_truncated"}',
                },
            ),
            Panel(
                "Policy entropy and KL to the behaviour",
                {
                    "entropy": 'ala_learner_training{stat="losses/entropy"}',
                    "KL(mu || pi)": 'ala_learner_training{stat="losses/kl_to_behaviour"}',
                },
            ),
            Panel(
                "Chunks: trained, stale, rejected (/s)",
                {
                    "trained": "sum(rate(ala_learner_chunks_trained_total[1m]))",
                    "stale": "sum(rate(ala_learner_chunks_stale_total[1m]))",
                    "rejected {{reason}}": "sum by (reason) (rate(ala_learner_chunks_rejected_total[1m]))",
                },
            ),
            Panel("Actor back-pressure (s/s)", {"{{instance}}": "rate(ala_actor_backpressure_seconds_total[1m])"}),
            Panel(
                "Actor waiting for training (s/s)",
                {
                    "{{instance}}": "ala:actor_flow_wait:ratio1m",
                    "timeouts {{instance}}": "rate(ala_actor_flow_timeouts_total[5m])",
                },
                threshold=0.5,
                description="Flow control: the share of time an actor waits for the learner to train its chunks (a"
                " model build never counts).",
            ),
            Panel(
                "Weights refused by the actors (/s)",
                {"{{reason}}": "sum by (reason) (rate(ala_actor_weights_rejected_total[5m]))"},
                description="onnx_invalid, onnx_mismatch: a model that failed to load or to match torch on the probe"
                " batch (the Jetson failure mode); the actor keeps its old version.",
            ),
        ],
    ),
    dashboard(
        "ala-advice",
        "ALA / Advice",
        "Advice from digest to bias: what was asked, answered, accepted, trusted and how often it was right.",
        [
            Panel(
                "Digests asked (/s)",
                {
                    "{{reason}}": "sum by (reason) (rate(ala_actor_digests_total[1m]))",
                    "rate-limited": "sum(rate(ala_actor_digests_rate_limited_total[1m]))",
                },
            ),
            Panel(
                "Advice: published, at the router, accepted (/s)",
                {
                    "published {{advisor}}": "sum by (advisor) (rate(ala_advisor_advice_published_total[1m]))",
                    "received {{advisor}}": "sum by (advisor) (rate(ala_router_advice_total[1m]))",
                    "accepted {{advisor}}": "sum by (advisor) (rate(ala_router_advice_accepted_total[1m]))",
                },
            ),
            Panel("Acceptance ratio", {"accepted / received": "ala:router_advice_accepted:ratio5m"}, "percentunit"),
            Panel(
                "Rejected advice by reason (/s)",
                {"{{reason}}": "sum by (reason) (rate(ala_router_rejected_total[1m]))"},
            ),
            Panel(
                "Trust per advisor",
                {"{{advisor}}": "ala_router_trust", "advantage {{advisor}}": "ala_router_trust_advantage"},
                description="Evidence-driven trust in [0, 1] (the share of episodes an advisor reaches), and its"
                " advised-minus-control mean return.",
            ),
            Panel(
                "Biased steps (/s)",
                {"{{scope}}": "sum by (scope) (rate(ala_actor_biased_steps_total[1m]))"},
            ),
            Panel(
                "Advice precision (expert as judge)",
                {
                    "{{scope}}": 'sum by (scope) (rate(ala_actor_advice_judged_total{verdict="right"}[5m]))'
                    ' / sum by (scope) (rate(ala_actor_advice_judged_total{verdict=~"right|wrong"}[5m]))'
                },
                "percentunit",
            ),
            Panel("Cache hit rate", {"{{advisor}}": "ala:advisor_cache_hits:ratio5m"}, "percentunit"),
            Panel("LLM tokens/s", {"{{advisor}}": "ala:advisor_completion_tokens:rate1m"}),
            Panel(
                "Advisor queue and failures",
                {
                    "queued {{advisor}}": "ala_advisor_queue_depth",
                    "dropped/s {{advisor}}": "sum by (advisor) (rate(ala_advisor_digests_dropped_total[1m]))",
                    "failed/s {{advisor}} {{reason}}": "sum by (advisor, reason) "
                    "(rate(ala_advisor_backend_failures_total[1m]))",
                },
            ),
        ],
    ),
]


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for board in DASHBOARDS:
        path = OUT / f"{board['uid']}.json"
        path.write_text(json.dumps(board, indent=2) + "\n")
        print(path)


if __name__ == "__main__":
    main()
