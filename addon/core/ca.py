"""The forward mode's certificate authority: made once, kept in the data directory.

mitmproxy signs a certificate for each provider host the forward mode intercepts with this CA
(its ``confdir`` is ``<home>/ca``). The private key never leaves that directory (0700, the key
file 0600). Clients trust the certificate: ``aispendtrack ca`` prints where it is and the
environment to set; ``bundle.pem`` is the public CAs plus ours, for the clients whose variable
replaces their trust store instead of adding to it (SSL_CERT_FILE, REQUESTS_CA_BUNDLE, AWS_CA_BUNDLE).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CA_DIR = "ca"
_BASENAME = "mitmproxy"  # mitmproxy's file names in its confdir (mitmproxy.options.CONF_BASENAME)
_NAME = "AiSpendTrack forward proxy CA"


@dataclass(frozen=True)
class CaFiles:
    confdir: Path   # mitmproxy's confdir
    cert: Path      # our CA's certificate alone (NODE_EXTRA_CA_CERTS, curl --cacert)
    bundle: Path    # the public CAs and ours
    key: Path       # the CA's private key and certificate (0600)


def files(home: Path) -> CaFiles:
    confdir = home / CA_DIR
    return CaFiles(confdir, confdir / f"{_BASENAME}-ca-cert.pem", confdir / "bundle.pem",
                   confdir / f"{_BASENAME}-ca.pem")


def ensure(home: Path) -> CaFiles:
    """The CA's files, created on first use; the bundle is refreshed from certifi each time."""
    from mitmproxy.certs import CertStore

    found = files(home)
    found.confdir.mkdir(mode=0o700, exist_ok=True)
    found.confdir.chmod(0o700)
    if not found.key.exists():
        CertStore.create_store(found.confdir, _BASENAME, 2048, organization="AiSpendTrack", cn=_NAME)
    found.key.chmod(0o600)
    _write_bundle(found)
    return found


def _write_bundle(found: CaFiles) -> None:
    import certifi

    bundle = Path(certifi.where()).read_bytes().rstrip() + b"\n" + found.cert.read_bytes()
    partial = found.bundle.with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(bundle)
    partial.replace(found.bundle)


def environment(found: CaFiles) -> dict[str, str]:
    """The variables that make the usual clients trust the CA."""
    return {"SSL_CERT_FILE": str(found.bundle), "REQUESTS_CA_BUNDLE": str(found.bundle),
            "AWS_CA_BUNDLE": str(found.bundle), "NODE_EXTRA_CA_CERTS": str(found.cert)}
