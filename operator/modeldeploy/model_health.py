"""What Triton said about a pod, and when to ask again. Pure: the triton boundary fills these in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSignature:
    name: str
    platform: str
    backend: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class VersionState:
    """One row of Triton's repository index."""

    name: str
    version: str
    state: str  # READY, UNAVAILABLE, LOADING, UNLOADING, ...
    reason: str


@dataclass(frozen=True)
class PodModelReport:
    reachable: bool  # False: refused, timed out, or went away mid-probe
    live: bool
    server_ready: bool
    version_ready: bool
    reason: str  # CamelCase, "" when ready: TritonUnreachable, ModelLoadFailed, VersionNotLoaded, ModelNotFound, ModelLoading
    message: str  # for humans; for ModelLoadFailed Triton's own error text
    signature: ModelSignature | None = None


def unreachable(host: str, port: int, detail: str) -> PodModelReport:
    return PodModelReport(False, False, False, False, "TritonUnreachable",
                          f"Triton at {host}:{port} did not answer: {detail}")


def explain_not_ready(model: str, version: str, index: tuple[VersionState, ...]) -> tuple[str, str]:
    """Why `version` of `model` is not ready, from the repository index: (reason, message)."""
    rows = [row for row in index if row.name == model]
    if not rows:
        return "ModelNotFound", f"Triton has no model named {model!r} in its repository"
    row = next((r for r in rows if r.version == version), None)
    if row is None:
        loaded = sorted((r.version for r in rows if r.version and r.state == "READY"), key=lambda v: (len(v), v))
        if not loaded and len(rows) == 1 and not rows[0].version and rows[0].reason:
            return "ModelLoadFailed", f"{model}: {first_line(rows[0].reason)}"
        return "VersionNotLoaded", (f"{model} version {version} is not loaded"
                                    + (f" (loaded: {', '.join(loaded)})" if loaded else ""))
    if row.state in ("LOADING",):
        return "ModelLoading", f"{model} version {version} is loading"
    if row.state == "UNAVAILABLE" and row.reason and row.reason != "unloaded":
        return "ModelLoadFailed", f"{model} version {version}: {first_line(row.reason)}"
    return "VersionNotLoaded", f"{model} version {version} is {row.state.lower() or 'not ready'}" + (
        f": {first_line(row.reason)}" if row.reason else "")


def first_line(text: str) -> str:
    """Triton's reasons carry a Python traceback after the error; the status needs the error."""
    return (text.strip().splitlines() or [""])[0].strip()[:300]


def should_probe(cached: PodModelReport | None) -> bool:
    """A READY answer holds until the pod, its IP or the version asked changes (a new key);
    anything else is asked again, since a loading model or a restarting server will change."""
    return cached is None or not (cached.reachable and cached.version_ready)
