"""The e2e cluster's Service data path (e2e/env/service_proxy.py, started by e2e/env/cluster up): new
connections from this machine to a Service's ClusterIP:port spread evenly over its *ready* endpoints, an
endpoint that turns unready stops getting them within seconds, a pod reaches its own Service, and a
Service without a ready endpoint refuses at once. Canary and blue-green tests count requests per model
version through Services on the strength of this.

The figures measured are printed (run with -s to see them).
"""

from __future__ import annotations

import http.client
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.conftest import E2E_STATE, apply, delete_namespace, get_json, kubectl, needs_project_node, wait_for

IMAGE = os.environ.get("MODELDEPLOY_E2E_TRITON_IMAGE", "nvcr.io/nvidia/tritonserver:24.08-py3")
PODS = ("echo-a", "echo-b")
REQUESTS = 60
# An HTTP server that answers with its pod's name, ready while /state/ready exists. HTTP/1.0: every
# answer closes its connection, so every request is a new connection that the proxy's rules place.
SERVER = """
import http.server, os
NAME, READY = os.environ["POD_NAME"], "/state/ready"
open(READY, "w").close()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path != "/ready" or os.path.exists(READY)
        body = (NAME if ok else "unready").encode()
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("", 8080), Handler).serve_forever()
"""


def echo_pod(namespace: str, name: str) -> dict:
    security = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
                "runAsUser": 1000, "runAsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"},
                "readOnlyRootFilesystem": True}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": "echo"}},
            "spec": {"terminationGracePeriodSeconds": 1, "automountServiceAccountToken": False,
                     "containers": [{
                         "name": "echo", "image": IMAGE, "imagePullPolicy": "Never",
                         "command": ["/usr/bin/python3", "-c", SERVER],
                         "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                         "ports": [{"name": "http", "containerPort": 8080}],
                         "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1,
                                            "failureThreshold": 1},
                         "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
                         "securityContext": security,
                         "volumeMounts": [{"name": "state", "mountPath": "/state"}]}],
                     "volumes": [{"name": "state", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}]}}


def ask(ip: str, port: int, timeout: float = 2.0) -> str:
    """One GET on a new TCP connection: the answering pod's name, or "error: ..."."""
    conn = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read().decode()
    except OSError as e:
        return f"error: {e}"
    finally:
        conn.close()


def set_ready(namespace: str, pod: str, ready: bool) -> None:
    kubectl("exec", "-n", namespace, pod, "--", "/usr/bin/python3", "-c",
            "import os, sys; open(sys.argv[1], 'w').close() if sys.argv[2] == '1' else os.remove(sys.argv[1])",
            "/state/ready", "1" if ready else "0")


def proxy_log() -> str:
    log = Path(E2E_STATE or "") / "service-proxy.log"
    return log.read_text()[-3000:] if log.is_file() else f"(no {log})"


def context(namespace: str) -> str:
    """What a person would look at when these tests fail."""
    objects = kubectl("get", "pods,svc,endpointslices", "-n", namespace, "-o", "wide", check=False).stdout
    return f"{objects}\n--- service proxy log (tail) ---\n{proxy_log()}"


def ready_endpoints(namespace: str) -> list[str]:
    slices = get_json("endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=echo") or {}
    return sorted(ep.get("targetRef", {}).get("name", "?") for s in slices.get("items", [])
                  for ep in s.get("endpoints") or [] if ep.get("conditions", {}).get("ready"))


@pytest.fixture(scope="module")
def echo() -> Iterator[tuple[str, str, int]]:
    """Namespace, ClusterIP and port of Service `echo` in front of pods echo-a and echo-b (both ready)."""
    needs_project_node()  # this machine reaches ClusterIPs on the project's own node, through the proxy
    pidfile = Path(E2E_STATE or "") / "service-proxy.pid"
    pid = int(pidfile.read_text()) if pidfile.is_file() else 0
    assert pid and Path(f"/proc/{pid}").exists(), \
        f"the Service proxy is not running ({pidfile}): e2e/env/cluster up starts e2e/env/service_proxy.py"
    namespace = f"md-e2e-svc-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", namespace)
    try:
        for name in PODS:
            apply(echo_pod(namespace, name))
        # targetPort by name: the proxy must match the EndpointSlice's port by the Service port's name.
        apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": namespace},
               "spec": {"selector": {"app": "echo"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}})
        wait_for("both pods ready in the Service's EndpointSlice", lambda: ready_endpoints(namespace) == list(PODS),
                 timeout=120)
        ip = (get_json("svc", "echo", "-n", namespace) or {})["spec"]["clusterIP"]
        yield namespace, ip, 80
    finally:
        delete_namespace(namespace)


def both_ready(namespace: str, ip: str, port: int) -> None:
    for pod in PODS:
        set_ready(namespace, pod, True)
    wait_for("both pods to answer through the Service", lambda: {ask(ip, port) for _ in range(20)} == set(PODS),
             timeout=30)


def test_new_connections_spread_evenly_over_the_ready_endpoints(echo):
    namespace, ip, port = echo
    both_ready(namespace, ip, port)
    answers = Counter(ask(ip, port) for _ in range(REQUESTS))
    print(f"\n{REQUESTS} requests to {ip}:{port}, each on a new connection: {dict(answers)}")
    # Each pod's count is Binomial(60, 1/2): one of them below 15 with probability 4e-5.
    assert set(answers) == set(PODS) and min(answers.values()) >= 15, f"{answers}\n{context(namespace)}"


def test_an_unready_endpoint_stops_getting_new_connections_within_seconds(echo):
    namespace, ip, port = echo
    both_ready(namespace, ip, port)
    try:
        start = time.monotonic()
        set_ready(namespace, "echo-a", False)
        answers: list[tuple[float, str]] = []
        # Settled: 60 answers in a row from echo-b (by chance alone, 1 in 10^18 while echo-a is in).
        while time.monotonic() - start < 30 and [a for _, a in answers[-REQUESTS:]] != ["echo-b"] * REQUESTS:
            answers.append((time.monotonic() - start, ask(ip, port)))
            time.sleep(0.005)
        last_a = max((t for t, a in answers if a == "echo-a"), default=0.0)
        errors = [(round(t, 2), a) for t, a in answers if a not in PODS]
        print(f"\necho-a made unready: its last answer {last_a:.2f} s after (the readiness probe runs every 1 s), "
              f"{len(answers)} requests meanwhile, {len(errors)} failed")
        assert [a for _, a in answers[-REQUESTS:]] == ["echo-b"] * REQUESTS, \
            f"echo-a still answers 30 s after it turned unready: {Counter(a for _, a in answers)}\n{context(namespace)}"
        assert last_a < 10, f"echo-a answered until {last_a:.1f} s after it turned unready\n{context(namespace)}"
        # echo-a still serves while unready, and every rule change is atomic: no request fails, ever.
        assert not errors, f"{errors[:10]}\n{context(namespace)}"
    finally:
        both_ready(namespace, ip, port)  # and back: a pod that is ready again gets its share again


def test_a_pod_reaches_its_own_service(echo):
    """Pod-originated traffic (nat PREROUTING), including to itself (hairpin: masqueraded); and the API
    server's Service (10.96.0.1:443, which e2e/env/cluster routes, not the proxy) still answers pods."""
    namespace, ip, port = echo
    both_ready(namespace, ip, port)
    script = ("import json, socket, sys, urllib.request\n"
              "socket.create_connection(('10.96.0.1', 443), timeout=2).close()\n"
              "print(json.dumps([urllib.request.urlopen(f'http://{sys.argv[1]}/', timeout=2).read().decode()"
              " for _ in range(20)]))")
    out = kubectl("exec", "-n", namespace, "echo-b", "--", "/usr/bin/python3", "-c", script, f"{ip}:{port}").stdout
    answers = Counter(json.loads(out))
    print(f"\n20 requests from echo-b to {ip}:{port}: {dict(answers)}")
    # Each pod is missed by chance alone with probability 2^-20.
    assert set(answers) == set(PODS), f"{answers}\n{context(namespace)}"


def test_a_service_without_ready_endpoints_refuses_at_once(echo):
    namespace, ip, port = echo
    both_ready(namespace, ip, port)
    try:
        for pod in PODS:
            set_ready(namespace, pod, False)
        wait_for("the Service to refuse connections", lambda: ask(ip, port).startswith("error"), timeout=30,
                 interval=0.1)
        started = time.monotonic()
        answer = ask(ip, port, timeout=5)
        took = time.monotonic() - started
        # Rejected on this machine (tcp-reset), not sent out of it to time out.
        assert "refused" in answer and took < 1, f"{answer!r} after {took:.2f} s\n{context(namespace)}"
    finally:
        both_ready(namespace, ip, port)
