"""Keep Triton serving exactly one version of one model, from inside the pod, for repositories that
Triton reads itself (s3://, gs://, as://), where no init container can rewrite the model's config.

Triton loads the versions the model's own `version_policy` names, and a load request whose config
override is partial replaces the whole config (inputs and outputs lost). A load request whose
override is the FULL config Triton loaded (GET /v2/models/<m>/config) with only `version_policy`
replaced by `specific [V]` makes Triton load V with everything else kept (inference answers, as V)
and unload every other version; a V that was already loaded keeps answering throughout
(measured on tritonserver 2.51, docs/triton-flags.md).

So this sidecar asks Triton on the pod's loopback, every INTERVAL_SECONDS:
  - Triton does not answer (starting, loading its startup model, restarting): ask again each
    second; a Triton that comes back is a new server, pinned again like the first.
  - exactly V is ready, or no version is ready at all (a failed load, a model not in the
    repository, a load under way): nothing to do; Triton's index explains whatever is wrong.
  - other versions are ready, instead of V or beside it: load the model again with its full
    config pinned to V.
A refused load changes nothing in Triton: a V that is not in the repository ("at least one version
must be available under the version policy") leaves the versions Triton loaded serving and its
index explaining (the operator says VersionNotLoaded: "... version 9 is not loaded (loaded: 3)");
the pod's readiness probe asks for V, so the pod gets no traffic. The load is tried again after a
backoff that doubles up to MAX_BACKOFF_SECONDS, never in a loop.

The sidecar is Ready (its readiness probe looks for SETTLED_FILE) once it has done its part for the
Triton that runs now: exactly V serves, or nothing is left to pin (no version loads, no such model),
or Triton refused the pinned load. Until then Triton may serve the versions of the repository's own
policy, and the operator does not take "V is not loaded" on that pod as the version failing.

The model-repository API answers only requests carrying the pod's UID in the modeldeploy-pod-uid
header (modeldeploy.triton_flags.REPOSITORY_API_HEADER); the UID is in $MODELDEPLOY_POD_UID (the
downward API).

This file is the sidecar's whole program (the renderer embeds its text, run with the Triton
image's python3): standard library only, nothing from the rest of the package.

    python3 pin_loaded.py HOST:PORT MODEL VERSION
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

HEADER = "modeldeploy-pod-uid"
POD_UID_ENV = "MODELDEPLOY_POD_UID"
INTERVAL_SECONDS = 10.0  # how often a pinned Triton is asked again (a restarted container is re-pinned)
WAITING_INTERVAL_SECONDS = 1.0  # while Triton does not answer
MAX_BACKOFF_SECONDS = 300.0
REQUEST_TIMEOUT_SECONDS = 10.0
LOAD_TIMEOUT_SECONDS = 3600.0  # a load answers when it is over, and large models take long
SETTLED_FILE = "/tmp/modeldeploy-pin-settled"  # exists while the sidecar has done its part (its readiness)

OK, WAIT, LOADING, PIN = "ok", "wait", "loading", "pin"
# No usable answer: refused, reset, timed out (URLError is an OSError), cut short, or not JSON.
UNANSWERED = (OSError, ValueError, http.client.HTTPException)


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def decide(index: object, model: str, version: str) -> tuple[str, str]:
    """What to do, from Triton's repository index: (OK | WAIT | LOADING | PIN, why, for the log)."""
    rows = [r for r in index if isinstance(r, dict) and r.get("name") == model] if isinstance(index, list) else []
    states = {str(r.get("version")): str(r.get("state", "")) for r in rows if r.get("version") not in (None, "")}
    ready = sorted((v for v, s in states.items() if s == "READY"), key=_version_key)
    if not rows:
        return WAIT, f"Triton lists no model {model}: nothing to pin (Triton's index says so)"
    if any(s == "LOADING" for s in states.values()):
        return LOADING, f"{model} is loading"
    if not ready:
        return WAIT, f"no version of {model} is ready: nothing to pin (Triton's index says why)"
    if ready == [version]:
        return OK, f"{model} serves exactly version {version}"
    return PIN, f"{model} has version{'s' if len(ready) > 1 else ''} {', '.join(ready)} ready, not exactly {version}"


def pinned_config(config: dict, version: str) -> dict:
    """The model's full config (as Triton reports it) asking for exactly `version`."""
    out = dict(config)
    out["version_policy"] = {"specific": {"versions": [int(version)]}}
    return out


def backoff_seconds(failures: int) -> float:
    """After `failures` refused loads in a row: 10, 20, 40, … seconds, at most MAX_BACKOFF_SECONDS."""
    return min(MAX_BACKOFF_SECONDS, INTERVAL_SECONDS * 2 ** max(0, failures - 1))


class TritonError(Exception):
    """Triton answered with an error status; message is its own error text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Triton:
    """The few HTTP calls the sidecar makes; URLError/OSError when Triton does not answer."""

    def __init__(self, address: str, pod_uid: str) -> None:
        self.base = f"http://{address}"
        self.headers = {HEADER: pod_uid} if pod_uid else {}
        # Triton is on the pod's loopback: never through a proxy an environment may name.
        self._open = urllib.request.build_opener(urllib.request.ProxyHandler({})).open

    def _call(self, path: str, body: object = None, timeout: float = REQUEST_TIMEOUT_SECONDS) -> object:
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers, **({"Content-Type": "application/json"} if data is not None else {}))
        request = urllib.request.Request(self.base + path, data=data, headers=headers,
                                         method="GET" if data is None else "POST")
        try:
            with self._open(request, timeout=timeout) as response:
                text = response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as error:
            text = error.read().decode("utf-8", "replace")
            try:
                message = json.loads(text).get("error", text)
            except (ValueError, AttributeError):
                message = text
            raise TritonError(error.code, str(message).strip()) from None
        return json.loads(text) if text.strip() else None

    def index(self) -> object:
        return self._call("/v2/repository/index", {})

    def config(self, model: str) -> dict:
        config = self._call(f"/v2/models/{urllib.parse.quote(model)}/config")
        if not isinstance(config, dict):
            raise ValueError(f"the config of {model} is not a JSON object")
        return config

    def load(self, model: str, config: dict) -> None:
        self._call(f"/v2/repository/models/{urllib.parse.quote(model)}/load",
                   {"parameters": {"config": json.dumps(config)}}, timeout=LOAD_TIMEOUT_SECONDS)


class Pinner:
    """One step at a time, so tests can drive it: step() returns the seconds to wait before the next."""

    def __init__(self, triton: Triton, model: str, version: str, *, clock=time.monotonic, say=None,
                 settled_file: str | None = None) -> None:
        self.triton, self.model, self.version = triton, model, version
        self.settled_file = settled_file
        self.settled = False
        self.clock = clock
        self.say = say or (lambda line: print(f"modeldeploy: {line}", flush=True))
        self.failures = 0
        self.retry_at = 0.0
        self.loads = 0  # load requests sent, for the log and for tests
        self._last = ""
        self._just_loaded = False

    def _settle(self, settled: bool) -> None:
        """Say (through SETTLED_FILE, the container's readiness) whether this Triton needs nothing more."""
        if settled == self.settled:
            return
        self.settled = settled
        if self.settled_file:
            if settled:
                with open(self.settled_file, "w", encoding="utf-8") as marker:
                    marker.write(f"{self.model} {self.version}\n")
            elif os.path.exists(self.settled_file):
                os.remove(self.settled_file)

    def _tell(self, line: str) -> None:
        if line != self._last:  # the same state every 10 s is said once
            self._last = line
            self.say(line)

    def _refused(self, what: str) -> float:
        self._settle(True)  # Triton said no: what it serves, and why, is for its index to tell
        self.failures += 1
        wait = backoff_seconds(self.failures)
        self.retry_at = self.clock() + wait
        self._tell(f"{what}; trying again in {wait:g}s")
        return INTERVAL_SECONDS

    def step(self) -> float:
        try:
            index = self.triton.index()
        except TritonError as error:
            hint = f" (the {HEADER} header must be the pod's UID, ${POD_UID_ENV})" if error.status == 403 else ""
            self._settle(False)
            self._tell(f"Triton refused its repository index: {error}{hint}")
            return INTERVAL_SECONDS
        except UNANSWERED as error:
            # A Triton that answers again is a new server (a restarted container): pin it at once.
            self._settle(False)
            self.failures, self.retry_at = 0, 0.0
            self._tell(f"waiting for Triton at {self.triton.base} ({getattr(error, 'reason', error)})")
            return WAITING_INTERVAL_SECONDS
        action, why = decide(index, self.model, self.version)
        just_loaded, self._just_loaded = self._just_loaded, False
        if action == PIN and just_loaded:  # accepted, yet not pinned: never load again at once
            return self._refused(f"Triton accepted the pinned config, yet {why}")
        if action != PIN:
            if action == OK:
                self.failures, self.retry_at = 0, 0.0
            # Settled unless a load is under way (its outcome decides); nothing to pin is settled too.
            self._settle(action != LOADING)
            self._tell(why)
            return INTERVAL_SECONDS
        if self.clock() < self.retry_at:
            return min(INTERVAL_SECONDS, max(0.0, self.retry_at - self.clock()))
        self._settle(False)
        try:
            config = self.triton.config(self.model)
        except (TritonError, *UNANSWERED) as error:  # unloaded meanwhile, or Triton went away
            self._tell(f"cannot read the config of {self.model}: {error}")
            return WAITING_INTERVAL_SECONDS
        self.say(f"{why}: loading {self.model} again with its full config and version_policy specific "
                 f"[{self.version}]")
        self._last = ""
        started = self.clock()
        self.loads += 1
        try:
            self.triton.load(self.model, pinned_config(config, self.version))
        except TritonError as error:
            # e.g. 400 "at least one version must be available under the version policy": V is not in
            # the repository. Triton keeps what it loaded, and its index explains.
            return self._refused(f"Triton refused to load version {self.version} of {self.model}: {error.message}")
        except UNANSWERED as error:
            self._tell(f"the load of {self.model} did not answer: {getattr(error, 'reason', error)}")
            return WAITING_INTERVAL_SECONDS
        self.failures, self.retry_at = 0, 0.0
        self._just_loaded = True
        self._tell(f"pinned {self.model} to version {self.version} in {self.clock() - started:.1f}s")
        return 0.0  # look again at once: the index should now say exactly V


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    _, address, model, version = argv
    if not version.isdigit():
        print(f"modeldeploy: version {version!r} is not a positive integer", file=sys.stderr)
        return 2
    # PID 1 of its container ignores SIGTERM unless it handles it: leave at once when the pod stops.
    signal.signal(signal.SIGTERM, lambda signo, frame: sys.exit(0))
    pod_uid = os.environ.get(POD_UID_ENV, "")
    if not pod_uid:
        print(f"modeldeploy: ${POD_UID_ENV} is not set: Triton's repository API will refuse this sidecar",
              file=sys.stderr, flush=True)
    pinner = Pinner(Triton(address, pod_uid), model, version, settled_file=SETTLED_FILE)
    if os.path.exists(SETTLED_FILE):  # left by this container's previous run: that Triton is gone
        os.remove(SETTLED_FILE)
    pinner.say(f"keeping {model} at exactly version {version} on Triton at {pinner.triton.base}")
    while True:
        time.sleep(pinner.step())


if __name__ == "__main__":
    sys.exit(main(sys.argv))
