"""Time from a bad canary going live to its abort, on the real e2e cluster (issue 9).

    .venv/bin/python bench/canary_abort.py --runs 3 --interval 10 --out /tmp/canary-abort.json

Needs the project's e2e cluster (`e2e/env/cluster up`, as root, then `source <(e2e/env/cluster env)`). The
operator is installed as users install it (the chart, two replicas, its RBAC). Each run, in a namespace of its
own: `simple` version 1 on 4 pods with a Canary of `setWeight 25` → `analysis {intervalSeconds}` →
`setWeight 50` → analysis (e2e/test_progressive.py's), inference traffic through the Service (e2e/traffic.py, two clients, a new connection per
request), then version 3, whose `execute` fails every fifth call. Measured, by polling every 0.2 s:

- live: the canary's pod is Ready (from then on the Service sends it a share of the traffic);
- aborted: `status.rollout.phase` is Aborted (the decision is made and written);
- drained: the canary has no ready pod left, so the Service sends it nothing;
- failed requests the clients saw between live and drained (those the canary failed).

Prints a table and writes every run to --out as JSON. A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "operator"))

from e2e.conftest import OPERATOR_IMAGE, delete_namespace, install_operator, kubectl  # noqa: E402
from e2e.test_progressive import canary_under_load, ready_pods_by_version, rollout_status  # noqa: E402
from e2e.traffic import failures  # noqa: E402

POLL_SECONDS = 0.2


def wait(what: str, check: Any, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"{what} not within {timeout:.0f} s")


def one_run(interval: int) -> dict[str, Any]:
    namespace = f"md-bench-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", namespace)
    try:
        with canary_under_load(namespace, "3", {"intervalSeconds": interval}) as (_, load):
            live = wait("the canary's pod Ready", lambda: ready_pods_by_version(namespace).get("3"), 240)
            aborted = wait("the abort", lambda: rollout_status(namespace).get("phase") == "Aborted", 240)
            drained = wait("the canary's pods out of the Service",
                           lambda: "3" not in ready_pods_by_version(namespace), 120)
            failed = failures(load.since(live, drained))
        status = rollout_status(namespace)
        return {"interval_seconds": interval, "live_to_abort_s": round(aborted - live, 2),
                "live_to_drained_s": round(drained - live, 2), "failed_requests": len(failed),
                "abort_reason": status.get("abortReason"),
                "analysis": {k: status.get("analysis", {}).get(k) for k in ("step", "verdict", "canary", "stable")}}
    finally:
        delete_namespace(namespace)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--interval", type=int, default=10, help="the analysis step's intervalSeconds (≥ 10)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not OPERATOR_IMAGE:
        sys.exit("source <(e2e/env/cluster env) first: the benchmark runs on the project's e2e cluster")
    install_operator()
    runs = [one_run(args.interval) for _ in range(args.runs)]
    for i, run in enumerate(runs, 1):
        print(f"run {i}: live → aborted {run['live_to_abort_s']:6.2f} s, live → drained {run['live_to_drained_s']:6.2f} s,"
              f" {run['failed_requests']} failed requests, {run['abort_reason']}")
    median = statistics.median(r["live_to_abort_s"] for r in runs)
    print(f"median live → aborted: {median:.2f} s with an analysis interval of {args.interval} s")
    if args.out:
        args.out.write_text(json.dumps({
            "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": platform.machine(),
            "operator_image": OPERATOR_IMAGE, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
