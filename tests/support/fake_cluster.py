"""An in-memory API server behind the Cluster protocol, keeping the semantics the reconciler relies on.

Modelled on kube-apiserver (behaviour checked against its sources and the server-side-apply docs):

- resourceVersion: one global counter, bumped only when an object really changes (its content or
  its managedFields); a no-op apply or status patch leaves it alone.
- uid, creationTimestamp and metadata.generation=1 on create; generation is bumped by changes
  outside metadata and status (and by marking an object with finalizers as deleting).
- status changes only through the status subresource (patch_status, or set_status for test
  setup); apply, create and update never change it.
- ownerReference garbage collection: deleting an object deletes (recursively) every object whose
  ownerReferences name it once none of its owners is left. Synchronous here; the real garbage
  collector is asynchronous.
- server-side apply (structured-merge-diff's Updater.Apply): the applied configuration is merged
  into the live object: maps by key, associative lists by their keys (the built-in kinds'
  x-kubernetes-list-map-keys: containers, initContainers, volumes, imagePullSecrets, env by
  name, container ports by containerPort+protocol, Service ports by port+protocol, volumeMounts
  by mountPath, ownerReferences by uid, status conditions by type, ...; a key field's default
  counts, so an omitted protocol is TCP), every other list atomic (tolerations, args, HPA metrics,
  all lists of custom resources); element order as typed/merge.go gives it. The applier's field
  set becomes exactly what it sent: the leaves, plus each list element it sent (the element
  itself, its "."). Fields whose value the apply changes are taken from other managers (force),
  fields it sets to the value they already have are shared; fields and elements it owned before,
  no longer sends and nobody owns (an element stays while anyone owns a field in it) are removed
  (an emptied list and emptied maps with it), then the server defaults the object (Deployment
  spec.replicas absent -> 1). Duplicate keys in an apply are refused (422). An Update by
  another actor (update/scale/update_spec) takes ownership of the fields whose value it changes,
  element by element: another manager's env var or sidecar container is theirs, and our apply
  that does not mention it leaves it alone.
- metadata.managedFields on every object in the API server's encoding
  (fieldsType FieldsV1, {"f:spec": {"f:replicas": {}}}, list elements as
  k:{"name":"triton"} with "." for the element itself).

- optimistic concurrency: patch_status with a resource_version and replace_lease (PUT of a whole
  object carrying metadata.resourceVersion) are 409 Conflict unless that is still the stored
  resourceVersion; create_lease of an existing Lease is 409 AlreadyExists; every write that changes
  an object bumps its resourceVersion, so of two writers that read the same version exactly one wins.

Every protocol call is checked against modeldeploy.permissions like the real boundary, and
counted: `requests`/`calls` (all), `writes` (apply without dry run, delete, patch_status,
create_lease, replace_lease, post_event, whether or not the server then refused it), `events`
(posted events).
Test-setup helpers (create, update, update_spec, scale, set_status, delete_as_user, add_secret,
add_pvc, get_now, list_now) are not operator calls and are not counted.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import itertools
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from modeldeploy import FIELD_MANAGER, PLURAL, permissions
from modeldeploy.cluster import event_body
from modeldeploy.kube import HTTP_ROUTE, KIND_BY_NAME, LEASE, MODEL_DEPLOYMENT, ApiError, Kind, kind_not_installed

log = logging.getLogger(__name__)

# Set by the server, never part of anyone's field set.
SYSTEM_METADATA = frozenset({"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                             "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink",
                             "generateName"})
# Built-in kinds whose OpenAPI schema kubernetes-validate knows (a CRD's is not there).
SCHEMA_KINDS = frozenset({"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Pod", "Secret",
                          "PersistentVolumeClaim", "ReplicaSet", "Lease"})
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
DEFAULT_MANAGERS = {"Pod": "kubelet", "Deployment": "kube-controller-manager", "ReplicaSet": "kube-controller-manager",
                    "HorizontalPodAutoscaler": "kube-controller-manager",
                    "PodDisruptionBudget": "kube-controller-manager"}


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- field paths ----------------------------------------------------------------------------

class ElementKey(str):
    """The path segment of one element of an associative list, spelt as the API server spells it in
    FieldsV1: k:{"containerPort":8000,"protocol":"TCP"} (key fields sorted, compact JSON)."""

    fields: tuple[tuple[str, Any], ...]

    def __new__(cls, fields: dict[str, Any]) -> ElementKey:
        items = tuple(sorted(fields.items()))
        self = super().__new__(cls, "k:" + json.dumps(dict(items), separators=(",", ":")))
        self.fields = items
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return ElementKey, (dict(self.fields),)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fields)

    def matches(self, element: Any) -> bool:
        return isinstance(element, dict) and all(element.get(name, KEY_DEFAULTS.get(name)) == value
                                                 for name, value in self.fields)


Path = tuple[str, ...]  # map keys, and ElementKeys for the elements of associative lists

# A key field the element may omit: its schema default counts (ports' protocol).
KEY_DEFAULTS: dict[str, Any] = {"protocol": "TCP"}
# Associative lists of the built-in kinds (x-kubernetes-list-type: map and its list-map-keys in the
# Kubernetes OpenAPI; the same lists carry patchMergeKey for strategic merge). Every other list is
# atomic: tolerations, args, command, capabilities, HPA metrics, ipFamilies, and every list of a
# custom resource (its CRD declares none here).
POD_SPEC_LISTS = {"containers": ("name",), "initContainers": ("name",), "ephemeralContainers": ("name",),
                  "volumes": ("name",), "imagePullSecrets": ("name",), "hostAliases": ("ip",),
                  "topologySpreadConstraints": ("topologyKey", "whenUnsatisfiable"),
                  "resourceClaims": ("name",), "schedulingGates": ("name",)}
CONTAINER_LISTS = {"env": ("name",), "ports": ("containerPort", "protocol"), "volumeMounts": ("mountPath",),
                   "volumeDevices": ("devicePath",), "resizePolicy": ("resourceName",)}
BUILTIN_GROUPS = frozenset({"", "apps", "autoscaling", "policy", "batch"})


@dataclass(frozen=True)
class _Schema:
    """Which lists of one kind are associative, and by which keys."""

    kind: str
    builtin: bool

    @staticmethod
    def of(api_version: str, kind: str) -> _Schema:
        return _Schema(kind, api_version.rpartition("/")[0] in BUILTIN_GROUPS)

    def list_keys(self, path: Path) -> tuple[str, ...] | None:
        names = tuple(p for p in path if not isinstance(p, ElementKey))
        if names == ("metadata", "ownerReferences"):  # ObjectMeta: the same for custom resources
            return ("uid",)
        if not self.builtin or not names:
            return None
        if names == ("status", "conditions"):
            return ("type",)
        if self.kind == "Service" and names == ("spec", "ports"):
            return ("port", "protocol")
        if len(names) >= 2 and names[-2] == "spec" and (self.kind == "Pod" or "template" in names):
            return POD_SPEC_LISTS.get(names[-1])
        if len(names) >= 2 and names[-2] in ("containers", "initContainers", "ephemeralContainers"):
            return CONTAINER_LISTS.get(names[-1])
        return None


def _element_key(element: Any, names: tuple[str, ...], where: Path) -> ElementKey:
    if not isinstance(element, dict) or any(n not in element and n not in KEY_DEFAULTS for n in names):
        raise ApiError(422, "Invalid", f".{'.'.join(_names(where))}: element {json.dumps(element)} lacks its "
                                       f"key field(s) {', '.join(names)}")
    return ElementKey({n: element.get(n, KEY_DEFAULTS.get(n)) for n in names})


def _names(path: Path) -> list[str]:
    return [p for p in path if not isinstance(p, ElementKey)]


def _leaves(value: Any, schema: _Schema, prefix: Path = ()) -> dict[Path, Any]:
    """The field set of a value, as structured-merge-diff computes it: leaf paths through maps by key
    and through associative lists by element key (each element's own path included: its "."),
    atomic lists and empty maps and lists as leaves. Never the root itself."""
    if isinstance(value, dict) and value:
        out: dict[Path, Any] = {}
        for key, item in value.items():
            out.update(_leaves(item, schema, (*prefix, key)))
        return out
    if isinstance(value, list) and value and (names := schema.list_keys(prefix)) is not None:
        out = {}
        for item in value:
            element = _element_key(item, names, prefix)
            if (*prefix, element) in out:
                raise ApiError(422, "Invalid", f".{'.'.join(_names(prefix))}: duplicate entries for key {element}")
            out[(*prefix, element)] = dict(element.fields)
            out.update(_leaves(item, schema, (*prefix, element)))
        return out
    return {prefix: value} if prefix else {}


def _tracked(obj: dict[str, Any]) -> dict[str, Any]:
    """The part of an object field management is about (no apiVersion/kind, no system metadata)."""
    out = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in SYSTEM_METADATA}
    if meta:
        out["metadata"] = meta
    return out


def _is_element(path: Path) -> bool:
    return bool(path) and isinstance(path[-1], ElementKey)


def _overlaps(a: Path, b: Path) -> bool:
    """Two owned paths that one write affects together: equal, or one inside the other's value. A list
    element's own path is not its fields' value: changing a field inside an element leaves the
    element's owner owning the element."""
    n = min(len(a), len(b))
    if a[:n] != b[:n]:
        return False
    return len(a) == len(b) or not _is_element(a if len(a) < len(b) else b)


def _keeps(owned: Path, path: Path) -> bool:
    """Whether owning `owned` keeps `path` in the object: it is `path`, or inside it (an element someone
    still owns a field of stays), or an atomic value `path` is part of."""
    return owned[:len(path)] == path or (path[:len(owned)] == owned and not _is_element(owned))


def _merge(live: Any, config: Any, schema: _Schema, path: Path = ()) -> Any:
    """structured-merge-diff's merge of an applied configuration into the live object: maps by key,
    associative lists by element key (in its order: shared elements in the configuration's order,
    elements only the live object has kept where they were), everything else replaced."""
    if isinstance(live, dict) and isinstance(config, dict) and (live or config):
        out = {k: _merge(v, config[k], schema, (*path, k)) if k in config else copy.deepcopy(v)
               for k, v in live.items()}
        out.update({k: copy.deepcopy(v) for k, v in config.items() if k not in live})
        return out
    names = schema.list_keys(path)
    if names is None or not isinstance(live, list) or not isinstance(config, list) or not (live or config):
        return copy.deepcopy(config)
    lhs = {_element_key(e, names, path): e for e in live}
    rhs = {_element_key(e, names, path): e for e in config}

    def item(key: ElementKey) -> Any:
        if key in lhs and key in rhs:
            return _merge(lhs[key], rhs[key], schema, (*path, key))
        return copy.deepcopy(lhs[key] if key in lhs else rhs[key])

    # typed/merge.go visitListItems, step for step.
    lkeys, rkeys = list(lhs), list(rhs)
    shared = [k for k in rkeys if k in lhs]
    next_shared = shared.pop(0) if shared else None
    merged: set[ElementKey] = set()
    out: list[Any] = []
    li = ri = 0
    while li < len(lkeys) or ri < len(rkeys):
        if li < len(lkeys) and ri < len(rkeys):
            if lkeys[li] == rkeys[ri]:
                merged.add(lkeys[li])
                out.append(item(lkeys[li]))
                li, ri = li + 1, ri + 1
                next_shared = shared.pop(0) if shared else None
                continue
            if lkeys[li] in rhs and next_shared is not None and next_shared != lkeys[li]:
                li += 1  # a shared element, but not the next one in the configuration's order
                continue
        if li < len(lkeys):
            if lkeys[li] not in rhs:
                out.append(item(lkeys[li]))
                li += 1
                continue
            if lkeys[li] in merged:
                li += 1
        if ri < len(rkeys):
            merged.add(rkeys[ri])
            out.append(item(rkeys[ri]))
            if next_shared is not None and next_shared == rkeys[ri]:
                next_shared = shared.pop(0) if shared else None
            ri += 1
    return out


def _child(node: Any, segment: str) -> tuple[Any, Any] | None:
    """(the index or key of `segment` in node, the child) or None."""
    if isinstance(segment, ElementKey):
        if isinstance(node, list):
            return next(((i, e) for i, e in enumerate(node) if segment.matches(e)), None)
        return None
    if isinstance(node, dict) and segment in node:
        return segment, node[segment]
    return None


def _remove_path(obj: dict[str, Any], path: Path) -> None:
    """Remove a field (or a list element) and the maps and lists it leaves empty; keep top-level maps."""
    trail: list[tuple[Any, Any]] = []
    node: Any = obj
    for segment in path:
        found = _child(node, segment)
        if found is None:
            return
        trail.append((node, found[0]))
        node = found[1]
    parent, key = trail.pop()
    del parent[key]
    while trail:
        parent, key = trail.pop()
        if parent[key] in ({}, []) and trail:
            del parent[key]
        else:
            break


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: maps merge, None deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def fields_v1(paths: Iterable[Path]) -> dict[str, Any]:
    """The API server's FieldsV1 encoding of a set of paths: {"f:spec": {"f:replicas": {}}}; a list
    element is k:{...} and "." marks the element itself as owned."""
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for key in path:
            node = node.setdefault(key if isinstance(key, ElementKey) else f"f:{key}", {})
        if _is_element(path):
            node.setdefault(".", {})
    return root


# --- label selectors ------------------------------------------------------------------------

def _selector_terms(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        terms.append(current.strip())
    return terms


def selector_matches(selector: str, labels: dict[str, str] | None) -> bool:
    """Equality- and set-based label selectors: k=v, k==v, k!=v, k, !k, k in (a,b), k notin (a,b)."""
    labels = labels or {}
    for term in _selector_terms(selector or ""):
        if match := re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", term):
            key, op, values = match.group(1), match.group(2), {v.strip() for v in match.group(3).split(",")}
            if (op == "in") != (key in labels and labels[key] in values):
                return False
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


# --- defaulting (the part of the API server's defaulting a reconciler can observe) ----------

def _default_probe(probe: dict[str, Any]) -> None:
    if isinstance(probe.get("httpGet"), dict):
        probe["httpGet"].setdefault("path", "/")
        probe["httpGet"].setdefault("scheme", "HTTP")
    probe.setdefault("timeoutSeconds", 1)
    probe.setdefault("periodSeconds", 10)
    probe.setdefault("successThreshold", 1)
    probe.setdefault("failureThreshold", 3)


def default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("securityContext", {})
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        container.setdefault("resources", {})  # a struct without omitempty: always shown
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        image = container.get("image", "")
        tag = image.rsplit("/", 1)[-1]
        container.setdefault("imagePullPolicy",
                             "Always" if "@" not in image and (":" not in tag or tag.endswith(":latest"))
                             else "IfNotPresent")
        for port in container.get("ports", []):
            port.setdefault("protocol", "TCP")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if isinstance(container.get(probe), dict):
                _default_probe(container[probe])


class _Allocator:
    def __init__(self) -> None:
        self.cluster_ips = (f"10.96.{i // 250}.{i % 250 + 1}" for i in itertools.count(1))
        self.node_ports = itertools.count(30000)


def apply_defaults(obj: dict[str, Any], previous: dict[str, Any] | None, allocator: _Allocator) -> None:
    kind = obj.get("kind")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    if kind == "Deployment":
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxUnavailable", "25%")
            rolling.setdefault("maxSurge", "25%")
        template_spec = spec.get("template", {}).get("spec")
        if isinstance(template_spec, dict):
            default_pod_spec(template_spec)
    elif kind == "Pod":
        default_pod_spec(spec)
    elif kind == "Service":
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        old_spec = (previous or {}).get("spec", {})
        if spec["type"] != "ExternalName":
            if "clusterIP" not in spec:  # allocated once, kept across updates
                spec["clusterIP"] = old_spec.get("clusterIP") or next(allocator.cluster_ips)
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            spec.setdefault("internalTrafficPolicy", "Cluster")
        old_ports = {(p.get("port"), p.get("protocol", "TCP")): p for p in old_spec.get("ports", [])}
        for port in spec.get("ports", []):
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
            if spec["type"] in ("NodePort", "LoadBalancer") and "nodePort" not in port:
                old = old_ports.get((port.get("port"), port["protocol"]), {})
                port["nodePort"] = old.get("nodePort") or next(allocator.node_ports)
        if spec["type"] in ("NodePort", "LoadBalancer"):
            spec.setdefault("externalTrafficPolicy", "Cluster")
    elif kind == "HorizontalPodAutoscaler":
        spec.setdefault("minReplicas", 1)
        if not spec.get("metrics"):
            spec["metrics"] = [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]


# --- the store ------------------------------------------------------------------------------

@dataclass
class _Entry:
    manager: str
    operation: str  # Apply | Update
    subresource: str
    api_version: str
    paths: set[Path] = field(default_factory=set)
    time: str = ""

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {"manager": self.manager, "operation": self.operation, "apiVersion": self.api_version,
                               "time": self.time, "fieldsType": "FieldsV1", "fieldsV1": fields_v1(self.paths)}
        if self.subresource:
            out["subresource"] = self.subresource
        return out


@dataclass
class _Failure:
    verb: str
    kind: Kind | None
    error: ApiError
    times: int
    dry_run: bool | None


@dataclass
class _Stored:
    kind: Kind
    obj: dict[str, Any]
    entries: list[_Entry]


class FakeCluster:
    """The Cluster protocol in memory. See the module docstring for the semantics kept."""

    def __init__(self, *, clock: Callable[[], datetime] = _utc_now, validate_schemas: bool = True,
                 reporting_instance: str = "modeldeploy-test") -> None:
        self.clock = clock
        self.validate_schemas = validate_schemas
        self.reporting_instance = reporting_instance
        self._objects: dict[tuple[str, str, str, str], _Stored] = {}  # (group, kind, namespace, name)
        self._versions = itertools.count(1000)
        self.version = "999"  # the last resourceVersion issued: a listing's
        self._watchers: list[Callable[[Kind, str, dict[str, Any]], None]] = []
        self._uninstalled: set[tuple[str, str]] = set()
        self._failures: list[_Failure] = []
        self._allocator = _Allocator()
        self._validated: set[str] = set()
        self.writes: list[tuple[str, str, str, str]] = []
        self.calls: list[tuple[str, str, str, str]] = []
        self.events: list[dict[str, Any]] = []

    # --- counters -------------------------------------------------------------------------

    @property
    def requests(self) -> int:
        """How many protocol calls were made (reads, dry runs and writes)."""
        return len(self.calls)

    def reset_counters(self) -> None:
        self.writes.clear()
        self.calls.clear()
        self.events.clear()

    # --- kinds ----------------------------------------------------------------------------

    @staticmethod
    def kind_of(obj: dict[str, Any]) -> Kind:
        api_version, name = obj.get("apiVersion") or "", obj.get("kind") or ""
        if not api_version or not name:
            raise ApiError(400, "BadRequest", "Object 'Kind' or 'apiVersion' is missing")
        known = KIND_BY_NAME.get(name)
        if known is not None and known.api_version == api_version:
            return known
        group, _, version = api_version.rpartition("/")
        return Kind(group, version, f"{name.lower()}s", name)

    def uninstall(self, kind: Kind) -> None:
        """The kind's CRD is not installed: its objects go, and every request about it is a 404."""
        for key in [k for k, s in self._objects.items() if (s.kind.group, s.kind.kind) == (kind.group, kind.kind)]:
            if key in self._objects:
                self._remove(key)
        self._uninstalled.add((kind.group, kind.kind))

    def install(self, kind: Kind) -> None:
        self._uninstalled.discard((kind.group, kind.kind))

    def _check_installed(self, kind: Kind) -> None:
        if (kind.group, kind.kind) in self._uninstalled:
            raise kind_not_installed(kind)

    # --- failure injection ----------------------------------------------------------------

    def fail_next(self, verb: str, kind: Kind | None, error: ApiError, *, times: int = 1,
                  dry_run: bool | None = None) -> None:
        """Make the next `times` calls of verb (get, exists, list, apply, delete, patch_status,
        post_event) about kind (None: any kind) fail with error. For apply, dry_run True/False
        limits it to dry runs or real applies; None matches both."""
        self._failures.append(_Failure(verb, kind, error, times, dry_run))

    def fail_next_apply(self, kind: Kind, error: ApiError, *, times: int = 1, dry_run: bool | None = None) -> None:
        self.fail_next("apply", kind, error, times=times, dry_run=dry_run)

    def _maybe_fail(self, verb: str, kind: Kind, dry_run: bool | None = None) -> None:
        for failure in self._failures:
            if failure.verb != verb or (failure.kind is not None and
                                        (failure.kind.group, failure.kind.kind) != (kind.group, kind.kind)):
                continue
            if failure.dry_run is not None and dry_run is not None and failure.dry_run != dry_run:
                continue
            failure.times -= 1
            if failure.times <= 0:
                self._failures.remove(failure)
            raise failure.error

    async def _enter(self, verb: str, kind: Kind, namespace: str, name: str) -> None:
        self.calls.append((verb, kind.kind, namespace, name))
        await asyncio.sleep(0)  # a request is I/O: let other coroutines interleave

    # --- reading (test setup, not counted) ------------------------------------------------

    def _key(self, kind: Kind, namespace: str | None, name: str) -> tuple[str, str, str, str]:
        return (kind.group, kind.kind, namespace or "" if kind.namespaced else "", name)

    def get_now(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        stored = self._objects.get(self._key(kind, namespace, name))
        return copy.deepcopy(stored.obj) if stored else None

    def list_now(self, kind: Kind, namespace: str | None = None, label_selector: str = "") -> list[dict[str, Any]]:
        found = [s.obj for (group, kind_name, ns, _), s in sorted(self._objects.items())
                 if (group, kind_name) == (kind.group, kind.kind) and (namespace is None or ns == namespace)
                 and selector_matches(label_selector, s.obj["metadata"].get("labels"))]
        return copy.deepcopy(found)

    def managed_fields(self, kind: Kind, namespace: str, name: str) -> dict[str, set[Path]]:
        """Field paths per manager (all its operations and subresources together)."""
        stored = self._objects.get(self._key(kind, namespace, name))
        if stored is None:
            return {}
        out: dict[str, set[Path]] = {}
        for entry in stored.entries:
            out.setdefault(entry.manager, set()).update(entry.paths)
        return out

    # --- the protocol ---------------------------------------------------------------------

    async def get(self, kind: Kind, namespace: str, name: str, *, fresh: bool = True) -> dict[str, Any] | None:
        permissions.require(kind.group, kind.plural, "get")
        await self._enter("get", kind, namespace, name)
        self._maybe_fail("get", kind)
        self._check_installed(kind)
        return self.get_now(kind, namespace, name)

    async def exists(self, kind: Kind, namespace: str, name: str) -> bool:
        permissions.require(kind.group, kind.plural, "get")
        await self._enter("exists", kind, namespace, name)
        self._maybe_fail("exists", kind)
        self._check_installed(kind)
        return self._key(kind, namespace, name) in self._objects

    async def list(self, kind: Kind, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        return (await self.list_all(kind, namespace, label_selector))[0]

    async def list_all(self, kind: Kind, namespace: str | None,
                       label_selector: str) -> tuple[list[dict[str, Any]], str]:
        permissions.require(kind.group, kind.plural, "list")
        await self._enter("list", kind, namespace or "", label_selector)
        self._maybe_fail("list", kind)
        self._check_installed(kind)
        return self.list_now(kind, namespace, label_selector), self.version

    async def apply(self, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        kind = self.kind_of(obj)
        meta = obj.get("metadata") or {}
        permissions.require_apply(kind.group, kind.plural, meta.get("ownerReferences"))
        namespace, name = meta.get("namespace") or "", meta.get("name") or ""
        await self._enter("apply_dry_run" if dry_run else "apply", kind, namespace, name)
        if not dry_run:
            self.writes.append(("apply", kind.kind, namespace, name))
        self._maybe_fail("apply", kind, dry_run)
        self._check_installed(kind)
        return self._server_side_apply(kind, copy.deepcopy(obj), FIELD_MANAGER, dry_run=dry_run)

    async def delete(self, kind: Kind, namespace: str, name: str, *, uid: str) -> None:
        permissions.require(kind.group, kind.plural, "delete")
        await self._enter("delete", kind, namespace, name)
        self.writes.append(("delete", kind.kind, namespace, name))
        self._maybe_fail("delete", kind)
        if (kind.group, kind.kind) in self._uninstalled:
            return  # 404: nothing to delete
        stored = self._objects.get(self._key(kind, namespace, name))
        if stored is None or stored.obj["metadata"]["uid"] != uid:
            return  # 404, or 409 precondition failed (another object now): both fine for the caller
        self._delete(self._key(kind, namespace, name))

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any], *,
                           resource_version: str | None = None) -> dict[str, Any]:
        permissions.require(MODEL_DEPLOYMENT.group, f"{PLURAL}/status", "patch")
        await self._enter("patch_status", MODEL_DEPLOYMENT, namespace, name)
        self.writes.append(("patch_status", MODEL_DEPLOYMENT.kind, namespace, name))
        self._maybe_fail("patch_status", MODEL_DEPLOYMENT)
        key = self._key(MODEL_DEPLOYMENT, namespace, name)
        stored = self._objects.get(key)
        if stored is None:
            raise ApiError(404, "NotFound", f'{PLURAL}.{MODEL_DEPLOYMENT.group} "{name}" not found')
        if resource_version and resource_version != stored.obj["metadata"]["resourceVersion"]:
            raise self._conflict(MODEL_DEPLOYMENT, name)
        new = copy.deepcopy(stored.obj)
        new["status"] = copy.deepcopy(status)
        self._commit(key, new, FIELD_MANAGER, "Update", "status")
        return self.get_now(MODEL_DEPLOYMENT, namespace, name)  # type: ignore[return-value]

    async def create_lease(self, lease: dict[str, Any]) -> dict[str, Any]:
        permissions.require(LEASE.group, LEASE.plural, "create")
        meta = lease.get("metadata") or {}
        await self._enter("create_lease", LEASE, meta.get("namespace", ""), meta.get("name", ""))
        self.writes.append(("create_lease", LEASE.kind, meta.get("namespace", ""), meta.get("name", "")))
        self._maybe_fail("create_lease", LEASE)
        if self._key(LEASE, meta.get("namespace"), meta.get("name", "")) in self._objects:
            raise ApiError(409, "AlreadyExists", f'leases.coordination.k8s.io "{meta.get("name")}" already exists')
        self._validate(LEASE, copy.deepcopy(lease))
        return self.create(lease, manager=FIELD_MANAGER)

    async def replace_lease(self, lease: dict[str, Any]) -> dict[str, Any]:
        """PUT: the whole object replaces the stored one; a stale metadata.resourceVersion is 409 Conflict.
        (The API server lets a Lease be updated without one, unconditionally; our boundary never does.)"""
        return await self._replace(LEASE, "replace_lease", lease)

    async def replace_route(self, route: dict[str, Any]) -> dict[str, Any]:
        """PUT of an HTTPRoute, as replace_lease."""
        return await self._replace(HTTP_ROUTE, "replace_route", route)

    async def _replace(self, kind: Kind, verb: str, obj: dict[str, Any]) -> dict[str, Any]:
        permissions.require(kind.group, kind.plural, "update")
        meta = obj.get("metadata") or {}
        await self._enter(verb, kind, meta.get("namespace", ""), meta.get("name", ""))
        self.writes.append((verb, kind.kind, meta.get("namespace", ""), meta.get("name", "")))
        self._maybe_fail(verb, kind)
        self._check_installed(kind)
        if not meta.get("resourceVersion"):
            raise ValueError(f"the cluster boundary replaces a {kind.kind} only with the resourceVersion it read")
        stored = self._objects.get(self._key(kind, meta.get("namespace"), meta.get("name", "")))
        if stored is None:
            raise ApiError(404, "NotFound", f'{self._resource(kind)} "{meta.get("name")}" not found')
        if meta["resourceVersion"] != stored.obj["metadata"]["resourceVersion"]:
            raise self._conflict(kind, meta["name"])
        self._validate(kind, copy.deepcopy(obj))
        return self.update(obj, manager=FIELD_MANAGER)

    def _conflict(self, kind: Kind, name: str) -> ApiError:
        return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {self._resource(kind)} "{name}": the '
                                         f"object has been modified; please apply your changes to the latest "
                                         f"version and try again")

    async def post_event(self, involved: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        permissions.require("", "events", "create")
        meta = involved.get("metadata", {})
        kind = self.kind_of(involved)
        await self._enter("post_event", kind, meta.get("namespace", ""), meta.get("name", ""))
        self.writes.append(("post_event", kind.kind, meta.get("namespace", ""), meta.get("name", "")))
        try:
            self._maybe_fail("post_event", kind)
        except ApiError as error:  # like the real boundary: an event never fails a reconcile
            log.warning("could not post event %s: %s", reason, error)
            return
        self.events.append(event_body(involved, event_type, reason, message,
                                      reporting_instance=self.reporting_instance, now=self.clock()))

    # --- test setup: acting as users and controllers (not counted) ------------------------

    def create(self, obj: dict[str, Any], *, manager: str = "kubectl-create") -> dict[str, Any]:
        """Create an object as a user would (POST). Its status is dropped, as the API server does
        for kinds with a status subresource: use set_status."""
        kind = self.kind_of(obj)
        self._check_installed(kind)
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", "metadata.name: Required value: name or generateName is required")
            meta["name"] = meta["generateName"] + hashlib.sha256(uuid.uuid4().bytes).hexdigest()[:5]
        if kind.namespaced and not meta.get("namespace"):
            raise ApiError(422, "Invalid", "metadata.namespace: Required value")
        key = self._key(kind, meta.get("namespace"), meta["name"])
        if key in self._objects:
            raise ApiError(409, "AlreadyExists", f'{self._resource(kind)} "{meta["name"]}" already exists')
        obj.pop("status", None)
        new = self._new_object(kind, obj)
        apply_defaults(new, None, self._allocator)
        self._objects[key] = _Stored(kind, {}, [])
        self._commit(key, new, manager, "Update", "", created=True)
        return self.get_now(kind, meta.get("namespace"), meta["name"])  # type: ignore[arg-type,return-value]

    def update(self, obj: dict[str, Any], manager: str = "kubectl-edit", *, subresource: str = "") -> dict[str, Any]:
        """An Update by another actor: the HPA controller through the scale subresource, a user's
        kubectl edit. A whole object (one carrying metadata.resourceVersion, e.g. from get_now)
        replaces the stored one (PUT; a stale resourceVersion is a 409); anything else is a JSON
        merge patch (None deletes). Status never changes here. The fields whose value changes
        move to `manager`."""
        kind = self.kind_of(obj)
        meta = obj.get("metadata") or {}
        key = self._key(kind, meta.get("namespace"), meta.get("name", ""))
        stored = self._objects.get(key)
        if stored is None:
            raise ApiError(404, "NotFound", f'{self._resource(kind)} "{meta.get("name")}" not found')
        live = stored.obj
        if meta.get("resourceVersion"):
            if meta["resourceVersion"] != live["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {self._resource(kind)} '
                                                f'"{meta["name"]}": the object has been modified; please apply '
                                                f'your changes to the latest version and try again')
            new = _drop_nulls(_tracked(obj))
        else:
            new = merge_patch(_tracked(live), _tracked(obj))
        new.pop("status", None)
        new["apiVersion"], new["kind"] = live["apiVersion"], live["kind"]
        new["metadata"] = {**{k: v for k, v in live["metadata"].items() if k in SYSTEM_METADATA},
                           **new.get("metadata", {})}
        if "status" in live:
            new["status"] = copy.deepcopy(live["status"])
        if subresource == "scale":
            scaled = copy.deepcopy(live)
            scaled.setdefault("spec", {})["replicas"] = new.get("spec", {}).get("replicas")
            new = scaled
        self._validate_update(kind, live, new)
        apply_defaults(new, live, self._allocator)
        self._commit(key, new, manager, "Update", subresource)
        return self.get_now(kind, meta.get("namespace"), meta["name"]) or {}

    def update_spec(self, kind: Kind, namespace: str, name: str, spec_patch: dict[str, Any], *,
                    manager: str = "kubectl-edit") -> dict[str, Any]:
        """A user edits the spec (a merge patch; None deletes): generation goes up if it changes."""
        return self.update({"apiVersion": kind.api_version, "kind": kind.kind,
                            "metadata": {"name": name, "namespace": namespace}, "spec": spec_patch}, manager)

    def scale(self, kind: Kind, namespace: str, name: str, replicas: int, *,
              manager: str = "kube-controller-manager") -> dict[str, Any]:
        """What the HPA controller does: an Update of spec.replicas through the scale subresource."""
        return self.update({"apiVersion": kind.api_version, "kind": kind.kind,
                            "metadata": {"name": name, "namespace": namespace}, "spec": {"replicas": replicas}},
                           manager, subresource="scale")

    def set_status(self, kind: Kind, namespace: str, name: str, status: dict[str, Any] | None, *,
                   manager: str | None = None) -> dict[str, Any]:
        """Replace an object's status through the status subresource, as its controller (kubelet,
        kube-controller-manager) would. Not an operator write."""
        key = self._key(kind, namespace, name)
        stored = self._objects.get(key)
        if stored is None:
            raise ApiError(404, "NotFound", f'{self._resource(kind)} "{name}" not found')
        new = copy.deepcopy(stored.obj)
        if status is None:
            new.pop("status", None)
        else:
            new["status"] = copy.deepcopy(status)
        self._commit(key, new, manager or DEFAULT_MANAGERS.get(kind.kind, "test-setup"), "Update", "status")
        return self.get_now(kind, namespace, name) or {}

    def delete_as_user(self, kind: Kind, namespace: str, name: str) -> bool:
        """kubectl delete (background propagation): the garbage collector takes the dependents."""
        key = self._key(kind, namespace, name)
        if key not in self._objects:
            return False
        self._delete(key)
        return True

    def add_secret(self, namespace: str, name: str, data: dict[str, str] | None = None) -> dict[str, Any]:
        return self.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
                            "type": "Opaque", "data": data or {}})

    def add_pvc(self, namespace: str, name: str, storage: str = "10Gi") -> dict[str, Any]:
        return self.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                            "metadata": {"name": name, "namespace": namespace},
                            "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": storage}}}})

    def collect_garbage(self) -> list[tuple[str, str, str]]:
        """Delete every object none of whose owners exists any more (by uid). Returns what went."""
        gone: list[tuple[str, str, str]] = []
        while True:
            uids = {s.obj["metadata"]["uid"] for s in self._objects.values()}
            orphans = [k for k, s in self._objects.items()
                       if (refs := s.obj["metadata"].get("ownerReferences"))
                       and not any(r.get("uid") in uids for r in refs)]
            if not orphans:
                return gone
            for key in orphans:
                if key in self._objects:
                    gone.append((key[1], key[2], key[3]))
                    self._delete(key)

    # --- internals ------------------------------------------------------------------------

    @staticmethod
    def _resource(kind: Kind) -> str:
        return f"{kind.plural}.{kind.group}" if kind.group else kind.plural

    def _new_object(self, kind: Kind, content: dict[str, Any]) -> dict[str, Any]:
        meta = {k: v for k, v in (content.get("metadata") or {}).items() if k not in SYSTEM_METADATA}
        src = content.get("metadata") or {}
        new_meta = {"name": src["name"], **({"namespace": src["namespace"]} if kind.namespaced else {}),
                    "uid": str(uuid.uuid4()), "generation": 1, "creationTimestamp": _time(self.clock()), **meta}
        out = {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": new_meta}
        out.update({k: v for k, v in content.items() if k not in ("apiVersion", "kind", "metadata", "status")})
        return _drop_nulls(out)

    def _server_side_apply(self, kind: Kind, obj: dict[str, Any], manager: str, *, dry_run: bool) -> dict[str, Any]:
        meta = obj.get("metadata") or {}
        name, namespace = meta.get("name"), meta.get("namespace")
        if not name:
            raise ApiError(400, "BadRequest", "metadata.name: Required value: name is required for apply")
        if kind.namespaced and not namespace:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match the request")
        if meta.get("managedFields"):
            raise ApiError(400, "BadRequest", "metadata.managedFields must be nil")
        key = self._key(kind, namespace, name)
        stored = self._objects.get(key)
        if meta.get("resourceVersion") and (stored is None or
                                            meta["resourceVersion"] != stored.obj["metadata"]["resourceVersion"]):
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {self._resource(kind)} "{name}": '
                                            f"the object has been modified; please apply your changes to the latest "
                                            f"version and try again")
        config = _drop_nulls(_tracked(obj))
        config.pop("status", None)  # the main resource never writes status
        schema = _Schema.of(kind.api_version, kind.kind)
        applied = set(_leaves(config, schema))

        if stored is None:
            new = self._new_object(kind, obj)
            live = None
        else:
            live = stored.obj
            merged = _merge(_tracked(live), config, schema)
            meta = {k: v for k, v in live["metadata"].items() if k in SYSTEM_METADATA}
            new = {"apiVersion": live["apiVersion"], "kind": live["kind"],
                   "metadata": copy.deepcopy({**meta, **merged.pop("metadata", {})}), **merged}
            last = next((e.paths for e in stored.entries
                         if (e.manager, e.operation, e.subresource) == (manager, "Apply", "")), set())
            others = set().union(*(e.paths for e in stored.entries
                                   if (e.manager, e.operation, e.subresource) != (manager, "Apply", "")))
            # prune: what we applied last time, not now, and nobody (us included) still owns
            gone = {path for path in last - applied if not any(_keeps(o, path) for o in applied | others)}
            for path in sorted(gone, key=len):
                if any(path[:i] in gone for i in range(1, len(path))):
                    continue  # goes with its parent
                if len(path) >= 2 and isinstance(path[-2], ElementKey) and path[-1] in path[-2].names:
                    continue  # an element's key fields go only with the element
                _remove_path(new, path)
        apply_defaults(new, live, self._allocator)
        if live is not None:
            self._validate_update(kind, live, new)
        self._validate(kind, new)
        if dry_run:
            shown = copy.deepcopy(new)
            entries = self._entries_after(stored.entries if stored else [], live, new, manager, "Apply", "",
                                          applied=applied)
            shown["metadata"]["managedFields"] = [e.render() for e in entries]
            return shown
        if stored is None:
            self._objects[key] = _Stored(kind, {}, [])
        self._commit(key, new, manager, "Apply", "", applied=applied, created=stored is None)
        return self.get_now(kind, namespace, name)  # type: ignore[return-value]

    def _entries_after(self, entries: list[_Entry], live: dict[str, Any] | None, new: dict[str, Any], manager: str,
                       operation: str, subresource: str, applied: set[Path] | None = None) -> list[_Entry]:
        """structured-merge-diff's bookkeeping: who owns what after this write."""
        schema = _Schema.of(new["apiVersion"], new["kind"])
        old_leaves = _leaves(_tracked(live), schema) if live is not None else {}
        new_leaves = _leaves(_tracked(new), schema)
        changed = {p for p, v in new_leaves.items() if p not in old_leaves or old_leaves[p] != v}
        removed = {p for p in old_leaves if p not in new_leaves}
        now = _time(self.clock())
        me = (manager, operation, subresource)
        mine = next((e for e in entries if (e.manager, e.operation, e.subresource) == me), None)
        if applied is not None:
            paths = set(applied)
        else:
            paths = ((mine.paths if mine else set()) | changed) - removed
            paths = {p for p in paths if not any(_overlaps(p, r) for r in removed)}
        out: list[_Entry] = []
        for entry in entries:  # the order of entries is kept: reordering would be a change
            if entry is mine:
                if paths:
                    out.append(copy.deepcopy(mine) if mine.paths == paths else
                               _Entry(manager, operation, subresource, new["apiVersion"], paths, now))
                continue
            kept = {p for p in entry.paths if not any(_overlaps(p, c) for c in changed | removed)}
            if kept:
                out.append(_Entry(entry.manager, entry.operation, entry.subresource, entry.api_version, kept,
                                  entry.time))
        if mine is None and paths:
            out.append(_Entry(manager, operation, subresource, new["apiVersion"], paths, now))
        return out

    def _commit(self, key: tuple[str, str, str, str], new: dict[str, Any], manager: str, operation: str,
                subresource: str, *, applied: set[Path] | None = None, created: bool = False) -> None:
        """Store `new` as written by manager: ownership, generation, resourceVersion, finalizers."""
        stored = self._objects[key]
        live = None if created else stored.obj
        entries = self._entries_after(stored.entries, live, new, manager, operation, subresource, applied)
        new = copy.deepcopy(new)
        new["metadata"]["managedFields"] = [e.render() for e in entries]
        if live is not None:
            def content(o: dict[str, Any]) -> dict[str, Any]:
                return {k: v for k, v in o.items() if k not in ("apiVersion", "kind", "metadata", "status")}

            if content(new) != content(live):
                new["metadata"]["generation"] = live["metadata"].get("generation", 1) + 1
            comparable = copy.deepcopy(new)
            comparable["metadata"]["resourceVersion"] = live["metadata"].get("resourceVersion")
            if comparable == live:
                return  # nothing changed: no write, resourceVersion stays
        new["metadata"]["resourceVersion"] = self._next_version()
        stored.obj, stored.entries = new, entries
        self._notify(stored.kind, "ADDED" if created else "MODIFIED", new)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._remove(key)

    def _next_version(self) -> str:
        self.version = str(next(self._versions))
        return self.version

    def watch(self, callback: Callable[[Kind, str, dict[str, Any]], None]) -> None:
        """Call callback(kind, event type, object) for every change from now on, in order, as a watch
        stream would deliver it (ADDED, MODIFIED, DELETED with the deletion's resourceVersion)."""
        self._watchers.append(callback)

    def _notify(self, kind: Kind, event_type: str, obj: dict[str, Any]) -> None:
        for callback in self._watchers:
            callback(kind, event_type, copy.deepcopy(obj))

    def _delete(self, key: tuple[str, str, str, str]) -> None:
        stored = self._objects[key]
        meta = stored.obj["metadata"]
        if meta.get("finalizers"):  # marked as deleting; gone once the last finalizer is removed
            if not meta.get("deletionTimestamp"):
                new = copy.deepcopy(stored.obj)
                new["metadata"]["deletionTimestamp"] = _time(self.clock())
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                new["metadata"]["generation"] = meta.get("generation", 1) + 1
                new["metadata"]["resourceVersion"] = self._next_version()
                stored.obj = new
                self._notify(stored.kind, "MODIFIED", new)
            return
        self._remove(key)

    def _remove(self, key: tuple[str, str, str, str]) -> None:
        """Remove an object, then let the garbage collector act on its dependents."""
        stored = self._objects.pop(key)
        uid = stored.obj["metadata"]["uid"]
        gone = copy.deepcopy(stored.obj)
        gone["metadata"]["resourceVersion"] = self._next_version()
        self._notify(stored.kind, "DELETED", gone)
        uids = {s.obj["metadata"]["uid"] for s in self._objects.values()}
        for dep_key, dep in list(self._objects.items()):
            refs = dep.obj["metadata"].get("ownerReferences") or []
            if not any(r.get("uid") == uid for r in refs) or dep_key not in self._objects:
                continue
            if any(r.get("uid") in uids for r in refs if r.get("uid") != uid):
                new = copy.deepcopy(dep.obj)  # another owner remains: drop the dangling reference
                new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                self._commit(dep_key, new, "kube-controller-manager", "Update", "")
            else:
                self._delete(dep_key)

    def _validate_update(self, kind: Kind, live: dict[str, Any], new: dict[str, Any]) -> None:
        name = live["metadata"]["name"]
        if kind.kind in ("Deployment", "ReplicaSet") and kind.group == "apps":
            old_sel, new_sel = live.get("spec", {}).get("selector"), new.get("spec", {}).get("selector")
            if old_sel != new_sel:
                raise ApiError(422, "Invalid", f'{kind.kind}.apps "{name}" is invalid: spec.selector: Invalid '
                                               f'value: {json.dumps(new_sel)}: field is immutable')
        if kind.kind == "Service" and kind.group == "":
            old_ip, new_ip = live.get("spec", {}).get("clusterIP"), new.get("spec", {}).get("clusterIP")
            if old_ip and new_ip != old_ip:
                raise ApiError(422, "Invalid", f'Service "{name}" is invalid: spec.clusterIP: Invalid value: '
                                               f'"{new_ip}": field is immutable')

    def _validate(self, kind: Kind, obj: dict[str, Any]) -> None:
        """What the API server refuses with 422 Invalid: names, labels, selectors, the schema."""
        meta = obj["metadata"]
        name = meta["name"]
        qualified = f"{kind.kind}.{kind.group}" if kind.group else kind.kind
        problems: list[str] = []
        if kind.kind == "Service" and not kind.group:
            if len(name) > 63 or not DNS1035_LABEL.match(name):
                problems.append(f'metadata.name: Invalid value: "{name}": a DNS-1035 label must consist of lower '
                                f"case alphanumeric characters or '-', start with an alphabetic character, and end "
                                f"with an alphanumeric character")
        elif len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
            problems.append(f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of '
                            f"lower case alphanumeric characters, '-' or '.', and must start and end with an "
                            f"alphanumeric character")
        for where, labels in (("metadata.labels", meta.get("labels")),
                              ("spec.template.metadata.labels",
                               obj.get("spec", {}).get("template", {}).get("metadata", {}).get("labels")
                               if isinstance(obj.get("spec"), dict) else None)):
            for label, value in (labels or {}).items():
                label_name = str(label).rsplit("/", 1)[-1]
                if not LABEL_NAME.match(label_name) or len(label_name) > 63:
                    problems.append(f'{where}: Invalid value: "{label}": name part must consist of alphanumeric '
                                    f"characters, '-', '_' or '.'")
                if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
                    problems.append(f'{where}: Invalid value: "{value}": a valid label must be an empty string or '
                                    f"consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                                    f"with an alphanumeric character (max 63 characters)")
        if kind.kind == "Deployment" and kind.group == "apps":
            selector = (obj.get("spec", {}).get("selector") or {}).get("matchLabels") or {}
            template = obj.get("spec", {}).get("template", {}).get("metadata", {}).get("labels") or {}
            if any(template.get(k) != v for k, v in selector.items()):
                problems.append(f"spec.template.metadata.labels: Invalid value: {json.dumps(template)}: "
                                f"`selector` does not match template `labels`")
        if not problems and self.validate_schemas and kind.kind in SCHEMA_KINDS:
            problems.extend(self._schema_problems(obj))
        if problems:
            raise ApiError(422, "Invalid", f'{qualified} "{name}" is invalid: {", ".join(problems)}')

    def _schema_problems(self, obj: dict[str, Any]) -> list[str]:
        try:
            import kubernetes_validate
        except ImportError:  # optional: only the structural checks above then
            return []
        document = copy.deepcopy(obj)
        document["metadata"].pop("managedFields", None)
        digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
        if digest in self._validated:
            return []
        try:
            kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            return []
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in getattr(error, "path", ()) or ())
            return [f"{path or '<root>'}: Invalid value: {getattr(error, 'message', str(error))}"]
        self._validated.add(digest)
        return []
