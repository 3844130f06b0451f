"""What an image's tag names in its registry now: the manifest digest, asked over the registry's
HTTP API (Docker's distribution API, which OCI registries serve too). For an executor with no
engine to ask, so that the signature, and the Pod, name content rather than a tag.

Anonymous access only (a public registry, or one on this network), with the bearer token a
registry hands out for that; plain HTTP for a registry on loopback, as Docker allows.
"""

import json
import re
import urllib.error
import urllib.parse
import urllib.request

ACCEPT = ", ".join(("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json",
                    "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"))
HUB = "registry-1.docker.io"


def name_of(image: str) -> str:
    """`image` without its tag or digest: `host:5000/team/tool:1.2` -> `host:5000/team/tool`."""
    head, _, last = image.split("@", 1)[0].rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def reference(image: str) -> tuple[str, str, str]:
    """(registry, repository, tag or digest) of an image name, as Docker reads it."""
    name, _, digest = image.partition("@")
    last = name.rpartition("/")[2]
    tag = last.split(":", 1)[1] if ":" in last else ""
    first, _, rest = name_of(image).partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first, rest, digest or tag or "latest"
    return HUB, f"{first}/{rest}" if rest else f"library/{first}", digest or tag or "latest"


def pinned(image: str, timeout: float = 10) -> str:
    """`name@sha256:...` for `image` as its registry has it now; raises OSError (a URLError or
    HTTPError among them) when the registry cannot tell."""
    if "@" in image:
        return image
    registry, repository, tag = reference(image)
    scheme = "http" if registry.split(":", 1)[0] in ("localhost", "127.0.0.1") else "https"
    url = f"{scheme}://{registry}/v2/{repository}/manifests/{tag}"
    try:
        digest = _head(url, {}, timeout)
    except urllib.error.HTTPError as e:
        challenge = e.headers.get("WWW-Authenticate", "")
        if e.code != 401 or not challenge.lower().startswith("bearer"):
            raise
        digest = _head(url, {"Authorization": f"Bearer {_token(challenge, timeout)}"}, timeout)
    return f"{name_of(image)}@{digest}"


def _head(url: str, headers: dict[str, str], timeout: float) -> str:
    request = urllib.request.Request(url, method="HEAD", headers={"Accept": ACCEPT, **headers})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        digest = response.headers.get("Docker-Content-Digest", "")
    if not digest.startswith("sha256:"):
        raise OSError(f"{url} gave no digest")
    return digest


def _token(challenge: str, timeout: float) -> str:
    """An anonymous token from the realm a `WWW-Authenticate: Bearer ...` challenge names."""
    fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    query = urllib.parse.urlencode({k: v for k, v in fields.items() if k in ("service", "scope")})
    with urllib.request.urlopen(f"{fields['realm']}?{query}", timeout=timeout) as response:
        answer = json.load(response)
    return answer.get("token") or answer["access_token"]
