"""`modeldeploy render` and friends, run as a user runs them: a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from tests.support.specs import EXAMPLES, minimal


def modeldeploy(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modeldeploy", *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


def test_render_every_example_as_yaml():
    for example in EXAMPLES:
        result = modeldeploy("render", "-f", str(example))
        assert result.returncode == 0, result.stderr
        kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout)]
        assert kinds[:2] == ["Deployment", "Service"], example


def test_render_several_documents_and_files_as_json(tmp_path):
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump_all([minimal("a"), {"apiVersion": "v1", "kind": "Secret",
                                                        "metadata": {"name": "s"}}, minimal("b")]))
    result = modeldeploy("render", "-f", str(two), "-f", str(EXAMPLES[0]), "-o", "json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert listed["kind"] == "List"
    names = [(i["kind"], i["metadata"]["name"]) for i in listed["items"]]
    assert ("Deployment", "a") in names and ("Deployment", "b") in names and ("Secret", "s") not in names


def test_render_json_input_from_stdin():
    result = modeldeploy("render", "-f", "-", stdin=json.dumps(minimal()))
    assert result.returncode == 0, result.stderr
    assert "kind: Deployment" in result.stdout


def test_bad_spec_names_field_and_problem_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(minimal(resources={"gpu": 1, "mig": "1g.10gb"}, replicas=-2)))
    result = modeldeploy("render", "-f", str(bad))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert "document 1 (ModelDeployment vision/resnet50)" in result.stderr
    assert "spec.replicas: Input should be greater than or equal to 0" in result.stderr
    assert "resources.gpu and resources.mig are mutually exclusive" in result.stderr


def test_one_bad_document_fails_the_whole_render(tmp_path):
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(yaml.safe_dump_all([minimal("good"), minimal("bad", autoscaling={"maxReplicas": 0})]))
    result = modeldeploy("render", "-f", str(mixed))
    assert result.returncode == 1 and result.stdout == ""
    assert "spec.autoscaling.maxReplicas" in result.stderr


def test_unreadable_and_malformed_input(tmp_path):
    missing = modeldeploy("render", "-f", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1 and "No such file" in missing.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed")
    result = modeldeploy("render", "-f", str(broken))
    assert result.returncode == 1 and "not valid YAML" in result.stderr and "Traceback" not in result.stderr
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert "no ModelDeployment found" in modeldeploy("render", "-f", str(empty)).stderr


def test_wrong_api_version_is_named(tmp_path):
    doc = minimal()
    doc["apiVersion"] = "modeldeploy.dev/v1"
    path = tmp_path / "v1.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = modeldeploy("render", "-f", str(path))
    assert result.returncode == 1 and "apiVersion: must be modeldeploy.dev/v1alpha1" in result.stderr


def test_scalar_spec_is_a_clear_error(tmp_path):
    path = tmp_path / "scalar.yaml"
    path.write_text("apiVersion: modeldeploy.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: x}\nspec: 3\n")
    result = modeldeploy("render", "-f", str(path))
    assert result.returncode == 1 and "spec:" in result.stderr and "Traceback" not in result.stderr


def test_console_script_and_version():
    result = modeldeploy("--version")
    assert result.returncode == 0 and result.stdout.startswith("modeldeploy ")
