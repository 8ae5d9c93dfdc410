"""Scale benchmark on the real control plane (issue 10): N ModelDeployments on the e2e cluster.

    .venv/bin/python bench/scale.py --n 100 --replicas 1 --out /tmp/scale-100.json
    .venv/bin/python bench/scale.py --n 1000 --replicas 0 --out /tmp/scale-1000.json

Needs the project's e2e cluster (`e2e/env/cluster up`, as root): its env file gives KUBECONFIG and
the operator image, its API server's pid file lets the audit log be switched on. What it measures,
in one run:

1. the floor: the children the operator would create for the N objects (`modeldeploy render`,
   ownerReferences stripped) applied with `kubectl apply --server-side`, timed until they are as
   ready as the operator's objects must be (replicas > 0: every Deployment complete with all its
   pods ready, as `kubectl rollout status` judges; replicas 0: every child exists);
2. the operator, installed as users install it (`helm upgrade --install` of charts/modeldeploy, two
   replicas, the chart's RBAC): the N ModelDeployments applied the same way, timed until every one is
   Ready (replicas > 0) or reconciled (replicas 0: status.observedGeneration == metadata.generation and
   every child exists). Both times are taken from watch events, not polls;
3. steady state: once the leader has gone 10 s without a reconcile (or after --quiet-timeout), and a
   settle period, the operator's API requests per second over a window, from
   the API server's audit log (the API server is restarted with its own command line plus an audit
   policy that logs the operator's ServiceAccount at Metadata level, and restored at the end), split
   into what reconciles do (ModelDeployments, children, pods), the Lease, watches and events, with
   writes counted apart, and for the leader and the standby apart (by source IP);
4. the operator's RSS: every 2 s, each replica's container (its cgroup's processes' VmRSS, from /proc,
   the pid found through containerd), idle, during the creation and in steady state;
5. one resync pass: the leader is deleted (a graceful handover); the new leader reconciles every known
   object once, exactly what the 10-minute resync does, and its requests are counted until it has
   made N reconciles. Amortised over
   the resync period that is what the resync adds to the steady-state rate.

Cleans up after itself (namespaces, PVs, the Helm release and its Lease, the API server's original
command line), prints a summary table and writes everything to --out as JSON. A benchmark, not a
test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import http.client
import json
import os
import platform
import shlex
import signal
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "modeldeploy"
DEFAULT_ENV_FILE = Path(os.environ.get("MODELDEPLOY_E2E_STATE", "/var/tmp/modeldeploy-e2e")) / "env"
RELEASE = "modeldeploy"
RELEASE_NAMESPACE = "modeldeploy-system"
OPERATOR_SA = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}"
OPERATOR_SELECTOR = f"app.kubernetes.io/name=modeldeploy,app.kubernetes.io/instance={RELEASE}"
RESYNC_SECONDS = 600.0  # operator.RESYNC_SECONDS
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
RECONCILE_RESOURCES = {"modeldeployments", "deployments", "services", "horizontalpodautoscalers",
                       "poddisruptionbudgets", "pods", "servicemonitors", "secrets", "persistentvolumeclaims"}


def log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_cluster_env(env_file: Path) -> None:
    """The variables `e2e/env/cluster env` prints, unless already set."""
    if not env_file.exists():
        return
    for line in env_file.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export "):].partition("=")
            os.environ.setdefault(key, shlex.split(value)[0] if value else "")


# --- kubectl, helm ---------------------------------------------------------------------------------

def kubectl(*args: str, stdin: str | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(["kubectl", "--request-timeout=60s", *args], input=stdin, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()[:2000]}")
    return result


def helm(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    binary = Path(sys.executable).parent / "helm"
    result = subprocess.run([str(binary) if binary.exists() else "helm", *args], capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)}: {result.stderr.strip()[:2000]}")
    return result


def _app_key(files: list[tuple[Path, bytes]]) -> str:
    """e2e/env/images.py's tag of the operator image: a digest of operator/modeldeploy's paths and contents."""
    h = hashlib.sha256()
    ordered = sorted(files)
    for part in [str(path).encode() for path, _ in ordered] + [data for _, data in ordered]:
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _commit_files(commit: str) -> list[tuple[Path, bytes]]:
    """operator/modeldeploy's files at a commit (one `git cat-file --batch` for all blobs)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "-r", commit, "operator/modeldeploy"],
                            capture_output=True, text=True).stdout.splitlines()
    entries = [(line.split("\t", 1)[1], line.split()[2]) for line in listed if "\t" in line]
    batch = subprocess.run(["git", "-C", str(ROOT), "cat-file", "--batch"], capture_output=True,
                           input="".join(f"{blob}\n" for _, blob in entries).encode()).stdout
    files, at = [], 0
    for name, _ in entries:
        header_end = batch.index(b"\n", at)
        size = int(batch[at:header_end].split()[2])
        files.append((Path(name), batch[header_end + 1:header_end + 1 + size]))
        at = header_end + 1 + size + 1
    return files


def image_source(image: str) -> str:
    """Which operator code the image holds: its tag is e2e/env/images.py's digest of operator/modeldeploy,
    compared with the working tree's and with the last 30 commits'."""
    tag = image.rpartition(":")[2]
    tree = ROOT / "operator" / "modeldeploy"
    working = [(p.relative_to(ROOT), p.read_bytes()) for p in tree.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts]
    if _app_key(working) == tag:
        return "the working tree"
    commits = subprocess.run(["git", "-C", str(ROOT), "rev-list", "-n", "30", "HEAD"], capture_output=True,
                             text=True).stdout.split()
    for commit in commits:
        if _app_key(_commit_files(commit)) == tag:
            return f"commit {commit[:7]}"
    return "unknown (neither the working tree nor one of the last 30 commits)"


def operator_image_values(image: str) -> list[str]:
    """As e2e/conftest.py: the locally imported image, never pulled."""
    repository, _, tag = image.rpartition(":")
    return ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never"]


# --- a small API client (watches, for exact timings without polling) --------------------------------

class Api:
    """Token or client-certificate auth from the current context of a kubeconfig."""

    def __init__(self, kubeconfig: str) -> None:
        config = yaml.safe_load(Path(kubeconfig).read_text())
        context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        url = urllib.parse.urlparse(cluster["server"])
        self.host, self.port = url.hostname, url.port or 443
        self.ssl = ssl.create_default_context()
        self._tmp: list[str] = []
        if "certificate-authority" in cluster:
            self.ssl.load_verify_locations(cafile=cluster["certificate-authority"])
        elif "certificate-authority-data" in cluster:
            import base64  # noqa: PLC0415
            self.ssl.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        self.headers = {"Accept": "application/json"}
        if user.get("token"):
            self.headers["Authorization"] = f"Bearer {user['token']}"
        elif user.get("client-certificate"):
            self.ssl.load_cert_chain(user["client-certificate"], user["client-key"])

    def connection(self, timeout: float) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ssl, timeout=timeout)

    def get(self, path: str, timeout: float = 60) -> Any:
        conn = self.connection(timeout)
        try:
            conn.request("GET", path, headers=self.headers)
            response = conn.getresponse()
            body = response.read()
            if response.status == 404:
                return None
            if response.status >= 300:
                raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
            return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()
        finally:
            conn.close()


class Watch(threading.Thread):
    """List then watch one collection; every object seen goes to on_event(type, obj, monotonic time)."""

    def __init__(self, api: Api, path: str, on_event: Callable[[str, dict[str, Any], float], None]) -> None:
        super().__init__(daemon=True, name=f"watch {path}")
        self.api, self.path, self.on_event = api, path, on_event
        self.stopped = threading.Event()
        self.listed = threading.Event()
        self._conn: http.client.HTTPSConnection | None = None

    def stop(self) -> None:
        self.stopped.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(2)
            except OSError:
                pass

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                listing = self.api.get(self.path) or {"items": [], "metadata": {}}
                now = time.monotonic()
                for item in listing["items"]:
                    self.on_event("ADDED", item, now)
                self.listed.set()
                version = listing["metadata"].get("resourceVersion", "")
                query = urllib.parse.urlencode({"watch": "1", "resourceVersion": version, "timeoutSeconds": "290",
                                                "allowWatchBookmarks": "true"})
                self._conn = self.api.connection(timeout=330)
                self._conn.request("GET", f"{self.path}?{query}", headers=self.api.headers)
                response = self._conn.getresponse()
                if response.status != 200:
                    raise RuntimeError(f"watch {self.path}: {response.status}")
                while not self.stopped.is_set():
                    line = response.readline()
                    if not line:
                        break
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        break  # e.g. 410 Gone: list again
                    if event["type"] != "BOOKMARK":
                        self.on_event(event["type"], event["object"], time.monotonic())
            except Exception as error:  # noqa: BLE001 - a benchmark's watch retries whatever happens
                if not self.stopped.is_set():
                    log(f"watch {self.path} ended ({error}); listing again")
                    time.sleep(0.5)
            finally:
                if self._conn is not None:
                    self._conn.close()


class Tracker:
    """Objects by kind and name in one namespace; records when each name first satisfies `ready`."""

    def __init__(self, names: list[str], ready: Callable[[dict[str, dict[str, Any]], str], bool]) -> None:
        self.names = set(names)
        self.ready = ready
        self.objects: dict[str, dict[str, Any]] = defaultdict(dict)
        self.first_seen: dict[str, float] = {}
        self.ready_at: dict[str, float] = {}
        self.final: Callable[[dict[str, dict[str, Any]], str], bool] | None = None
        self.final_at: dict[str, float] = {}
        self.lock = threading.Lock()
        self.all_ready = threading.Event()

    def handler(self, kind: str) -> Callable[[str, dict[str, Any], float], None]:
        def on_event(kind_of_event: str, obj: dict[str, Any], at: float) -> None:
            name = obj["metadata"]["name"]
            with self.lock:
                if kind_of_event == "DELETED":
                    self.objects[kind].pop(name, None)
                    return
                self.objects[kind][name] = obj
                if kind == "primary":
                    self.first_seen.setdefault(name, at)
                if (self.final is not None and name in self.names and name not in self.final_at
                        and self.final(self.objects, name)):
                    self.final_at[name] = at
                if name in self.names and name not in self.ready_at and self.ready(self.objects, name):
                    self.ready_at[name] = at
                    if len(self.ready_at) == len(self.names):
                        self.all_ready.set()
        return on_event

    def count_ready(self) -> int:
        with self.lock:
            return len(self.ready_at)


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})


def children_exist(objects: dict[str, dict[str, Any]], name: str) -> bool:
    return name in objects["deployments"] and name in objects["services"]


def deployment_complete(deployment: dict[str, Any]) -> bool:
    """kubectl rollout status: the newest generation observed, every replica updated, ready and available."""
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    want = spec.get("replicas", 1)
    return (status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
            and status.get("updatedReplicas", 0) == want and status.get("replicas", 0) == want
            and status.get("readyReplicas", 0) == want and status.get("availableReplicas", 0) == want)


def floor_ready(replicas: int) -> Callable[[dict[str, dict[str, Any]], str], bool]:
    def ready(objects: dict[str, dict[str, Any]], name: str) -> bool:
        if not children_exist(objects, name):
            return False
        return replicas == 0 or deployment_complete(objects["deployments"][name])
    return ready


def operator_ready(replicas: int) -> Callable[[dict[str, dict[str, Any]], str], bool]:
    def ready(objects: dict[str, dict[str, Any]], name: str) -> bool:
        md = objects["primary"].get(name)
        if md is None or not children_exist(objects, name):
            return False
        if (md.get("status") or {}).get("observedGeneration") != md["metadata"].get("generation"):
            return False
        return replicas == 0 or condition(md, "Ready").get("status") == "True"
    return ready


def scaled_to_zero(objects: dict[str, dict[str, Any]], name: str) -> bool:
    """Replicas 0: the final status, Ready=False reason ScaledToZero for the current generation."""
    md = objects["primary"].get(name)
    ready = condition(md or {}, "Ready")
    return (md is not None and ready.get("reason") == "ScaledToZero"
            and ready.get("observedGeneration") == md["metadata"].get("generation"))


# --- the API server's audit log ---------------------------------------------------------------------

AUDIT_POLICY = f"""\
apiVersion: audit.k8s.io/v1
kind: Policy
# One event per request (ResponseComplete), and one when a watch starts (ResponseStarted).
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: ["{OPERATOR_SA}"]
- level: None
"""


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


class ApiServer:
    """Restart the e2e cluster's kube-apiserver with its own command line plus an audit log (as
    e2e/test_failover.py restarts it), and back as it was."""

    def __init__(self, cluster_state: Path, work: Path) -> None:
        self.state = cluster_state
        self.pidfile = cluster_state / "kube-apiserver.pid"
        self.audit_log = work / "audit.log"
        self.policy = work / "audit-policy.yaml"
        self.original: list[str] | None = None
        self._children: set[int] = set()

    def _argv(self) -> list[str]:
        pid = int(self.pidfile.read_text())
        return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")]

    def _restart(self, argv: list[str]) -> None:
        pid = int(self.pidfile.read_text())
        # SIGKILL, as test_failover does: on SIGTERM it drains long-running watches for over a minute.
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 30
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid in self._children:
            os.waitpid(pid, 0)  # ours (the audited one): reap it
        # The thread-group leader turns zombie before its other threads have closed the listener, so
        # a start right after the kill can fail with "address already in use": try again.
        for attempt in range(10):
            with open(self.state / "apiserver.log", "ab") as out:
                process = subprocess.Popen(argv, cwd=self.state, stdout=out, stderr=out, start_new_session=True)
            self._children.add(process.pid)
            self.pidfile.write_text(f"{process.pid}\n")  # so `cluster down` stops it
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and process.poll() is None:
                if kubectl("get", "--raw", "/readyz", check=False, timeout=30).returncode == 0:
                    return
                time.sleep(0.5)
            if process.poll() is None:
                break
            log(f"kube-apiserver exited at once ({process.returncode}, attempt {attempt + 1}); starting it again")
            time.sleep(1)
        raise RuntimeError("the API server did not come back; see " + str(self.state / "apiserver.log"))

    def enable_audit(self) -> None:
        argv = self._argv()
        # An earlier run that died before restoring leaves its flags: the original has none.
        self.original = [a for a in argv if not a.startswith("--audit-")]
        self.policy.write_text(AUDIT_POLICY)
        self.audit_log.unlink(missing_ok=True)
        log("restarting kube-apiserver with an audit log of the operator's ServiceAccount")
        self._restart([*self.original, f"--audit-policy-file={self.policy}", f"--audit-log-path={self.audit_log}",
                       "--audit-log-maxsize=4096", "--audit-log-format=json"])

    def restore(self) -> None:
        if self.original is None:
            return
        log("restoring kube-apiserver's original command line")
        self._restart(self.original)
        self.original = None


def epoch(timestamp: str) -> float:
    return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def read_audit(path: Path) -> list[dict[str, Any]]:
    """The operator's requests: one record per request, stamped when the API server received it. Reads
    the rotated files (audit-<time>.log) beside path too."""
    records: list[dict[str, Any]] = []
    for file in sorted(path.parent.glob(f"{path.stem}*{path.suffix}")):
        records.extend(_read_audit_file(file))
    return sorted(records, key=lambda r: r["t"])


def _read_audit_file(path: Path) -> list[dict[str, Any]]:
    records = []
    with path.open() as f:
        for line in f:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            verb, stage = event.get("verb", ""), event.get("stage")
            if (verb == "watch") != (stage == "ResponseStarted") or stage not in ("ResponseStarted", "ResponseComplete"):
                continue
            ref = event.get("objectRef") or {}
            pod = ((event["user"].get("extra") or {}).get("authentication.kubernetes.io/pod-name") or [""])[0]
            records.append({"t": epoch(event["requestReceivedTimestamp"]), "user": event["user"]["username"],
                            "pod": pod,
                            "verb": verb, "resource": ref.get("resource", ""), "subresource": ref.get("subresource", ""),
                            "ip": (event.get("sourceIPs") or [""])[0], "uri": event.get("requestURI", ""),
                            "agent": event.get("userAgent", ""), "code": (event.get("responseStatus") or {}).get("code")})
    return records


def category(record: dict[str, Any]) -> str:
    if record["verb"] == "watch":
        return "watches"
    if record["resource"] == "leases":
        return "lease"
    if record["resource"] == "events":
        return "events"
    if record["resource"] in RECONCILE_RESOURCES:
        return "reconcile"
    return "other"


def tally(records: list[dict[str, Any]], start: float, end: float, pods: set[str] | None = None) -> dict[str, Any]:
    """Counts and rates by category, reads and writes apart, within [start, end), of the given replicas
    (by the pod name bound to their ServiceAccount token, or their IP)."""
    seconds = max(end - start, 1e-9)
    chosen = [r for r in records if start <= r["t"] < end and (pods is None or r["pod"] in pods or r["ip"] in pods)]
    out: dict[str, Any] = {"seconds": round(seconds, 1), "requests": len(chosen)}
    for name in ("reconcile", "lease", "watches", "events", "other"):
        these = [r for r in chosen if category(r) == name]
        writes = [r for r in these if r["verb"] in WRITE_VERBS]
        out[name] = {"reads": len(these) - len(writes), "writes": len(writes),
                     "dry_run_writes": sum("dryRun=" in r["uri"] for r in writes),
                     "reads_per_s": round((len(these) - len(writes)) / seconds, 3),
                     "writes_per_s": round(len(writes) / seconds, 3),
                     "by_verb_resource": dict(Counter(f"{r['verb']} {r['resource']}"
                                                      + (f"/{r['subresource']}" if r["subresource"] else "")
                                                      for r in these).most_common())}
    not_lease = [r for r in chosen if category(r) not in ("lease",)]
    out["writes_excluding_lease"] = sum(r["verb"] in WRITE_VERBS for r in not_lease)
    out["reads_excluding_lease_and_watches_per_s"] = round(
        sum(r["verb"] not in WRITE_VERBS and category(r) not in ("lease", "watches") for r in chosen) / seconds, 3)
    return out


# --- memory of containers, from /proc and the cgroup ------------------------------------------------

class Containers:
    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def pids(self) -> dict[str, int]:
        """containerd task id (= CRI container id) -> pid."""
        out = subprocess.run(["ctr", "--address", str(self.socket), "-n", "k8s.io", "tasks", "ls"], capture_output=True,
                             text=True, timeout=30).stdout.splitlines()[1:]
        return {cols[0]: int(cols[1]) for cols in (line.split() for line in out) if len(cols) >= 3 and cols[2] == "RUNNING"}

    @staticmethod
    def rss_of_container(pid: int) -> dict[str, int] | None:
        """VmRSS summed over the processes in the container's memory cgroup, and the main process's VmHWM."""
        try:
            path = next(line.split(":", 2)[2] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                        if line.split(":", 2)[1].split(",").count("memory"))
            procs = [int(p) for p in (Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "cgroup.procs").read_text().split()]
        except (OSError, StopIteration, ValueError):
            procs = [pid]
        total, hwm = 0, 0
        for proc in procs:
            status = Containers._status(proc)
            total += status.get("VmRSS", 0)
            if proc == pid:
                hwm = status.get("VmHWM", 0)
        return {"rss": total, "main_hwm": hwm, "processes": len(procs)} if total else None

    @staticmethod
    def cpu_seconds(pid: int) -> float:
        """CPU time used so far by the container's cgroup (cpuacct.usage)."""
        try:
            path = next(line.split(":", 2)[2] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                        if "cpuacct" in line.split(":", 2)[1].split(","))
            controller = next(d for d in ("cpu,cpuacct", "cpuacct") if (Path("/sys/fs/cgroup") / d).is_dir())
            return int((Path("/sys/fs/cgroup") / controller / path.lstrip("/") / "cpuacct.usage").read_text()) / 1e9
        except (OSError, StopIteration, ValueError):
            return 0.0

    @staticmethod
    def _status(pid: int) -> dict[str, int]:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            return {}
        out = {}
        for line in lines:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
        return out


def container_ids(pod: dict[str, Any], name: str | None = None) -> list[str]:
    return [s["containerID"].partition("://")[2] for s in (pod.get("status") or {}).get("containerStatuses") or []
            if s.get("containerID") and (name is None or s["name"] == name) and "running" in (s.get("state") or {})]


class OperatorMemory(threading.Thread):
    """Samples each operator replica's RSS every `interval` seconds; knows which one leads."""

    def __init__(self, api: Api, containers: Containers, interval: float = 2.0) -> None:
        super().__init__(daemon=True, name="operator memory")
        self.api, self.containers, self.interval = api, containers, interval
        self.samples: list[dict[str, Any]] = []  # {t, pod, leader, rss, main_hwm}
        self.stopped = threading.Event()

    def leader_pod(self) -> str:
        lease = self.api.get(f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NAMESPACE}/leases/{RELEASE}") or {}
        return ((lease.get("spec") or {}).get("holderIdentity") or "").rpartition("_")[0]

    def sample(self) -> None:
        pods = (self.api.get(f"/api/v1/namespaces/{RELEASE_NAMESPACE}/pods?labelSelector="
                             + urllib.parse.quote(OPERATOR_SELECTOR)) or {}).get("items", [])
        leader = self.leader_pod()
        pids = self.containers.pids()
        now = time.time()
        for pod in pods:
            for cid in container_ids(pod, "operator"):
                if cid in pids and (rss := Containers.rss_of_container(pids[cid])):
                    self.samples.append({"t": now, "pod": pod["metadata"]["name"],
                                         "leader": pod["metadata"]["name"] == leader, **rss})

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.sample()
            except Exception as error:  # noqa: BLE001 - a missed sample is no reason to stop
                log(f"memory sample failed: {error}")
            self.stopped.wait(self.interval)

    def summary(self, start: float, end: float, leader: bool) -> dict[str, Any] | None:
        chosen = [s for s in self.samples if start <= s["t"] < end and s["leader"] == leader]
        if not chosen:
            return None
        mib = 1024 * 1024
        return {"samples": len(chosen), "max_mib": round(max(s["rss"] for s in chosen) / mib, 1),
                "median_mib": round(statistics.median(s["rss"] for s in chosen) / mib, 1),
                "last_mib": round(chosen[-1]["rss"] / mib, 1),
                "main_process_peak_mib": round(max(s["main_hwm"] for s in chosen) / mib, 1)}


# --- the benchmark ----------------------------------------------------------------------------------

def model_deployment(name: str, namespace: str, replicas: int) -> dict[str, Any]:
    """e2e's small CPU ModelDeployment of the `simple` model on the namespace's `models` claim, with
    requests small enough for 100 pods on 2 cores."""
    return {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas,
                     "model": {"name": "simple", "repository": "pvc://models/triton", "version": "1"},
                     "resources": {"requests": {"cpu": "10m", "memory": "128Mi"}, "sharedMemory": "64Mi"}}}


def names(n: int) -> list[str]:
    return [f"m{i:04d}" for i in range(n)]


def render_children(mds: list[dict[str, Any]], work: Path) -> list[dict[str, Any]]:
    """`modeldeploy render -o json`, as a user would; ownerReferences (if any) stripped."""
    source = work / "render-input.yaml"
    source.write_text(yaml.safe_dump_all(mds))
    binary = Path(sys.executable).parent / "modeldeploy"
    out = subprocess.run([str(binary), "render", "-f", str(source), "-o", "json"], capture_output=True, text=True,
                         check=True, timeout=600)
    items = json.loads(out.stdout)["items"]
    for item in items:
        item["metadata"].pop("ownerReferences", None)
    return items


def apply_server_side(objects: list[dict[str, Any]], work: Path, label: str, parallel: int,
                      field_manager: str) -> float:
    """`kubectl apply --server-side` of multi-document files, `parallel` of them at once; returns seconds."""
    chunks = [objects[i::parallel] for i in range(parallel)]
    files = []
    for i, chunk in enumerate(c for c in chunks if c):
        path = work / f"{label}-{i}.yaml"
        path.write_text(yaml.safe_dump_all(chunk))
        files.append(path)
    started = time.monotonic()
    procs = [subprocess.Popen(["kubectl", "apply", "--server-side", f"--field-manager={field_manager}", "-f", str(f)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for f in files]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.monotonic() - started
    for p, err in zip(procs, errors):
        if p.returncode != 0:
            raise RuntimeError(f"kubectl apply --server-side ({label}) failed: {err.strip()[:2000]}")
    return elapsed


def wait_all(tracker: Tracker, started: float, timeout: float, what: str) -> float:
    """Seconds from `started` until the last object was ready (from the watch events' own times)."""
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while not tracker.all_ready.wait(2.0):
        now = time.monotonic()
        if now > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s: {tracker.count_ready()}/{len(tracker.names)} {what}")
        if now - last_report > 15:
            log(f"  {tracker.count_ready()}/{len(tracker.names)} {what} after {now - started:.0f}s")
            last_report = now
    return max(tracker.ready_at.values()) - started


def percentiles(tracker: Tracker, started: float) -> dict[str, float]:
    values = sorted(t - started for t in tracker.ready_at.values())
    if not values:
        return {}
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return {"p50_s": round(pick(0.5), 2), "p90_s": round(pick(0.9), 2), "max_s": round(values[-1], 2)}


def model_store(namespace: str, state: Path) -> None:
    """e2e's hostPath PV + statically bound PVC `models`, holding the `simple` model version 1."""
    sys.path.insert(0, str(ROOT))
    from tests.support.tritonserver import write_model  # noqa: PLC0415

    host = state / "models" / f"{namespace}-models"
    subprocess.run(["rm", "-rf", str(host)], check=True)
    (host / "triton").mkdir(parents=True)
    write_model(host / "triton", "simple", (1,))
    pv = f"{namespace}-models"
    docs = [{"apiVersion": "v1", "kind": "PersistentVolume",
             "metadata": {"name": pv, "labels": {"modeldeploy-bench/namespace": namespace}},
             "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
                      "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                      "hostPath": {"path": str(host), "type": "Directory"},
                      "claimRef": {"namespace": namespace, "name": "models"}}},
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models", "namespace": namespace},
             "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": pv,
                      "resources": {"requests": {"storage": "1Gi"}}}}]
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    kubectl("wait", "--for=jsonpath={.status.phase}=Bound", "pvc/models", "-n", namespace, "--timeout=60s", timeout=90)


def delete_namespace(namespace: str, wait_seconds: float) -> float:
    """Pods first (grace 1 s) so they free the node at once, then the namespace; returns seconds waited."""
    started = time.monotonic()
    kubectl("delete", "pods", "--all", "-n", namespace, "--grace-period=1", "--wait=false", check=False)
    kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)
    kubectl("delete", "pv", "-l", f"modeldeploy-bench/namespace={namespace}", "--wait=false", check=False)
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if kubectl("get", "namespace", namespace, check=False).returncode != 0:
            break
        time.sleep(1)
    else:
        log(f"namespace {namespace} still terminating after {wait_seconds:.0f}s; going on")
    return time.monotonic() - started


def ensure_namespace(namespace: str) -> None:
    if kubectl("get", "namespace", namespace, check=False).returncode == 0:
        log(f"namespace {namespace} exists (an earlier run?): deleting it first")
        delete_namespace(namespace, 600)
    kubectl("create", "namespace", namespace)


ALL_WATCHES: list[Watch] = []


def watches_for(api: Api, namespace: str, tracker: Tracker, primary: str | None) -> list[Watch]:
    paths = {"deployments": f"/apis/apps/v1/namespaces/{namespace}/deployments",
             "services": f"/api/v1/namespaces/{namespace}/services"}
    if primary:
        paths["primary"] = primary
    watches = [Watch(api, path, tracker.handler(kind)) for kind, path in paths.items()]
    ALL_WATCHES.extend(watches)
    for w in watches:
        w.start()
    for w in watches:
        w.listed.wait(60)
    return watches


def stop(watches: list[Watch]) -> None:
    for w in watches:
        w.stop()


def triton_pods_memory(api: Api, containers: Containers, namespace: str) -> dict[str, Any] | None:
    pods = (api.get(f"/api/v1/namespaces/{namespace}/pods") or {}).get("items", [])
    pids = containers.pids()
    per_pod, cpu = [], []
    for pod in pods:
        running_ids = [c for c in container_ids(pod) if c in pids]
        total = sum((Containers.rss_of_container(pids[c]) or {"rss": 0})["rss"] for c in running_ids)
        if total:
            per_pod.append(total)
            cpu.append(sum(Containers.cpu_seconds(pids[c]) for c in running_ids))
    if not per_pod:
        return None
    mib = 1024 * 1024
    return {"pods": len(per_pod), "total_mib": round(sum(per_pod) / mib), "per_pod_median_mib": round(
        statistics.median(per_pod) / mib, 1), "per_pod_max_mib": round(max(per_pod) / mib, 1),
        "cpu_s_per_pod_median": round(statistics.median(cpu), 2),
        "note": "RSS of each pod's running containers' processes; CPU: the Triton container's cgroup since start"}


def install_operator(image: str) -> None:
    """As e2e/conftest.py installs it (the chart's defaults: 2 replicas, its RBAC), without --set verbose."""
    helm("upgrade", "--install", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE, "--create-namespace",
         *operator_image_values(image), "--wait", "--timeout", "180s")
    kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", RELEASE_NAMESPACE, "--timeout=120s", timeout=150)


def uninstall_operator() -> None:
    if helm("status", RELEASE, "-n", RELEASE_NAMESPACE, check=False).returncode == 0:
        helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", check=False)
    kubectl("delete", "lease", RELEASE, "-n", RELEASE_NAMESPACE, "--ignore-not-found", check=False)


def wait_for_leader(memory: OperatorMemory, timeout: float = 120, not_pod: str = "") -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = memory.leader_pod()
        if leader and leader != not_pod:
            pod = memory.api.get(f"/api/v1/namespaces/{RELEASE_NAMESPACE}/pods/{leader}")
            if pod and not pod["metadata"].get("deletionTimestamp"):
                return leader
        time.sleep(0.2)
    raise RuntimeError("no operator replica took the Lease")


def operator_pod_ips(api: Api) -> dict[str, str]:
    pods = (api.get(f"/api/v1/namespaces/{RELEASE_NAMESPACE}/pods?labelSelector="
                    + urllib.parse.quote(OPERATOR_SELECTOR)) or {}).get("items", [])
    return {p["metadata"]["name"]: (p.get("status") or {}).get("podIP", "") for p in pods}


def reconcile_total(api: Api, pod: str) -> float | None:
    """modeldeploy_reconcile_total summed over results, through the API server's pod proxy."""
    try:
        text = api.get(f"/api/v1/namespaces/{RELEASE_NAMESPACE}/pods/{pod}:8080/proxy/metrics", timeout=10)
    except Exception:  # noqa: BLE001
        return None
    if not isinstance(text, str):
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("modeldeploy_reconcile_total{"))


def wait_quiet(api: Api, pod: str, started: float, timeout: float, quiet_for: float = 10) -> float | None:
    """Seconds from `started` to the last reconcile before `quiet_for` seconds without one (from the
    leader's modeldeploy_reconcile_total, polled every second)."""
    last, last_change = reconcile_total(api, pod), time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        time.sleep(1)
        now = reconcile_total(api, pod)
        if now is None:
            return None
        if now != last:
            last, last_change = now, time.monotonic()
        elif time.monotonic() - last_change >= quiet_for:
            return last_change - started
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    kubeconfig = os.environ.get("KUBECONFIG", "")
    e2e_state = Path(os.environ.get("MODELDEPLOY_E2E_STATE", "/var/tmp/modeldeploy-e2e"))
    image = args.operator_image or os.environ.get("MODELDEPLOY_E2E_OPERATOR_IMAGE", "")
    if not kubeconfig or not image:
        raise SystemExit("needs the e2e cluster's env (e2e/env/cluster up): KUBECONFIG and the operator image")
    api = Api(kubeconfig)
    containers = Containers(e2e_state / "containerd" / "containerd.sock")
    work = Path(args.work_dir or (e2e_state / "bench" / f"scale-{time.strftime('%Y%m%d-%H%M%S')}"))
    work.mkdir(parents=True, exist_ok=True)
    floor_ns, md_ns = f"{args.namespace}-floor", args.namespace
    n, replicas = args.n, args.replicas
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    source = image_source(image)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "n": n, "replicas": replicas, "commit": commit,
        "operator_image": image, "operator_image_code": source, "apply_parallel": args.apply_parallel,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB",
        "steady_seconds": args.steady_seconds, "settle_seconds": args.settle_seconds, "work_dir": str(work)}
    apiserver = ApiServer(e2e_state / "cluster", work)
    memory = OperatorMemory(api, containers)
    run_started = time.monotonic()
    try:
        uninstall_operator()  # a release left by an earlier run would perturb the floor
        if not args.no_audit:
            apiserver.enable_audit()

        # 1. The floor: the same children, applied by kubectl.
        log(f"floor: rendering and applying the children of {n} objects in {floor_ns}")
        ensure_namespace(floor_ns)
        model_store(floor_ns, e2e_state)  # the operator checks the claim exists even at replicas 0
        children = render_children([model_deployment(x, floor_ns, replicas) for x in names(n)], work)
        tracker = Tracker(names(n), floor_ready(replicas))
        watches = watches_for(api, floor_ns, tracker, primary=None)
        started = time.monotonic()
        apply_seconds = apply_server_side(children, work, "floor", args.apply_parallel, "bench-floor")
        floor_seconds = wait_all(tracker, started, args.timeout, "floor objects ready")
        stop(watches)
        result["floor"] = {"objects_applied": len(children), "apply_s": round(apply_seconds, 2),
                           "to_ready_s": round(floor_seconds, 2), **percentiles(tracker, started)}
        log(f"floor: {len(children)} children applied in {apply_seconds:.1f}s, ready after {floor_seconds:.1f}s")
        result["floor"]["cleanup_s"] = round(delete_namespace(floor_ns, 600), 1)

        # 2. The operator, as users install it.
        log("installing the operator (helm, the chart's defaults: 2 replicas)")
        install_operator(image)
        memory.start()
        leader = wait_for_leader(memory)
        time.sleep(10)
        idle_end = time.time()
        ensure_namespace(md_ns)
        model_store(md_ns, e2e_state)
        mds = [model_deployment(x, md_ns, replicas) for x in names(n)]
        tracker = Tracker(names(n), operator_ready(replicas))
        if replicas == 0:
            tracker.final = scaled_to_zero
        watches = watches_for(api, md_ns, tracker, primary=f"/apis/modeldeploy.dev/v1alpha1/namespaces/{md_ns}/modeldeployments")
        log(f"operator: applying {n} ModelDeployments in {md_ns} (leader {leader})")
        reconciles_before = reconcile_total(api, leader)
        create_start = time.time()
        started = time.monotonic()
        apply_seconds = apply_server_side(mds, work, "operator", args.apply_parallel, "bench")
        md_seconds = wait_all(tracker, started, args.timeout, "ModelDeployments " + ("Ready" if replicas else "reconciled"))
        result["operator"] = {"apply_s": round(apply_seconds, 2), "to_ready_s": round(md_seconds, 2),
                              **percentiles(tracker, started)}
        result["ratio"] = round(md_seconds / floor_seconds, 3)
        log(f"operator: applied in {apply_seconds:.1f}s, all {'Ready' if replicas else 'reconciled'} after "
            f"{md_seconds:.1f}s: {result['ratio']:.2f} x the floor")

        # 3. Steady state: once the leader has gone 10 s without a reconcile (its queue drained), settle.
        quiet = wait_quiet(api, leader, started, md_seconds + args.quiet_timeout)
        result["operator"]["to_quiet_s"] = round(quiet, 1) if quiet is not None else None
        stop(watches)
        create_end = create_start + (quiet or md_seconds)
        if replicas == 0:
            final = sorted(t - started for t in tracker.final_at.values())
            result["operator"]["scaled_to_zero_status"] = {
                "objects": len(final), "p50_s": round(final[len(final) // 2], 2) if final else None,
                "max_s": round(final[-1], 2) if final else None}
        log(("operator: never 10 s without a reconcile" if quiet is None else
             f"operator: last reconcile of the creation {quiet:.1f}s after the apply")
            + f"; settling {args.settle_seconds}s, then counting requests for {args.steady_seconds}s")
        time.sleep(args.settle_seconds)
        reconciles_creation = reconcile_total(api, leader)
        steady_start = time.time()
        time.sleep(args.steady_seconds)
        steady_end = time.time()
        reconciles_steady = reconcile_total(api, leader)
        ips = operator_pod_ips(api)
        leader_now = memory.leader_pod()
        if replicas:
            result["triton_pods_memory"] = triton_pods_memory(api, containers, md_ns)
        result["reconciles"] = {
            "creation_and_settle": None if None in (reconciles_before, reconciles_creation)
            else reconciles_creation - reconciles_before,  # type: ignore[operator]
            "steady_window": None if None in (reconciles_creation, reconciles_steady)
            else reconciles_steady - reconciles_creation}  # type: ignore[operator]

        # 5. One resync pass, through a graceful handover.
        handover: dict[str, Any] = {}
        if not args.no_resync_pass and leader_now == leader:
            log("resync pass: deleting the leader pod; the standby takes over and reconciles every object once")
            (standby,) = [p for p in ips if p != leader] or [""]
            before = reconcile_total(api, standby) or 0.0
            t_delete = time.time()
            kubectl("delete", "pod", leader, "-n", RELEASE_NAMESPACE, "--wait=false")
            new_leader = wait_for_leader(memory, not_pod=leader)
            t_take = time.time()
            # Done when the new leader has made as many reconciles as there are objects (on taking the
            # Lease it reconciles every known object once).
            last, deadline = before, time.monotonic() + args.timeout
            while time.monotonic() < deadline and last - before < n:
                time.sleep(0.5)
                last = reconcile_total(api, new_leader) or last
            t_done = time.time()
            # The window starts at the deletion: a standby makes no reconcile requests (see steady_standby).
            handover = {"new_leader": new_leader, "takeover_s": round(t_take - t_delete, 2),
                        "pass_s": round(t_done - t_take, 2), "reconciles": last - before,
                        "window": (t_delete, t_done + 2), "ip": ips.get(new_leader, "")}
            log(f"resync pass: {last - before:.0f} reconciles in {t_done - t_take:.1f}s")
        result["_windows"] = {"idle": (time.time() - 1e9, idle_end), "creation": (create_start, create_end),
                              "steady": (steady_start, steady_end)}
        result["_ips"] = ips
        result["_leader"] = leader
        result["_handover"] = handover
    finally:
        memory.stopped.set()
        stop(ALL_WATCHES)
        log("cleaning up: the release, the namespaces, the PVs")
        uninstall_operator()
        result.setdefault("cleanup", {})["namespaces_s"] = round(
            sum(delete_namespace(ns, 900) for ns in (md_ns, floor_ns)), 1)
        records = read_audit(apiserver.audit_log)
        try:
            apiserver.restore()
        except Exception as error:  # noqa: BLE001
            log(f"could not restore the API server: {error}")
            result["apiserver_restore_error"] = str(error)
    result["run_s"] = round(time.monotonic() - run_started, 1)

    # The figures.
    windows = result.pop("_windows")
    result["windows"] = {k: [round(a, 3), round(b, 3)] for k, (a, b) in windows.items()}
    ips, leader, handover = result.pop("_ips"), result.pop("_leader"), result.pop("_handover")
    leader_ip = {leader, ips.get(leader, "")} - {""}
    standby_ip = {x for pod, ip in ips.items() if pod != leader for x in (pod, ip) if x}
    result["audit_records"] = len(records)
    if records:
        result["api"] = {
            "creation_leader": tally(records, *windows["creation"], leader_ip),
            "steady_leader": tally(records, *windows["steady"], leader_ip),
            "steady_standby": tally(records, *windows["steady"], standby_ip),
            "steady_all": tally(records, *windows["steady"]),
        }
        if handover:
            window = handover.pop("window")
            handover["requests"] = tally(records, *window, {handover.pop("ip"), handover["new_leader"]} - {""})
            per_pass = sum(handover["requests"][c]["reads"] + handover["requests"][c]["writes"]
                           for c in ("reconcile", "events", "other"))
            handover["reconcile_requests_per_pass"] = per_pass
            handover["amortised_per_s_over_resync_period"] = round(per_pass / RESYNC_SECONDS, 2)
    result["resync_pass"] = handover or None
    result["operator_memory"] = {
        "leader_idle": memory.summary(*windows["idle"], leader=True),
        "leader_creation": memory.summary(windows["creation"][0], windows["creation"][1] + 5, leader=True),
        "leader_steady": memory.summary(*windows["steady"], leader=True),
        "standby_steady": memory.summary(*windows["steady"], leader=False),
    }
    return result


def print_summary(r: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = []
    what = "Ready (pods serving)" if r["replicas"] else "reconciled (replicas 0)"
    rows.append(("N, replicas per object", f"{r['n']}, {r['replicas']}"))
    rows.append(("commit / operator image", f"{r['commit']} / {r['operator_image']} "
                                            f"(operator code of {r['operator_image_code']})"))
    f, o = r.get("floor", {}), r.get("operator", {})
    if f:
        rows.append(("floor: kubectl apply --server-side of the children",
                     f"{f['objects_applied']} objects, apply {f['apply_s']} s, all ready {f['to_ready_s']} s "
                     f"(p50 {f.get('p50_s')} s)"))
    if o:
        rows.append((f"operator: apply to all {what}",
                     f"apply {o['apply_s']} s, all {o['to_ready_s']} s (p50 {o.get('p50_s')} s, p90 {o.get('p90_s')} s)"))
        rows.append(("ratio operator / floor", f"{r['ratio']:.2f}"))
        if o.get("scaled_to_zero_status"):
            z = o["scaled_to_zero_status"]
            rows.append(("operator: final status (Ready=False ScaledToZero) on all",
                         f"{z['objects']} objects, all {z['max_s']} s (p50 {z['p50_s']} s)"))
        if o.get("to_quiet_s") is not None and f:
            rows.append(("operator: first 10 s without any reconcile, from the apply",
                         f"{o['to_quiet_s']} s = {o['to_quiet_s'] / f['to_ready_s']:.2f} x the floor"))
    mem = r.get("operator_memory", {})
    for key, label in (("leader_idle", "leader RSS idle (0 objects)"), ("leader_creation", "leader RSS during creation"),
                       ("leader_steady", "leader RSS steady state"), ("standby_steady", "standby RSS steady state")):
        if mem.get(key):
            m = mem[key]
            rows.append((label, f"max {m['max_mib']} MiB, median {m['median_mib']} MiB "
                                f"(python peak VmHWM {m['main_process_peak_mib']} MiB)"))
    if r.get("triton_pods_memory"):
        t = r["triton_pods_memory"]
        rows.append(("Triton pods RSS", f"{t['pods']} pods, {t['total_mib']} MiB total, "
                                        f"{t['per_pod_median_mib']} MiB median per pod, "
                                        f"{t['cpu_s_per_pod_median']} CPU s used per pod (median)"))
    api = r.get("api")
    if api:
        for key, label in (("steady_leader", "steady, leader"), ("steady_standby", "steady, standby"),
                           ("creation_leader", "creation, leader")):
            t = api[key]
            rows.append((f"API {label} ({t['seconds']:.0f} s): reconciler (md/children/pods)",
                         f"{t['reconcile']['reads_per_s']} reads/s, {t['reconcile']['writes_per_s']} writes/s "
                         f"({t['reconcile']['reads']} reads, {t['reconcile']['writes']} writes, "
                         f"{t['reconcile']['dry_run_writes']} of them dry runs)"))
            rows.append((f"API {label}: Lease", f"{t['lease']['reads_per_s']} reads/s, {t['lease']['writes_per_s']} writes/s"))
            rows.append((f"API {label}: watches started / events / other",
                         f"{t['watches']['reads']} / {t['events']['writes']} writes / "
                         f"{t['other']['reads']} reads, {t['other']['writes']} writes"))
            rows.append((f"API {label}: writes except Lease; reads/s except Lease and watches",
                         f"{t['writes_excluding_lease']}; {t['reads_excluding_lease_and_watches_per_s']}"))
    rp = r.get("resync_pass")
    if rp:
        req = rp["requests"]
        rows.append(("resync pass (handover): reconciles, seconds",
                     f"{rp['reconciles']:.0f} in {rp['pass_s']} s (takeover {rp['takeover_s']} s)"))
        rows.append(("resync pass: requests (md/children/pods, events, other)",
                     f"{rp['reconcile_requests_per_pass']} ({req['reconcile']['reads']} reads, "
                     f"{req['reconcile']['writes']} writes) = {rp['amortised_per_s_over_resync_period']}/s "
                     f"over the {RESYNC_SECONDS:.0f} s resync period"))
    rows.append(("run time (incl. cleanup)", f"{r['run_s']} s"))
    width = max(len(a) for a, _ in rows)
    print()
    for a, b in rows:
        print(f"{a:<{width}}  {b}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, required=True, help="number of ModelDeployments")
    parser.add_argument("--replicas", type=int, default=0,
                        help="spec.replicas of each (0: nothing runs; 1: a real Triton pod each)")
    parser.add_argument("--namespace", default="md-scale", help="namespace of the objects (the floor uses <ns>-floor)")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument("--apply-parallel", type=int, default=4, help="kubectl apply processes at once (both phases)")
    parser.add_argument("--settle-seconds", type=float, default=30)
    parser.add_argument("--steady-seconds", type=float, default=120)
    parser.add_argument("--timeout", type=float, default=900, help="for each wait until all are ready")
    parser.add_argument("--quiet-timeout", type=float, default=150,
                        help="after all are ready, wait at most this long for 10 s without a reconcile")
    parser.add_argument("--operator-image", help="default: MODELDEPLOY_E2E_OPERATOR_IMAGE from the cluster's env")
    parser.add_argument("--env-file", type=Path, default=DEFAULT_ENV_FILE, help="e2e/env/cluster's env file")
    parser.add_argument("--work-dir", help="rendered files and the audit log (default under the e2e state dir)")
    parser.add_argument("--no-audit", action="store_true", help="do not restart the API server with an audit log")
    parser.add_argument("--no-resync-pass", action="store_true", help="skip the handover that measures one resync")
    args = parser.parse_args()
    load_cluster_env(args.env_file)
    result = run(args)
    print_summary(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
