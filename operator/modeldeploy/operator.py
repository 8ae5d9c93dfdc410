"""`modeldeploy run`: kopf watches, a work queue, the reconciler. Handlers only route keys.

kopf is used for what it is good at (watch streams, reconnects, namespaces, signals); we
register only event handlers, which make kopf write nothing to the objects: no finalizers,
no progress or diff-base annotations. So a steady state costs no writes at all. The initial
listing of objects is our "resume", ADDED our "create" and MODIFIED our "update".

With leader election (the Helm chart runs two replicas) an Elector task holds or waits for a
coordination.k8s.io/v1 Lease (modeldeploy.leader decides). Every replica runs the watches and
tracks the known ModelDeployments; only the leader's work queue is open. Becoming leader opens it
and enqueues every known key; losing the Lease (or missing the renew deadline) closes it at once,
cancelling reconciles in flight; SIGTERM releases the Lease so the standby takes over within a
retry period (2 s). The Lease costs one GET per replica and one PUT by the leader every 2 s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import kopf

from modeldeploy import FIELD_MANAGER, GROUP, PLURAL, VERSION, leader, metrics, naming
from modeldeploy.cache import CachedCluster, WatchCache
from modeldeploy.kube import (
    DEPLOYMENT,
    HPA,
    LEASE,
    MODEL_DEPLOYMENT,
    PDB,
    POD,
    SERVICE,
    SERVICE_MONITOR,
    ApiError,
    Cluster,
    Kind,
)
from modeldeploy.reconciler import Outcome, Reconciler
from modeldeploy.render.capabilities import ServerCapabilities, limitations
from modeldeploy.workqueue import WorkQueue

log = logging.getLogger("modeldeploy")

RESYNC_SECONDS = 600.0  # a safety net only: changes arrive as watch events
WORKERS = 8
# The liveness endpoint fails when the workers have made no progress for this long while work waits.
STALL_SECONDS = 600.0

registry = kopf.OperatorRegistry()
# A registry of our own has no login handler: kopf authenticates the way our boundary does,
# through the kubernetes client (in-cluster service account, else KUBECONFIG).
kopf.on.login(registry=registry, id="login-via-kubernetes-client")(kopf.login_via_client)
# The children and pods kopf streams (filtered by our managed-by label): each event is routed to its
# owner's key and kept in the watch cache. ServiceMonitors, an optional kind, are not watched: the
# cache has them from the listing at startup and at each resync, and from our own writes.
WATCHED_CHILDREN: tuple[Kind, ...] = (DEPLOYMENT, SERVICE, HPA, PDB, POD)
CACHED_KINDS: tuple[Kind, ...] = (MODEL_DEPLOYMENT, *WATCHED_CHILDREN, SERVICE_MONITOR)


def watch_selector(kind: Kind) -> str:
    """The label selector our watches and listings of kind use: every ModelDeployment, only our children."""
    return "" if kind is MODEL_DEPLOYMENT else naming.MANAGED_SELECTOR


DEFAULT_LEASE_NAME = "modeldeploy-operator"
# A Lease request that takes longer than this is given up (a leader's are bounded by its renew deadline).
LEASE_REQUEST_SECONDS = 5.0
RELEASE_SECONDS = 3.0  # how long a stopping leader tries to release the Lease
LIST_SECONDS = 30.0  # a listing that fills the watch cache is given up after this long (reads then go live)
RELIST_DELAY_SECONDS = 1.0  # after kopf starts relisting a kind, list it ourselves this much later


def default_identity() -> str:
    """This replica's name in the Lease: the pod's name (downward API POD_NAME, else the hostname,
    which is the pod's name in a pod) and a random suffix, so a restarted container is a new
    candidate and never mistakes its previous life's Lease for its own."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{secrets.token_hex(4)}"


def _micro_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # metav1.MicroTime


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str = DEFAULT_LEASE_NAME
    identity: str = ""


class Elector:
    """Holds or waits for the Lease, as modeldeploy.leader decides; calls on_lead/on_stop on changes.

    The imperative shell of leader election: every request is bounded (a leader's by what is left of
    its renew deadline, so a hung API call cannot keep it reconciling past the deadline), and a replace
    carries the resourceVersion it read, so of two replicas racing for the Lease one gets 409.
    """

    def __init__(self, cluster: Cluster, namespace: str, name: str, identity: str, *,
                 on_lead: Callable[[], None], on_stop: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], str] = _micro_now) -> None:
        self.cluster = cluster
        self.namespace, self.name, self.identity = namespace, name, identity
        self.on_lead, self.on_stop = on_lead, on_stop
        self.clock, self.wall = clock, wall
        self.memory = leader.Memory()
        self.lease: dict[str, Any] | None = None  # as last read or written: its resourceVersion goes with a replace
        self.leading = False  # on_lead was called and on_stop not since
        self._complained = False

    def _stop(self, reason: str) -> None:
        self.memory = leader.stepped_down(self.memory)
        if self.leading:
            self.leading = False
            self.on_stop(reason)

    def _budget(self) -> float:
        return leader.renew_budget(self.memory, self.clock()) if self.leading else LEASE_REQUEST_SECONDS

    def _trouble(self, what: str, error: BaseException) -> None:
        shown = str(error) or type(error).__name__
        if self.leading or not self._complained:  # a standby says it once until things work again
            log.warning("leader election: %s the Lease %s/%s failed: %s", what, self.namespace, self.name, shown)
        self._complained = True

    async def run(self) -> None:
        while True:
            try:
                wait = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug here must not end leader election for good
                log.exception("leader election step failed")
                self._check_deadline()
                wait = leader.RETRY_PERIOD_SECONDS
            await asyncio.sleep(wait)

    def _check_deadline(self) -> None:
        if self.leading and not leader.still_leading(self.memory, self.clock()):
            self._stop(f"no successful renewal within the renew deadline ({leader.RENEW_DEADLINE_SECONDS:.0f}s)")

    def _after_failure(self) -> float:
        """When to try again after a failed request: a retry period, or at the renew deadline if sooner."""
        self._check_deadline()
        return min(leader.RETRY_PERIOD_SECONDS, max(self._budget(), 0.05)) if self.leading \
            else leader.RETRY_PERIOD_SECONDS

    async def step(self) -> float:
        """One try: read, decide, write. Returns the seconds until the next one."""
        self._check_deadline()
        looked = self.clock()
        # A leader renews over what its last write stored, with no read first (a 409 then sends it back
        # to reading): the Lease costs the leader one write and no read per retry period.
        renewing_from_memory = self.leading and self.lease is not None
        if renewing_from_memory:
            lease = self.lease
        else:
            try:
                lease = await asyncio.wait_for(self.cluster.get(LEASE, self.namespace, self.name), self._budget())
            except (ApiError, asyncio.TimeoutError) as error:
                self._trouble("reading", error)
                return self._after_failure()
        now = self.clock()
        self.lease = lease
        self.memory = leader.observe(self.memory, leader.LeaseRecord.from_lease(lease), now, sent_at=looked)
        decision = leader.decide(self.memory, self.identity, now, self.wall())
        if decision.action == "lost":
            self._stop(decision.reason)
            return 0.0  # look again at once: the Lease may be free
        if decision.action == "standby":
            self._complained = False
            return decision.wait_seconds
        assert decision.record is not None
        sent = self.clock()
        try:
            if decision.action == "create":
                body = {"apiVersion": LEASE.api_version, "kind": LEASE.kind,
                        "metadata": {"name": self.name, "namespace": self.namespace}, "spec": decision.record.spec()}
                stored = await asyncio.wait_for(self.cluster.create_lease(body), self._budget())
            else:
                assert lease is not None
                body = {**lease, "spec": decision.record.spec(),
                        "metadata": {k: v for k, v in lease["metadata"].items() if k != "managedFields"}}
                stored = await asyncio.wait_for(self.cluster.replace_lease(body), self._budget())
        except ApiError as error:
            self.lease = None  # the write may have happened all the same: read before the next one
            if error.conflict and renewing_from_memory:  # written since our last write: look at it now
                return 0.0
            if error.conflict:  # someone else wrote the Lease since we read it: they won
                log.info("leader election: lost the race for the Lease %s/%s (%s)", self.namespace, self.name,
                         error.reason)
                self._stop("another replica wrote the Lease first (409 Conflict)")
                return leader.RETRY_PERIOD_SECONDS
            self._trouble(f"{decision.action} of", error)
            return self._after_failure()
        except asyncio.TimeoutError as error:
            self.lease = None
            self._trouble(f"{decision.action} of", error)
            return self._after_failure()
        self._complained = False
        self.lease = stored
        self.memory = leader.renewed(self.memory, decision.record, sent)
        if not self.leading:
            self.leading = True
            log.info("leader election: %s leads now (%s the Lease %s/%s: %s)", self.identity, decision.action,
                     self.namespace, self.name, decision.reason or "held already")
            self.on_lead()
        return leader.RETRY_PERIOD_SECONDS

    async def release(self) -> None:
        """Stop leading and hand the Lease over (SIGTERM): holder "", duration 1 s, so a standby takes
        it at its next look instead of waiting out the lease duration."""
        was_leading = self.leading
        self._stop("shutting down")
        lease = self.lease
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            if not self.memory.observed or self.memory.looked_at is None:
                return  # never saw a Lease: nothing of ours to release
            # An acquire cut short by the shutdown may have been written all the same: look.
            try:
                lease = await asyncio.wait_for(self.cluster.get(LEASE, self.namespace, self.name), RELEASE_SECONDS)
            except (ApiError, asyncio.TimeoutError):
                return
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
        record = leader.released(leader.LeaseRecord.from_lease(lease) or leader.LeaseRecord(), self.wall())
        body = {**lease, "spec": record.spec(),
                "metadata": {k: v for k, v in lease["metadata"].items() if k != "managedFields"}}
        try:
            self.lease = await asyncio.wait_for(self.cluster.replace_lease(body), RELEASE_SECONDS)
        except (ApiError, asyncio.TimeoutError) as error:  # the Lease then simply expires
            log.warning("leader election: could not release the Lease %s/%s: %s", self.namespace, self.name,
                        str(error) or type(error).__name__)
            return
        log.info("leader election: released the Lease %s/%s%s", self.namespace, self.name,
                 "" if was_leading else " (held, though past the renew deadline)")


class OperatorState:
    """What the handlers share: the queue and the set of known ModelDeployments."""

    def __init__(self, reconciler: Reconciler, health_cache: Any, *, lease: LeaseConfig | None = None,
                 watch_cache: WatchCache | None = None, namespaces: tuple[str, ...] = ()) -> None:
        self.reconciler = reconciler
        self.health_cache = health_cache
        # The reconciler reads through it (a CachedCluster over the same cache); None: reads go to the API server.
        self.watch_cache = watch_cache
        self.namespaces = namespaces  # () for every namespace
        self._relisting: asyncio.Task[None] | None = None  # our own listing after kopf's, on its way
        self.known: set[tuple[str, str]] = set()
        self.conditions: dict[tuple[str, str], dict[str, str]] = {}
        # Without leader election this replica leads from the start; with it, it stands by until it holds the Lease.
        self.queue = WorkQueue(self._reconcile, workers=WORKERS, on_error=self._failed, is_open=lease is None)
        self.resync: asyncio.Task[None] | None = None
        self.elector: Elector | None = None
        self.election: asyncio.Task[None] | None = None
        if lease is not None:
            self.elector = Elector(reconciler.cluster, lease.namespace, lease.name,
                                   lease.identity or default_identity(), on_lead=self._lead, on_stop=self._stand_by)
        metrics.set_leader(lease is None)

    def observe(self, kind: Kind, event: dict[str, Any]) -> None:
        """Keep a watch event in the cache (before the reconcile it causes reads it)."""
        if self.watch_cache is None or not isinstance(event.get("object"), dict):
            return
        self.watch_cache.observe(kind, event.get("type"), event["object"])
        namespace = event["object"]["metadata"].get("namespace") or ""
        if event.get("type") is None and self.watch_cache.serves(kind, namespace) and self._relisting is None:
            # kopf lists again (after a 410 Gone, as an API server restart causes): what was deleted while
            # the watches were broken gets no event, so list every kind ourselves (a kind left with no
            # object shows no relisting of its own), a moment after the relisting began.
            self._relisting = asyncio.get_running_loop().create_task(self._relist(), name="modeldeploy-relist")

    async def _relist(self) -> None:
        try:
            await asyncio.sleep(RELIST_DELAY_SECONDS)
            await self.fill_cache()
        finally:
            self._relisting = None

    def _route_dropped(self, kind: Kind, dropped: list[dict[str, Any]]) -> None:
        """Objects a listing found gone: their owners (or they themselves) are reconciled."""
        for obj in dropped:
            meta = obj.get("metadata") or {}
            owner = meta.get("name") if kind is MODEL_DEPLOYMENT else naming.owner_of(meta.get("labels"))
            if owner:
                self.queue.enqueue((meta.get("namespace") or "", owner))

    async def fill_cache(self, kinds: tuple[Kind, ...] = CACHED_KINDS) -> None:
        """List the cached kinds, all at once. The cache serves a kind from its first listing on, and
        each listing also drops what was deleted while a watch was broken (and reconciles the owners of
        what it dropped). A kind that cannot be listed is read from the API server until a listing
        succeeds (the next resync)."""
        if self.watch_cache is None:
            return
        cluster = self.reconciler.cluster
        scopes = [(kind, namespace) for kind in kinds for namespace in self.namespaces or (None,)]

        async def listing(kind: Kind, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
            return await asyncio.wait_for(cluster.list_all(kind, namespace, watch_selector(kind)), LIST_SECONDS)

        answers = await asyncio.gather(*(listing(*scope) for scope in scopes), return_exceptions=True)
        failed: list[str] = []
        for (kind, namespace), answer in zip(scopes, answers):
            if isinstance(answer, ApiError) and answer.not_found and kind is SERVICE_MONITOR:
                self.watch_cache.kind_missing(kind)
            elif isinstance(answer, BaseException):
                failed.append(f"{kind.plural}{f' in {namespace}' if namespace else ''}: "
                              f"{str(answer) or type(answer).__name__}")
            else:
                self._route_dropped(kind, self.watch_cache.replace(kind, *answer, namespace))
        if failed:
            log.warning("could not list %s to fill the watch cache; these are read from the API server until a "
                        "listing succeeds (the next resync)", "; ".join(failed))

    def _lead(self) -> None:
        metrics.set_leader(True)
        self.queue.open()
        for key in sorted(self.known):  # whatever changed while we stood by
            self.queue.enqueue(key)

    def _stand_by(self, reason: str) -> None:
        self.queue.close()  # at once: no reconcile starts, the ones in flight are cancelled
        metrics.set_leader(False)
        log.warning("leader election: stopped leading, no more reconciles here: %s", reason)

    @property
    def role(self) -> str:
        return "leader" if self.elector is None or self.elector.leading else "standby"

    async def _reconcile(self, key: tuple[str, str]) -> float | None:
        started = time.monotonic()
        try:
            outcome: Outcome = await self.reconciler.reconcile(*key)
        except Exception as error:
            # The previous attempt failed too: the failure persists, so status says so. (A single
            # failure is often a blip that the first retry, a second later, clears.)
            if self.queue.failures(key) >= 1:
                await self.reconciler.report_failure(*key, error)
            raise
        metrics.observe_reconcile(time.monotonic() - started, outcome.result)
        for probe in outcome.probes:
            metrics.record_triton_probe(probe)
        if outcome.result == "deleted":
            self.forget(key)
        else:
            self.conditions[key] = outcome.conditions
        self._publish_conditions()
        return outcome.requeue_after

    def _failed(self, key: tuple[str, str], error: BaseException) -> None:
        reason = type(error).__name__
        metrics.observe_reconcile(0.0, "error", error_reason=getattr(error, "reason", "") or reason)
        if isinstance(error, ApiError):  # the API server's refusal says it all
            log.warning("reconcile of %s/%s failed, will retry: %s", key[0], key[1], error)
        else:  # a bug, or something unforeseen: the traceback is what a person needs
            log.error("reconcile of %s/%s failed, will retry", key[0], key[1], exc_info=error)

    def _publish_conditions(self) -> None:
        counts: dict[tuple[str, str], int] = {}
        for conditions in self.conditions.values():
            for kind, status in conditions.items():
                counts[(kind, status)] = counts.get((kind, status), 0) + 1
        metrics.set_object_conditions(counts)

    def forget(self, key: tuple[str, str]) -> None:
        self.reconciler.forget(*key)
        self.known.discard(key)
        self.conditions.pop(key, None)
        self.queue.forget(key)

    def healthy(self) -> bool:
        if not self.queue.alive:
            return False
        if self.election is not None and self.election.done():  # leader election must never stop
            return False
        if not self.queue.is_open:  # a standby waits by design: that is no stall
            return True
        return not (self.queue.waiting and time.monotonic() - self.queue.last_progress > STALL_SECONDS)


STATE: OperatorState | None = None


def _state() -> OperatorState:
    assert STATE is not None, "operator not started"
    return STATE


@kopf.on.startup(registry=registry)
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf's own bookkeeping lives under our prefix (it writes none with event handlers only).
    settings.persistence.finalizer = f"{naming.PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=naming.PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=naming.PREFIX)
    settings.posting.enabled = False  # our reconciler posts its own, deliberate events
    # Handler label filters are applied in the operator; these make the API server filter instead,
    # so the operator streams only its own children, not every Pod and Service in the cluster.
    for kind in WATCHED_CHILDREN:
        settings.watching.label_selectors[kind.group, kind.version, kind.plural] = watch_selector(kind)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    state = _state()
    state.queue.start()
    state.resync = asyncio.get_running_loop().create_task(_resync_forever(state), name="modeldeploy-resync")
    if state.elector is not None:
        log.info("leader election: %s stands by for the Lease %s/%s", state.elector.identity,
                 state.elector.namespace, state.elector.name)
        state.election = asyncio.get_running_loop().create_task(state.elector.run(), name="modeldeploy-elector")
    # Before any reconcile: keys are enqueued by our watch handlers, and kopf starts its watches only
    # once the startup handlers are done. (A new leader enqueues the keys it knows: none before then.)
    await state.fill_cache()


async def _resync_forever(state: OperatorState) -> None:
    """A periodic safety net; changes normally arrive as watch events within a second."""
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        await state.fill_cache()
        for key in sorted(state.known):
            state.queue.enqueue(key)


@kopf.on.cleanup(registry=registry)
async def shutdown(**_: Any) -> None:
    state = _state()
    if state.resync is not None:
        state.resync.cancel()
    if state._relisting is not None:
        state._relisting.cancel()
    if state.election is not None:
        state.election.cancel()
        await asyncio.gather(state.election, return_exceptions=True)
    if state.elector is not None:
        await state.elector.release()  # closes the queue's gate first, then hands the Lease over
    await state.queue.stop()
    close = getattr(state.health_cache, "close", None)
    if close is not None:
        await close()


@kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="modeldeployment")
async def on_model_deployment(event: dict[str, Any], name: str, namespace: str, **_: Any) -> None:
    state = _state()
    state.observe(MODEL_DEPLOYMENT, event)
    key = (namespace, name)
    if event.get("type") == "DELETED":
        state.forget(key)
        return
    state.known.add(key)
    state.queue.enqueue(key)


def _route_child(labels: dict[str, str], namespace: str, **_: Any) -> None:
    owner = naming.owner_of(labels)
    if owner is not None:
        _state().queue.enqueue((namespace, owner))


def _child_events(kind: Kind) -> Callable[..., None]:
    def on_child(event: dict[str, Any], labels: dict[str, str], namespace: str, **_: Any) -> None:
        _state().observe(kind, event)
        _route_child(labels, namespace)
    return on_child


for _kind in WATCHED_CHILDREN:
    kopf.on.event(_kind.group, _kind.version, _kind.plural, registry=registry, id=f"child-{_kind.plural}",
                  labels={naming.MANAGED_BY: FIELD_MANAGER})(_child_events(_kind))


async def discover_capabilities(cluster: Any) -> ServerCapabilities:
    """What the API server supports of the optional fields we render; said once in the log.

    When the server cannot tell us (OpenAPI unreadable, forbidden by a hardened RBAC, a network
    blip at startup), we assume everything is supported, as `modeldeploy render` does. That keeps
    production working where it matters most: every Kubernetes from 1.27 has these fields, and
    assuming "unsupported" there would silently strip them from every existing child (server-side
    apply removes a field its manager stops sending; here the PDB would lose AlwaysAllow and a
    crash-looping pod could block node drains), only to put them back at the next start. On an
    old server the wrong guess is loud and contained instead: the server-side dry run refuses a
    ModelDeployment's PDB ("field not declared in schema"), so nothing of that ModelDeployment is
    applied and its reconcile fails, logged with the server's message, counted in
    modeldeploy_reconcile_errors_total and retried with backoff; ModelDeployments without a
    disruptionBudget are untouched, and restarting the operator asks the server again.
    """
    try:
        capabilities = await cluster.server_capabilities()
    except Exception as error:  # any failure means "could not tell"
        log.warning("could not read the API server's OpenAPI to learn which optional fields it supports (%s); "
                    "assuming it supports all of them, as current Kubernetes does", error)
        return ServerCapabilities()
    missing = limitations(capabilities)
    for line in missing:
        log.info("%s", line)
    if not missing:
        log.info("this API server supports every optional field modeldeploy sets")
    return capabilities


def _plain_name(namespace: str) -> bool:
    return not any(c in namespace for c in "*?[]!")


def run(*, namespaces: list[str], health_port: int, verbose: bool, lease: LeaseConfig | None = None) -> int:
    """Blocking: runs until SIGTERM/SIGINT, then shuts down cleanly. With `lease`, reconciles only
    while this replica holds that Lease."""
    global STATE
    from modeldeploy.cluster import KubernetesCluster
    from modeldeploy.triton import ReportCache, TritonProbe

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cluster = KubernetesCluster.from_environment()
    capabilities = asyncio.run(discover_capabilities(cluster))  # once, before any reconcile
    cache = ReportCache(TritonProbe())
    if lease is None:
        log.info("leader election is off: this process reconciles from the start (run one at a time)")
    watch_cache = WatchCache() if all(_plain_name(n) for n in namespaces) else None
    if watch_cache is None:  # kopf takes these as patterns; the cache lists namespaces by name
        log.info("namespace patterns given: reconciles read from the API server, not from watch caches")
    reads = CachedCluster(cluster, watch_cache) if watch_cache is not None else cluster
    STATE = OperatorState(Reconciler(reads, cache, capabilities=capabilities), cache, lease=lease,
                          watch_cache=watch_cache, namespaces=tuple(namespaces))
    server = metrics.start_metrics_server(health_port, health=STATE.healthy, role=lambda: _state().role) \
        if health_port else None
    try:
        kopf.run(registry=registry, standalone=True, clusterwide=not namespaces, namespaces=namespaces)
    finally:
        if server is not None:
            server.stop()
        cluster.close()
    return 0
