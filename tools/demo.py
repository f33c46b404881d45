"""`make demo`: topics and schemas, seeded customers, a sample with every failure code,
one run of the dataflow until the input is drained, and a summary of what came out.

Runs against the local stack. The demo's topics are deleted and recreated each run (so
running it twice gives the same summary) and its customers written: pointed at anything but
this machine (KAFKA_BOOTSTRAP_SERVERS, PG_DSN, SCYLLA_HOSTS) it refuses, exit status 2,
unless `--allow-remote` (`make demo ALLOW_REMOTE=1`) says to go on. Its screen holds the
demo's own lines: librdkafka's notices (a coordinator still loading, say) are not shown,
only its errors.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from confluent_kafka.admin import AdminClient

from flows import connections
from flows.adapters.scylla.session import TABLE, connect, ensure_schema
from flows.errors import SettingsError
from flows.settings import Settings
from tools import formats, provision, sample
from tools.kafkautil import header, produce_all, read_topic

ROOT = Path(__file__).resolve().parents[1]
N_CUSTOMERS = 5000
N_EVENTS = 5000
PARTITIONS = 3


def recreate_topics(settings: Settings, names: list[str]) -> None:
    provision.delete_topics(settings, names)
    client = AdminClient(connections.kafka_common(settings))
    deadline = time.monotonic() + 60
    while any(n in client.list_topics(timeout=10).topics for n in names):  # deletion is asynchronous
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics {names} still exist 60s after deletion")
        time.sleep(0.2)
    while True:
        try:
            provision.ensure_topics(settings, names, PARTITIONS)
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]", ""}


def _host(address: str) -> str:
    address = address.strip()
    if address.startswith("["):  # [::1]:9092
        return address.split("]", 1)[0] + "]"
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


def remote_servers(settings: Settings) -> list[str]:
    """The servers the settings name that are not on this machine."""
    from flows.settings import parse_dsn

    remote = [f"Kafka {a}" for a in settings.kafka_bootstrap_servers.split(",") if _host(a) not in LOCAL_HOSTS]
    pg_host = parse_dsn(settings.pg_dsn.get()).get("host", "")
    remote += [f"PostgreSQL {h}" for h in pg_host.split(",") if h not in LOCAL_HOSTS and not h.startswith("/")]
    remote += [f"ScyllaDB {h}" for h in settings.scylla_hosts if h not in LOCAL_HOSTS]
    return remote


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Settings come from the environment (docs/configuration.md); exit status 0 when every "
        "record came out as expected, 1 otherwise, 2 for a bad setting.",
    )
    parser.add_argument(
        "--format",
        choices=("json", "avro", "protobuf", "json-schema"),
        default="json",
        help="the events' format, in and out (a Schema Registry format uses the local stack's registry)",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="run against servers that are not on this machine (their demo topics are deleted and recreated)",
    )
    args = parser.parse_args(argv)
    # librdkafka's own log lines (`%4|...|GETPID|... Coordinator load in progress`): errors only
    env = {**os.environ, "KAFKA_CLIENT_LOG__LEVEL": os.environ.get("KAFKA_CLIENT_LOG__LEVEL", "3")}
    env.update({"INPUT_FORMAT": args.format, "OUTPUT_FORMAT": args.format})
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        print(f"error: bad setting {exc}", file=sys.stderr)
        return 2
    remote = remote_servers(settings)
    if remote and not args.allow_remote:
        print(
            f"error: the demo deletes and recreates its topics and writes customers, and these servers are not on "
            f"this machine: {', '.join(remote)}; unset the settings to use the local stack (make up), or say "
            "--allow-remote (make demo ALLOW_REMOTE=1)",
            file=sys.stderr,
        )
        return 2
    topics = [settings.input_topic, settings.output_topic, settings.failure_topic]
    print(f"demo: topics {', '.join(topics)} ({PARTITIONS} partitions, recreated)")
    recreate_topics(settings, topics)
    print(f"demo: {provision.seed_customers(settings, sample.customers(N_CUSTOMERS))} customers in PostgreSQL")
    cluster = connect(settings)
    session = cluster.connect()
    ensure_schema(session, settings)
    records = list(
        sample.events(N_EVENTS, N_CUSTOMERS, bad_ratio=0.02, seed=42, max_value_bytes=settings.max_value_bytes)
    )
    if args.format != "json":
        records = formats.in_format(records, args.format, settings, settings.input_topic)
        print(f"demo: events written in {args.format}, schemas in the registry at {settings.schema_registry_url}")
    expected = Counter(r.expect for r in records)
    produce_all(settings, settings.input_topic, records)
    print(f"demo: produced {len(records)} events to {settings.input_topic}: {dict(sorted(expected.items()))}")

    log_path = ROOT / ".stack" / "demo-dataflow.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**env, "STOP_AT_END": "true", "PROGRESS_INTERVAL_SECONDS": "2"}
    print(f"demo: running `python -m bytewax.run dataflow` with STOP_AT_END=true (log: {log_path})")
    started = time.monotonic()
    run_started = dt.datetime.now(dt.UTC).replace(microsecond=0)  # history rows written by this run
    with open(log_path, "wb") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "bytewax.run", "dataflow"], cwd=ROOT, env=env, stderr=log, stdout=log, timeout=600
        )
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        print(f"demo: the dataflow exited with status {proc.returncode}; last lines of {log_path}:")
        print("\n".join(log_path.read_text(errors="replace").splitlines()[-20:]))
        return 1

    enriched = list(read_topic(settings, settings.output_topic))
    failed = list(read_topic(settings, settings.failure_topic))
    codes = Counter(header(m, "error.code") for m in failed)
    rows = session.execute(  # the keyspace is a validated identifier; values are bound
        f"SELECT count(*) FROM {settings.scylla_keyspace}.{TABLE} "  # noqa: S608
        "WHERE source_topic = %s AND processed_at >= %s ALLOW FILTERING",
        (settings.input_topic, run_started),
        timeout=60,
    ).one()[0]
    cluster.shutdown()
    final = [line for line in log_path.read_text(errors="replace").splitlines() if '"final progress"' in line]
    ratio = json.loads(final[-1]).get("cache_hit_ratio") if final else None

    print("\n=== summary ===")
    print(f"input      {settings.input_topic:<18} {len(records):>7} records")
    print(f"enriched   {settings.output_topic:<18} {len(enriched):>7} records")
    print(f"failed     {settings.failure_topic:<18} {len(failed):>7} records")
    for code, n in sorted(codes.items(), key=lambda kv: str(kv[0])):
        print(f"             {code:<26} {n:>5}")
    print(f"history    {settings.scylla_keyspace}.{TABLE:<12} {rows:>7} rows written by this run")
    print(f"cache hit ratio  {ratio}")
    print(
        f"elapsed          {elapsed:.1f}s for the dataflow run (start-up included), "
        f"{len(records) / elapsed:,.0f} records/s"
    )
    if enriched:
        sample_msg = enriched[0]
        print("\none enriched event (key, headers, value):")
        print(f"  key     {sample_msg.key()!r}")
        print(f"  headers {[(k, v.decode()) for k, v in sample_msg.headers() or []]}")
        value = sample_msg.value() or b""
        if args.format != "json":
            print(f"  ({args.format}, {len(value)} bytes; as JSON:)")
            value = formats.reader(args.format, settings, settings.output_topic).read(value)
        print("  value   " + json.dumps(json.loads(value), indent=2).replace("\n", "\n  "))
    ok = (
        len(enriched) == expected["enriched"]
        and len(failed) == len(records) - expected["enriched"]
        and all(codes[c] == n for c, n in expected.items() if c != "enriched")
        and rows == len(records)
    )
    print(f"\naccounting: {'every record accounted for' if ok else 'MISMATCH against what was produced'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
