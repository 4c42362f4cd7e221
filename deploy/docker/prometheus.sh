#!/usr/bin/env bash
# Build `ala-prometheus:local`, a real Prometheus (Debian's package) for machines with no image registry; compose
# uses it with ALA_PROMETHEUS_IMAGE=ala-prometheus:local. Elsewhere compose pulls prom/prometheus.
set -euo pipefail
tag="${1:-ala-prometheus:local}"
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag exists"
    exit 0
fi
mmdebstrap --quiet --variant=minbase --include=prometheus,wget,ca-certificates bookworm - \
    | docker import --change 'ENTRYPOINT ["/usr/bin/prometheus"]' - "$tag"
echo "built $tag"
