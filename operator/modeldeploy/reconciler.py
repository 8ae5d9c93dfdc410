"""One reconcile of one ModelDeployment: observe, decide (pure), act through the boundaries.

Reads go through the Cluster protocol and the model-health cache; every decision is made by
pure functions (render, intent, status, events). Writes happen only when something changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from modeldeploy import naming, progressive, rollout, routing
from modeldeploy.analysis import Sample, aggregate, side_deltas, verdict
from modeldeploy.canary import RouteWeights, Scrape
from modeldeploy.errors import InvalidSpec, parse_model_deployment
from modeldeploy.events import Event, events_for
from modeldeploy.intent import Plan, plan, replicas_intent
from modeldeploy.kube import (
    CHILD_SLOTS,
    HTTP_ROUTE,
    KIND_BY_NAME,
    MODEL_DEPLOYMENT,
    POD,
    PVC,
    SECRET,
    SERVICE_MONITOR,
    ApiError,
    Cluster,
    Kind,
    child_key,
)
from modeldeploy.render.capabilities import ServerCapabilities
from modeldeploy.render.deployment import pvc_claim
from modeldeploy.pods import Problem, container_id, is_ready, is_running, is_terminating, pod_version
from modeldeploy.status import STALLED_REASONS, Observed, derive_status, invalid_status
from modeldeploy.triton_flags import HTTP_PORT, METRICS_PORT

log = logging.getLogger(__name__)


# While not Ready, the object is looked at again (Triton asked, Secrets re-checked): first after
# this long, doubling while nothing changes, up to the cap. Changes themselves arrive as watch events.
POLL_FIRST_SECONDS = 3.0
POLL_MAX_SECONDS = 60.0

# A step's own deadline (a pause, an analysis interval) is looked at no sooner than this after a reconcile.
MIN_STEP_REQUEUE_SECONDS = 0.5

# A route write waits this long after a Service it sends to was changed (its endpoints follow).
ROUTE_SETTLE_SECONDS = 2.0

# A status write refused because the object changed since this reconcile read it: look again soon.
CONFLICT_RETRY_SECONDS = 0.1

_KIND_MISSING = object()  # a child kind whose CRD is not installed


def failure_problem(error: BaseException) -> Problem:
    """What a failed reconcile tells the user: the API server's reason and text, or the exception."""
    if isinstance(error, ApiError):
        return Problem(error.reason or "ApiError", f"reconcile failed, retrying with backoff: {error}", False)
    return Problem("ReconcileError", f"reconcile failed, retrying with backoff: {type(error).__name__}: {error}",
                   False)


@dataclass(frozen=True)
class Baseline:
    """An analysis' first scrape: of the target `template`'s rollout, taken at `started_at` (status' clock)."""

    template: str
    started_at: str
    canary: list[Sample]
    stable: list[Sample]


class MetricsScrape(Protocol):
    ok: bool
    text: str | None
    error: str


MetricsScraper = Callable[[str, int], Awaitable[MetricsScrape]]


async def _scrape_through_triton_boundary(host: str, port: int) -> MetricsScrape:
    from modeldeploy.triton import scrape_metrics  # noqa: PLC0415 - the triton boundary, loaded only when used

    return await scrape_metrics(host, port)


class ModelHealth(Protocol):
    async def report(self, pod_uid: str, pod_ip: str, port: int, model: str, version: str, *,
                     container_id: str = "", kubelet_ready: bool | None = None) -> Any: ...

    def retain(self, live_pod_uids: set[str]) -> None: ...


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Changes:
    """Children this reconcile created, updated and deleted (for events)."""

    created: list[dict[str, Any]] = field(default_factory=list)
    updated: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Outcome:
    """What one reconcile did, for the worker (requeue) and for metrics."""

    result: str = "ok"  # ok | invalid | deleted
    requeue_after: float | None = None
    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    status_written: bool = False
    conditions: dict[str, str] = field(default_factory=dict)
    probes: list[str] = field(default_factory=list)  # ready | not_ready | unreachable per probed pod


class Reconciler:
    def __init__(self, cluster: Cluster, health: ModelHealth, *, triton_port: int = HTTP_PORT,
                 clock: Callable[[], str] = utc_now,
                 capabilities: ServerCapabilities = ServerCapabilities(),
                 scrape_metrics: MetricsScraper | None = None, metrics_port: int = METRICS_PORT) -> None:
        self.cluster = cluster
        self.health = health
        self.scrape_metrics = scrape_metrics or _scrape_through_triton_boundary
        self.metrics_port = metrics_port
        # Canary analysis baselines by object: the samples an analysis started from (lost with a restart, which
        # starts the analysis again).
        self._baselines: dict[tuple[str, str], Baseline] = {}
        # What the API server supports of the optional fields we render; learnt once at startup.
        self.capabilities = capabilities
        self.triton_port = triton_port
        self.clock = clock
        self._poll: dict[tuple[str, str], float] = {}  # current poll interval of objects that are not Ready
        self._pods: dict[tuple[str, str], set[str]] = {}  # probed pod uids per object, to prune the cache

    async def reconcile(self, namespace: str, name: str) -> Outcome:
        obj = await self.cluster.get(MODEL_DEPLOYMENT, namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            self.forget(namespace, name)
            return Outcome(result="deleted")  # ownerReferences let the garbage collector remove the children
        previous = obj.get("status") or {}
        try:
            md = parse_model_deployment(obj)
        except InvalidSpec as error:
            problem = Problem("InvalidSpec", "; ".join(error.problems))
            status = invalid_status(obj["metadata"].get("generation"), name, problem, previous, self.clock())
            return await self._finish(obj, previous, status, Outcome(result="invalid"))

        uid = obj["metadata"]["uid"]
        observed, monitor_kind_installed = await self._observe_children(namespace, name)
        # The rollout is decided from what the pods and Triton said before this reconcile acts, so a
        # failed template is rolled back by the same reconcile that sees it fail.
        pods = [p for p in await self.cluster.list(POD, namespace, naming.selector_string(name))
                if not is_terminating(p)]
        outcome = Outcome()
        reports = await self._probe(md, pods, outcome)
        step: progressive.Step | None = None
        side_problems: list[Problem] = []
        route = None
        if progressive.is_progressive(md):
            route, route_weight = await self._read_route(md, previous, observed, side_problems)
            step = await self._decide_progressive(md, previous, observed, pods, reports, route_weight)
            decision = progressive.rollout_decision(step)
            desired = progressive.render(step, owner_uid=uid, capabilities=self.capabilities,
                                         route_weight=route_weight)
            serving = step.serving_slot
        else:
            stable = rollout.stable_template(md, previous.get("rollout") or {})
            slots = progressive.assign_slots(observed, stable.fingerprint if stable is not None else "")
            serving = slots.stable
            decision = rollout.decide(md, previous, observed.get(serving), pods, reports, self.clock())
            desired = progressive.rolling_update_children(
                md, decision.render, slots, replicas_intent(md, observed.get(serving)), owner_uid=uid,
                capabilities=self.capabilities)
        if getattr(self.cluster, "reads_from_cache", False):
            monitor_kind_installed &= await self._confirm_absent(namespace, name, desired, observed)
        if not monitor_kind_installed:
            desired["ServiceMonitor"] = None  # nothing to apply or delete: the kind does not exist
            if md.spec.monitoring.service_monitor:
                side_problems.append(Problem(
                    "ServiceMonitorUnavailable",
                    "monitoring.serviceMonitor is set but the ServiceMonitor kind (Prometheus Operator) is not "
                    "installed", False))
        todo = plan(desired, observed, uid)
        # Checked only before a write: refused then, nothing is half-applied (and a steady state reads nothing).
        problem = await self._preflight(md) if todo.apply or todo.delete else None
        if todo.conflicts:
            problem = Problem("ChildConflict", f"{', '.join(todo.conflicts)} already exists and is not owned by this "
                                               f"ModelDeployment; rename or delete it (modeldeploy never overwrites it)")
        if problem is None:
            problem = await self._dry_run(todo.apply)
        changes = await self._act(name, todo, observed, outcome) if problem is None else Changes()
        if route is not None and step is not None and step.decision.route is not None and problem is None:
            await self._write_route(md, route, step.decision.route, todo, outcome, side_problems)

        other = observed.get(step.beside_slot) if step is not None else None
        status = derive_status(md, Observed(deployment=observed.get(serving), pods=pods, reports=reports,
                                            problem=problem, side_problems=side_problems, other_deployment=other),
                               previous, self.clock(), decision, step.decision if step is not None else None)
        if problem is not None:
            outcome.result = "invalid"
        outcome = await self._finish(obj, previous, status, outcome, changes)
        if decision.recheck_after is not None:
            # Look again when a pod's unhealthy wait would fail the template, not a poll later.
            outcome.requeue_after = min(outcome.requeue_after or POLL_MAX_SECONDS, decision.recheck_after + 1)
        if step is not None and step.decision.requeue_after is not None:
            # A pause, an analysis interval, a deadline or a scale-down delay ends: no watch event says so.
            outcome.requeue_after = min(outcome.requeue_after or POLL_MAX_SECONDS,
                                        max(step.decision.requeue_after, MIN_STEP_REQUEUE_SECONDS))
        return outcome

    async def _read_route(self, md: Any, previous: dict[str, Any], observed: dict[str, Any],
                          side_problems: list[Problem]) -> tuple[dict[str, Any] | None, int | None]:
        """A routed Canary's HTTPRoute and the canary's weight in it, while a rollout needs them; what keeps it
        from being used goes to `side_problems` (the step then waits, and its deadline aborts it)."""
        where = progressive.route_of(md)
        if where is None or not progressive.needs_route(md, previous, observed):
            return None, None
        namespace, name = where
        what = f"rollout.canary.trafficRouting.gatewayAPI: HTTPRoute {namespace}/{name}"
        try:
            route = await self.cluster.get(HTTP_ROUTE, namespace, name, fresh=True)
        except ApiError as error:
            if error.not_found:
                side_problems.append(Problem("GatewayAPIUnavailable", f"{what}: the HTTPRoute kind (Gateway API, "
                                                                      f"{HTTP_ROUTE.api_version}) is not installed",
                                             False))
                return None, None
            if error.status == 403:
                side_problems.append(Problem("Forbidden", f"{what}: {error.message}", False))
                return None, None
            raise
        if route is None:
            side_problems.append(Problem("HTTPRouteNotFound", f"{what} not found", False))
            return None, None
        weight = routing.canary_weight(route, md.name, md.name + naming.CANARY_SUFFIX, md.namespace)
        if weight is None:
            side_problems.append(Problem("HTTPRouteNotRouted", f"{what} has no rule with a backendRef to Service "
                                                               f"{md.namespace}/{md.name}", False))
            return None, None
        return route, weight

    async def _write_route(self, md: Any, route: dict[str, Any], weights: RouteWeights, todo: Plan,
                           outcome: Outcome, side_problems: list[Problem]) -> None:
        """Give the route the decided weights, unless this reconcile changed a Service the route sends to: its
        endpoints follow a moment later, so the route waits for the next look."""
        wanted = routing.with_weights(route, md.name, md.name + naming.CANARY_SUFFIX, md.namespace, weights)
        if wanted == route:
            return
        if any(child["kind"] == "Service" for child in todo.apply):
            outcome.requeue_after = min(outcome.requeue_after or POLL_MAX_SECONDS, ROUTE_SETTLE_SECONDS)
            return
        try:
            await self.cluster.replace_route(wanted)
        except ApiError as error:
            if error.conflict:
                outcome.requeue_after = CONFLICT_RETRY_SECONDS  # someone else wrote it: read it again
                return
            meta = route["metadata"]
            side_problems.append(Problem("Forbidden" if error.status == 403 else error.reason or "HTTPRouteRefused",
                                         f"HTTPRoute {meta['namespace']}/{meta['name']}: {error.message}", False))

    async def _decide_progressive(self, md: Any, previous: dict[str, Any], observed: dict[str, Any],
                                  pods: list[dict[str, Any]], reports: dict[str, Any],
                                  route_weight: int | None) -> progressive.Step:
        """The step machine's decision, with the analysis scrapes it asks for taken through the triton boundary:
        the baseline is kept here (in memory, per object), the verdict is taken against it and decided again
        with (at the same `now`)."""
        now = self.clock()
        key = (md.namespace, md.name)
        held = self._baselines.get(key)
        target = rollout.template_of(md).fingerprint
        baseline_at = held.started_at if held is not None and held.template == target else None
        step = progressive.decide(md, previous, observed, pods, reports, now, baseline_at=baseline_at,
                                  route_weight=route_weight)
        scrape = step.decision.scrape
        if scrape is Scrape.BASELINE and step.decision.state is not None and step.decision.state.analysis:
            canary_pods, stable_pods = step.scrape_sides(pods)
            self._baselines[key] = Baseline(target, step.decision.state.analysis.started_at or now,
                                            await self._sample(canary_pods), await self._sample(stable_pods))
        elif scrape is Scrape.VERDICT and held is not None and baseline_at is not None and step.stable is not None:
            canary_pods, stable_pods = step.scrape_sides(pods)
            thresholds = md.spec.rollout.analysis_or_default.thresholds()
            canary_side = aggregate(side_deltas(held.canary, await self._sample(canary_pods), md.model_name,
                                                step.target.version))
            stable_side = aggregate(side_deltas(held.stable, await self._sample(stable_pods), md.model_name,
                                                step.stable.version))
            step = progressive.decide(md, previous, observed, pods, reports, now, baseline_at=baseline_at,
                                      verdict=verdict(canary_side, stable_side, thresholds), route_weight=route_weight)
        if step.decision.state is None or step.decision.promote:
            self._baselines.pop(key, None)
        return step

    async def _sample(self, pods: list[dict[str, Any]]) -> list[Sample]:
        """One scrape of Triton's metrics on each running pod; a pod that does not answer is left out (it then
        has no interval, and the analysis judges the others)."""
        running = [p for p in pods if is_running(p)]
        scrapes = await asyncio.gather(*(self.scrape_metrics(p["status"]["podIP"], self.metrics_port)
                                         for p in running))
        taken = time.monotonic()
        samples = []
        for pod, scraped in zip(running, scrapes):
            if scraped.ok:
                samples.append(Sample.from_text(pod["metadata"]["name"], taken, scraped.text))
            else:
                log.info("analysis of %s: %s", pod["metadata"]["name"], scraped.error)
        return samples

    async def _act(self, owner: str, todo: Plan, observed: dict[str, Any], outcome: Outcome) -> Changes:
        """Apply and delete as planned; `observed` then holds what the API server stored."""
        changes = Changes()
        for child in todo.apply:
            stored = await self.cluster.apply(child)
            key = child_key(child, owner)
            (changes.updated if observed.get(key) is not None else changes.created).append(stored)
            observed[key] = stored
            outcome.applied.append(child["kind"])
        for child in todo.delete:
            meta = child["metadata"]
            await self.cluster.delete(KIND_BY_NAME[child["kind"]], meta["namespace"], meta["name"], uid=meta["uid"])
            observed[child_key(child, owner)] = None
            changes.deleted.append(child)
            outcome.deleted.append(child["kind"])
        return changes

    async def _observe_children(self, namespace: str, name: str) -> tuple[dict[str, Any], bool]:
        """Each child (by CHILD_SLOTS key) of this object (or None), and whether the ServiceMonitor kind exists."""
        async def one(kind: Kind, suffix: str) -> Any:
            try:
                return await self.cluster.get(kind, namespace, name + suffix)
            except ApiError as error:
                if error.not_found and kind is SERVICE_MONITOR:
                    return _KIND_MISSING
                raise

        found = dict(zip(CHILD_SLOTS, await asyncio.gather(*(one(*slot) for slot in CHILD_SLOTS.values()))))
        monitor_kind_installed = found["ServiceMonitor"] is not _KIND_MISSING
        if not monitor_kind_installed:
            found["ServiceMonitor"] = None
        return found, monitor_kind_installed

    async def _confirm_absent(self, namespace: str, name: str, desired: dict[str, Any],
                              observed: dict[str, Any]) -> bool:
        """Ask the API server about each child to create that the watch cache does not have: someone
        else's object of that name lacks our label, so our watches never see it, and creating over it
        must stay a ChildConflict. (Creates are rare; a steady state has nothing to create.)
        Returns False when this finds the ServiceMonitor kind uninstalled since the cache last listed it."""
        for key, want in desired.items():
            if want is not None and observed.get(key) is None:
                kind, suffix = CHILD_SLOTS[key]
                try:
                    observed[key] = await self.cluster.get(kind, namespace, name + suffix, fresh=True)
                except ApiError as error:
                    if error.not_found and kind is SERVICE_MONITOR:
                        return False
                    raise
        return True

    async def _preflight(self, md: Any) -> Problem | None:
        """Refuse, before any write, what would only fail later inside the pods."""
        secret = md.spec.model.credentials_secret
        if secret and not await self.cluster.exists(SECRET, md.namespace, secret):
            return Problem("SecretNotFound", f"spec.model.credentialsSecret: Secret {md.namespace}/{secret} not found")
        claim = pvc_claim(md)
        if claim and not await self.cluster.exists(PVC, md.namespace, claim):
            return Problem("PVCNotFound",
                           f"spec.model.repository: PersistentVolumeClaim {md.namespace}/{claim} not found")
        return None

    async def _dry_run(self, children: tuple[dict[str, Any], ...]) -> Problem | None:
        """Let the API server validate every change first, so a refusal leaves nothing half-applied."""
        for child in children:
            try:
                await self.cluster.apply(child, dry_run=True)
            except ApiError as error:
                if error.status in (400, 422):
                    meta = child["metadata"]
                    return Problem("InvalidSpec", f"the API server refused {child['kind']} "
                                                  f"{meta['namespace']}/{meta['name']}: {error.message}")
                if error.status == 403:
                    return Problem("Forbidden", f"{child['kind']}: {error.message}")
                raise
        return None

    async def _probe(self, md: Any, pods: list[dict[str, Any]], outcome: Outcome) -> dict[str, Any]:
        running = [p for p in pods if is_running(p)]

        async def one(pod: dict[str, Any]) -> tuple[str, Any]:
            report = await self.health.report(pod["metadata"]["uid"], pod["status"]["podIP"], self.triton_port,
                                              md.model_name, pod_version(pod), container_id=container_id(pod),
                                              kubelet_ready=is_ready(pod))
            outcome.probes.append("unreachable" if not report.reachable else
                                  "ready" if report.version_ready else "not_ready")
            return pod["metadata"]["uid"], report

        reports = dict(await asyncio.gather(*(one(p) for p in running)))
        self._pods[(md.namespace, md.name)] = set(reports)
        self.health.retain(set().union(*self._pods.values()))
        return reports

    def forget(self, namespace: str, name: str) -> None:
        self._poll.pop((namespace, name), None)
        self._baselines.pop((namespace, name), None)
        if self._pods.pop((namespace, name), None) is not None:
            self.health.retain(set().union(*self._pods.values()))

    async def _finish(self, obj: dict[str, Any], previous: dict[str, Any], status: dict[str, Any], outcome: Outcome,
                      changes: Changes | None = None) -> Outcome:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        if status != previous:
            try:  # fenced: only over the object this reconcile read (a stale replica's write gets 409)
                await self.cluster.patch_status(meta["namespace"], meta["name"], status,
                                                resource_version=meta.get("resourceVersion"))
            except ApiError as error:
                if not error.conflict:
                    raise
                log.debug("%s/%s changed since it was read; reconciling it again", *key)
                changes = changes or Changes()  # what was applied did happen: say so; status transitions wait
                for event in events_for(previous, previous, created=changes.created, updated=changes.updated,
                                        deleted=changes.deleted):
                    await self._post(obj, event)
                outcome.requeue_after = CONFLICT_RETRY_SECONDS  # a retry, not a failure: no backoff, no error
                outcome.conditions = {c["type"]: c["status"] for c in previous.get("conditions", [])}
                return outcome
            outcome.status_written = True
        # Nothing to poll for once Ready, or scaled to zero (no pod to ask Triton about): watch events suffice.
        settled = any(c["type"] == "Ready" and (c["status"] == "True" or c.get("reason") == "ScaledToZero")
                      for c in status.get("conditions", []))
        if settled:
            self._poll.pop(key, None)
        else:
            interval = POLL_FIRST_SECONDS if outcome.status_written or key not in self._poll else min(
                self._poll[key] * 2, POLL_MAX_SECONDS)
            self._poll[key] = outcome.requeue_after = interval
        changes = changes or Changes()
        for event in events_for(previous, status, created=changes.created, updated=changes.updated,
                                deleted=changes.deleted):
            await self._post(obj, event)
        outcome.conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        return outcome

    async def report_failure(self, namespace: str, name: str, error: BaseException) -> None:
        """A reconcile that keeps failing says so in status (and, through events_for, in one Warning
        event), with the API server's own text; what is still true of the pods is kept."""
        problem = failure_problem(error)
        try:
            obj = await self.cluster.get(MODEL_DEPLOYMENT, namespace, name)
            if obj is None or obj["metadata"].get("deletionTimestamp"):
                return
            previous = obj.get("status") or {}
            status = invalid_status(obj["metadata"].get("generation"), name, problem, previous, self.clock(),
                                    stalled=problem.reason in STALLED_REASONS)
            await self._finish(obj, previous, status, Outcome(result="error"))
        except Exception as report_error:  # noqa: BLE001 - the reconcile's own failure is what matters
            log.warning("could not write the failure of %s/%s to its status: %s", namespace, name, report_error)

    async def _post(self, obj: dict[str, Any], event: Event) -> None:
        await self.cluster.post_event(obj, event.type, event.reason, event.message)
