"""The local stack: real Kafka (KRaft), PostgreSQL, Cassandra and a Schema Registry, without Docker.

Usage: .venv/bin/python stack/stack.py {up,down,status,wipe,fetch,groups}
  up / down [kafka postgres cassandra registry]: start or stop these servers (default: all)
  groups ARGS...: Kafka's kafka-consumer-groups against the local broker (`make lag`)

Kafka and Cassandra run from their official Maven Central jars (fetched once into a
cache outside the clone), PostgreSQL from Debian's server binaries as a private cluster,
the Schema Registry (Apicurio Registry, Confluent-compatible API) from an application built
once by Maven from its Central artifacts.
All data lives under STACK_DIR (default `.stack/` in the repository, git-ignored).
Readiness is a real client round trip, not an open port.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import subprocess  # noqa: S404 - this module's job is starting servers
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tls  # stack/tls.py, beside this file

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


STACK_DIR = Path(_env("STACK_DIR", str(ROOT / ".stack"))).resolve()
CACHE_DIR = Path(_env("STACK_CACHE_DIR", str(Path.home() / ".cache" / "enrichment-stack")))
JAVA_HOME = Path(_env("STACK_JAVA_HOME", "/usr/lib/jvm/java-17-openjdk-amd64"))
HOST = "127.0.0.1"
KAFKA_PORT = int(_env("STACK_KAFKA_PORT", "9092"))
KAFKA_CONTROLLER_PORT = int(_env("STACK_KAFKA_CONTROLLER_PORT", "9093"))
KAFKA_SSL_PORT = int(_env("STACK_KAFKA_SSL_PORT", "9094"))  # TLS, client certificate required
KAFKA_SASL_SSL_PORT = int(_env("STACK_KAFKA_SASL_SSL_PORT", "9095"))  # TLS + SCRAM or OAUTHBEARER
KAFKA_HEAP = _env("STACK_KAFKA_HEAP", "512m")
PG_PORT = int(_env("STACK_PG_PORT", "5432"))
PG_DATABASE = "enrichment"
CASSANDRA_PORT = int(_env("STACK_CASSANDRA_PORT", "9042"))
CASSANDRA_STORAGE_PORT = int(_env("STACK_CASSANDRA_STORAGE_PORT", "7000"))
CASSANDRA_HEAP = _env("STACK_CASSANDRA_HEAP", "1g")
REGISTRY_PORT = int(_env("STACK_REGISTRY_PORT", "8081"))
REGISTRY_SSL_PORT = int(_env("STACK_REGISTRY_SSL_PORT", "8443"))  # HTTPS, client certificate required
REGISTRY_HEAP = _env("STACK_REGISTRY_HEAP", "256m")
START_TIMEOUT = float(_env("STACK_START_TIMEOUT", "180"))
STOP_TIMEOUT = float(_env("STACK_STOP_TIMEOUT", "45"))

TLS_DIR = STACK_DIR / "tls"
CONFIG_VERSION = f"2-tls{tls.VERSION}"  # bump when a server's configuration changes: running ones must restart

KAFKA_VERSION_POM = HERE / "maven" / "kafka" / "pom.xml"
CASSANDRA_VERSION_POM = HERE / "maven" / "cassandra" / "pom.xml"
REGISTRY_PROJECT = HERE / "maven" / "registry"


class StackError(Exception):
    """A problem a person must fix; printed without a traceback."""


# ---------------------------------------------------------------- helpers


def say(msg: str) -> None:
    print(f"[stack] {msg}", flush=True)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); check its state
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def port_in_use(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def pom_version(pom: Path, prop: str) -> str:
    text = pom.read_text()
    start = text.index(f"<{prop}>") + len(prop) + 2
    return text[start : text.index(f"</{prop}>")]


def java_bin() -> Path:
    java = JAVA_HOME / "bin" / "java"
    if not java.exists():
        raise StackError(f"no Java at {JAVA_HOME}; install OpenJDK 17 or set STACK_JAVA_HOME to a Java 17 home")
    out = subprocess.run([str(java), "-version"], capture_output=True, text=True).stderr
    if 'version "17' not in out:
        raise StackError(
            f"{java} is not Java 17 ({out.splitlines()[0] if out else '?'}); "
            "Cassandra 5.0 needs 11 or 17: set STACK_JAVA_HOME to a Java 17 home"
        )
    return java


def fetch_jars(name: str, pom: Path) -> Path:
    """Copy the runtime jars of `pom` into the cache once; later runs reuse them."""
    version = pom_version(pom, f"{name}.version")
    lib = CACHE_DIR / f"{name}-{version}" / "lib"
    stamp = lib / ".complete"
    if stamp.exists():
        return lib
    if shutil.which("mvn") is None:
        raise StackError("Maven (mvn) is needed once to fetch the server jars; install it")
    say(f"fetching {name} {version} jars with Maven into {lib} (first run only)")
    tmp = lib.with_name("lib.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        "mvn",
        "-q",
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={tmp}",
    ]
    env = dict(os.environ, JAVA_HOME=str(JAVA_HOME))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise StackError(f"Maven could not fetch {name} jars:\n{res.stdout[-3000:]}{res.stderr[-2000:]}")
    shutil.rmtree(lib, ignore_errors=True)
    tmp.rename(lib)
    stamp.write_text(version)
    return lib


def spawn(cmd: list[str], log: Path, pidfile: Path, env: dict[str, str] | None = None, user: str | None = None) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            user=user,
        )
    pidfile.write_text(str(proc.pid))
    return proc.pid


# ---------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    port: int

    @property
    def dir(self) -> Path:
        return STACK_DIR / self.name

    @property
    def log(self) -> Path:
        return self.dir / "server.log"

    @property
    def pidfile(self) -> Path:
        return self.dir / "server.pid"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def prepare(self) -> None:
        """Fetch binaries: done before any server starts, so downloads don't count as start time."""

    def start(self) -> None:
        raise NotImplementedError

    def probe(self) -> str:
        """One client round trip; returns a version string or raises."""
        raise NotImplementedError

    def ready(self) -> None:
        """Once it answers: create what the stack's clients need (idempotent)."""

    config_version = CONFIG_VERSION

    def config_current(self) -> bool:
        """Started with this version of the stack's server configuration."""
        stamp = self.dir / "config.version"
        return stamp.exists() and stamp.read_text().strip() == self.config_version

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            say(f"{self.name}: not running")
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.25)
        if pid_alive(pid):
            say(f"{self.name}: no clean stop after {STOP_TIMEOUT:.0f}s, killing pid {pid}")
            os.killpg(pid, signal.SIGKILL) if _is_group_leader(pid) else os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.1)
        else:
            say(f"{self.name}: stopped (pid {pid})")
        self.pidfile.unlink(missing_ok=True)


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


class Kafka(Server):
    def __init__(self) -> None:
        super().__init__("kafka", KAFKA_PORT)
        self.lib = Path()

    def prepare(self) -> None:
        self.lib = fetch_jars("kafka", KAFKA_VERSION_POM)

    def _props(self) -> Path:
        data = self.dir / "data"
        props = self.dir / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{HOST}:{KAFKA_CONTROLLER_PORT}",
                    f"listeners=PLAINTEXT://{HOST}:{KAFKA_PORT},CONTROLLER://{HOST}:{KAFKA_CONTROLLER_PORT},"
                    f"SSL://{HOST}:{KAFKA_SSL_PORT},SASL_SSL://{HOST}:{KAFKA_SASL_SSL_PORT}",
                    f"advertised.listeners=PLAINTEXT://{HOST}:{KAFKA_PORT},SSL://{HOST}:{KAFKA_SSL_PORT},"
                    f"SASL_SSL://{HOST}:{KAFKA_SASL_SSL_PORT}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL",
                    # TLS: one server certificate (PEM: key and chain in one file), the stack's CA
                    "ssl.keystore.type=PEM",
                    f"ssl.keystore.location={TLS_DIR / 'kafka.pem'}",
                    "ssl.truststore.type=PEM",
                    f"ssl.truststore.location={TLS_DIR / 'ca.pem'}",
                    "listener.name.ssl.ssl.client.auth=required",
                    "listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512,OAUTHBEARER",
                    "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;",
                    # OAUTHBEARER with Kafka's default validator: unsigned tokens (alg none), the
                    # stand-in for a provider's signed ones (tests/integration/test_tls.py's TokenEndpoint issues them)
                    "listener.name.sasl_ssl.oauthbearer.sasl.jaas.config="
                    "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;",
                    f"log.dirs={data}",
                    "num.partitions=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    # the input limit (1 MiB) plus headers fits in every topic we create
                    "message.max.bytes=2097152",
                    "log.retention.hours=168",
                    "",
                ]
            )
        )
        return props

    def _java(self, main: str, *args: str) -> list[str]:
        log4j = self.dir / "log4j2.properties"
        log4j.write_text(
            "status = warn\nappender.out.type = Console\nappender.out.name = OUT\n"
            "appender.out.layout.type = PatternLayout\n"
            "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\nrootLogger.appenderRef.out.ref = OUT\n"
            "logger.kafka.name = kafka\nlogger.kafka.level = INFO\n"
            "logger.state.name = state.change.logger\nlogger.state.level = WARN\n"
        )
        return [
            str(java_bin()),
            f"-Xms{KAFKA_HEAP}",
            f"-Xmx{KAFKA_HEAP}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{self.lib}/*",
            main,
            *args,
        ]

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        props = self._props()
        if not (self.dir / "data" / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            res = subprocess.run(  # noqa: S603
                self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(props)),
                capture_output=True,
                text=True,
            )
            if res.returncode != 0:
                raise StackError(f"kafka: storage format failed:\n{res.stdout}{res.stderr}")
        spawn(self._java("kafka.Kafka", str(props)), self.log, self.pidfile)

    def probe(self) -> str:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.address(), "log_level": 0, "logger": _quiet_logger()})
        md = admin.list_topics(timeout=3)
        if not md.brokers:
            raise RuntimeError("no brokers in metadata")
        return f"Apache Kafka {pom_version(KAFKA_VERSION_POM, 'kafka.version')} (KRaft), cluster {md.cluster_id}"

    def ready(self) -> None:
        from confluent_kafka.admin import (  # type: ignore[attr-defined]
            AdminClient,
            ScramCredentialInfo,
            ScramMechanism,
            UserScramCredentialUpsertion,
        )

        admin = AdminClient({"bootstrap.servers": self.address(), "log_level": 0, "logger": _quiet_logger()})
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
        upsert = UserScramCredentialUpsertion(tls.KAFKA_SCRAM_USER, info, tls.KAFKA_SCRAM_PASSWORD.encode())
        for fut in admin.alter_user_scram_credentials([upsert], request_timeout=15).values():
            fut.result(timeout=20)


def _quiet_logger():  # type: ignore[no-untyped-def]
    import logging

    logger = logging.getLogger("stack.kafka")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


class Postgres(Server):
    def __init__(self) -> None:
        super().__init__("postgres", PG_PORT)
        self.bin = Path()
        self.user: str | None = "postgres" if os.geteuid() == 0 else None

    def prepare(self) -> None:
        self.bin = self._find_bin()

    @staticmethod
    def _find_bin() -> Path:
        def found() -> list[Path]:
            return sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))

        if not found():
            if os.geteuid() != 0 or shutil.which("apt-get") is None:
                raise StackError("PostgreSQL server binaries are missing: apt-get install postgresql")
            say("installing PostgreSQL from Debian's packages (apt-get, first run only)")
            # keep the package from creating and starting its own cluster on our port
            conf = Path("/etc/postgresql-common/createcluster.conf")
            conf.parent.mkdir(parents=True, exist_ok=True)
            if not conf.exists() or "create_main_cluster = false" not in conf.read_text():
                with conf.open("a") as f:
                    f.write("\ncreate_main_cluster = false\n")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            for cmd in (
                ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
            ):
                res = subprocess.run(cmd, env=env, capture_output=True, text=True)  # noqa: S603
                if res.returncode != 0:
                    raise StackError(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
        return found()[-1].parent

    def _data(self) -> Path:
        return self.dir / "data"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), capture_output=True, text=True, user=self.user)  # noqa: S603

    def _ensure_dir_usable(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.user is None:
            return
        shutil.chown(self.dir, self.user, self.user)
        probe = subprocess.run(["test", "-w", str(self.dir)], user=self.user)  # noqa: S603,S607
        if probe.returncode != 0:
            raise StackError(
                f"postgres: user '{self.user}' cannot reach {self.dir} (a parent folder is not "
                "world-executable); set STACK_DIR to a folder it can reach, e.g. /var/tmp/enrichment-stack"
            )

    def start(self) -> None:
        self._ensure_dir_usable()
        data = self._data()
        if not (data / "PG_VERSION").exists():
            shutil.rmtree(data, ignore_errors=True)
            res = self._run(
                str(self.bin / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            )
            if res.returncode != 0:
                raise StackError(f"postgres: initdb failed:\n{res.stdout}{res.stderr}")
        self._tls(data)
        opts = (
            f"-p {PG_PORT} -c listen_addresses={HOST} -k {self.dir} "
            "-c max_connections=200 -c shared_buffers=128MB -c fsync=on "
            f"-c ssl=on -c ssl_cert_file={self.dir / 'server.crt'} -c ssl_key_file={self.dir / 'server.key'} "
            f"-c ssl_ca_file={self.dir / 'ca.pem'}"
        )
        self.log.touch()
        if self.user:
            shutil.chown(self.log, self.user, self.user)
        res = self._run(str(self.bin / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(self.log), "start")
        if res.returncode != 0:
            raise StackError(f"postgres: pg_ctl start failed:\n{res.stdout}{res.stderr}\n{tail(self.log)}")
        # pg_ctl returns at once; the postmaster's pid appears in postmaster.pid
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                pid = int((data / "postmaster.pid").read_text().split()[0])
                self.pidfile.write_text(str(pid))
                return
            except (OSError, ValueError, IndexError):
                time.sleep(0.1)
        raise StackError(f"postgres did not start:\n{tail(self.log)}")

    def _tls(self, data: Path) -> None:
        """The server's certificate (its key readable by the server's user only), and the
        TLS user's rules ahead of initdb's: the TLS user connects only over TLS, with a
        client certificate whose CN is its name and a password."""
        for src, dst in (("postgres.crt", "server.crt"), ("postgres.key", "server.key"), ("ca.pem", "ca.pem")):
            target = self.dir / dst
            shutil.copyfile(TLS_DIR / src, target)
            target.chmod(0o600)
            if self.user:
                shutil.chown(target, self.user, self.user)
        hba = data / "pg_hba.conf"
        marker = "# enrichment-stack TLS rules\n"
        rules = hba.read_text().split(marker)[-1]
        hba.write_text(
            marker
            + f"hostssl all {tls.PG_TLS_USER} {HOST}/32 scram-sha-256 clientcert=verify-full\n"
            + f"host all {tls.PG_TLS_USER} 0.0.0.0/0 reject\n"
            + marker
            + rules
        )

    def ready(self) -> None:
        import psycopg

        dsn = f"host={HOST} port={PG_PORT} user=postgres dbname=postgres connect_timeout=3"
        with psycopg.connect(dsn, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (tls.PG_TLS_USER,)).fetchone() is None:
                conn.execute(f'CREATE ROLE "{tls.PG_TLS_USER}" LOGIN SUPERUSER')  # constant name, not input
            conn.execute(f"ALTER ROLE \"{tls.PG_TLS_USER}\" PASSWORD '{tls.PG_TLS_PASSWORD}'")  # constants

    def probe(self) -> str:
        import psycopg

        dsn = f"host={HOST} port={PG_PORT} user=postgres dbname=postgres connect_timeout=3"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT 1")
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')  # constant name, not input
            row = conn.execute("SHOW server_version").fetchone()
        return f"PostgreSQL {row[0] if row else '?'}"

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None and (self._data() / "postmaster.pid").exists():
            # fast shutdown: roll back open transactions, checkpoint, exit
            self._run(
                str(self._find_bin() / "pg_ctl"),
                "-D",
                str(self._data()),
                "-m",
                "fast",
                "-t",
                str(int(STOP_TIMEOUT)),
                "stop",
            )
            if not pid_alive(pid):
                say(f"{self.name}: stopped (pid {pid})")
                self.pidfile.unlink(missing_ok=True)
                return
        super().stop()


CASSANDRA_JVM_FLAGS = [
    "-Djdk.attach.allowAttachSelf=true",
    *[
        f"--add-exports={m}=ALL-UNNAMED"
        for m in (
            "java.base/jdk.internal.misc",
            "java.base/jdk.internal.ref",
            "java.base/sun.nio.ch",
            "java.management.rmi/com.sun.jmx.remote.internal.rmi",
            "java.rmi/sun.rmi.registry",
            "java.rmi/sun.rmi.server",
            "java.sql/java.sql",
            "java.base/java.lang.ref",
            "jdk.unsupported/sun.misc",
            "jdk.compiler/com.sun.tools.javac.file",
            "jdk.attach/sun.tools.attach",
        )
    ],
    *[
        f"--add-opens={m}=ALL-UNNAMED"
        for m in (
            "java.base/java.lang.module",
            "java.base/jdk.internal.loader",
            "java.base/jdk.internal.ref",
            "java.base/jdk.internal.reflect",
            "java.base/jdk.internal.math",
            "java.base/jdk.internal.module",
            "java.base/jdk.internal.util.jar",
            "jdk.management/com.sun.management.internal",
            "java.base/sun.nio.ch",
            "java.base/java.io",
            "java.base/java.nio",
            "java.base/java.lang.reflect",
            "jdk.compiler/com.sun.tools.javac",
            "java.base/java.lang",
            "java.base/java.util",
            "java.base/java.util.concurrent",
            "java.base/java.util.concurrent.atomic",
        )
    ],
    "-Dio.netty.tryReflectionSetAccessible=true",
]


class Cassandra(Server):
    def __init__(self) -> None:
        super().__init__("cassandra", CASSANDRA_PORT)
        self.lib = Path()

    def prepare(self) -> None:
        self.lib = fetch_jars("cassandra", CASSANDRA_VERSION_POM)

    def _config(self) -> tuple[Path, Path]:
        d = self.dir
        yaml = d / "cassandra.yaml"
        yaml.write_text(f"""\
cluster_name: enrichment-local
num_tokens: 1
initial_token: '0'
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{HOST}:{CASSANDRA_STORAGE_PORT}"
listen_address: {HOST}
rpc_address: {HOST}
storage_port: {CASSANDRA_STORAGE_PORT}
native_transport_port: {CASSANDRA_PORT}
start_native_transport: true
auto_bootstrap: false
data_file_directories:
  - {d}/data
commitlog_directory: {d}/commitlog
saved_caches_directory: {d}/saved_caches
hints_directory: {d}/hints
cdc_raw_directory: {d}/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
concurrent_reads: 8
concurrent_writes: 16
concurrent_counter_writes: 8
memtable_allocation_type: heap_buffers
# ScyllaDB's batch limits (warn at 128 KiB, fail at 1 MiB; no warning for batches over
# many partitions), so the stand-in takes the history sink's batches as ScyllaDB does
batch_size_warn_threshold: 128KiB
batch_size_fail_threshold: 1024KiB
unlogged_batch_across_partitions_warn_threshold: 1000
disk_access_mode: mmap_index_only
dynamic_snitch: false
# TLS beside plaintext on the same port; a TLS client must show a certificate of the CA
client_encryption_options:
  enabled: true
  optional: true
  require_client_auth: true
  ssl_context_factory:
    class_name: org.apache.cassandra.security.PEMBasedSslContextFactory
  keystore: {TLS_DIR / "cassandra.pem"}
  truststore: {TLS_DIR / "ca.pem"}
""")
        logback = d / "logback.xml"
        logback.write_text("""\
<configuration>
  <appender name="OUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="OUT"/></root>
</configuration>
""")
        return yaml, logback

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        yaml, logback = self._config()
        jamm = next(self.lib.glob("jamm-*.jar"))
        cmd = [
            str(java_bin()),
            f"-Xms{CASSANDRA_HEAP}",
            f"-Xmx{CASSANDRA_HEAP}",
            "-Xss512k",
            "-XX:+UseG1GC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-javaagent:{jamm}",
            *CASSANDRA_JVM_FLAGS,
            "-Dcassandra-foreground=yes",
            f"-Dcassandra.config=file://{yaml}",
            f"-Dcassandra.storagedir={self.dir}",
            f"-Dcassandra.logdir={self.dir}",
            f"-Dcassandra.triggers_dir={self.dir}/triggers",
            f"-Dlogback.configurationFile={logback}",
            f"-Djna.tmpdir={self.dir}/tmp",
            f"-Djava.io.tmpdir={self.dir}/tmp",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.load_ring_state=false",
            "-Dcassandra.ring_delay_ms=1000",
            "-Dcassandra.superuser_setup_delay_ms=0",
            "-cp",
            f"{self.lib}/*",
            "org.apache.cassandra.service.CassandraDaemon",
        ]
        for sub in ("triggers", "tmp"):
            (self.dir / sub).mkdir(exist_ok=True)
        spawn(cmd, self.log, self.pidfile)

    def probe(self) -> str:
        import logging

        from cassandra.cluster import Cluster

        logging.getLogger("cassandra").setLevel(logging.CRITICAL)
        cluster = Cluster([HOST], port=CASSANDRA_PORT, protocol_version=4, connect_timeout=3)
        try:
            session = cluster.connect()
            row = session.execute("SELECT release_version FROM system.local", timeout=5).one()
            return f"Apache Cassandra {row.release_version}"
        finally:
            cluster.shutdown()


def build_registry() -> Path:
    """Build the Schema Registry (Apicurio Registry's Quarkus application, from Maven
    Central) once into the cache: its runner jar and lib/. The application's own
    application.properties, read from its jar, plus stack/maven/registry/registry.properties."""
    version = pom_version(REGISTRY_PROJECT / "pom.xml", "apicurio.version")
    import hashlib

    # its build-time configuration is part of the build: a change makes another
    inputs = b"".join((REGISTRY_PROJECT / n).read_bytes() for n in ("pom.xml", "registry.properties"))
    home = CACHE_DIR / f"registry-{version}-{hashlib.sha256(inputs).hexdigest()[:8]}"
    stamp = home / ".complete"
    if stamp.exists():
        return home
    if shutil.which("mvn") is None:
        raise StackError("Maven (mvn) is needed once to build the Schema Registry; install it")
    say(f"building the Schema Registry (Apicurio {version}) with Maven into {home} (first run only, a few minutes)")
    build = home.with_name(home.name + ".build")
    shutil.rmtree(build, ignore_errors=True)
    (build / "src" / "main" / "resources").mkdir(parents=True)
    for name in ("pom.xml", "settings.xml"):
        shutil.copy(REGISTRY_PROJECT / name, build / name)
    env = dict(os.environ, JAVA_HOME=str(JAVA_HOME))
    maven = ["mvn", "-q", "-B", "-s", str(build / "settings.xml")]
    app = f"io.apicurio:apicurio-registry-app:{version}"
    steps = [
        [*maven, "dependency:copy", f"-Dartifact={app}", f"-DoutputDirectory={build / 'app'}"],
        [*maven, "-f", str(build / "pom.xml"), "package", "-DskipTests"],
    ]
    for i, cmd in enumerate(steps):
        if i == 1:  # the application's configuration, then ours
            import zipfile

            jar = next((build / "app").glob("apicurio-registry-app-*.jar"))
            with zipfile.ZipFile(jar) as z:
                own = z.read("application.properties").decode()
            extra = (REGISTRY_PROJECT / "registry.properties").read_text()
            (build / "src" / "main" / "resources" / "application.properties").write_text(own + "\n" + extra)
        res = subprocess.run(cmd, cwd=build, env=env, capture_output=True, text=True)  # noqa: S603
        if res.returncode != 0:
            raise StackError(f"building the Schema Registry failed:\n{res.stdout[-3000:]}{res.stderr[-2000:]}")
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    runner = next((build / "target").glob("*-runner.jar"))
    shutil.move(str(runner), home / "registry-runner.jar")
    shutil.move(str(build / "target" / "lib"), home / "lib")
    shutil.rmtree(build, ignore_errors=True)
    stamp.write_text(version)
    return home


class Registry(Server):
    """The Schema Registry: Apicurio Registry, Confluent-compatible API at /apis/ccompat/v7,
    its schemas kept in an H2 file under the stack's data (they outlive a restart)."""

    API = "/apis/ccompat/v7"
    config_version = f"{CONFIG_VERSION}-registry-https1"

    def __init__(self) -> None:
        super().__init__("registry", REGISTRY_PORT)
        self.home = Path()

    def prepare(self) -> None:
        self.home = build_registry()
        tls.ensure_registry(TLS_DIR, java_bin().parent / "keytool")

    def url(self) -> str:
        return f"http://{HOST}:{self.port}{self.API}"

    def start(self) -> None:
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        cmd = [
            str(java_bin()),
            f"-Xmx{REGISTRY_HEAP}",
            "-XX:+UseSerialGC",
            f"-Dquarkus.http.port={self.port}",
            f"-Dquarkus.http.host={HOST}",
            # HTTPS beside plain HTTP: a client certificate of the stack's CA required
            # (quarkus.http.ssl.client-auth, fixed at build time: registry.properties)
            f"-Dquarkus.http.ssl-port={REGISTRY_SSL_PORT}",
            f"-Dquarkus.http.ssl.certificate.files={TLS_DIR / 'registry.crt'}",
            f"-Dquarkus.http.ssl.certificate.key-files={TLS_DIR / 'registry.key'}",
            f"-Dquarkus.http.ssl.certificate.trust-store-file={TLS_DIR / 'registry-trust.p12'}",
            "-Dquarkus.http.ssl.certificate.trust-store-file-type=PKCS12",
            f"-Dquarkus.http.ssl.certificate.trust-store-password={tls.REGISTRY_TRUST_PASSWORD}",
            "-Dquarkus.http.insecure-requests=enabled",
            "-jar",
            str(self.home / "registry-runner.jar"),
        ]
        env = dict(os.environ, REGISTRY_DATASOURCE_URL=f"jdbc:h2:file:{self.dir / 'data' / 'registry'}")
        spawn(cmd, self.log, self.pidfile, env=env)

    def probe(self) -> str:
        import json
        import urllib.request

        base = f"http://{HOST}:{self.port}"
        with urllib.request.urlopen(f"{base}{self.API}/subjects", timeout=3) as resp:  # noqa: S310 - loopback
            json.load(resp)
        with urllib.request.urlopen(f"{base}/apis/registry/v2/system/info", timeout=3) as resp:  # noqa: S310
            info = json.load(resp)
        return f"Apicurio Registry {info.get('version', '?')}, Confluent API at {self.API}"


SERVERS: list[Server] = [Kafka(), Postgres(), Cassandra(), Registry()]


def answers(server: Server) -> str | None:
    try:
        return server.probe()
    except Exception:  # noqa: BLE001 - any failure means "does not answer"
        return None


# ---------------------------------------------------------------- commands


def wait_ready(servers: list[Server], started: dict[str, float]) -> None:
    pending = list(servers)
    deadline = time.monotonic() + START_TIMEOUT
    while pending:
        for server in list(pending):
            if server.pid() is None:
                raise StackError(f"{server.name} died during start; last lines of {server.log}:\n{tail(server.log)}")
            version = answers(server)
            if version:
                server.ready()
                took = time.monotonic() - started[server.name]
                say(f"{server.name}: ready on {server.address()} after {took:.1f}s ({version})")
                pending.remove(server)
        if pending and time.monotonic() > deadline:
            names = ", ".join(s.name for s in pending)
            logs = "\n".join(f"--- {s.log}\n{tail(s.log, 20)}" for s in pending)
            raise StackError(f"not ready after {START_TIMEOUT:.0f}s: {names}\n{logs}")
        if pending:
            time.sleep(0.5)


def selected(args: argparse.Namespace) -> list[Server]:
    names = getattr(args, "servers", None) or [s.name for s in SERVERS]
    unknown = set(names) - {s.name for s in SERVERS}
    if unknown:
        raise StackError(f"unknown server(s) {', '.join(sorted(unknown))}; known: {', '.join(s.name for s in SERVERS)}")
    return [s for s in SERVERS if s.name in names]


def cmd_up(args: argparse.Namespace) -> None:
    STACK_DIR.mkdir(parents=True, exist_ok=True)
    tls.ensure(TLS_DIR)
    TLS_DIR.chmod(0o755)  # PostgreSQL's user reads the CA from here
    t0 = time.monotonic()
    to_start: list[Server] = []
    for server in selected(args):
        pid = server.pid()
        if pid is not None:
            version = answers(server)
            if version:
                if not server.config_current():
                    raise StackError(
                        f"{server.name} runs with an older configuration of the stack (before its TLS "
                        "listeners); restart it: make down && make up"
                    )
                say(f"{server.name}: already running (pid {pid}, {server.address()}), nothing to do")
                continue
            to_start.append(server)  # running but not answering yet: just wait for it
            continue
        if port_in_use(server.port):
            raise StackError(
                f"{server.name}: port {server.port} is in use by another program; stop it or set "
                f"STACK_{server.name.upper()}_PORT (see docs/operations.md, Troubleshooting)"
            )
        server.prepare()
        to_start.append(server)
    if not to_start:
        say("stack already up")
        return
    started: dict[str, float] = {}
    for server in to_start:
        started[server.name] = time.monotonic()
        if server.pid() is None:
            say(f"{server.name}: starting on {server.address()} (log: {server.log})")
            server.start()
            (server.dir / "config.version").write_text(server.config_version)
    wait_ready(to_start, started)
    say(f"stack up in {time.monotonic() - t0:.1f}s")


def cmd_down(args: argparse.Namespace) -> None:
    for server in reversed(selected(args)):
        server.stop()


def rss_mb(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return f"{int(line.split()[1]) // 1024} MB"
    except OSError:
        pass
    return "?"


def cmd_status(_: argparse.Namespace) -> None:
    all_ok = True
    print(f"{'server':<10} {'address':<16} {'pid':<8} {'rss':<8} answers")
    for server in SERVERS:
        pid = server.pid()
        version = answers(server) if pid else None
        all_ok = all_ok and bool(version)
        print(
            f"{server.name:<10} {server.address():<16} {pid or '-':<8} "
            f"{rss_mb(pid) if pid else '-':<8} {('yes: ' + version) if version else 'no'}"
        )
    print("all servers answer" if all_ok else "not all servers answer: `make up` starts them")


def cmd_wipe(_: argparse.Namespace) -> None:
    if any(s.pid() for s in SERVERS):
        raise StackError("the stack is running; run `make down` first")
    shutil.rmtree(STACK_DIR, ignore_errors=True)
    say(f"removed {STACK_DIR}")


def cmd_fetch(_: argparse.Namespace) -> None:
    for server in SERVERS:
        server.prepare()
    say("binaries present")


def cmd_groups(args: argparse.Namespace) -> None:
    """Kafka's own kafka-consumer-groups tool (from the broker's jars) against the local
    broker, e.g. `groups --describe --group enrichment`: the group's committed offsets and lag."""
    lib = fetch_jars("kafka-tools", HERE / "maven" / "kafka-tools" / "pom.xml")
    cmd = [
        str(java_bin()),
        "-Xmx256m",
        "-cp",
        f"{lib}/*",
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        "--bootstrap-server",
        f"127.0.0.1:{KAFKA_PORT}",
        *args.rest,
    ]
    sys.exit(subprocess.run(cmd, check=False).returncode)  # noqa: S603


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    commands: dict[str, Callable[[argparse.Namespace], None]] = {
        "up": cmd_up,
        "down": cmd_down,
        "status": cmd_status,
        "wipe": cmd_wipe,
        "fetch": cmd_fetch,
        "groups": cmd_groups,
    }
    for name in commands:
        cmd = sub.add_parser(name)
        if name in ("up", "down"):
            cmd.add_argument("servers", nargs="*", help="kafka, postgres, cassandra, registry (default: all)")
    args, rest = parser.parse_known_args()
    if rest and args.cmd != "groups":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    try:
        commands[args.cmd](args)
    except StackError as exc:
        print(f"[stack] error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
