"""The gateway's own share of report -> sign, in-process, warm and after an idle gap.

Prints one JSON line::

    {"bench": "gateway_path", "batch": 10, "warm": {"first_sign_p50_us": ..., ...},
     "after_idle": {...}, "kept_warm": {...}, "rehearsal_p50_us": ..., "rehearsal_cpu_share": ...,
     "stages_after_idle_p50_us": {"accept": ..., ...},
     "baseline_json_loads_p50_us": {"warm": ..., "after_idle": ...}}

What it measures: ``LiveGateway.handle_batch`` on the example site with a real journal
(temporary SQLite file, WAL, the service's deferred checkpoint written in steps between
reports), fed the same delta reports as ``bench_pipeline.py`` (``batch`` changes each, one of
them moving the first line of sign ``gate-north``). ``first_sign`` is the time from the
start of handling to that sign's publish call (journal commit included); ``handled`` to
the end of the batch (every sign, zone counts). No broker: this is the part of
``bench_pipeline.py``'s latency that the gateway's code decides, without its noise.

``warm`` handles reports back to back; ``after_idle`` sleeps 10 ms before each, as at
1,000 changes/s. On shared VMs the first half millisecond of work after such a gap runs
several times slower (caches and TLBs refilled); ``json.loads`` of the same payload,
timed the same two ways in the same run, shows how much of that is the machine.
``kept_warm`` is the same 10 ms gap spent as the service spends it by default: asleep in
3 ms steps, ``LiveGateway.rehearse()`` after each (``--keep-warm-ms 3``);
``rehearsal_p50_us`` is what one rehearsal costs, and ``rehearsal_cpu_share`` that cost
over the 3 ms (the share of a core keeping warm takes while reports flow).
``stages_after_idle_p50_us`` splits the idle case by step (wrapped on the instance).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_pipeline import AGENT, EdgeModel  # noqa: E402

import gateway.live as live  # noqa: E402
from gateway.journal import Journal  # noqa: E402
from parkguide.supervisor import stop_on_sigterm  # noqa: E402
from parking import topics  # noqa: E402
from parking.site import EXAMPLE_SITE, load_site  # noqa: E402

BATCH = 10
REPORTS = 600
IDLE_S = 0.010
KEEP_WARM_S = 0.003  # the service's default --keep-warm-ms
SKIP = 50  # first reports of each mode, not counted


def pct(values: list[float]) -> dict[str, float]:
    v = np.array(values[SKIP:]) * 1e6
    return {
        "p50_us": round(float(np.percentile(v, 50)), 1),
        "p90_us": round(float(np.percentile(v, 90)), 1),
    }


def main() -> int:
    stop_on_sigterm()  # a harness's timeout still removes the temporary journal
    site = load_site(EXAMPLE_SITE)
    tmp = tempfile.TemporaryDirectory(prefix="bench-gateway-path-")
    journal = Journal(Path(tmp.name) / "journal.db")
    journal.manual_checkpoints()
    marker = topics.display_content(site.id, "gate-north")
    first: list[float | None] = [None]

    def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if topic == marker and first[0] is None:
            first[0] = time.perf_counter()

    gw = live.LiveGateway(site, journal, publish, defer_checkpoint=True)
    gw.publish_all()
    model = EdgeModel(site)
    topic = topics.edge_occupancy(site.id, AGENT)
    gw.handle_batch([(topic, model.snapshot(), time.perf_counter())])
    gw.flush_checkpoint()

    stages: dict[str, list[float]] = defaultdict(list)

    def timed(obj: object, name: str, label: str) -> None:
        f = getattr(obj, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            r = f(*a, **k)
            stages[label].append(time.perf_counter() - t)
            return r

        setattr(obj, name, wrapper)

    rehearsals: list[float] = []

    def gap(keep_warm: bool) -> None:
        if not keep_warm:
            time.sleep(IDLE_S)
            return
        end = time.perf_counter() + IDLE_S
        while (left := end - time.perf_counter()) > 0:
            time.sleep(min(KEEP_WARM_S, left))
            t = time.perf_counter()
            gw.rehearse()
            rehearsals.append(time.perf_counter() - t)

    def run(idle: bool, keep_warm: bool = False) -> dict[str, dict[str, float]]:
        crit, total, loads = [], [], []
        for i in range(REPORTS):
            payload = model.next_report(BATCH)[0]
            if idle:
                gap(keep_warm)
            t = time.perf_counter()
            json.loads(payload)
            loads.append(time.perf_counter() - t)
            if idle:
                gap(keep_warm)
            first[0] = None
            t = time.perf_counter()
            gw.handle_batch([(topic, payload, t)])
            end = time.perf_counter()
            if first[0] is None:
                raise RuntimeError("a report did not change sign gate-north")
            crit.append(first[0] - t)
            total.append(end - t)
            gw.flush_checkpoint(step=True)  # the service's quiet-moment step
            if i % 100 == 99:
                journal.checkpoint()
        return {"first_sign": pct(crit), "handled": pct(total), "json_loads": pct(loads)}

    warm = run(idle=False)
    idle = run(idle=True)
    kept = run(idle=True, keep_warm=True)
    rehearsal_us = float(np.percentile(np.array(rehearsals) * 1e6, 50))
    # then the steps, wrapped on this instance only (the runs above are unwrapped)
    for obj, name, label in (
        (gw.gate, "accept", "accept"),
        (gw.state, "observe", "observe"),
        (gw.core, "update_many", "core"),
        (gw, "_journal", "journal"),
        (gw, "_publish_zones", "zones"),
    ):
        timed(obj, name, label)
    run(idle=True)  # stages only
    staged = {k: pct(v)["p50_us"] for k, v in stages.items()}
    out = {
        "bench": "gateway_path",
        "batch": BATCH,
        "warm": {"first_sign_" + k: v for k, v in warm["first_sign"].items()}
        | {"handled_" + k: v for k, v in warm["handled"].items()},
        "after_idle": {"first_sign_" + k: v for k, v in idle["first_sign"].items()}
        | {"handled_" + k: v for k, v in idle["handled"].items()},
        "kept_warm": {"first_sign_" + k: v for k, v in kept["first_sign"].items()}
        | {"handled_" + k: v for k, v in kept["handled"].items()},
        "rehearsal_p50_us": round(rehearsal_us, 1),
        "rehearsal_cpu_share": round(rehearsal_us / (KEEP_WARM_S * 1e6), 3),
        "stages_after_idle_p50_us": staged,
        "baseline_json_loads_p50_us": {
            "warm": warm["json_loads"]["p50_us"],
            "after_idle": idle["json_loads"]["p50_us"],
        },
    }
    print(json.dumps(out), flush=True)
    journal.close()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
