"""`modeldeploy run`: kopf watches, a work queue, the reconciler. Handlers only route keys.

kopf is used for what it is good at (watch streams, reconnects, namespaces, signals); we
register only event handlers, which make kopf write nothing to the objects: no finalizers,
no progress or diff-base annotations. So a steady state costs no writes at all. The initial
listing of objects is our "resume", ADDED our "create" and MODIFIED our "update".
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import kopf

from modeldeploy import FIELD_MANAGER, GROUP, PLURAL, VERSION, metrics, naming
from modeldeploy.kube import ApiError
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
CHILD_WATCHES = (
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("", "v1", "pods"),
)


class OperatorState:
    """What the handlers share: the queue and the set of known ModelDeployments."""

    def __init__(self, reconciler: Reconciler, health_cache: Any) -> None:
        self.reconciler = reconciler
        self.health_cache = health_cache
        self.known: set[tuple[str, str]] = set()
        self.conditions: dict[tuple[str, str], dict[str, str]] = {}
        self.queue = WorkQueue(self._reconcile, workers=WORKERS, on_error=self._failed)
        self.resync: asyncio.Task[None] | None = None

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
    for group, version, plural in CHILD_WATCHES:
        settings.watching.label_selectors[group, version, plural] = naming.MANAGED_SELECTOR
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    state = _state()
    state.queue.start()
    state.resync = asyncio.get_running_loop().create_task(_resync_forever(state), name="modeldeploy-resync")


async def _resync_forever(state: OperatorState) -> None:
    """A periodic safety net; changes normally arrive as watch events within a second."""
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        for key in sorted(state.known):
            state.queue.enqueue(key)


@kopf.on.cleanup(registry=registry)
async def shutdown(**_: Any) -> None:
    state = _state()
    if state.resync is not None:
        state.resync.cancel()
    await state.queue.stop()
    close = getattr(state.health_cache, "close", None)
    if close is not None:
        await close()


@kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="modeldeployment")
async def on_model_deployment(event: dict[str, Any], name: str, namespace: str, **_: Any) -> None:
    state = _state()
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


for _group, _version, _plural in CHILD_WATCHES:
    kopf.on.event(_group, _version, _plural, registry=registry, id=f"child-{_plural}",
                  labels={naming.MANAGED_BY: FIELD_MANAGER})(_route_child)


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


def run(*, namespaces: list[str], health_port: int, verbose: bool) -> int:
    """Blocking: runs until SIGTERM/SIGINT, then shuts down cleanly."""
    global STATE
    from modeldeploy.cluster import KubernetesCluster
    from modeldeploy.triton import ReportCache, TritonProbe

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cluster = KubernetesCluster.from_environment()
    capabilities = asyncio.run(discover_capabilities(cluster))  # once, before any reconcile
    cache = ReportCache(TritonProbe())
    STATE = OperatorState(Reconciler(cluster, cache, capabilities=capabilities), cache)
    server = metrics.start_metrics_server(health_port, health=STATE.healthy) if health_port else None
    try:
        kopf.run(registry=registry, standalone=True, clusterwide=not namespaces, namespaces=namespaces)
    finally:
        if server is not None:
            server.stop()
        cluster.close()
    return 0
