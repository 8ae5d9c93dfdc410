"""The pin step: each pod's Triton serves exactly the version its template names, whatever the
repository's version_policy says. The text edit on data, the view on disk, and the real
tritonserver on the view, run the way the init container runs it (python3 -c PIN_SCRIPT)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from modeldeploy.pin_version import build_view, pinned_config, without_top_level_field
from modeldeploy.render.deployment import PIN_SCRIPT
from tests.support.tritonserver import SIMPLE_CONFIG, start_tritonserver, write_model

BASE = SIMPLE_CONFIG.replace("version_policy: { all { } }\n", "")
POLICIES = {
    "none (Triton's default: latest 1)": "",
    "latest 1": "version_policy: { latest: { num_versions: 1 } }\n",
    "latest 2": "version_policy { latest { num_versions: 2 } }\n",
    "all": "version_policy: { all { } }\n",
    "specific with the version": "version_policy: { specific: { versions: [ 1, 3 ] } }\n",
    "specific without the version": "version_policy: { specific: { versions: [ 3 ] } }\n",
    "angle brackets": "version_policy < specific < versions: 3 > >\n",
    "spread over lines, commented": ("version_policy: {  # which versions load\n  latest: {\n"
                                    "    num_versions: 3  # } not the end\n  }\n}\n"),
}


def policy_of(config: str) -> list[str]:
    return [line.strip() for line in config.splitlines() if line.strip().startswith("version_policy")]


@pytest.mark.parametrize("policy", POLICIES.values(), ids=POLICIES.keys())
def test_the_pinned_config_names_exactly_the_version_and_keeps_the_rest(policy):
    config = BASE.replace("max_batch_size: 8\n", f"max_batch_size: 8\n{policy}")
    pinned = pinned_config(config, "2")
    assert policy_of(pinned) == ["version_policy: { specific: { versions: [ 2 ] } }"]
    assert without_top_level_field(pinned, "version_policy").replace(
        "# version_policy set by modeldeploy: this pod serves exactly this version\n", "").split() == BASE.split()


def test_only_the_top_level_field_goes():
    config = ('name: "e"\nplatform: "ensemble"\n# version_policy { all {} } in a comment stays\n'
              'parameters { key: "note" value: { string_value: "version_policy { latest {} }" } }\n'
              'ensemble_scheduling { step [ { model_name: "m" model_version: -1 } ] }\n'
              'my_version_policy: 1\nversion_policy: { all {} }\n')
    out = without_top_level_field(config, "version_policy")
    assert out == config.replace("version_policy: { all {} }", "")
    assert "version_policy { latest {} }" in out and "my_version_policy: 1" in out


def test_a_config_less_model_gets_a_config_with_the_policy_only():
    assert policy_of(pinned_config("", "7")) == ["version_policy: { specific: { versions: [ 7 ] } }"]


def test_a_malformed_policy_is_an_error_not_a_silent_pass():
    with pytest.raises(ValueError):
        pinned_config('name: "m"\nversion_policy: { all {\n', "1")
    with pytest.raises(ValueError):
        pinned_config('name: "m"\nversion_policy: 3\n', "1")


def test_the_view_links_one_version_and_everything_else(tmp_path):
    source = tmp_path / "repo"
    write_model(source, "simple", (1, 2, 3), all_versions=False)
    (source / "simple" / "labels.txt").write_text("cat\ndog\n")
    write_model(source, "other", (1,))
    dest = tmp_path / "view"
    said = build_view(str(source), "simple", "2", str(dest))
    assert sorted(os.listdir(dest / "simple")) == ["2", "config.pbtxt", "labels.txt"]
    assert os.readlink(dest / "simple" / "2") == str(source / "simple" / "2")
    assert os.readlink(dest / "other") == str(source / "other")
    assert policy_of((dest / "simple" / "config.pbtxt").read_text()) == [
        "version_policy: { specific: { versions: [ 2 ] } }"]
    assert said == [f"pinned simple to version 2 in {dest} (from {source})"]
    # A restarted pod builds it again, from nothing, for whatever version it now names.
    build_view(str(source), "simple", "3", str(dest))
    assert sorted(os.listdir(dest / "simple")) == ["3", "config.pbtxt", "labels.txt"]


def test_a_missing_version_or_model_is_said_and_left_to_triton(tmp_path):
    source = tmp_path / "repo"
    write_model(source, "simple", (1,))
    said = build_view(str(source), "simple", "9", str(tmp_path / "view"))
    assert said == [f"version 9 of simple is not in the repository {source}: left as it is, for Triton to report"]
    assert os.readlink(tmp_path / "view" / "simple") == str(source / "simple")
    said = build_view(str(source), "absent", "1", str(tmp_path / "view2"))
    assert said == [f"model absent is not in the repository {source}: nothing to pin"]
    assert os.listdir(tmp_path / "view2") == ["simple"]


def run_pin_step(*args: str) -> subprocess.CompletedProcess:
    """Exactly what the init container runs: python3 -c <the rendered script> <args>."""
    return subprocess.run([sys.executable, "-c", PIN_SCRIPT, *args], capture_output=True, text=True, timeout=30)


def test_the_rendered_script_runs_as_a_program(tmp_path):
    source = tmp_path / "repo"
    write_model(source, "simple", (1, 2))
    result = run_pin_step(str(source), "simple", "1", str(tmp_path / "view"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"modeldeploy: pinned simple to version 1 in {tmp_path / 'view'} (from {source})"
    (source / "simple" / "config.pbtxt").write_text('name: "simple"\nversion_policy: { all {\n')
    result = run_pin_step(str(source), "simple", "1", str(tmp_path / "view"))
    assert result.returncode == 1
    assert "cannot pin simple to version 1: unbalanced version_policy" in result.stderr
    assert run_pin_step(str(source)).returncode == 2


def ready(url: str, version: int) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/models/simple/versions/{version}/ready", timeout=5) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return False


def infer(url: str, version: int) -> list[float]:
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]}
    request = urllib.request.Request(f"{url}/v2/models/simple/versions/{version}/infer",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["outputs"][0]["data"]


@pytest.mark.triton
@pytest.mark.parametrize("policy", [POLICIES[k] for k in ("none (Triton's default: latest 1)", "latest 2", "all",
                                                          "specific with the version",
                                                          "specific without the version")],
                         ids=["none", "latest 2", "all", "specific with it", "specific without it"])
def test_real_triton_serves_exactly_the_pinned_version(tmp_path, policy):
    source = tmp_path / "repo"
    write_model(source, "simple", (1, 2, 3), all_versions=False)
    (source / "simple" / "config.pbtxt").write_text(BASE.replace("max_batch_size: 8\n", f"max_batch_size: 8\n{policy}"))
    view = tmp_path / "view"
    assert run_pin_step(str(source), "simple", "2", str(view)).returncode == 0
    with start_tritonserver(view, load_models=("simple",)) as server:
        assert [v for v in (1, 2, 3) if ready(server.url, v)] == [2]
        # The whole config survived (inputs, outputs, batching): inference works, as version 2.
        assert infer(server.url, 2) == [2, 2, 2, 2]


@pytest.mark.triton
def test_real_triton_reports_a_pinned_version_that_is_not_there(tmp_path):
    from modeldeploy.model_health import VersionState, explain_not_ready  # noqa: PLC0415

    source = tmp_path / "repo"
    write_model(source, "simple", (1, 2), all_versions=False)
    view = tmp_path / "view"
    assert run_pin_step(str(source), "simple", "9", str(view)).returncode == 0
    with start_tritonserver(view, load_models=("simple",)) as server:
        assert [v for v in (1, 2, 9) if ready(server.url, v)] == [2]  # the readiness probe asks for 9
        index = json.load(urllib.request.urlopen(urllib.request.Request(
            f"{server.url}/v2/repository/index", data=b"{}", headers=server.repository_api_headers), timeout=5))
    rows = tuple(VersionState(e["name"], e.get("version", ""), e.get("state", ""), e.get("reason", ""))
                 for e in index)
    assert explain_not_ready("simple", "9", rows) == ("VersionNotLoaded", "simple version 9 is not loaded (loaded: 2)")


def test_the_view_is_what_triton_reads_for_local_repositories():
    from modeldeploy.api import ModelDeployment  # noqa: PLC0415
    from modeldeploy.render.deployment import PINNED_MOUNT, model_repository_path  # noqa: PLC0415

    def md(repository: str, **model: str) -> ModelDeployment:
        return ModelDeployment.model_validate({
            "metadata": {"name": "m", "namespace": "ns"},
            "spec": {"model": {"repository": repository, "version": "2", **model}}})

    assert model_repository_path(md("pvc://claim/triton")) == PINNED_MOUNT
    assert model_repository_path(md("https://h/r.tar.gz", sha256="a" * 64)) == PINNED_MOUNT
    assert model_repository_path(md("s3://bucket/triton")) == "s3://bucket/triton"
    assert Path(PINNED_MOUNT).is_absolute()
