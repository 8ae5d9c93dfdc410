"""Reads from watch caches: what the operator already watches answers the reconciler's reads.

The watch streams (kopf's, one per kind, the children and pods filtered by our managed-by label)
deliver every change; `WatchCache` keeps the latest of each object, and `CachedCluster` serves the
reconciler's `get` and `list` from it, so a steady-state reconcile sends no request at all. Writes,
Secret/PVC existence checks and Leases still go to the API server.

How the cache stays right (pure, tested on data in tests/test_cache.py):
- **Order.** kopf runs each object's events in a worker of its own, so a deleted object's last event
  and the ADDED of its same-named successor can arrive in either order. Each key therefore keeps the
  highest resourceVersion seen, deletions included (tombstones), and an older event is dropped.
  resourceVersions are compared as numbers: every API server backed by etcd issues them from one
  increasing counter (the API conventions call them opaque; where one is not a number, the later
  arrival wins).
- **Start and gaps.** Until a kind has been listed (`replace`, at startup and every resync) the
  cache does not serve it and reads go to the API server. A listing replaces the kind's contents,
  which also drops what was deleted while a watch was broken: kopf relists after a 410 Gone (an API
  server restart causes one) but never reports the objects that vanished meanwhile, so the operator
  lists every kind again itself as soon as kopf's relisting shows (events of type None).
- **Our own writes.** What an apply or status patch returns is stored at once (its resourceVersion is
  newer than any event still on its way), so the next reconcile does not see its own write as missing.

A read that lags behind the API server cannot cause a wrong write:
- the children are server-side applied with an intent hash: re-applying an intent the server already
  holds changes nothing;
- a child the cache does not have is looked up on the API server before it is created, so an object
  of someone else's (which lacks our label, so our watch never sees it) is still refused as a conflict;
- status writes carry the resourceVersion read (409 Conflict on a stale object: the reconcile runs
  again when the newer version's event arrives);
- deletes carry the uid precondition.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any

from modeldeploy.kube import DEPLOYMENT, KIND_BY_NAME, MODEL_DEPLOYMENT, ApiError, Cluster, Kind, kind_not_installed

Key = tuple[str, str, str, str]  # (group, kind, namespace, name)
ALL_NAMESPACES = "*"


def _key(kind: Kind, namespace: str, name: str) -> Key:
    return (kind.group, kind.kind, namespace, name)


def _version(obj: dict[str, Any]) -> int | None:
    """The resourceVersion as a number, or None when it is not one."""
    value = (obj.get("metadata") or {}).get("resourceVersion")
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _newer(candidate: int | None, known: int | None) -> bool:
    return candidate is None or known is None or candidate > known


def selector_matches(selector: str, labels: dict[str, str] | None) -> bool:
    """An equality-based label selector ("k=v,k2=v2"), the only kind the reconciler uses."""
    labels = labels or {}
    for term in filter(None, selector.split(",")):
        key, sep, value = term.partition("=")
        if not sep or key.endswith("!"):
            raise ValueError(f"only equality selectors are served from the cache: {selector!r}")
        if labels.get(key.strip()) != value.strip().lstrip("="):
            return False
    return True


def slim(kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
    """The object as cached: managedFields dropped (a large part of an object), except that a Deployment
    keeps which managers own spec.replicas, all that intent.replicas_owned_by_others reads of them."""
    meta = obj.get("metadata") or {}
    if "managedFields" not in meta:
        return obj
    kept = {k: v for k, v in meta.items() if k != "managedFields"}
    if kind.kind == DEPLOYMENT.kind:
        owners = [{"manager": e.get("manager"), "fieldsV1": {"f:spec": {"f:replicas": {}}}}
                  for e in meta["managedFields"] or []
                  if "f:replicas" in ((e.get("fieldsV1") or {}).get("f:spec") or {})]
        if owners:
            kept["managedFields"] = owners
    return {**obj, "metadata": kept}


def _pack(obj: dict[str, Any]) -> bytes:
    """An object as the cache holds it: compact JSON, compressed. Thousands of cached objects then take
    a few KiB each instead of the tens of KiB of their dicts (a Deployment's embedded pin script alone is
    7 KiB), and each read decodes a fresh copy that the caller may change."""
    return zlib.compress(json.dumps(obj, separators=(",", ":")).encode(), 1)


def _unpack(blob: bytes) -> dict[str, Any]:
    return json.loads(zlib.decompress(blob))


@dataclass
class _Entry:
    version: int | None
    blob: bytes | None  # the packed object; None: a tombstone (deleted at `version`)
    uid: str = ""
    labels: dict[str, str] | None = None  # kept unpacked, for label selectors

    @property
    def obj(self) -> dict[str, Any] | None:
        return _unpack(self.blob) if self.blob is not None else None


def _entry(kind: Kind, version: int | None, obj: dict[str, Any]) -> _Entry:
    meta = obj.get("metadata") or {}
    return _Entry(version, _pack(slim(kind, obj)), meta.get("uid") or "", dict(meta.get("labels") or {}))


class WatchCache:
    """The latest seen state of every watched object, by kind, namespace and name."""

    def __init__(self) -> None:
        self._entries: dict[Key, _Entry] = {}
        # Per (group, kind, namespace or ALL_NAMESPACES): the resourceVersion of the last full listing;
        # an event for an object the listing did not have, older than that, is stale.
        self._listed: dict[tuple[str, str, str], int | None] = {}
        self._missing: set[tuple[str, str]] = set()  # kinds whose CRD is not installed (listing gave 404)

    # --- feeding ---------------------------------------------------------------------------

    def observe(self, kind: Kind, event_type: str | None, obj: dict[str, Any]) -> bool:
        """A watch event (ADDED, MODIFIED, DELETED, or None for a listing's object), or the answer to
        our own write. Returns whether it changed what the cache holds (an older event does not)."""
        meta = obj.get("metadata") or {}
        namespace, name = meta.get("namespace") or "", meta.get("name") or ""
        if not name:
            return False
        key = _key(kind, namespace, name)
        version = _version(obj)
        entry = self._entries.get(key)
        if entry is not None and not _newer(version, entry.version):
            return False
        if entry is None and not _newer(version, self._listing_version(kind, namespace)):
            return False  # older than a listing that did not have it: it is gone since
        self._entries[key] = _Entry(version, None) if event_type == "DELETED" else _entry(kind, version, obj)
        return True

    def replace(self, kind: Kind, items: list[dict[str, Any]], list_version: str | None,
                namespace: str | None = None) -> list[dict[str, Any]]:
        """A full listing of kind (in namespace, or everywhere): it replaces what was held, tombstones
        included, except for objects the cache already knows in a newer version than the listing.
        Returns the objects it dropped: deleted while no watch event said so."""
        scope = namespace if namespace is not None else ALL_NAMESPACES
        version = int(list_version) if list_version and list_version.isdigit() else None
        self._missing.discard((kind.group, kind.kind))
        listed = {_key(kind, (i.get("metadata") or {}).get("namespace") or "", i["metadata"]["name"]) for i in items}
        dropped: list[dict[str, Any]] = []
        for key, entry in list(self._entries.items()):
            if key[:2] != (kind.group, kind.kind) or (namespace is not None and key[2] != namespace):
                continue
            # Not listed: deleted, or gone while a watch was broken; unless known in a version the
            # listing predates (then its events, tombstone or not, are the newer truth).
            if key not in listed and (version is None or entry.version is None or entry.version <= version):
                del self._entries[key]
                if entry.blob is not None:
                    dropped.append(_unpack(entry.blob))
        for item in items:
            self.observe(kind, None, item)
        self._listed[(kind.group, kind.kind, scope)] = version
        return dropped

    def deleted(self, kind: Kind, namespace: str, name: str, uid: str) -> None:
        """We deleted this object: it is gone from the cache now, not when (for a kind nobody watches:
        never) the watch says so. Its last known resourceVersion guards against older events."""
        key = _key(kind, namespace, name)
        entry = self._entries.get(key)
        if entry is not None and entry.blob is not None and entry.uid == uid:
            self._entries[key] = _Entry(entry.version, None)

    def kind_missing(self, kind: Kind) -> None:
        """The kind's CRD is not installed: it is served as having no objects."""
        self._missing.add((kind.group, kind.kind))
        for key in [k for k in self._entries if k[:2] == (kind.group, kind.kind)]:
            del self._entries[key]
        self._listed[(kind.group, kind.kind, ALL_NAMESPACES)] = None

    def _listing_version(self, kind: Kind, namespace: str) -> int | None:
        for scope in (namespace, ALL_NAMESPACES):
            version = self._listed.get((kind.group, kind.kind, scope))
            if version is not None:
                return version
        return None

    # --- reading ---------------------------------------------------------------------------

    def serves(self, kind: Kind, namespace: str) -> bool:
        """Whether kind in namespace has been listed, so the cache knows all of its objects there."""
        return any((kind.group, kind.kind, scope) in self._listed for scope in (namespace, ALL_NAMESPACES))

    def is_missing(self, kind: Kind) -> bool:
        return (kind.group, kind.kind) in self._missing

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        entry = self._entries.get(_key(kind, namespace, name))
        return entry.obj if entry is not None else None

    def list(self, kind: Kind, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        return [_unpack(entry.blob) for (group, kind_name, ns, _), entry in sorted(self._entries.items())
                if (group, kind_name, ns) == (kind.group, kind.kind, namespace) and entry.blob is not None
                and selector_matches(label_selector, entry.labels)]


class CachedCluster:
    """The Cluster protocol with get and list answered by a WatchCache for the kinds it has listed.

    `get(..., fresh=True)` always asks the API server (before creating a child the cache lacks)."""

    reads_from_cache = True

    def __init__(self, cluster: Cluster, cache: WatchCache) -> None:
        self.cluster = cluster
        self.cache = cache

    def __getattr__(self, name: str) -> Any:  # exists (Secret, PVC), Leases, events: straight to the API server
        return getattr(self.cluster, name)

    async def get(self, kind: Kind, namespace: str, name: str, *, fresh: bool = False) -> dict[str, Any] | None:
        if not fresh and self.cache.serves(kind, namespace):
            if self.cache.is_missing(kind):
                raise kind_not_installed(kind)
            return self.cache.get(kind, namespace, name)
        try:
            return await self.cluster.get(kind, namespace, name)
        except ApiError as error:
            if error.not_found:  # a 404 that names no object: the kind's CRD is gone since it was listed
                self.cache.kind_missing(kind)
            raise

    async def list(self, kind: Kind, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        if self.cache.serves(kind, namespace) and not self.cache.is_missing(kind):
            return self.cache.list(kind, namespace, label_selector)
        return await self.cluster.list(kind, namespace, label_selector)

    async def apply(self, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        stored = await self.cluster.apply(obj, dry_run=dry_run)
        if not dry_run:
            self.cache.observe(KIND_BY_NAME[obj["kind"]], "MODIFIED", stored)
        return stored

    async def delete(self, kind: Kind, namespace: str, name: str, *, uid: str) -> None:
        await self.cluster.delete(kind, namespace, name, uid=uid)
        self.cache.deleted(kind, namespace, name, uid)

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any], *,
                           resource_version: str | None = None) -> dict[str, Any]:
        stored = await self.cluster.patch_status(namespace, name, status, resource_version=resource_version)
        self.cache.observe(MODEL_DEPLOYMENT, "MODIFIED", stored)
        return stored
