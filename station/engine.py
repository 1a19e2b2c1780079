"""The packing engine: scan the order, scan every item, print the label, commit ``order.packed``.

Headless and UI-free: the TUI, the demo and the tests drive the same engine. The rules
that judge a scan are pure functions (:func:`judge_item`) over the replica's frozen
values and the decoded :class:`drivers.scanner.Scan`; :class:`PackingEngine` adds the
thin I/O around them: the replica, the label printer and the callbacks.

States::

    idle --scan order--> packing --scan items--> complete --label printed--> packed (idle again)
                           |  ^                     |  ^
                           |  '-- bad scans --------'  '-- printer error: F5 / rescan the order retries
                           '-- Esc: abort (order back to released, counts cleared)

Every scan is recorded in the replica's ``scans`` table with its verdict; a bad scan
changes nothing else. Nothing is committed until the label was handed to the printer;
then the order's status and its ``order.packed`` outbox row are written in ONE SQLite
transaction, and ``on_packed`` tells the sync link to publish at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Literal

from drivers.errors import DeviceError
from drivers.printer import LabelPrinter
from drivers.scanner import Scan
from station.errors import ReplicaError
from station.replica import CLOSED_ELSEWHERE, Order, OrderLine, Replica, ScanRecord
from sync.contract import Envelope, OrderPackedBody, PackedLine

__all__ = [
    "PackingEngine",
    "Severity",
    "Verdict",
    "VerdictKind",
    "judge_item",
    "local_now",
    "packed_body",
]

log = logging.getLogger("packline.station")

Severity = Literal["ok", "info", "warning", "error"]


class VerdictKind(StrEnum):
    # accepted
    ORDER_OPENED = "order_opened"
    ITEM_OK = "item_ok"
    PACKED = "packed"
    REPRINTED = "reprinted"
    ABORTED = "aborted"
    # nothing to do
    ORDER_ALREADY_OPEN = "order_already_open"
    NOTHING_TO_PRINT = "nothing_to_print"
    NOTHING_TO_ABORT = "nothing_to_abort"
    # rejected scans and failures
    BAD_SCAN = "bad_scan"
    ORDER_NOT_FOUND = "order_not_found"
    ORDER_AMBIGUOUS = "order_ambiguous"
    ORDER_CANCELLED = "order_cancelled"
    ALREADY_PACKED = "already_packed"
    OTHER_ORDER = "other_order"
    UNKNOWN_BARCODE = "unknown_barcode"
    NO_ORDER = "no_order"
    WRONG_ITEM = "wrong_item"
    TOO_MANY = "too_many"
    LOT_MISSING = "lot_missing"
    EXPIRED_LOT = "expired_lot"
    PRINTER_ERROR = "printer_error"
    CANCELLED_WHILE_PRINTING = "cancelled_while_printing"


_SEVERITY: dict[VerdictKind, Severity] = {
    VerdictKind.ORDER_OPENED: "ok",
    VerdictKind.ITEM_OK: "ok",
    VerdictKind.PACKED: "ok",
    VerdictKind.REPRINTED: "ok",
    VerdictKind.ABORTED: "warning",
    VerdictKind.ORDER_ALREADY_OPEN: "info",
    VerdictKind.NOTHING_TO_PRINT: "info",
    VerdictKind.NOTHING_TO_ABORT: "info",
}
_ACCEPTED = frozenset(
    {
        VerdictKind.ORDER_OPENED,
        VerdictKind.ITEM_OK,
        VerdictKind.PACKED,
        VerdictKind.REPRINTED,
        VerdictKind.ABORTED,
    }
)


@dataclass(frozen=True)
class Verdict:
    """What the packer is told after a scan or a key. ``message`` is short and loud; ``hint`` says what to do."""

    kind: VerdictKind
    message: str
    order_id: str | None = None
    external_id: str | None = None
    sku: str | None = None
    expected: int | None = None
    scanned: int | None = None
    hint: str | None = None

    @property
    def ok(self) -> bool:
        return self.kind in _ACCEPTED

    @property
    def severity(self) -> Severity:
        return _SEVERITY.get(self.kind, "error")


def _closed_headline(order: Order) -> str:
    """What the packer reads for an order that must not be packed here."""
    if order.cancel_reason and order.cancel_reason.startswith(CLOSED_ELSEWHERE):
        return f"PACKED ELSEWHERE — do not pack {order.external_id}"
    return f"ORDER CANCELLED — do not pack {order.external_id}"


def local_now() -> datetime:
    """The default clock: an aware datetime in the station's local time zone (expiry dates are local)."""
    return datetime.now().astimezone()


# --- pure rules -----------------------------------------------------------------------------
def _as_printed(scan: Scan) -> str:
    """The number a packer can read under the barcode: the digits scanned (EAN-13 / UPC-A / EAN-8),
    else the GTIN-14 of a GS1 element string."""
    return scan.text if scan.text.isdigit() else str(scan.gtin)


def judge_item(order: Order, scan: Scan, today: date) -> tuple[Verdict, OrderLine | None]:
    """Judge an item scan against the order being packed. Pure.

    Returns the verdict and, when the scan is accepted, the line to count it on.
    ``scan`` must carry a valid GTIN (bad scans and order barcodes are handled before).
    """
    assert scan.gtin is not None and scan.ok, "judge_item takes good item scans only"
    base = Verdict(VerdictKind.ITEM_OK, "", order_id=order.order_id, external_id=order.external_id)
    matching = [line for line in order.lines if scan.gtin in line.gtins]
    if not matching:
        return replace(
            base,
            kind=VerdictKind.WRONG_ITEM,
            message=f"WRONG ITEM — {_as_printed(scan)} is not on this order",
            hint="put it back; scan an item from the list",
        ), None
    open_lines = [line for line in matching if not line.complete]
    if not open_lines:
        line = matching[0]
        return replace(
            base,
            kind=VerdictKind.TOO_MANY,
            message=f"TOO MANY — {line.sku}: all {line.qty} already scanned",
            sku=line.sku,
            expected=line.qty,
            scanned=line.scanned,
            hint="put the extra item back",
        ), None
    line = open_lines[0]
    counts = replace(base, sku=line.sku, expected=line.qty, scanned=line.scanned)
    if scan.expiry is not None and scan.expiry < today:
        return replace(
            counts,
            kind=VerdictKind.EXPIRED_LOT,
            message=f"EXPIRED LOT — {line.sku} lot {scan.lot or '?'} expired {scan.expiry.isoformat()}",
            hint="set it aside; take one from another lot",
        ), None
    if line.lot_tracked and not scan.lot:
        return replace(
            counts,
            kind=VerdictKind.LOT_MISSING,
            message=f"LOT NEEDED — {line.sku}: scan the GS1 label with lot",
            hint="scan the barcode that carries the lot (GS1-128 / DataMatrix)",
        ), None
    return replace(
        counts,
        message=f"OK {line.sku} {line.scanned + 1}/{line.qty}",
        scanned=line.scanned + 1,
    ), line


def _distinct(values: tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(values))


def packed_body(
    order: Order, *, packed_at: datetime, packer: str | None, gtins: dict[str, str] | None = None
) -> OrderPackedBody:
    """The ``order.packed`` body for a fully scanned order. Pure. ``gtins`` maps sku -> the GTIN scanned."""
    assert order.complete, "only a fully scanned order can be packed"
    gtins = gtins or {}
    return OrderPackedBody(
        order_id=order.order_id,
        packer=packer,
        lines=[
            PackedLine(
                sku=line.sku,
                qty=line.scanned,
                gtin=gtins.get(line.sku) or (line.gtins[0] if line.gtins else ""),
                lots=_distinct(line.lots),
            )
            for line in order.lines
        ],
        tracking_number=order.tracking_number,
        started_at=datetime.fromtimestamp(order.started_at, UTC) if order.started_at is not None else None,
        packed_at=packed_at,
    )


# --- the engine -----------------------------------------------------------------------------
class PackingEngine:
    """Turns scans and keys into verdicts, replica writes, labels and outbox events.

    Thread-safe: calls are serialised by a lock (the scanner thread and the UI may both
    call). Callbacks run after the lock is released: ``on_event(verdict)`` for every
    verdict, ``on_packed(envelope)`` after ``order.packed`` is committed.
    """

    def __init__(
        self,
        replica: Replica,
        printer: LabelPrinter,
        *,
        clock: Callable[[], datetime] = local_now,
        on_event: Callable[[Verdict], None] | None = None,
        on_packed: Callable[[Envelope], None] | None = None,
        packer: str | None = None,
        check_printer_status: bool = True,
    ) -> None:
        self.replica = replica
        self.printer = printer
        self.packer = packer
        self.check_printer_status = check_printer_status
        self._clock = clock
        self._on_event = on_event or (lambda v: None)
        self._on_packed = on_packed or (lambda env: None)
        self._lock = threading.RLock()
        resumed = replica.packing_order()
        self._current: str | None = resumed.order_id if resumed else None
        self._last_packed: str | None = None
        self.last_verdict: Verdict | None = None

    # -- state --------------------------------------------------------------------------
    @property
    def current_order_id(self) -> str | None:
        return self._current

    def current_order(self) -> Order | None:
        current = self._current
        return self.replica.get_order(current) if current else None

    # -- entry points -------------------------------------------------------------------
    def handle_scan(self, scan: Scan) -> Verdict:
        return self._run(lambda out: self._handle_scan(scan, out))

    def reprint(self) -> Verdict:
        """Print the open, fully scanned order's label (and commit it), or reprint the last packed label."""
        return self._run(self._reprint)

    def check_open_order(self) -> Verdict | None:
        """Re-read the open order after the feed changed something: a cancel (or a pack at another
        station) that reaches the open order closes the bench at once, loudly, instead of waiting
        for the packer's next scan or key."""
        with self._lock:
            _order, verdict = self._open_order()
            if verdict is not None:
                self.last_verdict = verdict
        if verdict is not None:
            try:
                self._on_event(verdict)
            except Exception:
                log.exception("station: engine callback failed")
        return verdict

    def abort_order(self) -> Verdict:
        """Give up the open order: back to released, every count cleared (the packer unpacks)."""
        return self._run(self._abort)

    def _run(self, step: Callable[[list[Verdict | Envelope]], Verdict]) -> Verdict:
        out: list[Verdict | Envelope] = []
        with self._lock:
            verdict = step(out)
            out.append(verdict)
            self.last_verdict = verdict
        for item in out:  # callbacks outside the lock: a listener may call back into us
            try:
                if isinstance(item, Verdict):
                    self._on_event(item)
                else:
                    self._on_packed(item)
            except Exception:
                log.exception("station: engine callback failed")
        return verdict

    # -- scans ----------------------------------------------------------------------------
    def _record(self, scan: Scan, verdict: Verdict, at: float) -> ScanRecord:
        return ScanRecord(
            at=at,
            raw=scan.raw,
            text=scan.text,
            verdict=verdict.kind.value,
            ok=verdict.ok,
            message=verdict.message if not scan.error else f"{verdict.message} ({scan.error})",
            symbology=scan.symbology,
            gtin=scan.gtin,
            lot=scan.lot,
            expiry=scan.expiry,
            order_id=verdict.order_id or self._current,
            sku=verdict.sku,
        )

    def _reject(self, scan: Scan, verdict: Verdict, at: float) -> Verdict:
        self.replica.record_scan(self._record(scan, verdict, at))
        return verdict

    def _handle_scan(self, scan: Scan, out: list[Verdict | Envelope]) -> Verdict:
        now = self._clock()
        at = now.timestamp()
        current, cancelled = self._open_order()
        if cancelled is not None:  # the feed cancelled the open order: that is the news, whatever was scanned
            return self._reject(scan, cancelled, at)
        # Order references win over barcode shape: a numeric external id ("10000015") decodes as a
        # GTIN-8 or as a GTIN with a bad check digit, yet it is the slip's barcode. An item of the
        # open order always counts as an item.
        item_of_current = (
            current is not None
            and scan.gtin is not None
            and any(scan.gtin in line.gtins for line in current.lines)
        )
        if not item_of_current:
            candidates = self.replica.find_orders(scan.text)
            if candidates or (scan.ok and scan.gtin is None):
                return self._order_scan(scan, current, candidates, now, out)
        if not scan.ok:
            verdict = Verdict(
                VerdictKind.BAD_SCAN, "BAD SCAN: rescan", order_id=self._current, hint=scan.error
            )
            return self._reject(scan, verdict, at)
        if current is None:
            verdict = Verdict(
                VerdictKind.NO_ORDER, "NO ORDER OPEN — scan the order first", hint="scan the order slip"
            )
            return self._reject(scan, verdict, at)
        verdict, line = judge_item(current, scan, now.date())
        if line is None:
            return self._reject(scan, verdict, at)
        record = self._record(scan, verdict, at)
        if not self.replica.count_item(current.order_id, line.line_no, lot=scan.lot, scan=record):
            # only the feed writes orders besides us: a cancel landed between our read and our write
            _, cancelled = self._open_order()
            if cancelled is None:
                raise ReplicaError(f"order {current.order_id} line {line.line_no} could not be counted")
            return self._reject(scan, cancelled, at)
        order = self.replica.get_order(current.order_id)
        assert order is not None
        if not order.complete:
            return verdict
        out.append(verdict)
        return self._finish(order, now, out)

    def _open_order(self) -> tuple[Order | None, Verdict | None]:
        """The order being packed, re-read. If the feed cancelled it meanwhile it is dropped and
        the second value is the loud verdict that says so."""
        if self._current is None:
            return None, None
        order = self.replica.get_order(self._current)
        if order is not None and order.status == "packing":
            return order, None
        self._current = None
        if order is None or order.status != "cancelled":
            return None, None
        return None, Verdict(
            VerdictKind.ORDER_CANCELLED,
            _closed_headline(order),
            order_id=order.order_id,
            external_id=order.external_id,
            hint="put the items back" + (f" ({order.cancel_reason})" if order.cancel_reason else ""),
        )

    def _order_scan(
        self,
        scan: Scan,
        current: Order | None,
        candidates: list[Order],
        now: datetime,
        out: list[Verdict | Envelope],
    ) -> Verdict:
        at = now.timestamp()
        if current is not None:
            if any(o.order_id == current.order_id for o in candidates):
                if current.complete:  # the label did not print: scanning the order again retries
                    verdict = self._finish(current, now, out)
                    self.replica.record_scan(self._record(scan, verdict, at))
                    return verdict
                verdict = Verdict(
                    VerdictKind.ORDER_ALREADY_OPEN,
                    f"Order {current.external_id} is open — scan the items",
                    order_id=current.order_id,
                    external_id=current.external_id,
                )
                return self._reject(scan, verdict, at)
            if candidates:
                other = candidates[0]
                verdict = Verdict(
                    VerdictKind.OTHER_ORDER,
                    f"OTHER ORDER {other.external_id} — finish {current.external_id} first",
                    order_id=current.order_id,
                    external_id=current.external_id,
                    hint="finish this order, or press Esc twice to abort it",
                )
                return self._reject(scan, verdict, at)
            verdict = Verdict(
                VerdictKind.UNKNOWN_BARCODE,
                f"UNKNOWN BARCODE {scan.text[:40]!r}",
                order_id=current.order_id,
                external_id=current.external_id,
                hint="scan an item of this order",
            )
            return self._reject(scan, verdict, at)

        if len(candidates) > 1:
            open_ones = [o for o in candidates if o.status in ("released", "packing")]
            candidates = open_ones if len(open_ones) == 1 else candidates
        if not candidates:
            verdict = Verdict(
                VerdictKind.ORDER_NOT_FOUND,
                f"ORDER NOT FOUND: {scan.text[:40]}",
                hint="not released to this site (yet)? check the slip",
            )
            return self._reject(scan, verdict, at)
        if len(candidates) > 1:
            verdict = Verdict(
                VerdictKind.ORDER_AMBIGUOUS,
                f"SEVERAL ORDERS match {scan.text[:40]}",
                hint="scan the order id or the tracking barcode",
            )
            return self._reject(scan, verdict, at)
        order = candidates[0]
        if order.status == "cancelled":
            verdict = Verdict(
                VerdictKind.ORDER_CANCELLED,
                _closed_headline(order),
                hint=order.cancel_reason or "put the slip aside",
                order_id=order.order_id,
                external_id=order.external_id,
            )
            return self._reject(scan, verdict, at)
        if order.status == "packed":
            verdict = Verdict(
                VerdictKind.ALREADY_PACKED,
                f"ALREADY PACKED {order.external_id}",
                order_id=order.order_id,
                external_id=order.external_id,
            )
            return self._reject(scan, verdict, at)
        scanned, expected = order.units
        verdict = Verdict(
            VerdictKind.ORDER_OPENED,
            f"ORDER {order.external_id} — {expected - scanned} item(s) to scan",
            scanned=scanned,
            expected=expected,
            hint="scan every item",
            order_id=order.order_id,
            external_id=order.external_id,
        )
        self.replica.begin_packing(order.order_id, now=at, scan=self._record(scan, verdict, at))
        self._current = order.order_id
        if order.complete:  # resumed after a printer error and a restart: print now
            reopened = self.replica.get_order(order.order_id)
            assert reopened is not None
            out.append(verdict)
            return self._finish(reopened, now, out)
        return verdict

    # -- printing and committing ------------------------------------------------------------
    def _print(self, order: Order) -> str | None:
        """Hand the label to the printer; the reason it failed, or None."""
        try:
            if self.check_printer_status:
                status = self.printer.status()
                if status is not None and not status.ready:
                    problems = [
                        name
                        for name, flag in (
                            ("paper out", status.paper_out),
                            ("paused", status.paused),
                            ("head open", status.head_open),
                            ("ribbon out", status.ribbon_out),
                        )
                        if flag
                    ]
                    return ", ".join(problems)
            self.printer.send(order.label.zpl.encode("utf-8"))
        except (DeviceError, OSError) as e:
            return str(e) or type(e).__name__
        return None

    def _finish(self, order: Order, now: datetime, out: list[Verdict | Envelope]) -> Verdict:
        problem = self._print(order)
        if problem is not None:
            verdict = Verdict(
                VerdictKind.PRINTER_ERROR,
                f"PRINTER: {problem}",
                hint="fix the printer, then press F5 (or scan the order again) to print",
                order_id=order.order_id,
                external_id=order.external_id,
            )
            return verdict
        packed_at = self._clock()
        body = packed_body(order, packed_at=packed_at, packer=self.packer, gtins=self._scanned_gtins(order))
        commit = self.replica.commit_packed(
            order.order_id, body, tenant=order.tenant, printed_at=now.timestamp(), now=packed_at.timestamp()
        )
        self._current = None
        self._last_packed = order.order_id
        out.append(commit.envelope)
        scanned, expected = order.units
        if commit.was_cancelled:
            return Verdict(
                VerdictKind.CANCELLED_WHILE_PRINTING,
                f"CANCELLED WHILE PRINTING — set {order.external_id} aside",
                scanned=scanned,
                expected=expected,
                hint="do not ship it: the manager will intercept this parcel",
                order_id=order.order_id,
                external_id=order.external_id,
            )
        return Verdict(
            VerdictKind.PACKED,
            f"PACKED {order.external_id} — label printed",
            scanned=scanned,
            expected=expected,
            hint="stick the label on; scan the next order",
            order_id=order.order_id,
            external_id=order.external_id,
        )

    def _scanned_gtins(self, order: Order) -> dict[str, str]:
        gtins: dict[str, str] = {}
        for rec in self.replica.scans(order_id=order.order_id):
            if (
                rec.verdict == VerdictKind.ITEM_OK
                and rec.sku
                and rec.gtin
                and (order.started_at or 0) <= rec.at
            ):
                gtins[rec.sku] = rec.gtin
        return gtins

    def _reprint(self, out: list[Verdict | Envelope]) -> Verdict:
        now = self._clock()
        current, cancelled = self._open_order()
        if cancelled is not None:
            return cancelled
        if current is not None:
            if current.complete:
                return self._finish(current, now, out)
            scanned, expected = current.units
            return Verdict(
                VerdictKind.NOTHING_TO_PRINT,
                f"Order {current.external_id} is not complete ({scanned}/{expected})",
                order_id=current.order_id,
                external_id=current.external_id,
                scanned=scanned,
                expected=expected,
            )
        last_packed = self.replica.get_order(self._last_packed) if self._last_packed else None
        if last_packed is None:
            return Verdict(VerdictKind.NOTHING_TO_PRINT, "Nothing to print — scan an order")
        problem = self._print(last_packed)
        if problem is not None:
            return Verdict(
                VerdictKind.PRINTER_ERROR,
                f"PRINTER: {problem}",
                hint="fix the printer, then F5",
                order_id=last_packed.order_id,
                external_id=last_packed.external_id,
            )
        return Verdict(
            VerdictKind.REPRINTED,
            f"REPRINTED label of {last_packed.external_id}",
            order_id=last_packed.order_id,
            external_id=last_packed.external_id,
        )

    def _abort(self, out: list[Verdict | Envelope]) -> Verdict:
        now = self._clock()
        current, cancelled = self._open_order()
        if cancelled is not None:
            return cancelled
        if current is None:
            return Verdict(VerdictKind.NOTHING_TO_ABORT, "No order open")
        self.replica.reset_order(current.order_id, now=now.timestamp())
        self._current = None
        return Verdict(
            VerdictKind.ABORTED,
            f"ABORTED {current.external_id} — put the items back",
            order_id=current.order_id,
            external_id=current.external_id,
            hint="scan the next order",
        )
