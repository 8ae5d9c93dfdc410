"""High availability on a real cluster: the chart's two operator replicas elect a leader on a
coordination.k8s.io/v1 Lease; exactly one reconciles; a crashed leader (SIGKILL, no chance to say
goodbye) is replaced once its Lease runs out, and a stopped one (SIGTERM) hands over at once.

The figures measured are printed (run with -s to see them) and attached to the test reports as
user properties.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import (E2E_STATE, RELEASE, RELEASE_NAMESPACE, get_json, kubectl, kubectl_wait_ready,
                          model_deployment, operator_log, wait_for)
from e2e.test_operator import simple_store
from modeldeploy.leader import LEASE_DURATION_SECONDS, RETRY_PERIOD_SECONDS

LEASE_NAME = RELEASE  # the chart passes its full name: release "modeldeploy" -> "modeldeploy"
SELECTOR = f"app.kubernetes.io/name=modeldeploy,app.kubernetes.io/instance={RELEASE}"
# A standby takes a crashed leader's Lease at most a lease duration after the leader's last renewal
# (which came before the kill); a second more for the standby's write and this test's 0.2 s polling.
CRASH_TAKEOVER_BOUND = LEASE_DURATION_SECONDS + 1.0
GRACEFUL_HANDOVER_BOUND = 8.0


def lease() -> dict[str, Any]:
    return get_json("lease", LEASE_NAME, "-n", RELEASE_NAMESPACE) or {}


def holder() -> str:
    return (lease().get("spec") or {}).get("holderIdentity") or ""


def pod_of(identity: str) -> str:
    """Identities are <pod name>_<random suffix>."""
    return identity.rpartition("_")[0]


def operator_pods() -> list[dict[str, Any]]:
    """The operator's pods that run and are not being deleted."""
    items = (get_json("pods", "-n", RELEASE_NAMESPACE, "-l", SELECTOR) or {}).get("items", [])
    return [p for p in items if not p["metadata"].get("deletionTimestamp")
            and p.get("status", {}).get("phase") == "Running"
            and all(c.get("ready") for c in p["status"].get("containerStatuses") or [{}])]


def healthz(pod: str) -> str:
    """/healthz of one replica, through the API server's pod proxy."""
    answer = kubectl("get", "--raw", f"/api/v1/namespaces/{RELEASE_NAMESPACE}/pods/{pod}:8080/proxy/healthz",
                     check=False)
    return answer.stdout.strip() if answer.returncode == 0 else f"error: {answer.stderr.strip()}"


def leader_gauge(pod: str) -> str:
    answer = kubectl("get", "--raw", f"/api/v1/namespaces/{RELEASE_NAMESPACE}/pods/{pod}:8080/proxy/metrics",
                     check=False)
    return next((line for line in answer.stdout.splitlines() if line.startswith("modeldeploy_leader ")), "")


def settled() -> tuple[str, list[str]]:
    """Wait for two running replicas, one of which holds the Lease and says so, the other standing by."""
    def check() -> tuple[str, list[str]] | None:
        names = sorted(p["metadata"]["name"] for p in operator_pods())
        identity = holder()
        if len(names) != 2 or pod_of(identity) not in names:
            return None
        bodies = {name: healthz(name) for name in names}
        expected = {name: "ok: leader" if name == pod_of(identity) else "ok: standby" for name in names}
        return (identity, names) if bodies == expected else None

    return wait_for("two operator replicas, one leading and one standing by", check, timeout=180)


def report(request: pytest.FixtureRequest, name: str, seconds: float) -> None:
    request.node.user_properties.append((name, round(seconds, 2)))
    print(f"\nFAILOVER {name}: {seconds:.2f} s")


def containerd_socket() -> Path | None:
    if not E2E_STATE or shutil.which("ctr") is None or os.geteuid() != 0:
        return None
    socket = Path(E2E_STATE) / "containerd" / "containerd.sock"
    return socket if socket.exists() else None


def test_two_replicas_run_and_exactly_one_holds_the_lease(operator_release):
    identity, names = settled()
    spec = lease()["spec"]
    assert spec["leaseDurationSeconds"] == LEASE_DURATION_SECONDS and spec.get("renewTime")
    leader = pod_of(identity)
    assert leader_gauge(leader) == "modeldeploy_leader 1.0"
    (standby,) = [n for n in names if n != leader]
    assert leader_gauge(standby) == "modeldeploy_leader 0.0"
    # The leader renews every retry period; the standby never writes the Lease while it is held.
    first = spec["renewTime"]
    wait_for("a renewal", lambda: lease()["spec"]["renewTime"] != first, timeout=3 * RETRY_PERIOD_SECONDS)
    assert holder() == identity
    # Both replicas' logs say what they are.
    logs = kubectl("logs", "-n", RELEASE_NAMESPACE, "-l", SELECTOR, "--prefix", "--tail=-1", check=False).stdout
    assert f"leader election: {identity} leads now" in logs
    assert "stands by for the Lease" in logs


def test_a_killed_leader_is_replaced_and_the_change_made_meanwhile_is_reconciled(namespace, request):
    """SIGKILL of the leader's process from the node: no release, the Lease must run out. Right after
    the kill a child is deleted; the new leader puts it back."""
    socket = containerd_socket()
    if socket is None:
        pytest.skip("needs the project's node and its containerd (root) to kill the leader's process")
    simple_store(namespace)
    kubectl("apply", "-f", "-", stdin=json.dumps(model_deployment("kept", namespace)))
    kubectl_wait_ready(namespace, "kept")
    identity, names = settled()
    leader = pod_of(identity)
    (standby,) = [n for n in names if n != leader]
    pod = get_json("pod", leader, "-n", RELEASE_NAMESPACE)
    (status,) = [c for c in pod["status"]["containerStatuses"] if c["name"] == "operator"]
    container = status["containerID"].partition("://")[2]

    killed = time.monotonic()
    subprocess.run(["ctr", "--address", str(socket), "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", container],
                   check=True, capture_output=True, text=True, timeout=30)
    kubectl("delete", "service", "kept", "-n", namespace, "--wait=false")
    new = wait_for("another replica to take the Lease", lambda: holder() not in ("", identity) and holder(),
                   timeout=CRASH_TAKEOVER_BOUND + 10, interval=0.2)
    takeover = time.monotonic() - killed
    wait_for("the deleted Service to come back", lambda: get_json("service", "kept", "-n", namespace),
             timeout=30, interval=0.2)
    repaired = time.monotonic() - killed
    report(request, "sigkill_takeover_seconds", takeover)
    report(request, "sigkill_service_repaired_seconds", repaired)
    assert pod_of(new) == standby, "the standby, not the restarted container, took over"
    assert takeover <= CRASH_TAKEOVER_BOUND, operator_log()
    assert repaired - takeover < 10, operator_log()
    kubectl_wait_ready(namespace, "kept")
    # The killed container restarts in its pod as a new candidate, and stands by.
    identity, _ = settled()
    assert identity == new


def test_a_gracefully_stopped_leader_hands_over_in_about_two_seconds(operator_release, request):
    identity, names = settled()
    leader = pod_of(identity)
    (standby,) = [n for n in names if n != leader]
    started = time.monotonic()
    kubectl("delete", "pod", leader, "-n", RELEASE_NAMESPACE, "--wait=false")
    new = wait_for("the standby to take the released Lease", lambda: holder() not in ("", identity) and holder(),
                   timeout=30, interval=0.1)
    handover = time.monotonic() - started
    report(request, "graceful_handover_seconds", handover)
    assert pod_of(new) == standby
    assert handover < GRACEFUL_HANDOVER_BOUND, operator_log()
    # The Deployment replaces the deleted pod: two replicas again, the new one standing by.
    settled()


def operator_restarts() -> dict[str, int]:
    items = (get_json("pods", "-n", RELEASE_NAMESPACE, "-l", SELECTOR) or {}).get("items", [])
    return {p["metadata"]["name"]: sum(c.get("restartCount", 0) for c in p["status"].get("containerStatuses") or [])
            for p in items if not p["metadata"].get("deletionTimestamp")}


def running(pid: int) -> bool:
    """Alive, and not a zombie waiting for a parent that is gone to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def restart_api_server(down_seconds: float) -> None:
    """Stop the e2e cluster's kube-apiserver (etcd keeps the data) and start it again as it was."""
    state = Path(E2E_STATE or "") / "cluster"
    pid = int((state / "kube-apiserver.pid").read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    # SIGKILL, as a crash or an OOM kill would: on SIGTERM it drains long-running watches for over a minute.
    os.kill(pid, 9)
    wait_for("the API server to stop", lambda: not running(pid), timeout=30, interval=0.2)
    time.sleep(down_seconds)
    with open(state / "apiserver.log", "ab") as log:
        process = subprocess.Popen([a.decode() for a in argv], cwd=state, stdout=log, stderr=log,
                                   start_new_session=True)
    (state / "kube-apiserver.pid").write_text(f"{process.pid}\n")  # so `cluster down` stops it
    wait_for("the API server to serve again", lambda: kubectl("get", "--raw", "/readyz", check=False).returncode == 0,
             timeout=120, interval=0.5)


def test_the_operator_recovers_from_an_api_server_restart_without_restarting(namespace, request):
    """The API server goes away for 15 s (longer than the renew deadline, so the leader steps down)
    and comes back: within 30 s the operator leads again and repairs a change, with no pod restart."""
    if not E2E_STATE:
        pytest.skip("needs the project's e2e cluster (its API server's pid file)")
    settled()
    simple_store(namespace)
    kubectl("apply", "-f", "-", stdin=json.dumps(model_deployment("apiserver", namespace)))
    kubectl_wait_ready(namespace, "apiserver")
    restarts = operator_restarts()
    restart_api_server(down_seconds=15)
    back = time.monotonic()
    kubectl("delete", "service", "apiserver", "-n", namespace, "--wait=false")
    wait_for("the Service to be repaired after the restart", lambda: get_json("service", "apiserver", "-n", namespace),
             timeout=30, interval=0.5)
    recovered = time.monotonic() - back
    report(request, "apiserver_restart_recovery_seconds", recovered)
    assert recovered <= 30, operator_log()
    assert operator_restarts() == restarts, "an operator container restarted"
    identity, _ = settled()
    assert identity


def test_a_triton_pod_killed_mid_rollout_does_not_stop_the_rollout(namespace):
    simple_store(namespace)
    kubectl("apply", "-f", "-", stdin=json.dumps(model_deployment("midroll", namespace, replicas=2)))
    kubectl_wait_ready(namespace, "midroll")
    kubectl("patch", "md", "midroll", "-n", namespace, "--type=merge", "-p",
            json.dumps({"spec": {"model": {"version": "2"}}}))

    def new_pod() -> str | None:
        items = (get_json("pods", "-n", namespace, "-l", "app.kubernetes.io/instance=midroll") or {}).get("items", [])
        return next((p["metadata"]["name"] for p in items if not p["metadata"].get("deletionTimestamp")
                     and p["metadata"]["labels"].get("app.kubernetes.io/version") == "2"), None)

    victim = wait_for("a pod of version 2", new_pod, timeout=60, interval=0.2)
    kubectl("delete", "pod", victim, "-n", namespace, "--grace-period=0", "--force", "--wait=false")
    wait_for("version 2 to serve on every pod", lambda: (get_json("md", "midroll", "-n", namespace) or {}).get(
        "status", {}).get("currentVersion") == "2", timeout=180)
    kubectl_wait_ready(namespace, "midroll")
    md = get_json("md", "midroll", "-n", namespace)
    assert md["status"]["rollout"]["phase"] == "Idle" and not md["status"]["rollout"].get("failedTemplate"), md


# Ten leader kills, each at a random moment after a create, a version rollout or a delete.
DRILL = (("create", "a", "1"), ("create", "b", "1"), ("create", "c", "1"), ("rollout", "a", "2"),
         ("rollout", "b", "2"), ("delete", "c", ""), ("create", "d", "1"), ("rollout", "d", "2"),
         ("delete", "a", ""), ("rollout", "b", "1"))


def test_ten_leader_kills_during_creates_rollouts_and_deletes_leave_everything_converged(namespace, request):
    """Each step changes a ModelDeployment, waits a random 0-2 s (the leader is mid-reconcile or
    not), then SIGKILLs the leader's process (no release: the Lease must run out) and deletes its pod,
    so that a fresh pod, not a restart in back-off, becomes the next standby. The standby finishes.
    In the end every object has converged, with exactly its own children and none of the deleted ones'."""
    socket = containerd_socket()
    if socket is None:
        pytest.skip("needs the project's node and its containerd (root) to kill the leader's process")
    simple_store(namespace)
    rng = random.Random(int(os.environ.get("MODELDEPLOY_E2E_DRILL_SEED", "8")))
    versions: dict[str, str] = {}
    takeovers: list[float] = []
    for action, name, version in DRILL:
        identity, _ = settled()
        if action == "create":
            kubectl("apply", "-f", "-", stdin=json.dumps(model_deployment(name, namespace)))
        elif action == "rollout":
            kubectl("patch", "md", name, "-n", namespace, "--type=merge", "-p",
                    json.dumps({"spec": {"model": {"version": version}}}))
        else:
            kubectl("delete", "md", name, "-n", namespace, "--wait=false")
        if version:
            versions[name] = version
        else:
            versions.pop(name, None)
        pod = get_json("pod", pod_of(identity), "-n", RELEASE_NAMESPACE)
        (status,) = [c for c in pod["status"]["containerStatuses"] if c["name"] == "operator"]
        time.sleep(rng.uniform(0, 2))
        killed = time.monotonic()
        subprocess.run(["ctr", "--address", str(socket), "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL",
                        status["containerID"].partition("://")[2]], check=True, capture_output=True, timeout=30)
        kubectl("delete", "pod", pod_of(identity), "-n", RELEASE_NAMESPACE, "--wait=false")
        wait_for("another replica to take the Lease", lambda: holder() not in ("", identity) and holder(),
                 timeout=CRASH_TAKEOVER_BOUND + 10, interval=0.2)
        takeovers.append(time.monotonic() - killed)
    report(request, "drill_min_takeover_seconds", min(takeovers))
    report(request, "drill_max_takeover_seconds", max(takeovers))

    for name, version in versions.items():
        wait_for(f"md/{name} to serve version {version}", lambda name=name, version=version: (
            get_json("md", name, "-n", namespace) or {}).get("status", {}).get("currentVersion") == version,
            timeout=180)
        kubectl_wait_ready(namespace, name)

    def children(kind: str) -> dict[str, list[str]]:
        items = (get_json(kind, "-n", namespace) or {}).get("items", [])
        owned: dict[str, list[str]] = {}
        for item in items:
            for ref in item["metadata"].get("ownerReferences") or []:
                owned.setdefault(ref["name"], []).append(item["metadata"]["name"])
        return owned

    uids = {name: get_json("md", name, "-n", namespace)["metadata"]["uid"] for name in versions}
    for kind in ("deployments", "services"):
        owned = wait_for(f"{kind} of exactly the remaining objects", lambda kind=kind: (
            lambda found: found if sorted(found) == sorted(versions) else None)(children(kind)), timeout=120)
        assert all(names == [name] for name, names in owned.items()), owned
        for item in (get_json(kind, "-n", namespace) or {}).get("items", []):
            (ref,) = item["metadata"]["ownerReferences"]
            assert ref["uid"] == uids[ref["name"]], item["metadata"]
    assert max(takeovers) <= CRASH_TAKEOVER_BOUND, takeovers
