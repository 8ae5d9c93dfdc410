"""Container images for the e2e node, built here from Debian's packages and PyPI wheels.

Images cannot be pulled on these machines, so every image a pod runs is built locally, written as a
docker-archive (manifest.json, a config, one tar per layer) and imported into containerd under the
name the pods use:

- the Triton image: a Debian root file system (debootstrap) plus `tritonserver`, its python backend
  and its libraries from the `nvidia-pytriton` wheel, under the default image name of the API
  (`nvcr.io/nvidia/tritonserver:24.08-py3`), so pods run the operator's real rendered pod spec;
- the operator image: the same Debian base plus the operator and its dependencies, run by the chart;
- the pod sandbox ("pause") image: one static binary (pause.c).

Slow layers (the root file system, Triton, the operator's dependencies) are cached under the cache
directory, keyed by what goes into them, so a second run only rebuilds what changed.

    python -m e2e.env.images --cache DIR --containerd-socket SOCK   # prints the image names
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DEBIAN_SUITE = "bookworm"
# python3 runs Triton's python-backend stub (it links libpython3.11) and the operator; numpy is what
# the test models use; ca-certificates lets the https:// init container verify servers.
BASE_PACKAGES = ("python3", "python3-numpy", "libpython3.11", "ca-certificates")
TRITON_UID = 1000  # the rendered pod spec runs Triton as uid 1000
OPERATOR_UID = 10001  # the chart runs the operator as uid 10001
PAUSE_IMAGE = "modeldeploy.local/pause:e2e"
OPERATOR_REPOSITORY = "modeldeploy.local/operator"


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def digest_of(*parts: str | bytes | Path) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            h.update(part.read_bytes())
        else:
            h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(*cmd: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def debian_mirror() -> str:
    """The mirror apt on this machine already uses (deb822 or one-line sources)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in path.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    sources = Path("/etc/apt/sources.list")
    if sources.exists():
        for line in sources.read_text().splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and "security" not in words[1]:
                return words[1]
    return "http://deb.debian.org/debian"


def tar_directory(source: Path, out: Path) -> Path:
    """One layer: the tree as it is, numeric owners kept, written atomically."""
    partial = out.with_suffix(".partial")
    run("tar", "--numeric-owner", "--xattrs", "-C", source, "-cf", partial, ".")
    partial.rename(out)
    return out


@dataclass(frozen=True)
class Layer:
    path: Path

    @property
    def diff_id(self) -> str:
        cached = self.path.with_suffix(".sha256")
        if cached.exists() and cached.stat().st_mtime >= self.path.stat().st_mtime:
            return cached.read_text().strip()
        value = "sha256:" + file_sha256(self.path)
        cached.write_text(value)
        return value


class Builder:
    def __init__(self, cache: Path, socket: str) -> None:
        self.cache = cache
        self.socket = socket
        (cache / "layers").mkdir(parents=True, exist_ok=True)
        (cache / "archives").mkdir(parents=True, exist_ok=True)

    # -- layers -------------------------------------------------------------------------------
    def base_layer(self) -> Layer:
        mirror = debian_mirror()
        key = digest_of(DEBIAN_SUITE, ",".join(BASE_PACKAGES), mirror, str(TRITON_UID), str(OPERATOR_UID))
        out = self.cache / "layers" / f"debian-{key}.tar"
        if out.exists():
            return Layer(out)
        log(f"debootstrap {DEBIAN_SUITE} with {', '.join(BASE_PACKAGES)} from {mirror} (about a minute)")
        with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
            rootfs = Path(tmp) / "rootfs"
            run("debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", DEBIAN_SUITE, rootfs,
                mirror, stdout=subprocess.DEVNULL)
            with open(rootfs / "etc/passwd", "a") as passwd, open(rootfs / "etc/group", "a") as group:
                passwd.write(f"triton-server:x:{TRITON_UID}:{TRITON_UID}::/home/triton-server:/bin/sh\n")
                passwd.write(f"modeldeploy:x:{OPERATOR_UID}:{OPERATOR_UID}::/nonexistent:/usr/sbin/nologin\n")
                group.write(f"triton-server:x:{TRITON_UID}:\nmodeldeploy:x:{OPERATOR_UID}:\n")
            home = rootfs / "home/triton-server"
            home.mkdir(parents=True)
            os.chown(home, TRITON_UID, TRITON_UID)
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
                shutil.rmtree(rootfs / junk, ignore_errors=True)
            return Layer(tar_directory(rootfs, out))

    def triton_layer(self) -> Layer:
        import pytriton  # noqa: PLC0415 - only the image build needs the wheel

        site = Path(pytriton.__file__).resolve().parents[1]
        server = site / "pytriton" / "tritonserver"
        libs = site / "nvidia_pytriton.libs"
        stub = server / "python_backend_stubs" / "3.11" / "triton_python_backend_stub"
        key = digest_of(importlib.metadata.version("nvidia-pytriton"), str(TRITON_UID), "v1")
        out = self.cache / "layers" / f"triton-{key}.tar"
        if out.exists():
            return Layer(out)
        log(f"Triton layer from {server}")
        with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
            opt = Path(tmp) / "opt" / "tritonserver"
            for part in ("bin", "backends", "caches"):
                shutil.copytree(server / part, opt / part, ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copy2(stub, opt / "backends" / "python" / "triton_python_backend_stub")
            shutil.copytree(libs, opt / "lib")
            # Triton chmods the stub when it loads a python model: the Triton user must own it.
            for path in [opt / "backends" / "python", *(opt / "backends" / "python").rglob("*")]:
                os.chown(path, TRITON_UID, TRITON_UID)
            return Layer(tar_directory(Path(tmp), out))

    def operator_deps_layer(self) -> Layer:
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        dependencies = sorted(project["dependencies"])
        key = digest_of(*dependencies, sys.version.split()[0].rsplit(".", 1)[0])
        out = self.cache / "layers" / f"operator-deps-{key}.tar"
        if out.exists():
            return Layer(out)
        log("operator dependencies (pip install --target)")
        with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
            target = Path(tmp) / "opt" / "modeldeploy" / "deps"
            run(sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--only-binary=:all:",
                "--target", target, *dependencies)
            return Layer(tar_directory(Path(tmp), out))

    def operator_app_layer(self) -> tuple[Layer, str]:
        """The operator's own code: rebuilt whenever it changes (it is small)."""
        sources = sorted(p for p in (ROOT / "operator" / "modeldeploy").rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts)
        key = digest_of(*(str(p.relative_to(ROOT)) for p in sources), *sources)
        out = self.cache / "layers" / f"operator-app-{key}.tar"
        if not out.exists():
            with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
                app = Path(tmp) / "opt" / "modeldeploy" / "app"
                shutil.copytree(ROOT / "operator" / "modeldeploy", app / "modeldeploy",
                                ignore=shutil.ignore_patterns("__pycache__"))
                launcher = Path(tmp) / "usr" / "local" / "bin" / "modeldeploy"
                launcher.parent.mkdir(parents=True)
                launcher.write_text("#!/usr/bin/python3\nimport sys\nfrom modeldeploy.cli import main\n"
                                    "sys.exit(main())\n")
                launcher.chmod(0o755)
                tar_directory(Path(tmp), out)
        return Layer(out), key

    def pause_layer(self) -> Layer:
        source = HERE / "pause.c"
        key = digest_of(source)
        out = self.cache / "layers" / f"pause-{key}.tar"
        if out.exists():
            return Layer(out)
        with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
            run("cc", "-static", "-Os", "-o", Path(tmp) / "pause", source)
            return Layer(tar_directory(Path(tmp), out))

    # -- images -------------------------------------------------------------------------------
    def image(self, name: str, layers: list[Layer], config: dict) -> str:
        """Write a docker-archive of the layers and import it into containerd, unless it is there."""
        image_config = {"architecture": "amd64", "os": "linux", "config": config,
                        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}}
        config_bytes = json.dumps(image_config, sort_keys=True).encode()
        key = digest_of(name, config_bytes)
        marker = self.cache / "archives" / f"{key}.imported"
        if marker.exists() and name in self.images_in_containerd():
            return name
        archive = self.cache / "archives" / f"{key}.tar"
        with tarfile.open(archive.with_suffix(".partial"), "w") as tar:
            add_bytes(tar, "config.json", config_bytes)
            names = [f"{i}/layer.tar" for i in range(len(layers))]
            add_bytes(tar, "manifest.json", json.dumps(
                [{"Config": "config.json", "RepoTags": [name], "Layers": names}]).encode())
            for layer, member in zip(layers, names, strict=True):
                tar.add(layer.path, arcname=member)
        archive.with_suffix(".partial").rename(archive)
        log(f"importing {name} into containerd")
        run("ctr", "--address", self.socket, "-n", "k8s.io", "images", "import", archive,
            stdout=subprocess.DEVNULL)
        archive.unlink()
        marker.touch()
        return name

    def images_in_containerd(self) -> set[str]:
        out = run("ctr", "--address", self.socket, "-n", "k8s.io", "images", "ls", "-q", capture_output=True,
                  text=True).stdout
        return set(out.split())

    def build_all(self) -> dict[str, str]:
        from modeldeploy.api import DEFAULT_TRITON_IMAGE  # noqa: PLC0415

        base = self.base_layer()
        pause = self.image(PAUSE_IMAGE, [self.pause_layer()], {"Entrypoint": ["/pause"]})
        triton = self.image(DEFAULT_TRITON_IMAGE, [base, self.triton_layer()], {
            "Env": ["PATH=/opt/tritonserver/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "LD_LIBRARY_PATH=/opt/tritonserver/lib", "HOME=/home/triton-server"],
            "User": str(TRITON_UID), "WorkingDir": "/opt/tritonserver", "Cmd": ["tritonserver"]})
        app, app_key = self.operator_app_layer()
        operator = self.image(f"{OPERATOR_REPOSITORY}:{app_key}", [base, self.operator_deps_layer(), app], {
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "PYTHONPATH=/opt/modeldeploy/app:/opt/modeldeploy/deps",
                    "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"],
            "User": str(OPERATOR_UID), "Entrypoint": ["modeldeploy"], "Cmd": ["run"]})
        return {"pause": pause, "triton": triton, "operator": operator}


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--containerd-socket", required=True)
    args = parser.parse_args()
    names = Builder(args.cache, args.containerd_socket).build_all()
    print(json.dumps(names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
