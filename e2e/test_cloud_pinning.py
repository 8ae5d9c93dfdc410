"""A repository Triton reads itself (s3://, from the S3 server on the node) still serves exactly the
version each pod's template names, whatever the repository's version_policy: the pin-loaded sidecar
loads the model again with its full config pinned to that version. And the pod's model-repository
API answers only its own UID.

Versions 1, 2 and 3 and no version_policy (Triton alone would load only 3): version 1 serves, a
rollout to 2 serves 2, and 9 (absent) is rolled back to 2.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from e2e.conftest import apply, get_json, kubectl, kubectl_wait_ready, model_deployment, pods_of, wait_for
from e2e.test_examples import s3_put, s3_server  # noqa: F401 - s3_server is a fixture
from e2e.test_operator import ConditionWatch, infer, set_version, versions_ready, wait_rolled_back
from modeldeploy.render.deployment import PIN_LOADED_CONTAINER
from modeldeploy.triton_flags import REPOSITORY_API_HEADER
from tests.support.tritonserver import write_model

NAME = "cloudpin"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "e2e-access-key", "AWS_SECRET_ACCESS_KEY": "e2e-secret-key",
               "AWS_DEFAULT_REGION": "us-east-1"}


def serving_pods(namespace: str) -> list[dict[str, Any]]:
    return [p for p in pods_of(namespace, NAME) if p["metadata"].get("deletionTimestamp") is None
            and all(c.get("ready") for c in p["status"].get("containerStatuses") or [{}])]


def repository_index(pod: dict[str, Any], uid: str | None) -> tuple[int, Any]:
    """POST /v2/repository/index on the pod, with the model-repository header set to `uid` (None: without)."""
    headers = {} if uid is None else {REPOSITORY_API_HEADER: uid}
    request = urllib.request.Request(f"http://{pod['status']['podIP']}:8000/v2/repository/index", data=b"{}",
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def ready_in_index(pod: dict[str, Any]) -> list[str]:
    status, index = repository_index(pod, pod["metadata"]["uid"])
    assert status == 200, index
    return sorted(r["version"] for r in index if r["name"] == "simple" and r.get("state") == "READY")


def one_serving_pod(namespace: str) -> dict[str, Any]:
    (pod,) = wait_for("one serving pod", lambda: serving_pods(namespace) if len(serving_pods(namespace)) == 1 else None)
    return pod


def test_an_s3_repository_serves_exactly_each_pods_version(namespace, s3_server, tmp_path):  # noqa: F811
    bucket, prefix = "pinning", "triton"
    s3_put(s3_server, bucket)
    for path in write_model(tmp_path, "simple", (1, 2, 3), all_versions=False).rglob("*"):
        if path.is_file():
            s3_put(s3_server, bucket, f"{prefix}/{path.relative_to(tmp_path)}", path.read_bytes())
    kubectl("create", "secret", "generic", "s3-creds", "-n", namespace,
            *(f"--from-literal={k}={v}" for k, v in CREDENTIALS.items()))
    repository = f"s3://{s3_server}/{bucket}/{prefix}"
    apply(model_deployment(NAME, namespace, model={"name": "simple", "repository": repository, "version": "1",
                                                   "credentialsSecret": "s3-creds"}))
    kubectl_wait_ready(namespace, NAME, timeout=180)

    pod = one_serving_pod(namespace)
    assert [c["name"] for c in pod["spec"]["containers"]] == ["triton", PIN_LOADED_CONTAINER]
    assert versions_ready(pod) == [1] and ready_in_index(pod) == ["1"]
    assert infer(pod["status"]["podIP"], "simple", "1") == [1, 2, 3, 4]
    log = kubectl("logs", pod["metadata"]["name"], "-n", namespace, "-c", PIN_LOADED_CONTAINER).stdout
    assert "pinned simple to version 1 in " in log, log
    # Clients of the pod (the Service's) cannot load, unload or list models; the pod's own UID can.
    assert repository_index(pod, None)[0] == 403
    assert repository_index(pod, "another-pod")[0] == 403

    with ConditionWatch(namespace, NAME, ("Available", "ModelReady")) as watch:
        set_version(namespace, NAME, "2")
        wait_for("version 2 to serve", lambda: (get_json("md", NAME, "-n", namespace) or {}).get(
            "status", {}).get("currentVersion") == "2", timeout=180)
        kubectl_wait_ready(namespace, NAME, timeout=180)
        pod = one_serving_pod(namespace)
        assert versions_ready(pod) == [2] and ready_in_index(pod) == ["2"]
        assert infer(pod["status"]["podIP"], "simple", "2") == [2, 4, 6, 8]
        set_version(namespace, NAME, "9")
        wait_rolled_back(namespace, NAME, failed="9", serving="2")
    assert watch.falses() == [], f"serving was interrupted: {watch.falses()}"
    pod = one_serving_pod(namespace)
    assert versions_ready(pod) == [2] and ready_in_index(pod) == ["2"]
