#!/usr/bin/env bash
# Build the base image `ala-base:bookworm` (Debian bookworm, python3 3.11, venv, CA certificates, and libgomp1,
# which the embedded LLM's llama.cpp needs) with mmdebstrap and `docker import`, for machines that reach Debian's
# mirror but no image registry. Where a registry is reachable, skip this and build with
# `--build-arg BASE=python:3.11-slim-bookworm` (the Dockerfile then installs libgomp1 itself).
#
#   deploy/docker/base.sh [TAG] [ARCH]
#
# ARCH is a Debian architecture (amd64, arm64); a foreign one needs QEMU user emulation (Debian's qemu-user-static,
# which registers itself with binfmt_misc), as `make image-jetson-check` has.
set -euo pipefail
arch="${2:-$(dpkg --print-architecture)}"
tag="${1:-ala-base:bookworm}"
packages="python3,python3-venv,ca-certificates,libgomp1"
if [ "$(docker image inspect --format '{{ index .Config.Labels "ala.packages" }}/{{ .Architecture }}' "$tag" 2>/dev/null)" \
    = "$packages/$arch" ]; then
    echo "$tag exists"
    exit 0
fi
mmdebstrap --quiet --variant=minbase --architectures="$arch" --include="$packages" bookworm - \
    | docker import --platform "linux/$arch" --change 'CMD ["python3"]' --change "LABEL ala.packages=$packages" - "$tag"
echo "built $tag"
