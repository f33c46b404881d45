"""The local stack's certificates, made once with openssl under STACK_DIR/tls.

Every server serves TLS beside its plaintext port (stack.py), with certificates of one CA
made here:

- `ca.pem`: the stack's CA; `other-ca.pem`: a CA that signed nothing the servers trust
  (a client configured with it fails, as with a wrong CA in production);
- `kafka.pem`, `postgres.crt`/`postgres.key`, `registry.crt`/`registry.key`: server
  certificates for 127.0.0.1 and localhost (the registry's with `registry-trust.p12`, the CA
  in the PKCS12 trust store its Quarkus server reads, password REGISTRY_TRUST_PASSWORD);
  `cassandra.pem`: for the name `localhost` only, so an IP contact point fails the hostname
  check (SCYLLA_SSL_CHECK_HOSTNAME);
- `client.crt` + `client.key` (the key encrypted with CLIENT_KEY_PASSWORD): the client
  certificate, CN `enrichment` (also PostgreSQL's TLS user);
- `expired.crt` + `expired.key`: the same subject, signed by the CA, expired in 2020;
- `rogue.crt` + `rogue.key`: the same subject, signed by the other CA.
"""

from __future__ import annotations

import shutil
import subprocess  # noqa: S404 - openssl is the tool here
import tempfile
from pathlib import Path

CLIENT_CN = "enrichment"
# the local stack's credentials: a test stack's, not secrets
CLIENT_KEY_PASSWORD = "client-key-secret"
KAFKA_SCRAM_USER, KAFKA_SCRAM_PASSWORD = "enrichment", "enrichment-scram-secret"  # SASL_SSL listener
PG_TLS_USER, PG_TLS_PASSWORD = CLIENT_CN, "enrichment-pg-secret"  # TLS only, with the client certificate
REGISTRY_TRUST_PASSWORD = "registry-trust-secret"  # noqa: S105 - the local stack's
SERVER_NAMES = "IP:127.0.0.1,DNS:localhost"
VERSION = "1"  # bump to remake every file when what is made here changes


def _openssl(*args: str, cwd: Path) -> None:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)  # noqa: S603, S607
    if res.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {res.stderr.strip()}")


def _ca(d: Path, name: str, cn: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
        "-days", "3650", "-subj", f"/CN={cn}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d,
    )  # fmt: skip


def _leaf(d: Path, name: str, cn: str, ca: str, usage: str, names: str | None, dates: tuple[str, str] | None) -> None:
    """A key and a certificate signed by `ca`; `dates` (YYYYMMDDHHMMSSZ) for a validity in the past."""
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={cn}", cwd=d)  # fmt: skip
    ext = d / f"{name}.ext"
    lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
             f"extendedKeyUsage={usage}"]  # fmt: skip
    if names:
        lines.append(f"subjectAltName={names}")
    ext.write_text("\n".join(lines) + "\n")
    if dates is None:
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "3650", "-extfile", ext.name, cwd=d)  # fmt: skip
        return
    # openssl x509 can't date a certificate in the past; `openssl ca` can
    with tempfile.TemporaryDirectory(dir=d) as tmp:
        work = Path(tmp)
        (work / "index.txt").write_text("")
        (work / "serial").write_text("1000\n")
        conf = work / "ca.cnf"
        conf.write_text(
            f"[ca]\ndefault_ca=local\n[local]\ndir={work}\ndatabase={work}/index.txt\n"
            f"new_certs_dir={work}\nserial={work}/serial\ndefault_md=sha256\npolicy=any\n"
            "unique_subject=no\ncopy_extensions=none\n[any]\ncommonName=supplied\n"
        )
        _openssl("ca", "-batch", "-config", str(conf), "-cert", f"{ca}.pem", "-keyfile", f"{ca}.key",
                 "-in", f"{name}.csr", "-out", f"{name}.crt", "-notext", "-startdate", dates[0],
                 "-enddate", dates[1], "-extfile", ext.name, cwd=d)  # fmt: skip


def _encrypt_key(d: Path, name: str) -> None:
    _openssl("pkcs8", "-topk8", "-in", f"{name}.key", "-out", f"{name}.key.enc", "-v2", "aes-256-cbc",
             "-passout", f"pass:{CLIENT_KEY_PASSWORD}", cwd=d)  # fmt: skip
    (d / f"{name}.key.enc").replace(d / f"{name}.key")


def _bundle(d: Path, name: str) -> None:
    """key + certificate in one PEM file (Kafka's and Cassandra's PEM key stores)."""
    (d / f"{name}.pem").write_text((d / f"{name}.key").read_text() + (d / f"{name}.crt").read_text())


def ensure_registry(tls_dir: Path, keytool: Path) -> None:
    """The Schema Registry's certificate and trust store, made when missing (they came after
    the others: a stack made before keeps its other certificates)."""
    if (tls_dir / "registry-trust.p12").exists():
        return
    _leaf(tls_dir, "registry", "localhost", "ca", "serverAuth", SERVER_NAMES, None)
    trust = tls_dir / "registry-trust.p12.tmp"
    trust.unlink(missing_ok=True)
    res = subprocess.run(  # noqa: S603 - the JDK's keytool, fixed arguments
        [str(keytool), "-importcert", "-noprompt", "-alias", "stack-ca", "-file", str(tls_dir / "ca.pem"),
         "-keystore", str(trust), "-storetype", "PKCS12", "-storepass", REGISTRY_TRUST_PASSWORD],
        capture_output=True, text=True,
    )  # fmt: skip
    if res.returncode != 0:
        raise RuntimeError(f"keytool -importcert failed: {res.stderr.strip() or res.stdout.strip()}")
    for leftover in [*tls_dir.glob("registry.csr"), *tls_dir.glob("registry.ext"), *tls_dir.glob("*.srl")]:
        leftover.unlink()
    trust.replace(tls_dir / "registry-trust.p12")


def ensure(tls_dir: Path) -> Path:
    """Make the certificates unless this version of them exists; the directory."""
    stamp = tls_dir / "VERSION"
    if stamp.exists() and stamp.read_text().strip() == VERSION:
        return tls_dir
    shutil.rmtree(tls_dir, ignore_errors=True)
    tls_dir.mkdir(parents=True)
    _ca(tls_dir, "ca", "enrichment-stack CA")
    _ca(tls_dir, "other-ca", "some other CA")
    _leaf(tls_dir, "kafka", "localhost", "ca", "serverAuth", SERVER_NAMES, None)
    _bundle(tls_dir, "kafka")
    _leaf(tls_dir, "postgres", "localhost", "ca", "serverAuth", SERVER_NAMES, None)
    _leaf(tls_dir, "cassandra", "localhost", "ca", "serverAuth", "DNS:localhost", None)  # no IP: see above
    _bundle(tls_dir, "cassandra")
    _leaf(tls_dir, "client", CLIENT_CN, "ca", "clientAuth", None, None)
    _leaf(tls_dir, "expired", CLIENT_CN, "ca", "clientAuth", None, ("20200101000000Z", "20200102000000Z"))
    _leaf(tls_dir, "rogue", CLIENT_CN, "other-ca", "clientAuth", None, None)
    for name in ("client", "expired", "rogue"):
        _encrypt_key(tls_dir, name)
    for leftover in [*tls_dir.glob("*.csr"), *tls_dir.glob("*.ext"), *tls_dir.glob("*.srl")]:
        leftover.unlink()
    stamp.write_text(VERSION + "\n")
    return tls_dir
