"""Prometheus text exposition (format 0.0.4) at /metrics, written by hand (no dependency).

Figures come from ``LiveView.counters()`` (reports accepted and rejected by
reason, state changes, sign updates, outbox depth, end-to-end latency), the
gateway's and the agents' availability and the open alerts. The InfluxDB writer's figures come from the
gateway in process (``parkguide gateway --http``), and in a stand-alone API from the
status the writer keeps in the journal (``api.outbox_status``), under the same names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from api.deps import Ctx, guarded, metrics_access
from api.models import ErrorOut
from api.outbox_status import OutboxStatus

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

router = APIRouter(tags=["metrics"])


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def fmt(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Exposition:
    """Builds the text format: one HELP and TYPE per family, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        if labels:
            inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{inner}}} {fmt(value)}")
        else:
            self.lines.append(f"{name} {fmt(value)}")

    def single(self, name: str, kind: str, help_text: str, value: float) -> None:
        """A family of one sample without labels."""
        self.family(name, kind, help_text)
        self.sample(name, value)

    def histogram(
        self, name: str, help_text: str, values: Sequence[float], buckets: Iterable[float]
    ) -> None:
        self.family(name, "histogram", help_text)
        ordered = sorted(v for v in values if not math.isnan(v))
        i = 0
        for b in buckets:
            while i < len(ordered) and ordered[i] <= b:
                i += 1
            self.sample(f"{name}_bucket", i, {"le": fmt(b)})
        self.sample(f"{name}_bucket", len(ordered), {"le": "+Inf"})
        self.sample(f"{name}_sum", sum(ordered))
        self.sample(f"{name}_count", len(ordered))

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(ctx: Ctx) -> str:
    c = ctx.view.counters()
    agents = ctx.view.agents()
    out = Exposition()
    # which site these are: two sites' series are otherwise the same (join on instance,
    # or label the scrape target with it: docs/api.md)
    site = ctx.view.site
    out.family("parkguide_site_info", "gauge", "The site this gateway or API serves (always 1).")
    out.sample("parkguide_site_info", 1, {"site": site.id, "name": site.name.en or site.name.zh})
    if c.gateway_counts:  # a stand-alone API cannot know these: absent, not a false 0
        out.family("parkguide_reports_accepted_total", "counter", "Edge reports accepted.")
        out.sample("parkguide_reports_accepted_total", c.accepted)
    out.family(
        "parkguide_reports_rejected_total",
        "counter",
        "Messages rejected (edge reports, arrivals, manager controls), by reason; arrivals also"
        " per entrance in parkguide_arrivals_refused_total.",
    )
    for reason, n in sorted(c.rejected.items()):
        out.sample("parkguide_reports_rejected_total", n, {"reason": reason})
    out.family("parkguide_state_changes_total", "counter", "Space state changes journalled.")
    out.sample("parkguide_state_changes_total", c.state_changes)
    out.family("parkguide_sign_updates_total", "counter", "Sign contents published.")
    out.sample("parkguide_sign_updates_total", c.sign_updates)
    if c.gateway_counts:
        out.single(
            "parkguide_arrivals_repeated_total",
            "counter",
            "Arrivals sent again with the same request_id: given the same assignment again.",
            c.repeated_arrivals,
        )
        out.family(
            "parkguide_arrivals_unheld_total",
            "counter",
            "Arrivals answered without holding a space, by why: late (stamped over a minute "
            "ago by its gate's clock) or entrance_cap (--max-holds-per-entrance outstanding "
            "there: a burst, or a gate flooding arrivals).",
        )
        for why, n in sorted(c.unheld_arrivals.items()):
            out.sample("parkguide_arrivals_unheld_total", n, {"reason": why})
        out.single(
            "parkguide_arrival_request_ids_reused_total",
            "counter",
            "Arrivals sent under a request_id already answered for another car (a gate's "
            "counter restarted): answered anew.",
            c.reused_request_ids,
        )
        out.family(
            "parkguide_arrivals_refused_total",
            "counter",
            "Arrivals refused (not JSON, a wrong field, an unknown class or entrance), by "
            "entrance ('?': one the site lacks) and reason; each gate is told why on "
            "entrances/{entrance}/refusal.",
        )
        for (entrance, why), n in sorted(c.refused_arrivals.items()):
            out.sample("parkguide_arrivals_refused_total", n, {"entrance": entrance, "reason": why})
        out.family(
            "parkguide_arrival_cancels_total",
            "counter",
            "Cancels of arrivals (entrances/{entrance}/cancel), by entrance ('?': one the site "
            "lacks) and result: released (the hold ended) or why it changed nothing "
            "(unknown_request, already_cancelled, not_held, car_seen, hold_expired, invalid, "
            "bad_json, oversized, unknown_entrance), told to the gate on its refusal topic.",
        )
        for (entrance, result), n in sorted(c.arrival_cancels.items()):
            out.sample(
                "parkguide_arrival_cancels_total", n, {"entrance": entrance, "result": result}
            )
        out.family(
            "parkguide_reports_missed_total",
            "counter",
            "Edge reports that never reached the gateway (gaps in an agent's seq numbers; its "
            "next snapshot reconciles the state), by agent.",
        )
        for agent, n in sorted(c.reports_missed.items()):
            out.sample("parkguide_reports_missed_total", n, {"agent": agent})
        out.family(
            "parkguide_seq_jumps_total",
            "counter",
            "Gaps in an agent's seq numbers wider than it could have sent since it was last "
            "heard (its numbering jumped: an agent bug, or a restart without a new boot); not "
            "counted as reports missed, by agent.",
        )
        for agent, n in sorted(c.seq_jumps.items()):
            out.sample("parkguide_seq_jumps_total", n, {"agent": agent})
        out.family(
            "parkguide_report_lag_seconds",
            "gauge",
            "How far behind an agent's reports the gateway is: reports queue at the broker "
            "faster than it handles them, and signs show the state of that long ago "
            "(0: keeping up), by agent.",
        )
        for agent, lag in sorted(c.report_lag_s.items()):
            out.sample("parkguide_report_lag_seconds", round(lag, 3), {"agent": agent})
    disk = ctx.journal_disk.poll() if ctx.journal_disk is not None else None
    if disk is not None:
        out.single(
            "parkguide_journal_disk_free_bytes",
            "gauge",
            "Free bytes on the journal's disk (the gateway stops when it cannot write).",
            disk.free_bytes,
        )
        out.single(
            "parkguide_journal_disk_size_bytes",
            "gauge",
            "Size of the journal's disk.",
            disk.size_bytes,
        )
    out.family("parkguide_outbox_depth", "gauge", "Points waiting in the InfluxDB outbox.")
    out.sample("parkguide_outbox_depth", c.outbox_depth)
    out.family(
        "parkguide_outbox_dropped_total",
        "counter",
        "Points dropped from the outbox: reason=cap at the disk cap (over the journal's "
        "life), reason=rejected refused by InfluxDB as bad data (4xx, since start).",
    )
    out.sample("parkguide_outbox_dropped_total", c.outbox_dropped_cap, {"reason": "cap"})
    # the writer's counts: the gateway's own in process; a stand-alone API has them from the
    # status the writer keeps in the journal (absent without one: no writer, not a false 0)
    status = ctx.outbox_status.poll() if ctx.outbox_status is not None else None
    writer: tuple[int, int, int, str | None] | None = None  # rejected, written, auth, error
    if c.gateway_counts:
        writer = (
            c.outbox_dropped_rejected,
            c.outbox_written,
            c.outbox_auth_failed,
            c.outbox_error,
        )
    elif status is not None:
        writer = (status.dropped_4xx, status.written, status.auth_failed, status.error)
    error = c.outbox_error
    if writer is not None:
        rejected, written, auth_failed, error = writer
        out.sample("parkguide_outbox_dropped_total", rejected, {"reason": "rejected"})
        out.family("parkguide_outbox_written_total", "counter", "Points InfluxDB accepted.")
        out.sample("parkguide_outbox_written_total", written)
        out.single(
            "parkguide_outbox_auth_failures_total",
            "counter",
            "Writes InfluxDB refused for the token (401/403): check INFLUX_TOKEN.",
            auth_failed,
        )
    if status is not None:
        _writer_status(out, status)
    if error is not None:
        out.family(
            "parkguide_outbox_last_error_info",
            "gauge",
            "The InfluxDB writer's current error (cleared by the next accepted write).",
        )
        out.sample("parkguide_outbox_last_error_info", 1, {"error": error})
    out.single(
        "parkguide_gateway_up",
        "gauge",
        "1 while the gateway is up: in a stand-alone API, while its retained availability "
        "says online, its sign content keeps coming and the broker is reachable (0: its last "
        "will, silent for a sign validity, never heard, or no broker); in the gateway's own "
        "API always 1.",
        1 if gateway_up(ctx) else 0,
    )
    out.family("parkguide_agents_online", "gauge", "Edge agents online.")
    out.sample("parkguide_agents_online", sum(a.online for a in agents))
    out.family("parkguide_agents", "gauge", "Edge agents the site file names (heard from or not).")
    out.sample("parkguide_agents", len(agents))
    out.family(
        "parkguide_agents_never_seen",
        "gauge",
        "Edge agents of the site file not heard from since this process started.",
    )
    out.sample(
        "parkguide_agents_never_seen",
        sum(not a.online and a.last_seen is None and a.health is None for a in agents),
    )
    out.family("parkguide_spaces", "gauge", "Spaces by state.")
    by_state = dict.fromkeys(("free", "occupied", "unknown", "closed"), 0)
    for z in ctx.view.zone_counts():
        for state in by_state:
            by_state[state] += getattr(z, state)
    for state, n in by_state.items():
        out.sample("parkguide_spaces", n, {"state": state})
    out.family("parkguide_alerts_open", "gauge", "Open alerts, by severity.")
    sev = {"critical": 0, "warning": 0, "info": 0}
    for rec in ctx.alerts.current():
        sev[rec.alert.severity] += 1
    for s, n in sev.items():
        out.sample("parkguide_alerts_open", n, {"severity": s})
    out.family(
        "parkguide_alerts_raised_total",
        "counter",
        "Alert episodes this process raised, by kind (one that clears by itself between two"
        " looks at the dashboard counts too).",
    )
    for kind, n in sorted(ctx.alerts.raised_total.items()):
        out.sample("parkguide_alerts_raised_total", n, {"kind": kind})
    out.family("parkguide_stream_clients", "gauge", "Dashboard live streams connected.")
    out.sample("parkguide_stream_clients", len(ctx.hub.clients))
    out.family(
        "parkguide_streams_refused_total",
        "counter",
        "New live streams refused, by the cap reached: public (503), all (503), per_user (429).",
    )
    for cap in ("public", "all", "per_user"):
        out.sample("parkguide_streams_refused_total", ctx.hub.refused[cap], {"cap": cap})
    if not c.gateway_counts:
        return out.text()
    out.histogram(
        "parkguide_end_to_end_latency_seconds",
        "Edge report received to derived sign content published, over the gateway's recent "
        "window of reports.",
        list(c.latency_s),
        LATENCY_BUCKETS_S,
    )
    return out.text()


def gateway_up(ctx: Ctx) -> bool:
    """Is the gateway up, as this process knows it? A stand-alone view hears the gateway's
    retained availability (its last will says offline); the gateway's own API is the gateway."""
    heard = getattr(ctx.view, "gateway_online", None)
    if not callable(heard):
        return True
    return heard() is True and ctx.view.broker_connected()


def _writer_status(out: Exposition, status: OutboxStatus) -> None:
    """What only the writer's status row says (in the gateway's /metrics too, from the same row)."""
    out.single(
        "parkguide_outbox_retries_total",
        "counter",
        "Failed InfluxDB writes whose points were kept to retry (unreachable, 401/403, 404, "
        "429, 5xx), since the gateway started.",
        status.retries,
    )
    out.single(
        "parkguide_outbox_not_found_total",
        "counter",
        "Writes InfluxDB refused for a missing bucket or org (404), since the gateway started.",
        status.not_found,
    )
    if status.last_ok_at is not None:
        out.single(
            "parkguide_outbox_last_success_timestamp_seconds",
            "gauge",
            "When InfluxDB last accepted a write (UNIX seconds; since the gateway started).",
            status.last_ok_at,
        )
    if status.last_error_at is not None:
        out.single(
            "parkguide_outbox_last_error_timestamp_seconds",
            "gauge",
            "When the InfluxDB writer last failed (UNIX seconds; since the gateway started).",
            status.last_error_at,
        )
    if status.failing is not None and status.failing_since is not None:
        out.family(
            "parkguide_outbox_failing_since_timestamp_seconds",
            "gauge",
            "Since when InfluxDB writes fail and points wait in the outbox (UNIX seconds), "
            "by reason (auth, not_found, unreachable, server, answer, error); absent while "
            "writes go through.",
        )
        out.sample(
            "parkguide_outbox_failing_since_timestamp_seconds",
            status.failing_since,
            {"reason": status.failing},
        )


@router.get(
    "/metrics",
    dependencies=guarded(metrics_access),
    responses={
        200: {
            "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
            "description": "Prometheus text format",
        },
        401: {"model": ErrorOut, "description": "login or PARKGUIDE_METRICS_TOKEN required"},
    },
)
def metrics(ctx: Ctx) -> PlainTextResponse:
    """Prometheus metrics (a logged-in user, or the bearer token in PARKGUIDE_METRICS_TOKEN)."""
    return PlainTextResponse(render(ctx), media_type=CONTENT_TYPE)
