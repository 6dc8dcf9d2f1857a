"""Allocation core speed: single updates and assignments vs. a full recompute vs. the reference.

Prints one JSON line::

    {"bench": "allocation", "results": [{"spaces": 1000, "update_p50_us": ..., "update_p99_us": ...,
     "assign_p50_us": ..., "recompute_ms": ..., "reference_recompute_ms": ..., "speedup": ...},
     ... 10000, 100000], "note": ...}

Synthetic layouts (``CoreLayout.synthetic``): 16 entrances, 200 display lines,
8 vehicle classes, aisles of 20-40 spaces, zones of about ten aisles, kinds and
time-window policies as on a residential site, about 80% of spaces occupied.

- ``update_*``: one ``core.update()`` of a random space to a random state. The
  core keeps best() current eagerly (best() afterwards is a lookup, plus a scan
  of the few congested aisles), and the line counts too, so this is the whole
  cost of one change.
- ``assign_*``: one ``core.assign()`` at a random entrance for a random class
  (arrivals one second apart, so the congestion of recent assignments is live);
  between assignments the held spaces are occupied again so the site does not
  drain.
- ``recompute_ms``: ``core.recompute()``; ``reference_recompute_ms``: the
  plain-Python reference's recompute of the same answers on the same state;
  ``speedup`` their ratio. Medians throughout (the machine is shared).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.allocation import (  # noqa: E402
    CLOSED,
    FREE,
    OCCUPIED,
    UNKNOWN,
    AllocationCore,
    CoreLayout,
)
from gateway.reference import ReferenceAllocator  # noqa: E402

SIZES = (1000, 10000, 100000)
MINUTE = 12 * 60 + 30
STATE_P = {OCCUPIED: 0.80, FREE: 0.17, UNKNOWN: 0.02, CLOSED: 0.01}


def initial_state(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice(list(STATE_P), size=n, p=list(STATE_P.values())).astype(np.int8)


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def bench_size(n_spaces: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    tables = CoreLayout.synthetic_tables(n_spaces, 16, 8, 200, seed=seed)
    layout = CoreLayout.from_arrays(**tables)
    core = AllocationCore(layout, MINUTE)
    state0 = initial_state(rng, n_spaces)
    core.update_many(np.arange(n_spaces), state0, 0.0)
    now = 1.0

    # single updates: random space -> random state (the state mix drifts back to 80% occupied)
    states = np.array(list(STATE_P), dtype=np.int64)
    probs = np.array(list(STATE_P.values()))
    n_upd = 20000
    spaces = rng.integers(0, n_spaces, n_upd).tolist()
    targets = rng.choice(states, n_upd, p=probs).tolist()
    upd_ns = []
    clock = time.perf_counter_ns
    for s, x in zip(spaces, targets, strict=True):
        t0 = clock()
        core.update(s, x, now)
        upd_ns.append(clock() - t0)
        now += 0.001

    # assignments: one arrival per second at a random gate for a random class
    n_asg = 2000
    asg_ns = []
    ents = rng.integers(0, layout.n_entrances, n_asg).tolist()
    classes = rng.integers(0, layout.n_classes, n_asg).tolist()
    for e, c in zip(ents, classes, strict=True):
        now += 1.0
        t0 = clock()
        s = core.assign(e, c, now, 120.0)
        asg_ns.append(clock() - t0)
        if s >= 0:
            core.update(s, OCCUPIED, now)  # the car parks; keeps the site from draining
            core.update(int(rng.integers(n_spaces)), FREE, now)  # and somebody leaves

    # full recompute, ours and the reference's, on the same state (holds and congestion included)
    reps = 30 if n_spaces <= 10000 else 10
    rec_ms = []
    for _ in range(reps):
        t0 = clock()
        core.recompute()
        rec_ms.append((clock() - t0) / 1e6)
    ref = ReferenceAllocator(**tables, minute_of_day=MINUTE)
    ref.state = core.state.astype(int).tolist()
    ref.held = {int(s): float(u) for s, u in core.holds.items()}
    ref.congestion = dict(core.congestion_state())
    ref.now = core.now
    ref_reps = 5 if n_spaces <= 10000 else 3
    ref_ms = []
    for _ in range(ref_reps):
        t0 = clock()
        want = ref.recompute()
        ref_ms.append((clock() - t0) / 1e6)
    # the two agree on this state (a benchmark of a wrong answer is worthless)
    if core.best_all().tolist() != want["best"] or core.line_free.tolist() != want["line_free"]:
        raise SystemExit(f"core and reference disagree at {n_spaces} spaces")
    rec = statistics.median(rec_ms)
    ref_med = statistics.median(ref_ms)
    return {
        "spaces": n_spaces,
        "aisles": layout.n_aisles,
        "update_p50_us": round(percentile(upd_ns, 50) / 1000, 2),
        "update_p99_us": round(percentile(upd_ns, 99) / 1000, 2),
        "assign_p50_us": round(percentile(asg_ns, 50) / 1000, 2),
        "assign_p99_us": round(percentile(asg_ns, 99) / 1000, 2),
        "recompute_ms": round(rec, 3),
        "reference_recompute_ms": round(ref_med, 1),
        "speedup": round(ref_med / rec, 1),
        "recompute_over_update_p99": round(rec * 1000 / (percentile(upd_ns, 99) / 1000), 1),
    }


def main() -> int:
    results = [bench_size(n) for n in SIZES]
    print(
        json.dumps(
            {
                "bench": "allocation",
                "results": results,
                "note": (
                    "update_* include keeping best() and line counts current (eager); "
                    "medians/percentiles of single calls; 16 entrances, 8 classes, 200 lines"
                ),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
