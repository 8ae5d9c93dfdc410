"""Every README example, applied with its Secret or PVC, becomes Ready on real Triton pods.

The examples' specs (replicas, GPUs or MIG slices, requests and limits, placement, runtime class,
autoscaling, the PDB) are applied as written, in the namespaces they name. Only what points
outside this machine is replaced, and each replacement is named in REPLACED:
- the https archive's host (artifacts.example.com) by an HTTP server on this machine, serving a
  real archive of the same name whose sha256 replaces the example's placeholder;
- the S3 bucket's endpoint by an S3 server on this machine (moto's server mode), in Triton's
  s3://host:port/bucket/path form; the credentials Secret is the example's, with its keys;
- the gs:// bucket by a claim holding the same repository: there is no GCS emulator that Triton
  reaches here (see README, "What the e2e suite does not cover").
"""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import os
import subprocess
import urllib.request
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.conftest import (NODE_GATEWAY, ROOT, apply, delete_namespace, describe, get_json, kubectl,
                          kubectl_wait_ready, model_store, needs_project_node, operator_log, pods_of)
from tests.support.tritonserver import write_model

EXAMPLES = ROOT / "examples"


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text().split("\n---", 1)[0])


def model_of(md: dict[str, Any]) -> tuple[str, str]:
    model = md["spec"]["model"]
    return model.get("name", md["metadata"]["name"]), model["version"]


@pytest.fixture()
def archive_server() -> Iterator[Callable[[str, bytes], str]]:
    """Serves files to the pods from this machine, at the pods' bridge gateway."""
    needs_project_node()
    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((NODE_GATEWAY or "127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def publish(path: str, body: bytes) -> str:
        files[path] = body
        return f"http://{server.server_address[0]}:{server.server_address[1]}{path}"

    try:
        yield publish
    finally:
        server.shutdown()


def repository_archive(workdir: Path, model: str, version: str) -> bytes:
    """A .tar.gz whose root is a model repository holding `model` at `version`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(write_model(workdir, model, (int(version),)), arcname=model)
    return buffer.getvalue()


@pytest.fixture()
def example_namespaces(operator_release: str, request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """The examples' own namespaces, made fresh and removed (with their pods) afterwards."""
    made: list[str] = []
    yield made
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for namespace in made:
        if failed:
            print(f"--- {namespace} ---\n{describe(namespace)}\n--- operator ---\n{operator_log()}")
        delete_namespace(namespace, wait=True)


def in_namespace(md: dict[str, Any], made: list[str]) -> str:
    namespace = md["metadata"]["namespace"]
    if get_json("namespace", namespace) is None:
        kubectl("create", "namespace", namespace)
        made.append(namespace)
    return namespace


def test_every_example_is_covered_here():
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(
        ["autoscaled-with-pdb.yaml", "canary-pvc.yaml", "cpu-python-pvc.yaml", "gpu-onnx-s3.yaml",
         "mig-slice.yaml"])


def pvc_example_as_written(example: str, made: list[str]) -> tuple[dict[str, Any], str]:
    """A pvc:// example applied as written, its claim holding its model; once Ready: (the object, its namespace)."""
    md = load(example)
    namespace = in_namespace(md, made)
    claim, _, subdir = md["spec"]["model"]["repository"].removeprefix("pvc://").partition("/")
    model, version = model_of(md)
    write_model(model_store(namespace, claim, subdir=subdir), model, (int(version),))
    kubectl("apply", "-f", str(EXAMPLES / example))
    kubectl_wait_ready(namespace, md["metadata"]["name"], timeout=180)
    return md, namespace


def test_cpu_python_pvc_as_written(example_namespaces):
    pvc_example_as_written("cpu-python-pvc.yaml", example_namespaces)


def test_canary_pvc_as_written(example_namespaces):
    md, namespace = pvc_example_as_written("canary-pvc.yaml", example_namespaces)
    name = md["metadata"]["name"]
    # The first version is deployed whole, on the first of the two Deployments; the Service selects every pod.
    assert len(pods_of(namespace, name)) == md["spec"]["replicas"]
    assert get_json("deployment", f"{name}-b", "-n", namespace) is None
    assert "modeldeploy.dev/pod-template" not in get_json("svc", name, "-n", namespace)["spec"]["selector"]


def test_mig_slice_from_a_checked_archive(example_namespaces, archive_server, tmp_path):
    md = load("mig-slice.yaml")
    namespace = in_namespace(md, example_namespaces)
    model, version = model_of(md)
    body = repository_archive(tmp_path, model, version)
    # REPLACED: the archive's host and the placeholder sha256 (the path and everything else stay).
    path = "/" + md["spec"]["model"]["repository"].split("://", 1)[1].split("/", 1)[1]
    md["spec"]["model"]["repository"] = archive_server(path, body)
    md["spec"]["model"]["sha256"] = hashlib.sha256(body).hexdigest()
    apply(md)
    name = md["metadata"]["name"]
    kubectl_wait_ready(namespace, name, timeout=180)
    pods = pods_of(namespace, name)
    assert len(pods) == md["spec"]["replicas"]
    assert all(p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "1" for p in pods)


def test_autoscaled_with_pdb(example_namespaces):
    md = load("autoscaled-with-pdb.yaml")
    namespace = in_namespace(md, example_namespaces)
    model, version = model_of(md)
    # REPLACED: gs://acme-models/triton (and its credentials Secret) by a claim with the same repository.
    write_model(model_store(namespace, "acme-models"), model, (int(version),))
    md["spec"]["model"]["repository"] = "pvc://acme-models/triton"
    del md["spec"]["model"]["credentialsSecret"]
    apply(md)
    name = md["metadata"]["name"]
    kubectl_wait_ready(namespace, name, timeout=180)
    hpa = get_json("hpa", name, "-n", namespace)
    assert hpa["spec"]["minReplicas"] == md["spec"]["autoscaling"]["minReplicas"]
    assert get_json("pdb", name, "-n", namespace)["spec"]["maxUnavailable"] == 1
    assert len(pods_of(namespace, name)) == md["spec"]["autoscaling"]["minReplicas"]


@pytest.fixture()
def s3_server() -> Iterator[str]:
    """An S3-compatible server (moto) on this machine, at the pods' bridge gateway: host:port."""
    needs_project_node()
    host = NODE_GATEWAY or "127.0.0.1"
    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    binary = os.environ.get("MODELDEPLOY_E2E_S3_SERVER")
    if not binary:
        pytest.skip("no S3 server: e2e/env/cluster up installs moto's and names it in MODELDEPLOY_E2E_S3_SERVER")
    server = subprocess.Popen([binary, "-H", host, "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex((host, port)) != 0:
            assert time.monotonic() < deadline and server.poll() is None, "moto's S3 server did not start"
            time.sleep(0.2)
        yield f"{host}:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def s3_put(endpoint: str, bucket: str, key: str = "", body: bytes = b"") -> None:
    """A plain PUT: moto's server does not check signatures, and the project needs no S3 client."""
    # urllib would label the body a form, and moto's server would then store it parsed, as nothing.
    request = urllib.request.Request(f"http://{endpoint}/{bucket}/{key}".rstrip("/"), data=body, method="PUT",
                                     headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200, response.status


def test_gpu_onnx_s3_with_its_secret(example_namespaces, s3_server, tmp_path):
    md = load("gpu-onnx-s3.yaml")
    namespace = in_namespace(md, example_namespaces)
    model, version = model_of(md)
    bucket, _, prefix = md["spec"]["model"]["repository"].removeprefix("s3://").partition("/")
    s3_put(s3_server, bucket)
    for path in write_model(tmp_path, model, (int(version),)).rglob("*"):
        if path.is_file():
            s3_put(s3_server, bucket, f"{prefix}/{path.relative_to(tmp_path)}", path.read_bytes())
    credentials = {"AWS_ACCESS_KEY_ID": "e2e-access-key", "AWS_SECRET_ACCESS_KEY": "e2e-secret-key",
                   "AWS_DEFAULT_REGION": "us-east-1"}
    secret = md["spec"]["model"]["credentialsSecret"]
    kubectl("create", "secret", "generic", secret, "-n", namespace,
            *(f"--from-literal={k}={v}" for k, v in credentials.items()))
    # REPLACED: the bucket's endpoint (Triton's s3://host:port/bucket/path form); bucket and path stay.
    md["spec"]["model"]["repository"] = f"s3://{s3_server}/{bucket}/{prefix}"
    apply(md)
    name = md["metadata"]["name"]
    kubectl_wait_ready(namespace, name, timeout=180)
    pods = pods_of(namespace, name)
    assert len(pods) == md["spec"]["replicas"]
    spec = pods[0]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"]["nvidia.com/gpu.product"] == md["spec"]["placement"]["gpuProduct"]
