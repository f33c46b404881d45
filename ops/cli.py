"""The command line: `python -m ops replay|trace|reconcile|migrate ...`.

Arguments are checked before the settings are read and the settings before any connection is
opened, so a typo costs nothing. Every failure ends as one line on stderr and an exit status
from `ops.errors`; reports go to stdout and progress to stderr, so `> report.txt` keeps only
the report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import re
import sys
import textwrap
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TextIO, TypeVar

import psycopg
from confluent_kafka import KafkaException

from flows.adapters.postgres import changes
from flows.adapters.postgres.customers import CUSTOMERS_TABLE
from flows.errors import SettingsError
from flows.settings import Settings, redact_dsn
from ops import reconcile, replay, replay_rules, replay_setup, rewind, show, trace
from ops.errors import FAILED, FOUND_GAPS, INTERRUPTED, OK, USAGE, OpsError
from ops.ranges import OffsetSpan, check_spans, parse_span, parse_time

T = TypeVar("T")

PARKED_CODE = "customer_not_found"
EXIT_STATUSES = """exit status:
  0    done: nothing missing (reconcile), everything found (trace)
  1    reconcile: input records without output; trace: no history row, or an output record not
       found; migrate status: the trigger is not installed
  2    bad arguments or settings; Kafka, PostgreSQL, Cassandra/ScyllaDB, the history keyspace or a
       topic missing at start; a refused replay target; another replay holding the lease
       on the same replay state (the line names it), or replay state that can't be read
  3    failed part-way (a replayed chunk not acknowledged, a read stalled, the replay's
       lease lost, records the target refused); a replay keeps its position: run the
       same command again
  130  interrupted (Ctrl-C, SIGTERM); a replay first finishes its chunk in flight

Connection settings come from the same environment variables as the dataflow
(KAFKA_BOOTSTRAP_SERVERS, INPUT_TOPIC, OUTPUT_TOPIC, FAILURE_TOPIC, SCYLLA_HOSTS,
SCYLLA_KEYSPACE, ...; docs/configuration.md)."""

OFFSETS_HELP = (
    "[PARTITION:]START-END, inclusive; START- or -END leave a side open; a single OFFSET; "
    "without PARTITION: every partition not named. Repeatable; with any given, partitions "
    "not covered are left out"
)


class Parser(argparse.ArgumentParser):
    """argparse, with errors on one line (its default adds the usage block)."""

    def error(self, message: str) -> NoReturn:
        """Exit with status 2 and the message on one line, pointing at `--help`."""
        self.exit(USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _typed(parse: Callable[[str], T], name: str) -> Callable[[str], T]:
    """An argparse type that keeps the parser's own message."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text!r}: must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"{text!r}: must be more than 0")
    return value


def _topic(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", text):
        raise ValueError(f"{text!r}: a Kafka topic name is 1..249 of [A-Za-z0-9._-]")
    return text


def _wrap(text: str) -> str:
    return textwrap.fill(text, 79)


def build_parser(now: dt.datetime) -> Parser:
    """The parser of `python -m ops` and its subcommands; `now` is what a relative `--since`/`--until`
    counts back from."""
    common = Parser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress display on stderr")
    common.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")

    parser = Parser(
        prog="python -m ops",
        description="Operator tools for the enrichment pipeline.",
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{replay,trace,reconcile,migrate,rewind}")
    spans = _typed(parse_span, "offset range")
    moment = _typed(lambda t: parse_time(t, now), "time")

    rp = sub.add_parser(
        "replay",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_STATUSES,
        help="re-produce dead letters to the input topic (or --to TOPIC)",
        description=_wrap(
            "Read FAILURE_TOPIC and re-produce the selected dead letters to INPUT_TOPIC (or --to): "
            "original key, value and headers, minus the error.*/source.*/failed_at headers the "
            "pipeline added, plus replay.of=<failure topic>:<partition>:<offset>. Each dead letter is "
            "replayed at most once per target: the replay_state table in SCYLLA_KEYSPACE, shared by "
            "every operator, records what was replayed, so an interrupted run resumes where it "
            "stopped; one run at a time holds its lease."
        ),
    )
    rp.add_argument(
        "--to",
        metavar="TOPIC",
        type=_typed(_topic, "topic"),
        help="target topic (default: INPUT_TOPIC); refused: FAILURE_TOPIC, OUTPUT_TOPIC, and any "
        "topic whose last records carry the pipeline's output headers (source.*, error.code)",
    )
    rp.add_argument(
        "--code",
        action="append",
        default=[],
        metavar="CODE[,CODE]",
        help=f"only these error.code values (repeatable): {', '.join(replay_rules.CODES)}",
    )
    rp.add_argument(
        "--since",
        type=moment,
        metavar="TIME",
        help="only dead letters written at or after TIME (their Kafka timestamp, which is their "
        "failed_at): RFC 3339 with offset (2026-01-01T10:00:00Z), a date (midnight UTC), "
        "a duration back from now (90s, 15m, 2h, 3d) or epoch ms",
    )
    rp.add_argument("--until", type=moment, metavar="TIME", help="only dead letters written before TIME")
    rp.add_argument(
        "--offsets",
        action="append",
        default=[],
        type=spans,
        metavar="RANGE",
        help="only these offsets of the failure topic: " + OFFSETS_HELP,
    )
    rp.add_argument(
        "--if-customer-exists",
        action="store_true",
        help="only customer_not_found dead letters whose customer_id is in PostgreSQL now (parked "
        "records whose customer arrived); the others stay parked for a later run",
    )
    rp.add_argument(
        "--follow",
        action="store_true",
        help="with --if-customer-exists: keep running, and replay parked records as their customers "
        "arrive (woken by PostgreSQL's change announcements, see `migrate`, or every --interval)",
    )
    rp.add_argument(
        "--interval",
        type=_typed(_positive_float, "seconds"),
        default=30.0,
        metavar="SECONDS",
        help="--follow: look again at least this often (default 30)",
    )
    rp.add_argument(
        "--settle",
        type=_typed(_positive_float, "seconds"),
        default=2.0,
        metavar="SECONDS",
        help="--follow: wait this long after a change before replaying, so the dataflow's caches have "
        "dropped the customer (default 2; with CACHE_INVALIDATION=ttl use CACHE_NEGATIVE_TTL_SECONDS)",
    )
    rp.add_argument("--dry-run", action="store_true", help="count what would be replayed, by code; produce nothing")
    rp.add_argument(
        "--limit",
        type=_typed(_positive_int, "count"),
        metavar="N",
        help="stop after replaying N records (a later run continues)",
    )
    rp.add_argument(
        "--chunk-size",
        type=_typed(_positive_int, "count"),
        default=500,
        metavar="N",
        help="records produced and acknowledged before the replay state is updated (default 500)",
    )
    rp.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="deprecated: the state is shared in the history keyspace now; DIR is only where a "
        "state file of an earlier version is looked for, to import it once (default .ops-state)",
    )
    rp.add_argument(
        "--restart",
        action="store_true",
        help="forget what the replay state says was replayed (records may be produced again)",
    )
    rp.set_defaults(handler=_replay, parser=rp)

    tp = sub.add_parser(
        "trace",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_STATUSES,
        help="show the history rows and output record of one event",
        description=_wrap(
            "Print the event_history rows of one event and, for each, the message it became in the "
            "success or failure topic (found by its source.* headers near the row's processed_at)."
        ),
    )
    tp.add_argument("event_id", nargs="?", help="the event's event_id")
    tp.add_argument(
        "--source",
        type=_typed(trace.parse_source, "source"),
        metavar="TOPIC:PARTITION:OFFSET",
        help="trace the input record at these coordinates instead",
    )
    tp.add_argument(
        "--window",
        type=_typed(_positive_float, "seconds"),
        default=300.0,
        metavar="SECONDS",
        help="how long after processed_at to look for the output record (default 300)",
    )
    tp.add_argument("--full", action="store_true", help="print whole values (default: the first 1000 characters)")
    tp.add_argument(
        "--full-scan",
        action="store_true",
        help="with --source, when the input record is gone: search the whole history table "
        "(ALLOW FILTERING; slow on a big table)",
    )
    tp.set_defaults(handler=_trace, parser=tp)

    cp = sub.add_parser(
        "reconcile",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_STATUSES,
        help="match input records against success + failure outputs",
        description=_wrap(
            "Count the records of INPUT_TOPIC against the messages of OUTPUT_TOPIC and FAILURE_TOPIC "
            "that name them in their source.* headers, per partition; list missing and duplicated "
            "offsets as ranges. Exit status 1 when any input record has no output."
        ),
    )
    cp.add_argument(
        "--offsets",
        action="append",
        default=[],
        type=spans,
        metavar="RANGE",
        help="only these offsets of the input topic: " + OFFSETS_HELP,
    )
    cp.add_argument(
        "--skew",
        type=_typed(_positive_float, "seconds"),
        default=reconcile.DEFAULT_SKEW_S,
        metavar="SECONDS",
        help="read outputs from this long before the earliest input record's timestamp (default 3600)",
    )
    cp.set_defaults(handler=_reconcile, parser=cp)

    mp = sub.add_parser(
        "migrate",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_STATUSES,
        help="install in PostgreSQL what CACHE_INVALIDATION=notify needs",
        description=_wrap(
            "Install (idempotent: run it again after an upgrade), remove or show the trigger that makes "
            "PostgreSQL announce every change of the customers table on the channel enrichment_customers "
            "(docs/design.md, Fresh reference data). The dataflow never installs it itself. status exits "
            "1 when it is not installed."
        ),
    )
    mp.add_argument("action", choices=("install", "uninstall", "status"))
    mp.set_defaults(handler=_migrate, parser=mp)

    wp = sub.add_parser(
        "rewind",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_STATUSES,
        help="process the input again from a time or an offset (the consumer group and the recovery store)",
        description=_wrap(
            "Move where the flow resumes reading INPUT_TOPIC: the offsets committed to CONSUMER_GROUP and, "
            "for at-least-once, the input positions in the recovery store of every --recovery-directory "
            "(each process's). Refused while the flow runs (the group has members, or a process holds a "
            "recovery directory). --dry-run shows what would move."
        ),
    )
    where = wp.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--to-datetime",
        type=moment,
        metavar="TIME",
        help="the first record at or after TIME (RFC 3339 with offset, a date, or epoch ms), by the records' "
        "Kafka timestamps; a partition with none goes to its end",
    )
    where.add_argument(
        "--by-duration",
        type=_typed(_duration, "duration"),
        metavar="DURATION",
        help="that long before now: 90s, 15m, 2h, 3d",
    )
    where.add_argument(
        "--to-offset",
        action="append",
        type=_typed(rewind.parse_offset, "offset"),
        metavar="[PARTITION:]OFFSET",
        help="this offset (repeatable; without PARTITION: every partition not named), kept within what the "
        "partition holds",
    )
    where.add_argument("--to-earliest", action="store_true", help="the oldest record each partition still holds")
    where.add_argument("--to-latest", action="store_true", help="the end of each partition (skip what waits)")
    wp.add_argument(
        "--recovery-directory",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="a recovery directory of the flow (-r / BYTEWAX_RECOVERY_DIRECTORY; repeatable: each process's "
        "volume); default BYTEWAX_RECOVERY_DIRECTORY when set",
    )
    wp.add_argument(
        "--group-only",
        action="store_true",
        help="at-least-once: move only the consumer group's offsets (the snapshots stay where they are)",
    )
    wp.add_argument("--dry-run", action="store_true", help="show what would move; change nothing")
    wp.set_defaults(handler=_rewind, parser=wp)
    return parser


def _duration(text: str) -> str:
    if not re.fullmatch(r"\d+(\.\d+)?[smhd]", text.strip()):
        raise ValueError(f"{text!r}: a duration is a number and s, m, h or d (90s, 15m, 2h, 3d)")
    return text.strip()


def _check_spans(parser: Parser, spans: Sequence[OffsetSpan]) -> tuple[OffsetSpan, ...]:
    try:
        check_spans(spans)
    except ValueError as exc:
        parser.error(str(exc))
    return tuple(spans)


def _replay(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    opts = replay.Options(
        selection=replay_rules.Selection(args.codes, args.since, args.until, args.spans),
        target=args.to,
        dry_run=args.dry_run,
        limit=args.limit,
        chunk_size=args.chunk_size,
        legacy_dir=args.state_dir,
        restart=args.restart,
        progress=not args.quiet and not args.follow,
        if_customer_exists=args.if_customer_exists,
    )
    replay_setup.warn_state_dir(args.state_dir)
    if args.follow:
        return replay.follow(settings, opts, out, args.interval, args.settle)
    return replay.run(settings, opts, out)


def _trace(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    opts = trace.Options(
        event_id=args.event_id,
        source=args.source,
        window_s=args.window,
        full=args.full,
        full_scan=args.full_scan,
        progress=not args.quiet,
    )
    return trace.run(settings, opts, out)


def _reconcile(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    return reconcile.run(settings, reconcile.Options(args.spans, args.skew, not args.quiet), out)


def _migrate(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    try:
        if args.action == "install":
            changes.install(settings)
        elif args.action == "uninstall":
            changes.uninstall(settings)
        found = changes.installed_triggers(settings)
    except psycopg.Error as exc:
        where = redact_dsn(settings.pg_dsn.get())
        raise OpsError(f"PostgreSQL at {where}: {show.controls(str(exc).strip())[:300]}", USAGE) from None
    if found == {changes.ROW_TRIGGER, changes.TRUNCATE_TRIGGER}:
        print(
            f"installed: table {CUSTOMERS_TABLE} announces its changes on channel {changes.CHANNEL} "
            f"(triggers {changes.ROW_TRIGGER}, {changes.TRUNCATE_TRIGGER})",
            file=out,
        )
        return 0
    print(f"not installed: table {CUSTOMERS_TABLE} has no change trigger", file=out)
    return OK if args.action == "uninstall" else FOUND_GAPS


def _rewind(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    if args.to_datetime is not None:
        target = rewind.Target("datetime", ms=args.to_datetime)
    elif args.by_duration is not None:
        target = rewind.Target("datetime", ms=parse_time(args.by_duration, dt.datetime.now(dt.UTC)))
    elif args.to_offset:
        target = rewind.Target("offset", offsets=dict(args.to_offset))
    else:
        target = rewind.Target("earliest" if args.to_earliest else "latest")
    dirs = list(args.recovery_directory)
    default = os.environ.get("BYTEWAX_RECOVERY_DIRECTORY")
    if not dirs and default and not settings.exactly_once:
        dirs = [Path(default)]
    opts = rewind.Options(target, tuple(dirs), args.dry_run, args.group_only)
    return rewind.run(settings, opts, out)


def parse_args(argv: Sequence[str] | None, now: dt.datetime) -> argparse.Namespace:
    """Parse and cross-check the arguments (argparse can't say "one of these two")."""
    parser = build_parser(now)
    args = parser.parse_args(argv)
    sub: Parser = args.parser
    if args.command == "replay":
        try:
            args.codes = replay_rules.parse_codes(args.code)
        except ValueError as exc:
            sub.error(str(exc))
        args.spans = _check_spans(sub, args.offsets)
        if args.since is not None and args.until is not None and args.until <= args.since:
            sub.error("--until must be later than --since")
        if args.if_customer_exists:
            if args.codes and args.codes != {PARKED_CODE}:
                sub.error(f"--if-customer-exists replays {PARKED_CODE} dead letters only")
            args.codes = frozenset({PARKED_CODE})
        if args.follow and not args.if_customer_exists:
            sub.error("--follow goes with --if-customer-exists (other dead letters would come back at once)")
        if args.follow and (args.dry_run or args.limit is not None):
            sub.error("--follow can't go with --dry-run or --limit")
    elif args.command == "trace":
        if (args.event_id is None) == (args.source is None):
            sub.error("give either an EVENT_ID or --source TOPIC:PARTITION:OFFSET")
        if args.full_scan and args.source is None:
            sub.error("--full-scan goes with --source")
    elif args.command == "reconcile":
        args.spans = _check_spans(sub, args.offsets)
    return args


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run one subcommand and return its exit status (`ops.errors`). Every failure ends as one line
    on stderr; an unexpected error shows its traceback only with `--debug`."""
    args = parse_args(argv, dt.datetime.now(dt.UTC))
    out = out if out is not None else sys.stdout
    prog = f"ops {args.command}"
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"{prog}: error: bad setting {exc}", file=sys.stderr)
        return USAGE
    # client libraries log through the root logger; their chatter is not for operators
    logging.basicConfig(
        level=logging.WARNING if args.debug else logging.CRITICAL, format=f"{prog}: %(name)s: %(message)s"
    )
    try:
        status: int = args.handler(settings, args, out)
        return status
    except OpsError as exc:
        print(f"{prog}: error: {show.controls(str(exc))}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except KafkaException as exc:
        print(f"{prog}: error: Kafka: {show.controls(str(exc))}", file=sys.stderr)
        return FAILED
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        hint = "" if args.debug else " (--debug shows the traceback)"
        # one line whatever the message holds (it may quote what a record held)
        print(f"{prog}: error: {type(exc).__name__}: {show.controls(str(exc)[:300])}{hint}", file=sys.stderr)
        return FAILED
    finally:
        out.flush()
