"""Pure: which Kubernetes Events a reconcile should post. Only transitions, never one per reconcile."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


def _names(objs: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{o['kind']} {o['metadata']['name']}" for o in objs)


def events_for(previous: Mapping[str, Any], new: Mapping[str, Any], *, created: Sequence[Mapping[str, Any]] = (),
               updated: Sequence[Mapping[str, Any]] = (), deleted: Sequence[Mapping[str, Any]] = ()) -> list[Event]:
    events: list[Event] = []
    if created:
        events.append(Event("Normal", "Created", f"created {_names(created)}"))
    if updated:
        events.append(Event("Normal", "Updated", f"updated {_names(updated)}"))
    if deleted:
        events.append(Event("Normal", "Deleted", f"deleted {_names(deleted)}: no longer in the spec"))

    old_target, new_target = previous.get("targetVersion", ""), new.get("targetVersion", "")
    if old_target and new_target and old_target != new_target:
        events.append(Event("Normal", "RolloutStarted",
                            f"rolling out version {new_target} (serving {new.get('currentVersion') or old_target})"))
    old_current, new_current = previous.get("currentVersion", ""), new.get("currentVersion", "")
    if new_current and new_current != old_current:
        events.append(Event("Normal", "RolloutComplete", f"version {new_current} serves on every pod"))

    events.extend(_canary_events(previous.get("rollout") or {}, new.get("rollout") or {}))

    old_degraded, new_degraded = _condition(previous, "Degraded"), _condition(new, "Degraded")
    if new_degraded.get("status") == "True" and (old_degraded.get("status") != "True"
                                                 or old_degraded.get("reason") != new_degraded.get("reason")):
        events.append(Event("Warning", new_degraded.get("reason", "Degraded"), new_degraded.get("message", "")))

    old_ready, new_ready = _condition(previous, "Ready"), _condition(new, "Ready")
    if new_ready.get("status") == "True" and old_ready.get("status") != "True":
        events.append(Event("Normal", "ModelServing", new_ready.get("message", "")))
    return events


def _canary_events(previous: Mapping[str, Any], new: Mapping[str, Any]) -> list[Event]:
    """A Canary or BlueGreen step begun, an analysis passed, a promotion. (An abort is Degraded's Warning.)"""
    events: list[Event] = []
    template = new.get("canaryTemplate")
    if template is None:
        return events
    same_rollout = previous.get("canaryTemplate") == template
    if new.get("phase") in ("Progressing", "Paused") and not (same_rollout and previous.get("step") == new.get("step")):
        events.append(Event("Normal", "RolloutStep", f"version {new.get('canaryVersion')}, step {new.get('step')} "
                                                     f"(weight {new.get('weight', 0)}%): {new.get('message', '')}"))
    analysis, before = new.get("analysis") or {}, previous.get("analysis") or {} if same_rollout else {}
    if analysis.get("verdict") == "Pass" and analysis.get("checkedAt") != before.get("checkedAt"):
        events.append(Event("Normal", "AnalysisPassed", f"step {analysis.get('step')}: {analysis.get('message', '')}"))
    if new.get("stableTemplate") == template and previous.get("stableTemplate") != template:
        events.append(Event("Normal", "Promoted", f"version {new.get('canaryVersion')} (pod template {template}) "
                                                  f"is promoted and serves everything"))
    return events
