#!/usr/bin/env bash
# Build the base image `ala-base:bookworm` (Debian bookworm, python3 3.11, venv, CA certificates) with mmdebstrap
# and `docker import`, for machines that reach Debian's mirror but no image registry. Where a registry is reachable,
# skip this and build with `--build-arg BASE=python:3.11-slim-bookworm`.
set -euo pipefail
tag="${1:-ala-base:bookworm}"
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag exists"
    exit 0
fi
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm - \
    | docker import --change 'CMD ["python3"]' - "$tag"
echo "built $tag"
