"""Real certificates made for a test with the `openssl` command: a tiny CA, a server certificate for
127.0.0.1 and localhost, and a client certificate, all signed by that CA (PEM files in a directory).

    pki = make_pki(tmp_path / "pki")
    pki.ca            # the CA's certificate: what a client trusts (`ca_file`)
    pki.server_cert   # 127.0.0.1, ::1 and localhost, serverAuth
    pki.client_cert   # CN=watcher-client, clientAuth (mTLS)
    pki.server_context(require_client_cert=True)   # an ssl.SSLContext for a test server

`openssl` is used rather than a Python package the project does not depend on. Keys are P-256 (fast to
make) and unencrypted; each certificate is valid from an hour ago for two days.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

_LEAF_EXT = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
extendedKeyUsage = {usage}
{san}"""


@dataclass(frozen=True)
class Pki:
    """The files of one test PKI."""

    root: Path
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        """A server context with the server certificate; with `require_client_cert`, a client must present
        a certificate signed by the CA (mTLS)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.ca)
        return ctx

    def client_context(self, *, with_cert: bool = False) -> ssl.SSLContext:
        """A client context that trusts the CA (and presents the client certificate, with `with_cert`)."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if with_cert:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx


def _openssl(*args: str | Path, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise RuntimeError("the tests' certificates need the openssl command")
    subprocess.run([exe, *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=60)


def _key(path: Path, cwd: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path, cwd=cwd)


def _leaf(root: Path, name: str, cn: str, usage: str, san: str) -> tuple[Path, Path]:
    key, csr, cert, ext = (root / f"{name}{suffix}" for suffix in (".key", ".csr", ".pem", ".ext"))
    _key(key, root)
    _openssl("req", "-new", "-key", key, "-subj", f"/CN={cn}", "-out", csr, cwd=root)
    ext.write_text(_LEAF_EXT.format(usage=usage, san=san))
    _openssl(
        "x509", "-req", "-in", csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial",
        "2" if name == "server" else "3", "-days", "2", "-sha256", "-extfile", ext,
        "-out", cert, cwd=root,
    )  # fmt: skip
    return cert, key


def make_pki(root: Path) -> Pki:
    """Make a CA, a server certificate (127.0.0.1, ::1, localhost) and a client certificate under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    _key(root / "ca.key", root)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=job-watcher test CA", "-days", "2",
        "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "ca.pem", cwd=root,
    )  # fmt: skip
    server_cert, server_key = _leaf(
        root, "server", "localhost", "serverAuth", "subjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost\n"
    )
    client_cert, client_key = _leaf(root, "client", "watcher-client", "clientAuth", "")
    return Pki(root, root / "ca.pem", root / "ca.key", server_cert, server_key, client_cert, client_key)
