"""Allocation core speed: single updates and assignments vs. a full recompute vs. the reference.

Prints one JSON line::

    {"bench": "allocation", "results": [{"spaces": 1000, "update_p50_us": ..., "update_p99_us": ...,
     "assign_p50_us": ..., "recompute_ms": ..., "reference_recompute_ms": ..., "speedup": ...},
     ... 10000, 100000], "note": ...}

Synthetic layouts (``CoreLayout.synthetic``): 16 entrances, 200 display lines,
8 vehicle classes, aisles of 20-40 spaces, zones of about ten aisles, kinds and
time-window policies as on a residential site, about 80% of spaces occupied.

- ``update_*``: one ``core.update()`` of a random space to a random other state
  (a real change: a call that changes nothing is not timed). The core keeps
  best() current eagerly (best() afterwards is a lookup, plus a scan of the few
  congested aisles), and the line counts too, so this is the whole cost of one
  change.
- ``assign_*``: one ``core.assign()`` at a random entrance for a random class
  (arrivals one second apart, so the congestion of recent assignments is live;
  a few hundred aisles are congested at any time); after each assignment the car
  parks and a random space frees, so the site does not drain.
- ``recompute_ms``: ``core.recompute()`` then ``core.best_all()``, every answer the
  reference's recompute gives (the best space of all 16 x 8 pairs, congestion
  included, and every count); ``reference_recompute_ms``: the plain-Python
  reference's recompute of the same answers on the same state; ``speedup`` their
  ratio. Thread CPU time, runs interleaved (ten of ours per
  reference run), medians: on a machine shared by many jobs, wall time mostly
  measures the wait for a core. The wall-clock medians are reported beside
  (``*_wall_*``).

Percentiles of single calls are taken per round (5 rounds) and the median over
rounds is reported; the cyclic garbage collector is off while timing, as timeit
does. The reference and the core must agree on the final state, or the
benchmark fails.
"""

from __future__ import annotations

import gc
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
ROUNDS = 5
UPDATES = 4000  # per round
ASSIGNS = 400  # per round
MINUTE = 12 * 60 + 30
STATE_P = {OCCUPIED: 0.80, FREE: 0.17, UNKNOWN: 0.02, CLOSED: 0.01}


def initial_state(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice(list(STATE_P), size=n, p=list(STATE_P.values())).astype(np.int8)


def other_state(current: int, u: float, states: np.ndarray, probs: np.ndarray) -> int:
    """A state other than ``current``, drawn from ``probs`` without it (``u`` uniform)."""
    p = np.where(states == current, 0.0, probs)
    return int(
        states[min(int(np.searchsorted(np.cumsum(p) / p.sum(), u, side="right")), len(p) - 1)]
    )


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def rounds_percentiles(samples_ns: list[list[int]], q: float) -> float:
    """Median over rounds of each round's q-th percentile, in microseconds."""
    return statistics.median(percentile(r, q) for r in samples_ns) / 1000


def bench_size(n_spaces: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    tables = CoreLayout.synthetic_tables(n_spaces, 16, 8, 200, seed=seed)
    layout = CoreLayout.from_arrays(**tables)
    core = AllocationCore(layout, MINUTE)
    state0 = initial_state(rng, n_spaces)
    core.update_many(np.arange(n_spaces), state0, 0.0)
    now = 1.0
    clock = time.perf_counter_ns
    states = np.array(list(STATE_P), dtype=np.int64)
    probs = np.array(list(STATE_P.values()))
    upd_rounds: list[list[int]] = []
    asg_rounds: list[list[int]] = []
    gc.disable()  # as timeit does: a cyclic collection is not the core's cost
    try:
        for _ in range(ROUNDS):
            # single updates: random space -> random state (the mix stays ~80% occupied)
            # each to a state other than its own: a change (the draw is conditioned on
            # differing from the current state, so the mix stays as it is)
            spaces = rng.integers(0, n_spaces, UPDATES).tolist()
            draws = rng.random(UPDATES).tolist()
            upd_ns = []
            for s, u in zip(spaces, draws, strict=True):
                x = other_state(int(core.state[s]), u, states, probs)
                t0 = clock()
                core.update(s, x, now)
                upd_ns.append(clock() - t0)
                now += 0.001
            upd_rounds.append(upd_ns)
            # assignments: one arrival per second at a random gate for a random class;
            # the car parks and somebody else leaves, so the site does not drain
            asg_ns = []
            ents = rng.integers(0, layout.n_entrances, ASSIGNS).tolist()
            classes = rng.integers(0, layout.public_classes, ASSIGNS).tolist()
            for e, c in zip(ents, classes, strict=True):
                now += 1.0
                t0 = clock()
                s = core.assign(e, c, now, 120.0)
                asg_ns.append(clock() - t0)
                if s >= 0:
                    core.update(s, OCCUPIED, now)
                    core.update(int(rng.integers(n_spaces)), FREE, now)
            asg_rounds.append(asg_ns)
    finally:
        gc.enable()

    # full recompute, ours and the reference's, on the same state (holds and congestion
    # included), interleaved so both see the same machine; thread CPU time, so time spent
    # waiting for a core on this shared machine is not counted (wall figures beside)
    ref = ReferenceAllocator(**tables, minute_of_day=MINUTE)
    ref.state = core.state.astype(int).tolist()
    ref.held = {int(s): float(u) for s, u in core.holds.items()}
    ref.congestion = dict(core.congestion_state())
    ref.now = core.now
    ref_reps = 7 if n_spaces <= 10000 else 5
    ours_per_ref = 10
    rec_cpu, rec_wall, ref_cpu, ref_wall = [], [], [], []
    want = None
    for _ in range(ref_reps):
        for _ in range(ours_per_ref):
            w0, c0 = time.perf_counter(), time.thread_time()
            core.recompute()
            core.best_all()
            rec_cpu.append((time.thread_time() - c0) * 1000)
            rec_wall.append((time.perf_counter() - w0) * 1000)
        w0, c0 = time.perf_counter(), time.thread_time()
        want = ref.recompute()
        ref_cpu.append((time.thread_time() - c0) * 1000)
        ref_wall.append((time.perf_counter() - w0) * 1000)
    # the two agree on this state (a benchmark of a wrong answer is worthless)
    assert want is not None
    if (
        core.best_all().tolist() != want["best"]
        or core.line_free.tolist() != want["line_free"]
        or core.zone_counts().tolist() != want["zone_counts"]
    ):
        raise SystemExit(f"core and reference disagree at {n_spaces} spaces")
    rec = statistics.median(rec_cpu)
    ref_med = statistics.median(ref_cpu)
    update_p99 = rounds_percentiles(upd_rounds, 99)
    return {
        "spaces": n_spaces,
        "aisles": layout.n_aisles,
        "update_p50_us": round(rounds_percentiles(upd_rounds, 50), 2),
        "update_p99_us": round(update_p99, 2),
        "assign_p50_us": round(rounds_percentiles(asg_rounds, 50), 2),
        "assign_p99_us": round(rounds_percentiles(asg_rounds, 99), 2),
        "recompute_ms": round(rec, 3),
        "reference_recompute_ms": round(ref_med, 1),
        "speedup": round(ref_med / rec, 1),
        "recompute_over_update_p99": round(rec * 1000 / update_p99, 1),
        "recompute_wall_ms": round(statistics.median(rec_wall), 3),
        "reference_recompute_wall_ms": round(statistics.median(ref_wall), 1),
        "speedup_wall": round(statistics.median(ref_wall) / statistics.median(rec_wall), 1),
    }


def main() -> int:
    results = [bench_size(n) for n in SIZES]
    print(
        json.dumps(
            {
                "bench": "allocation",
                "results": results,
                "note": (
                    "16 entrances, 8 classes, 200 lines, ~80% occupied. update_*/assign_*: "
                    "wall time of single calls, each a real state change (best() and line "
                    "counts are kept current eagerly, so update_* is the whole cost of a "
                    "change), percentile per "
                    "round, median of 5 rounds, gc off while timing. recompute_ms and "
                    "reference_recompute_ms: median thread CPU time (ours: recompute() and "
                    "best_all(), every answer the reference gives), runs interleaved; "
                    "*_wall_* the same in wall time."
                ),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
