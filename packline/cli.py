"""The ``packline`` command: thin wiring only.

Exit codes: 0 ok; 1 the job ran but its result is not good (e.g. an order did not ship);
2 bad usage or bad input (nothing was changed); 3 the environment is not there
(broker, database, device unreachable). ``cloud serve`` stopped by SIGTERM or Ctrl+C exits 0
(that is how a server ends); ``demo`` stopped that way exits 128 + the signal number.

Every setting (options and ``PACKLINE_*`` variables) is checked before a command touches a
database or starts anything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sync.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ENV = 0, 1, 2, 3

log = logging.getLogger("packline")

# settings that have an option, and its name (the rest come only from PACKLINE_* variables)
_OPTIONS = {"data_dir": "--data-dir", "database_url": "--database-url", "mqtt_url": "--mqtt",
            "mqtt_protocol": "--mqtt-protocol"}
_SECRET: frozenset[str] = frozenset()  # settings whose value is never shown (none yet)


class UsageError(Exception):
    """Bad input from the user: exit 2, nothing changed. One line per problem."""


class Terminated(KeyboardInterrupt):
    """SIGTERM/SIGHUP, raised in the main thread so that the normal clean-up runs (``finally``
    blocks stop the API, the stations and the private broker) instead of Python just dying."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _signals_stop_cleanly() -> Iterator[None]:
    """Turn SIGTERM (and SIGHUP, unless ignored as under nohup) into :class:`Terminated` while
    the block runs. uvicorn only captures signals when run in the main thread; ours runs in a
    thread of its own, so these handlers are the only ones. A repeated signal during the
    clean-up is logged and ignored (SIGKILL still works, and the private broker dies with us)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, _frame: Any) -> None:
        nonlocal fired
        if fired:
            log.warning("%s again: already stopping", signal.Signals(signum).name)
            return
        fired = True
        log.info("%s: stopping", signal.Signals(signum).name)
        raise Terminated(signum)

    previous: dict[int, Any] = {}
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is None or (name == "SIGHUP" and signal.getsignal(sig) is signal.SIG_IGN):
            continue
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in _OPTIONS if getattr(args, name, None) is not None}


def _setting_name(field: str, overrides: dict[str, Any]) -> str:
    return _OPTIONS[field] if field in overrides else f"PACKLINE_{field.upper()}"


def _setting_problems(e: ValidationError, overrides: dict[str, Any]) -> dict[str, str]:
    """{field: one line naming the option or variable, its value and what is wrong with it}."""
    problems: dict[str, str] = {}
    for err in e.errors():
        field = str(err["loc"][0]) if err["loc"] else "settings"
        msg = str(err["msg"]).removeprefix("Value error, ")
        value = "***" if field in _SECRET else _redact(str(err.get("input")))
        shown = "" if repr(value) in msg else f"={value!r}"
        problems.setdefault(field, f"{_setting_name(field, overrides)}{shown}: {msg}")
    return problems


def _settings(args: argparse.Namespace) -> Settings:
    overrides = _overrides(args)
    try:
        return Settings(**overrides)
    except ValidationError as e:
        raise UsageError("\n".join(_setting_problems(e, overrides).values())) from None


def _check_database_url(url: str, name: str) -> str:
    from cloud.db import check_database_url

    try:
        check_database_url(url)
    except ValueError as e:
        raise UsageError(f"{name}: {e}") from None
    return url


def _cloud_database_url(args: argparse.Namespace, settings: Settings) -> str:
    """The cloud database URL, checked (exit 2 naming where it came from) before anything uses it."""
    if getattr(args, "database_url", None):
        name = "--database-url"
    elif settings.database_url:
        name = "PACKLINE_DATABASE_URL"
    else:
        name = "the default database URL (under --data-dir / PACKLINE_DATA_DIR)"
    return _check_database_url(settings.cloud_database_url(), name)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port: 0..65535 (0: any free port)")
    return port


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("packline")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _add_common(p: argparse.ArgumentParser, *, db: bool = True, mqtt: bool = True,
                mqtt_default: str = "start a broker") -> None:
    p.add_argument("--data-dir", type=Path, help="where Packline writes its files (env PACKLINE_DATA_DIR)")
    if db:
        p.add_argument("--database-url", help="SQLAlchemy URL of the cloud database (env PACKLINE_DATABASE_URL)")
    if mqtt:
        p.add_argument("--mqtt", dest="mqtt_url", metavar="URL",
                       help=f"mqtt[s]://[user:pass@]host:port (env PACKLINE_MQTT_URL); default: {mqtt_default}")
        p.add_argument("--mqtt-protocol", type=int, choices=(5, 311), default=None,
                       help="MQTT version of that broker: 5 (default) or 311 (env PACKLINE_MQTT_PROTOCOL)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log debug messages too")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="packline", description="Open, API-first fulfilment.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser(
        "demo", help="run the whole flow on this machine: API -> station -> label -> ledger",
        epilog="The demo's database is a fresh SQLite file under DATA_DIR/demo unless --database-url is given; "
               "PACKLINE_DATABASE_URL is ignored on purpose (the demo loads sample tenants and orders).",
    )
    _add_common(d)
    d.add_argument("--json", action="store_true", help="print only a JSON result on stdout (logs go to stderr)")
    d.add_argument("--out", type=Path, help="folder for the printed labels (.zpl); default DATA_DIR/out")
    d.add_argument("--orders", type=int, metavar="N", help="load run: N orders cycled from the samples")
    d.add_argument("--timeout", type=float, default=None, help="seconds to wait for every order to ship")
    d.add_argument("--sample-dir", type=Path, help="a folder shaped like the sample data")

    c = sub.add_parser("cloud", help="the cloud: API, ledger, MQTT ingest")
    csub = c.add_subparsers(dest="cloud_command", required=True)
    serve = csub.add_parser(
        "serve", help="run the API and the MQTT ingest",
        epilog="Runs until Ctrl+C or SIGTERM, then stops cleanly (exit 0). Without --mqtt / PACKLINE_MQTT_URL "
               "it starts a broker of its own for this process (under DATA_DIR/broker/) and stops it on exit.",
    )
    _add_common(serve)
    fields = Settings.model_fields
    serve.add_argument("--host", default=None,
                       help=f"address the API listens on (env PACKLINE_API_HOST; default: {fields['api_host'].default})")
    serve.add_argument("--port", type=_port, default=None, metavar="PORT",
                       help="TCP port of the API, 0..65535, 0 = any free port (the log names the one bound) "
                            f"(env PACKLINE_API_PORT; default: {fields['api_port'].default})")
    load = csub.add_parser("load", help="load a folder of tenants/sites/products/stock/packers JSON")
    _add_common(load, mqtt=False)
    load.add_argument("dir", type=Path)
    mig = csub.add_parser("migrate", help="upgrade the cloud database schema in place")
    _add_common(mig, mqtt=False)

    s = sub.add_parser("station", help="a packing station")
    ssub = s.add_subparsers(dest="station_command", required=True)
    en = ssub.add_parser("enrol", help="write this station's config file under the data dir")
    _add_common(en, db=False, mqtt_default="mqtt://127.0.0.1:1883")
    en.add_argument("--station-id", required=True)
    en.add_argument("--site", required=True)
    en.add_argument("--scanner", required=True, help="e.g. serial:///dev/ttyACM0?baud=9600")
    en.add_argument("--printer", required=True, help="e.g. tcp://10.0.0.7:9100")
    en.add_argument("--cloud-url", default="http://127.0.0.1:8000")
    en.add_argument("--mqtt-username")
    en.add_argument("--mqtt-password")
    en.add_argument("--force", action="store_true", help="overwrite an existing enrolment")
    run = ssub.add_parser("run", help="run the packing screen")
    _add_common(run, db=False, mqtt=False)  # the broker and its protocol are the station's config
    run.add_argument("--station-id", required=True)

    cfg = sub.add_parser(
        "config", help="show the effective settings and where each came from",
        epilog='An invalid value (e.g. PACKLINE_MQTT_URL=http://x, a database URL that is not one) is shown '
               'as given with an "error" beside it, the problems are named on stderr, and the exit code is 2.',
    )
    _add_common(cfg)
    return ap


def _setup_logging(verbose: int) -> None:
    # INFO by default: start-up facts ("API on http://127.0.0.1:PORT") are INFO, not warnings
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("transitions", "amqtt", "httpx", "uvicorn.access", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_demo(args: argparse.Namespace) -> int:
    from packline.demo import SAMPLE_DATA, DemoOptions, run_demo

    if args.orders is not None and not 1 <= args.orders <= 100_000:
        raise UsageError("--orders must be between 1 and 100000")
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError("--timeout must be a number of seconds above 0")
    settings = _settings(args)
    if args.database_url is not None:  # before the demo clears DATA_DIR/demo or starts anything
        _check_database_url(args.database_url, "--database-url")
    opts = DemoOptions(
        settings=settings,
        out=args.out,
        orders=args.orders,
        mqtt_url=args.mqtt_url or settings.mqtt_url,
        mqtt_protocol=args.mqtt_protocol or settings.mqtt_protocol,
        database_url=args.database_url,  # never PACKLINE_DATABASE_URL: the demo writes sample tenants
        sample_dir=args.sample_dir or SAMPLE_DATA,
        timeout_s=args.timeout or (120.0 if args.orders is None else 60.0 + args.orders * 0.5),
    )
    result = run_demo(opts)
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False, indent=2))
    else:
        print(render_summary(result))
    return EXIT_OK if result.ok else EXIT_FAILED


def render_summary(result: Any) -> str:
    rows = [("ORDER", "SITE", "CARRIER", "TRACKING", "STATUS", "LABEL")]
    for o in result.orders:
        rows.append((o.external_id, o.site or "-", o.carrier or "-", o.tracking_number or "-",
                     o.status or "-", o.label_file or (o.reason or "-")))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    s = result.stats
    shipped = sum(o.status == "shipped" for o in result.orders)
    lines.append("")
    lines.append(f"{shipped}/{len(result.orders)} shipped; labels in {s.get('out')}; "
                 f"broker {s['broker']['url']} (MQTT {s['broker']['protocol']}); database {s.get('database')}")
    wh = s.get("webhooks", {})
    lines.append(f"webhooks: {wh.get('verified', 0)} deliveries verified {wh.get('by_type', {})}, "
                 f"{wh.get('failed', 0)} failed verification")
    if "load" in s:
        ld = s["load"]
        lines.append(f"load: {ld['orders']} orders in {ld['wall_s']}s = {ld['orders_per_s']} orders/s; "
                     f"order -> shipped p50 {ld['p50_ms']} ms, p99 {ld['p99_ms']} ms")
    if result.problems:
        lines.append("PROBLEMS:")
        lines += [f"  - {p}" for p in result.problems]
    else:
        lines.append(f"ledger checked: {s.get('ledger_checked')}")
    return "\n".join(lines)


def cmd_cloud(args: argparse.Namespace) -> int:
    from cloud import server

    settings = _settings(args)
    database_url = _cloud_database_url(args, settings)
    if args.cloud_command == "migrate":
        server.migrate(database_url)
        print(f"database at {_redact(database_url)} is up to date", file=sys.stderr)
        return EXIT_OK
    if args.cloud_command == "load":
        if not args.dir.is_dir():
            raise UsageError(f"{args.dir} is not a folder")
        creds = server.load_folder(database_url, args.dir)
        print(json.dumps(creds, indent=2))
        return EXIT_OK
    host = args.host or settings.api_host
    port = args.port if args.port is not None else settings.api_port
    try:
        server.serve(settings, host=host, port=port)
    except KeyboardInterrupt:  # Ctrl+C or SIGTERM: the way a server is meant to end; all stopped by now
        log.info("stopped")
    return EXIT_OK


def cmd_station(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.station_command == "enrol":
        from station.config import enrol

        path = enrol(
            settings.data_dir,
            station_id=args.station_id,
            site=args.site,
            cloud_url=args.cloud_url,
            mqtt_url=args.mqtt_url or settings.mqtt_url or "mqtt://127.0.0.1:1883",
            mqtt_protocol=settings.mqtt_protocol,
            mqtt_username=args.mqtt_username,
            mqtt_password=args.mqtt_password,
            scanner_url=args.scanner,
            printer_url=args.printer,
            force=args.force,
        )
        print(path)
        return EXIT_OK
    from packline.wiring import run_station_app

    return run_station_app(settings.data_dir, args.station_id)


def cmd_config(args: argparse.Namespace) -> int:
    """Every setting, its value and source; an invalid one is shown as given with its "error"
    (and named on stderr): exit 2 then, so scripts notice."""
    overrides = _overrides(args)
    problems: dict[str, str] = {}
    raw: dict[str, Any] = {}
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        problems = _setting_problems(e, overrides)
        for err in e.errors():
            if err["loc"]:
                raw.setdefault(str(err["loc"][0]), err.get("input"))
        # show the rest as they would be: the bad ones fall back to their defaults for now
        defaults = {f: Settings.model_fields[f].get_default(call_default_factory=True)
                    for f in problems if f in Settings.model_fields}
        settings = Settings(**{**overrides, **defaults})
    if "database_url" not in problems:
        try:
            _cloud_database_url(args, settings)
        except UsageError as e:
            problems["database_url"] = str(e)
    out = {}
    for name in Settings.model_fields:
        env = f"PACKLINE_{name.upper()}"
        source = "option" if name in overrides else ("env " + env if os.environ.get(env) else "default")
        value = raw[name] if name in raw else getattr(settings, name)
        if name == "database_url" and value is None:
            value = settings.cloud_database_url()
        secret = name in _SECRET and value is not None
        shown = "***" if secret else _redact(str(value)) if value is not None else None
        out[name] = {"value": shown, "source": source}
        if name in problems:
            out[name]["error"] = problems[name]
    print(json.dumps(out, indent=2))
    for line in problems.values():
        print(f"packline: {line}", file=sys.stderr)
    return EXIT_USAGE if problems else EXIT_OK


def _redact(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", 0))
    handlers = {"demo": cmd_demo, "cloud": cmd_cloud, "station": cmd_station, "config": cmd_config}
    from sqlalchemy.exc import OperationalError

    from cloud.errors import CloudError
    from drivers.errors import DeviceError
    from station.errors import StationError

    # the long-running commands that start brokers, servers and stations stop cleanly on SIGTERM
    long_running = args.command == "demo" or getattr(args, "cloud_command", None) == "serve"
    try:
        with _signals_stop_cleanly() if long_running else contextlib.nullcontext():
            return handlers[args.command](args)
    except (UsageError, ValueError, StationError, CloudError) as e:  # bad input: nothing was changed
        for line in str(e).splitlines() or [type(e).__name__]:
            print(f"packline: {line}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # stdout closed early (`packline config | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OperationalError as e:  # the database is not there (or refuses us)
        print(f"packline: database unavailable: {_redact(str(e.orig or e)).strip().splitlines()[0]}", file=sys.stderr)
        return EXIT_ENV
    except (ConnectionError, OSError, DeviceError) as e:
        print(f"packline: {e}", file=sys.stderr)
        return EXIT_ENV
    except Terminated as e:
        return 128 + e.signum
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
