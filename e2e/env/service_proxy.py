"""A small kube-proxy (iptables mode) for the e2e cluster, which has none: ClusterIP:port -> ready endpoints.

    service_proxy.py            runs until SIGTERM, then removes its rules (e2e/env/cluster up starts it)
    service_proxy.py --cleanup  only removes its rules, idempotently (what a SIGKILL left behind)

It lists Services and EndpointSlices (discovery.k8s.io/v1) with `kubectl` (KUBECONFIG from the
environment) whenever a `kubectl get --watch` of either prints a change, and every 30 s anyway
(a listing costs kubectl ~0.13 s of CPU: polling at 0.4 s would take a third of a core), and programs
iptables like kube-proxy does:

  nat OUTPUT (host-originated), nat PREROUTING (pod-originated) -> MDE2E-SERVICES
      one rule per Service port (ClusterIP, protocol, port) -> MDE2E-SVC-<hash of namespace/name:port>
      which DNATs to one of the n ready endpoints: rule i matches with probability 1/(n-i), so each
      endpoint gets 1/n of the new connections
  nat POSTROUTING -> MDE2E-POSTROUTING: pod-originated Service traffic is masqueraded to the bridge
      gateway (kube-proxy's --masquerade-all), so that a pod reaching its own Service (hairpin) gets
      its answer back through this host; the backend sees 10.244.0.1 as the client there
  filter OUTPUT, FORWARD -> MDE2E-REJECT: a connection to the Service range that no DNAT rule took
      (a port without a ready endpoint, or a Service not seen yet) is rejected at once, as kube-proxy
      rejects a Service without endpoints; otherwise it would leave this machine by the default route

Every change is one `iptables-restore --noflush` that flushes and refills only these chains (and
deletes the Service chains that are gone); nothing is written when the rule set did not change.
Not done (the e2e suite needs none of it): session affinity, NodePorts, external IPs, IPv6,
terminating endpoints as a fallback, and removing conntrack entries of established connections.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import datetime

SERVICE_CIDR = "10.96.0.0/16"  # the API server's --service-cluster-ip-range (../shared/k8s/control-plane)
POD_CIDR = "10.244.0.0/24"  # e2e/env/cluster's pod bridge
SERVICES, POSTROUTING, REJECT, SVC = "MDE2E-SERVICES", "MDE2E-POSTROUTING", "MDE2E-REJECT", "MDE2E-SVC-"
JUMPS = [("nat", "OUTPUT", SERVICES), ("nat", "PREROUTING", SERVICES), ("nat", "POSTROUTING", POSTROUTING),
         ("filter", "OUTPUT", REJECT), ("filter", "FORWARD", REJECT)]
RESYNC_SECONDS = 30.0  # a full listing even without a watch event: a safety net, not the way changes arrive
WATCH_SECONDS = 300
RESOURCES = ("services", "endpointslices.discovery.k8s.io")

# A Service port: (clusterIP, protocol, port, ready endpoints as sorted "ip:port").
Port = tuple[str, str, int, tuple[str, ...]]


def log(message: str) -> None:
    print(datetime.now().strftime("%H:%M:%S.%f")[:-3], message, flush=True)


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=30)


def service_ports(items: list[dict]) -> dict[str, Port]:
    """{"namespace/name:port": Port} for every port of every Service with a ClusterIP."""
    ready: dict[tuple, set[str]] = defaultdict(set)  # (namespace, service, port name, protocol) -> endpoints
    for s in (i for i in items if i["kind"] == "EndpointSlice" and i.get("addressType") == "IPv4"):
        service = (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name")
        if not service:
            continue
        for ep in s.get("endpoints") or []:
            conditions = ep.get("conditions") or {}
            # An unset `ready` means ready (the API's rule, and kube-proxy's); terminating ones never serve.
            if conditions.get("ready") is False or conditions.get("terminating"):
                continue
            for p in (p for p in s.get("ports") or [] if p.get("port")):
                key = (s["metadata"]["namespace"], service, p.get("name") or "", p.get("protocol", "TCP"))
                ready[key].add(f"{ep['addresses'][0]}:{p['port']}")  # the first address (as the API says)
    ports: dict[str, Port] = {}
    for svc in (i for i in items if i["kind"] == "Service"):
        ns, name, ip = svc["metadata"]["namespace"], svc["metadata"]["name"], svc["spec"].get("clusterIP")
        if not ip or ip == "None" or ":" in ip or (ns, name) == ("default", "kubernetes"):
            continue  # headless, ExternalName, IPv6, or the API server (e2e/env/cluster routes that one)
        for p in svc["spec"].get("ports") or []:
            # The slice's ports carry the Service port's name (targetPort may be a named container port).
            eps = ready[(ns, name, p.get("name") or "", p.get("protocol", "TCP"))]
            ports[f"{ns}/{name}:{p.get('name') or p['port']}"] = (ip, p.get("protocol", "TCP"), p["port"],
                                                                   tuple(sorted(eps)))
    return ports


def chain(key: str) -> str:
    return SVC + hashlib.sha256(key.encode()).hexdigest()[:16].upper()  # chain names: at most 28 characters


def rules(ports: dict[str, Port]) -> tuple[list[str], list[str]]:
    """The nat and filter tables' lines for iptables-restore: chain declarations (which flush), then rules."""
    nat_chains, nat = [SERVICES, POSTROUTING], [
        f"-A {POSTROUTING} -s {POD_CIDR} -m conntrack --ctstate DNAT --ctorigdst {SERVICE_CIDR} -j MASQUERADE"]
    for key, (ip, protocol, port, eps) in sorted(ports.items()):
        if not eps:
            continue  # no DNAT: MDE2E-REJECT rejects it
        c, p = chain(key), protocol.lower()
        nat_chains.append(c)
        nat.append(f'-A {SERVICES} -d {ip}/32 -p {p} -m {p} --dport {port} -m comment --comment "{key}" -j {c}')
        for i, ep in enumerate(eps):
            left = len(eps) - i  # this rule sees only what the rules before it did not take
            odds = f"-m statistic --mode random --probability {1 / left:.10f} " if left > 1 else ""
            nat.append(f"-A {c} -p {p} {odds}-j DNAT --to-destination {ep}")  # a port needs -p
    filter_ = [f'-A {REJECT} -d {SERVICE_CIDR} -p tcp -m comment --comment "no ready endpoint" '
               "-j REJECT --reject-with tcp-reset",
               f"-A {REJECT} -d {SERVICE_CIDR} -j REJECT --reject-with icmp-port-unreachable"]
    return [f":{c} - [0:0]" for c in nat_chains] + nat, [f":{REJECT} - [0:0]"] + filter_


def our_chains(table: str) -> list[str]:
    saved = run("iptables-save", "-t", table).stdout.splitlines()
    return [line[1:].split()[0] for line in saved if line.startswith(":MDE2E-")]


def ensure_jumps() -> None:
    for table, builtin, target in JUMPS:
        if run("iptables", "-t", table, "-C", builtin, "-j", target).returncode != 0:
            run("iptables", "-t", table, "-I", builtin, "1", "-j", target)


def cleanup() -> None:
    """Remove every jump to and every chain of this proxy; safe to run any number of times."""
    if shutil.which("iptables") is None:
        return
    for table, builtin, target in JUMPS:
        while run("iptables", "-t", table, "-D", builtin, "-j", target).returncode == 0:
            pass  # a jump added twice (it never should be) goes too
    for table in ("nat", "filter"):
        chains = our_chains(table)
        if chains:  # flush them all first: a Service chain is referenced from MDE2E-SERVICES
            lines = [f":{c} - [0:0]" for c in chains] + [f"-X {c}" for c in chains]
            run("iptables-restore", "--noflush", stdin=f"*{table}\n" + "\n".join(lines) + "\nCOMMIT\n")


class Proxy:
    def __init__(self) -> None:
        self.applied: tuple[list[str], list[str]] | None = None
        self.ports: dict[str, Port] = {}

    def sync(self) -> None:
        listing = run("kubectl", "get", ",".join(RESOURCES), "-A", "-o", "json", "--request-timeout=10s")
        if listing.returncode != 0:
            raise RuntimeError(f"kubectl get: {listing.stderr.strip()}")
        ports = service_ports(json.loads(listing.stdout)["items"])
        nat, filter_ = wanted = rules(ports)
        if wanted == self.applied:
            return
        gone = [c for c in our_chains("nat") if c.startswith(SVC) and f":{c} - [0:0]" not in nat]
        # A chain that is gone is flushed (declared), then deleted: only an empty chain can be.
        restore = "\n".join(["*nat", *(f":{c} - [0:0]" for c in gone), *nat, *(f"-X {c}" for c in gone), "COMMIT",
                             "*filter", *filter_, "COMMIT", ""])
        result = run("iptables-restore", "--noflush", stdin=restore)
        if result.returncode != 0:
            raise RuntimeError(f"iptables-restore: {result.stderr.strip()}")
        ensure_jumps()
        self.applied = wanted
        for key in sorted(self.ports.keys() | ports.keys()):
            if self.ports.get(key) != ports.get(key):
                ip, protocol, port, eps = ports.get(key) or self.ports[key]
                now = (" ".join(eps) or "no ready endpoint (rejected)") if key in ports else "removed"
                log(f"{key} {ip}:{port}/{protocol} -> {now}")
        self.ports = ports


class Watches:
    """`kubectl get --watch` per resource; every line it prints (a change, or the initial listing after a
    restart) sets `changed`. kubectl lists and then watches from that list's version, so no change
    falls between the two. Each watch ends after WATCH_SECONDS and is started again: so a kubectl
    orphaned by a SIGKILL of this process is gone by then too."""

    def __init__(self, changed: threading.Event) -> None:
        self.changed, self.lock, self.procs, self.stopped = changed, threading.Lock(), [], False

    def run(self, resource: str) -> None:
        while True:
            with self.lock:  # no kubectl is started after stop(): it would outlive this process
                if self.stopped:
                    return
                started = time.monotonic()
                proc = subprocess.Popen(["kubectl", "get", resource, "-A", "--watch", "-o", "name",
                                         f"--request-timeout={WATCH_SECONDS}s"],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                self.procs.append(proc)
            for _ in proc.stdout:
                self.changed.set()
            proc.wait()
            with self.lock:
                self.procs.remove(proc)
            self.changed.set()
            if time.monotonic() - started < 10:
                time.sleep(1)  # it failed (the API server is away): do not spin

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            for proc in self.procs:
                proc.terminate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cleanup", action="store_true", help="only remove this proxy's chains and jumps")
    if parser.parse_args().cleanup:
        cleanup()
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # No cleanup first: the first sync takes over what a killed proxy left (its chains flushed and refilled,
    # Service chains that are gone deleted, jumps added only where missing), so a restart opens no gap.
    changed = threading.Event()
    watches = Watches(changed)
    for resource in RESOURCES:
        threading.Thread(target=watches.run, args=(resource,), daemon=True).start()
    proxy, failure = Proxy(), ""
    log(f"started: Services in {SERVICE_CIDR} -> ready endpoints")
    try:
        while True:
            changed.wait(RESYNC_SECONDS)
            time.sleep(0.05)  # one change touches several objects: take them in one listing
            changed.clear()
            try:
                proxy.sync()
                failure = ""
            except (OSError, ValueError, KeyError, RuntimeError, subprocess.SubprocessError) as e:
                if str(e) != failure:  # once, not at every retry
                    log(f"sync failed, retrying every 2 s: {e}")
                failure = str(e)
                time.sleep(2)
                changed.set()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        watches.stop()
        cleanup()
        log("stopped: chains and jumps removed")


if __name__ == "__main__":
    sys.exit(main())
