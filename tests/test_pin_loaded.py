"""The pin-loaded sidecar: where Triton reads the repository itself (s3://, gs://, as://), each pod's
Triton still serves exactly the version its template names, whatever the repository's version_policy.
And the restricted model-repository API that only the pod's own UID opens.

The pure parts on data; the renderer; then the real tritonserver, started with the operator's flags,
and the sidecar run the way the pod runs it (python3 -c PIN_LOADED_SCRIPT HOST:PORT MODEL VERSION,
with the pod's UID in $MODELDEPLOY_POD_UID).
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from modeldeploy import pin_loaded
from modeldeploy.api import ModelDeployment
from modeldeploy.model_health import VersionState, explain_not_ready
from modeldeploy.pin_loaded import (LOADING, OK, PIN, WAIT, Pinner, Triton, TritonError, backoff_seconds, decide,
                                    pinned_config)
from modeldeploy.render.deployment import (PIN_LOADED_CONTAINER, PIN_LOADED_SCRIPT, pins_loaded_version,
                                           render_deployment)
from modeldeploy.triton import TritonProbe
from modeldeploy.triton_flags import POD_UID_ENV, REPOSITORY_API_HEADER, tritonserver_args
from tests.support.tritonserver import SIMPLE_CONFIG, TritonServer, free_port, start_tritonserver, write_model

HOST = "127.0.0.1"
BASE = SIMPLE_CONFIG.replace("version_policy: { all { } }\n", "")
POLICIES = {
    "none": "",  # Triton's default: latest 1, so only 3 loads
    "all": "version_policy: { all { } }\n",
    "specific13": "version_policy: { specific: { versions: [ 1, 3 ] } }\n",
}
# model -> the version its pod template names
TARGETS = {f"{policy}_v{version}": str(version) for policy in POLICIES for version in (1, 2)}
ENSEMBLE = """\
name: "ens"
platform: "ensemble"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling { step [ { model_name: "part" model_version: -1
  input_map { key: "INPUT0" value: "INPUT0" } output_map { key: "OUTPUT0" value: "OUTPUT0" } } ] }
"""
REFUSED_ABSENT = "at least one version must be available under the version policy of model 'absent'"
RESTRICTED = f"This API is restricted, expecting header '{REPOSITORY_API_HEADER}'"


# --- pure parts -------------------------------------------------------------------------------------

def rows(*states: tuple[str, str]) -> list[dict]:
    return [{"name": "m", "version": v, "state": s} for v, s in states]


@pytest.mark.parametrize(("index", "action"), [
    (rows(("2", "READY")), OK),
    (rows(("1", "UNAVAILABLE"), ("2", "READY"), ("3", "UNLOADING")), OK),  # just pinned
    (rows(("3", "READY")), PIN),  # latest 1
    (rows(("1", "READY"), ("2", "READY"), ("3", "READY")), PIN),  # all: 2 is among them
    (rows(("2", "READY"), ("3", "READY")), PIN),
    (rows(("2", "UNAVAILABLE"), ("3", "UNAVAILABLE")), WAIT),  # a failed load: Triton's index explains
    (rows(("2", "LOADING"), ("3", "READY")), LOADING),
    ([{"name": "m"}], WAIT),  # in the repository, never loaded
    ([{"name": "other", "version": "1", "state": "READY"}], WAIT),  # not in the repository
    ({"not": "a list"}, WAIT),
])
def test_what_the_sidecar_does_from_the_index(index, action):
    assert decide(index, "m", "2")[0] == action


def test_what_it_says():
    assert decide(rows(("3", "READY"), ("10", "READY")), "m", "2") == (
        PIN, "m has versions 3, 10 ready, not exactly 2")
    assert decide(rows(("2", "READY")), "m", "2") == (OK, "m serves exactly version 2")


def test_the_pinned_config_is_the_full_config_with_one_version():
    config = {"name": "m", "version_policy": {"latest": {"num_versions": 1}}, "max_batch_size": 8,
              "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}]}
    pinned = pinned_config(config, "2")
    assert pinned == {**config, "version_policy": {"specific": {"versions": [2]}}}
    assert config["version_policy"] == {"latest": {"num_versions": 1}}  # not changed in place


def test_refused_loads_back_off():
    assert [backoff_seconds(n) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]


class ScriptedTriton:
    """A Triton that answers what a test scripts (the real one is below)."""

    def __init__(self, index: list[dict], refuse: bool = False) -> None:
        self.base, self.index_rows, self.refuse, self.loaded_with = "http://fake", index, refuse, []

    def index(self) -> list[dict]:
        if self.index_rows is None:
            raise ConnectionRefusedError("refused")
        return self.index_rows

    def config(self, model: str) -> dict:
        return {"name": model, "version_policy": {"all": {}}}

    def load(self, model: str, config: dict) -> None:
        self.loaded_with.append(config)
        if self.refuse:
            raise TritonError(400, "load failed for model 'm': at least one version must be available under the "
                                   "version policy of model 'm'")


def test_a_refused_load_is_tried_again_after_a_backoff_not_in_a_loop():
    now = [0.0]
    said: list[str] = []
    triton = ScriptedTriton(rows(("3", "READY")), refuse=True)
    pinner = Pinner(triton, "m", "9", clock=lambda: now[0], say=said.append)
    assert pinner.step() == pin_loaded.INTERVAL_SECONDS and pinner.loads == 1
    for _ in range(5):  # every 10 s, for 9 s: asked, not loaded
        now[0] += 1.8
        pinner.step()
    assert pinner.loads == 1
    now[0] = 10.0
    pinner.step()
    assert pinner.loads == 2 and pinner.retry_at == 30.0  # then 20 s, 40 s, …
    assert said[1] == ("Triton refused to load version 9 of m: load failed for model 'm': at least one version "
                       "must be available under the version policy of model 'm'; trying again in 10s")
    # Triton went away and came back: a new server, pinned at once.
    triton.index_rows = None
    assert pinner.step() == pin_loaded.WAITING_INTERVAL_SECONDS
    triton.index_rows = rows(("3", "READY"))
    pinner.step()
    assert pinner.loads == 3


def test_a_load_that_is_accepted_but_changes_nothing_is_not_repeated_at_once():
    now = [0.0]
    said: list[str] = []
    triton = ScriptedTriton(rows(("3", "READY")))  # accepts every load, keeps serving 3
    pinner = Pinner(triton, "m", "2", clock=lambda: now[0], say=said.append)
    assert pinner.step() == 0.0 and pinner.loads == 1
    for _ in range(5):
        pinner.step()
    assert pinner.loads == 1 and pinner.retry_at == 10.0
    assert said[-1] == ("Triton accepted the pinned config, yet m has version 3 ready, not exactly 2; "
                        "trying again in 10s")


def test_a_pinned_triton_is_only_asked_and_said_once():
    said: list[str] = []
    triton = ScriptedTriton(rows(("2", "READY")))
    pinner = Pinner(triton, "m", "2", say=said.append)
    for _ in range(3):
        assert pinner.step() == pin_loaded.INTERVAL_SECONDS
    assert triton.loaded_with == [] and said == ["m serves exactly version 2"]


def test_the_sidecar_is_ready_only_once_it_has_done_its_part(tmp_path):
    """Its readiness (the settled file) tells the operator when "version not loaded" on the pod is
    Triton's last word rather than the repository's own policy before the pin."""
    marker = tmp_path / "settled"
    now = [0.0]
    triton = ScriptedTriton(None)
    pinner = Pinner(triton, "m", "2", clock=lambda: now[0], say=lambda _: None, settled_file=str(marker))
    pinner.step()
    assert not marker.exists()  # Triton not up yet
    triton.index_rows = rows(("3", "LOADING"))
    pinner.step()
    assert not marker.exists()  # its startup load is under way
    triton.index_rows = rows(("3", "READY"))
    assert pinner.step() == 0.0 and not marker.exists()  # the pinned load was sent; not yet seen to work
    triton.index_rows = rows(("2", "READY"), ("3", "UNLOADING"))
    pinner.step()
    assert marker.read_text() == "m 2\n"
    triton.index_rows = None  # the Triton container restarts: a new server to pin
    pinner.step()
    assert not marker.exists()
    triton.index_rows, triton.refuse = rows(("3", "READY")), True
    pinner.step()
    assert marker.exists() and pinner.loads == 2  # refused (no version 2): nothing more it can do
    triton.index_rows = [{"name": "m", "version": "2", "state": "UNAVAILABLE", "reason": "bad weights"}]
    pinner.step()
    assert marker.exists()  # a failed load: Triton's index says why


def test_the_program_is_the_standard_library_only_and_runs_on_older_pythons():
    tree = ast.parse(PIN_LOADED_SCRIPT, feature_version=(3, 8))  # Triton images have their distribution's python3
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported
    assert PIN_LOADED_SCRIPT == Path(pin_loaded.__file__).read_text()
    # Its own copies of the flags' names, since it imports nothing of the package.
    assert (pin_loaded.HEADER, pin_loaded.POD_UID_ENV) == (REPOSITORY_API_HEADER, POD_UID_ENV)


def run_sidecar(*args: str, pod_uid: str = "", log: Path | None = None) -> subprocess.Popen:
    """Exactly what the sidecar container runs: python3 -c <the rendered script> HOST:PORT MODEL VERSION."""
    env = {**os.environ, POD_UID_ENV: pod_uid}
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - the child holds it
    try:
        return subprocess.Popen([sys.executable, "-c", PIN_LOADED_SCRIPT, *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
    finally:
        if log:
            out.close()


def test_the_program_checks_its_arguments_and_leaves_on_sigterm(tmp_path):
    assert subprocess.run([sys.executable, "-c", PIN_LOADED_SCRIPT, "x"], capture_output=True).returncode == 2
    log, port = tmp_path / "sidecar.log", free_port()
    sidecar = run_sidecar(f"{HOST}:{port}", "m", "1", pod_uid="uid", log=log)  # nothing listens there
    deadline = time.monotonic() + 10
    while "waiting for Triton" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    sidecar.send_signal(signal.SIGTERM)  # as PID 1 of its container it would otherwise ignore it
    assert sidecar.wait(timeout=5) == 0
    assert log.read_text().splitlines()[:2] == [
        f"modeldeploy: keeping m at exactly version 1 on Triton at http://{HOST}:{port}",
        f"modeldeploy: waiting for Triton at http://{HOST}:{port} ([Errno 111] Connection refused)"]


# --- the renderer -----------------------------------------------------------------------------------

def md(repository: str, **model: str) -> ModelDeployment:
    return ModelDeployment.model_validate({
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {"model": {"repository": repository, "version": "2", **model}}})


CLOUD = {"s3": md("s3://bucket/triton"), "gs": md("gs://bucket/triton"), "as": md("as://account/container/triton")}
LOCAL = {"pvc": md("pvc://claim/triton"), "https": md("https://h/r.tar.gz", sha256="a" * 64)}
UID_ENV = {"name": POD_UID_ENV, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.uid"}}}


def containers(model_deployment: ModelDeployment) -> dict[str, dict]:
    spec = render_deployment(model_deployment, replicas=1)["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["containers"]}


@pytest.mark.parametrize("scheme", CLOUD)
def test_cloud_repositories_get_the_sidecar(scheme):
    rendered = containers(CLOUD[scheme])
    assert pins_loaded_version(CLOUD[scheme]) and list(rendered) == ["triton", PIN_LOADED_CONTAINER]
    sidecar = rendered[PIN_LOADED_CONTAINER]
    assert sidecar["image"] == rendered["triton"]["image"]
    assert sidecar["command"] == ["python3", "-c", PIN_LOADED_SCRIPT]
    assert sidecar["args"] == ["127.0.0.1:8000", "m", "2"]
    assert sidecar["env"] == [UID_ENV]
    assert sidecar["securityContext"]["runAsNonRoot"] is True and sidecar["securityContext"]["capabilities"] == {
        "drop": ["ALL"]}
    assert sidecar["readinessProbe"]["exec"]["command"] == ["test", "-e", pin_loaded.SETTLED_FILE]


@pytest.mark.parametrize("scheme", [*CLOUD, *LOCAL])
def test_every_pod_restricts_the_repository_api_to_its_own_uid(scheme):
    model_deployment = {**CLOUD, **LOCAL}[scheme]
    triton = containers(model_deployment)["triton"]
    assert triton["env"][0] == UID_ENV
    key = f"model-repository:modeldeploy-pod-uid=$({POD_UID_ENV})"
    assert f"--http-restricted-api={key}" in triton["args"]
    assert f"--grpc-restricted-protocol={key}" in triton["args"]
    if scheme in LOCAL:  # the init container pins these; no sidecar
        assert list(containers(model_deployment)) == ["triton"] and not pins_loaded_version(model_deployment)


def test_the_repository_api_key_is_never_empty():
    with pytest.raises(ValueError, match="must not be empty"):
        tritonserver_args(model_repository="/m", model_name="m", repository_api_key="")


# --- the real tritonserver ------------------------------------------------------------------------

def call(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 30) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, headers=headers or {},
                                     method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def ready_versions(server: TritonServer, model: str, versions=(1, 2, 3, 9)) -> list[int]:
    return [v for v in versions if call(f"{server.url}/v2/models/{model}/versions/{v}/ready")[0] == 200]


def infer(server: TritonServer, model: str, version: str) -> list[float]:
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]}
    status, text = call(f"{server.url}/v2/models/{model}/versions/{version}/infer", json.dumps(body).encode(),
                        {"Content-Type": "application/json"})
    assert status == 200, text
    return json.loads(text)["outputs"][0]["data"]


def index_rows(server: TritonServer) -> tuple[VersionState, ...]:
    status, text = call(f"{server.url}/v2/repository/index", b"{}", server.repository_api_headers)
    assert status == 200, text
    return tuple(VersionState(r["name"], r.get("version", ""), r.get("state", ""), r.get("reason", ""))
                 for r in json.loads(text))


@pytest.fixture(scope="module")
def cloud_server(tmp_path_factory) -> TritonServer:
    """One server for the module: a model per (policy, version) with versions 1, 2 and 3, `absent`
    (versions 1, 2, 3, no policy; the pod will ask for 9), an ensemble `ens` (versions 1, 2, 3)
    over `part`, and `spare` for the repository API tests."""
    repository = tmp_path_factory.mktemp("cloud") / "repository"
    for model in TARGETS:
        write_model(repository, model, (1, 2, 3), all_versions=False)
        policy = POLICIES[model.rsplit("_", 1)[0]]
        (repository / model / "config.pbtxt").write_text(
            BASE.replace('"simple"', f'"{model}"').replace("max_batch_size: 8\n", f"max_batch_size: 8\n{policy}"))
    write_model(repository, "absent", (1, 2, 3), all_versions=False)
    write_model(repository, "spare", (1,), all_versions=False)
    write_model(repository, "part", (1,), all_versions=False)
    for version in (1, 2, 3):
        (repository / "ens" / str(version)).mkdir(parents=True)
    (repository / "ens" / "config.pbtxt").write_text(ENSEMBLE)
    with start_tritonserver(repository, load_models=(*TARGETS, "absent", "ens", "spare"),
                            startup_timeout=180) as server:
        yield server


@pytest.fixture(scope="module")
def sidecars(cloud_server, tmp_path_factory):
    """A sidecar per model, as pods run them, until every model that can be is pinned: {model: log}."""
    logs = tmp_path_factory.mktemp("sidecars")
    targets = {**TARGETS, "absent": "9", "ens": "1"}
    processes = {model: run_sidecar(f"{HOST}:{cloud_server.http_port}", model, version, pod_uid=cloud_server.pod_uid,
                                    log=logs / f"{model}.log") for model, version in targets.items()}
    started = time.monotonic()
    try:
        pending = {m: v for m, v in targets.items() if m != "absent"}
        while pending and time.monotonic() - started < 120:
            pending = {m: v for m, v in pending.items() if ready_versions(cloud_server, m) != [int(v)]}
            time.sleep(0.2)
        while "trying again" not in (logs / "absent.log").read_text() and time.monotonic() - started < 120:
            time.sleep(0.2)
        assert not pending, {m: (logs / f"{m}.log").read_text() for m in pending}
        yield {model: logs / f"{model}.log" for model in targets}
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for process in processes.values():
            process.wait(timeout=10)


@pytest.mark.triton
@pytest.mark.parametrize("model", TARGETS)
def test_triton_serves_exactly_the_pods_version_whatever_the_policy(cloud_server, sidecars, model):
    version = TARGETS[model]
    assert ready_versions(cloud_server, model) == [int(version)]
    # The whole config survived (inputs, outputs, batching): inference works, as this version.
    assert infer(cloud_server, model, version) == [float(version)] * 4
    status, config = call(f"{cloud_server.url}/v2/models/{model}/config")
    config = json.loads(config)
    assert config["version_policy"] == {"specific": {"versions": [int(version)]}}
    assert [t["name"] for t in config["input"]] == ["INPUT0"] and config["max_batch_size"] == 8
    # Every other version Triton had loaded was unloaded.
    rows = {r.version: (r.state, r.reason) for r in index_rows(cloud_server) if r.name == model}
    assert rows.pop(version) == ("READY", "")
    assert set(rows.values()) <= {("UNAVAILABLE", "unloaded"), ("UNLOADING", "")}
    log = sidecars[model].read_text()
    assert f"pinned {model} to version {version} in " in log or f"{model} serves exactly version {version}" in log


@pytest.mark.triton
def test_an_ensemble_is_pinned_to_its_own_version(cloud_server, sidecars):
    assert ready_versions(cloud_server, "ens") == [1]
    assert infer(cloud_server, "ens", "1") == [1.0] * 4  # its step `part` (latest: 1) is untouched
    assert ready_versions(cloud_server, "part") == [1]


@pytest.mark.triton
async def test_a_version_not_in_the_repository_is_left_explained(cloud_server, sidecars):
    assert ready_versions(cloud_server, "absent") == [3]  # what Triton loaded stays; the probe asks for 9
    assert explain_not_ready("absent", "9", index_rows(cloud_server)) == (
        "VersionNotLoaded", "absent version 9 is not loaded (loaded: 3)")
    report = await TritonProbe().probe(HOST, cloud_server.http_port, "absent", "9", pod_uid=cloud_server.pod_uid)
    assert (report.reason, report.message) == ("VersionNotLoaded", "absent version 9 is not loaded (loaded: 3)")
    log = sidecars["absent"].read_text()
    assert f"Triton refused to load version 9 of absent: load failed for model 'absent': {REFUSED_ABSENT}" in log
    assert log.count("loading absent again") == 1 and "trying again in 10s" in log


@pytest.mark.triton
def test_a_refused_load_against_real_triton_backs_off(cloud_server, sidecars):
    now = [1000.0]
    pinner = Pinner(Triton(f"{HOST}:{cloud_server.http_port}", cloud_server.pod_uid), "absent", "9",
                    clock=lambda: now[0], say=lambda line: None)
    pinner.step()
    pinner.step()
    assert pinner.loads == 1 and pinner.retry_at == 1010.0
    now[0] += 10
    pinner.step()
    assert pinner.loads == 2 and pinner.retry_at == 1030.0
    assert ready_versions(cloud_server, "absent") == [3]


@pytest.mark.triton
@pytest.mark.parametrize("path", ["/v2/repository/index", "/v2/repository/models/spare/unload",
                                  "/v2/repository/models/spare/load"])
def test_the_repository_api_refuses_requests_without_the_pods_uid(cloud_server, path):
    for headers in ({}, {REPOSITORY_API_HEADER: "another-pod"}, {REPOSITORY_API_HEADER: cloud_server.pod_uid.upper()}):
        assert call(cloud_server.url + path, b"{}", headers) == (403, json.dumps({"error": RESTRICTED},
                                                                                   separators=(",", ":")))
    assert ready_versions(cloud_server, "spare") == [1]
    # The rest of the API is open: health, metadata, config, inference.
    assert call(f"{cloud_server.url}/v2/models/spare/config")[0] == 200
    assert infer(cloud_server, "spare", "1") == [1.0] * 4


@pytest.mark.triton
def test_the_repository_api_answers_the_pods_uid(cloud_server):
    headers = cloud_server.repository_api_headers
    assert call(f"{cloud_server.url}/v2/repository/models/spare/unload", b"{}", headers)[0] == 200
    deadline = time.monotonic() + 20
    while ready_versions(cloud_server, "spare") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready_versions(cloud_server, "spare") == []
    assert call(f"{cloud_server.url}/v2/repository/models/spare/load", b"{}", headers) == (200, "")
    assert ready_versions(cloud_server, "spare") == [1]
    # The header's name is case-insensitive (HTTP), its value is not (above).
    assert call(f"{cloud_server.url}/v2/repository/index", b"{}", {"Modeldeploy-Pod-Uid": cloud_server.pod_uid}
                )[0] == 200


@pytest.mark.triton
def test_grpc_refuses_the_repository_protocol_without_the_pods_uid(cloud_server):
    import tritonclient.grpc as grpcclient  # noqa: PLC0415 - only this test speaks gRPC
    from tritonclient.utils import InferenceServerException  # noqa: PLC0415

    client = grpcclient.InferenceServerClient(f"{HOST}:{cloud_server.grpc_port}")
    try:
        for headers in (None, {REPOSITORY_API_HEADER: cloud_server.pod_uid}):  # gRPC wants the prefixed name
            with pytest.raises(InferenceServerException) as refused:
                client.unload_model("spare", headers=headers)
            assert refused.value.status() == "StatusCode.UNAVAILABLE"
            assert refused.value.message() == ("This protocol is restricted, expecting header "
                                               f"'triton-grpc-protocol-{REPOSITORY_API_HEADER}'")
        assert client.is_model_ready("spare", "1")  # health is not restricted
        key = {f"triton-grpc-protocol-{REPOSITORY_API_HEADER}": cloud_server.pod_uid}
        assert {m["name"] for m in client.get_model_repository_index(headers=key, as_json=True)["models"]} >= {
            "spare"}
    finally:
        client.close()


@pytest.mark.triton
async def test_the_probe_without_the_pods_uid_cannot_read_the_index(cloud_server):
    report = await TritonProbe().probe(HOST, cloud_server.http_port, "absent", "9")
    assert report.reason == "TritonUnreachable" and f"{RESTRICTED} (HTTP 403)" in report.message


@pytest.mark.triton
def test_a_restarted_triton_is_pinned_again(tmp_path):
    repository = tmp_path / "repository"
    write_model(repository, "simple", (1, 2, 3), all_versions=False)
    port = free_port()
    said: list[str] = []
    server = start_tritonserver(repository, load_models=("simple",), http_port=port, pod_uid="pod-x")
    try:
        pinner = Pinner(Triton(f"{HOST}:{port}", "pod-x"), "simple", "2", say=said.append)
        assert ready_versions(server, "simple") == [3]
        started = time.monotonic()
        assert pinner.step() == 0.0 and ready_versions(server, "simple") == [2]
        pinned_in = time.monotonic() - started
        assert pinner.step() == pin_loaded.INTERVAL_SECONDS and pinner.loads == 1
        server.kill()  # the Triton container restarts; the sidecar keeps running
        assert pinner.step() == pin_loaded.WAITING_INTERVAL_SECONDS
        server = start_tritonserver(repository, load_models=("simple",), http_port=port, pod_uid="pod-x")
        assert ready_versions(server, "simple") == [3]  # the repository's policy again
        pinner.step()
        assert ready_versions(server, "simple") == [2] and pinner.loads == 2
        assert infer(server, "simple", "2") == [2.0] * 4
    finally:
        server.kill()
    assert said[0] == "simple has version 3 ready, not exactly 2: loading simple again with its full config and " \
                      "version_policy specific [2]"
    assert said[1].startswith("pinned simple to version 2 in ") and pinned_in < 30
