"""The packing screen: one Textual app, keyboard and scanner only, driven by the station runtime.

Thin by design (STYLE 15): it shows what :class:`~station.runtime.StationRuntime` and its
engine say, and sends scans and keys down to them. Device I/O never runs on the UI loop:
the runtime's scanner and engine threads read the scanner and print; their verdicts come
back through :meth:`App.call_from_thread`.

Scans have their own input path (STYLE 16). A keyboard-wedge scanner "types" its data
followed by Enter; the app captures key events at the App level (nothing on the screen
takes focus, and no ``Input`` is used: it would drop GS, the FNC1 separator of GS1
barcodes), frames printable characters up to Enter, and hands the bytes to
``drivers.scanner.decode_scan`` through the runtime. A wedge that sends GS as a control
key arrives as ``ctrl+]``; other setups map it to a spare key (``gs_keys``, default F8).

Keys: F5 reprint / retry the label, Esc twice abort the open order, q (alone) or Ctrl+Q quit.
Esc is confirmed by a second Esc rather than a y/n dialog on purpose: a scan may contain
"y" or "n", but a wedge never sends Esc.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from station.engine import Verdict
from station.runtime import StationRuntime

__all__ = ["PackingApp"]

GS = "\x1d"
MAX_FRAME_CHARS = 4096


class LinesTable(DataTable[Text]):
    """The order's lines. Never takes focus: every key belongs to the scan path."""

    can_focus = False


class PackingApp(App[None]):
    """The packer's screen for one station."""

    TITLE = "Packline station"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    Screen { layout: vertical; }
    #status { height: auto; max-height: 3; padding: 0 1; background: $panel; }
    #status.-trouble { background: $warning-darken-2; color: $text; }
    #status.-offline { background: $warning-darken-2; color: $text; }
    #order { height: 3; padding: 1 1 0 1; text-style: bold; }
    #lines { height: 1fr; margin: 0 1; }
    #banner { height: 5; margin: 0 1; content-align: center middle; text-align: center; text-style: bold; }
    #banner.-ok { background: $success; color: $text; }
    #banner.-error { background: $error; color: $text; }
    #banner.-warning { background: $warning; color: $text; }
    #banner.-info { background: $primary-darken-2; color: $text; }
    #hint { height: 1; padding: 0 1; color: $text-muted; }
    """
    BINDINGS = [
        Binding("f5", "reprint", "Reprint label"),
        Binding("escape", "abort", "Abort order"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]
    KEYS_HINT = "F5 reprint · Esc Esc abort order · q quit"

    def __init__(
        self,
        runtime: StationRuntime,
        *,
        gs_keys: tuple[str, ...] = ("ctrl+right_square_bracket", "f8"),
        terminator_keys: tuple[str, ...] = ("enter", "ctrl+j"),
        wedge_gap_s: float = 2.0,
        quit_key: str = "q",
        quit_key_delay_s: float = 0.35,
        abort_confirm_s: float = 5.0,
        status_refresh_s: float = 1.0,
    ) -> None:
        super().__init__()
        self.runtime = runtime
        self.gs_keys = gs_keys
        self.terminator_keys = terminator_keys
        self.wedge_gap_s = wedge_gap_s
        self.quit_key = quit_key
        self.quit_key_delay_s = quit_key_delay_s
        self.abort_confirm_s = abort_confirm_s
        self.status_refresh_s = status_refresh_s
        self.last_verdict: Verdict | None = None
        self._buffer: list[str] = []
        self._last_key_at = 0.0
        self._abort_armed_at: float | None = None
        self._ui_thread: int | None = None
        self._unsubscribe: Callable[[], None] | None = None

    # -- layout ---------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(id="status", markup=False)
        yield Static(id="order", markup=False)
        yield LinesTable(id="lines", cursor_type="none", zebra_stripes=True)
        yield Static("SCAN AN ORDER", id="banner", classes="-info", markup=False)
        yield Static(self.KEYS_HINT, id="hint", markup=False)

    def on_mount(self) -> None:
        self._ui_thread = threading.get_ident()
        table = self.query_one(LinesTable)
        table.add_column("", key="done", width=3)
        table.add_column("SKU", key="sku", width=18)
        table.add_column("Item", key="name")
        table.add_column("Scanned", key="scanned", width=8)
        table.add_column("Qty", key="qty", width=5)
        self._unsubscribe = self.runtime.on_change(self._on_runtime_change)
        self.set_interval(self.status_refresh_s, self._refresh_status)
        current = self.runtime.engine.current_order()
        if current is not None:
            scanned, expected = current.units
            todo = "press F5 to print its label" if scanned >= expected else "keep scanning"
            self._show_banner(f"RESUMED ORDER {current.external_id} — {todo}", "info")
        self.refresh_view()

    def on_unmount(self) -> None:
        self._detach()

    def _detach(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    # -- runtime -> screen ----------------------------------------------------------------
    def _on_runtime_change(self, verdict: Verdict | None) -> None:
        """Called on the runtime's notify thread: hop onto the UI loop (blocking that thread only)."""
        if threading.get_ident() == self._ui_thread:
            self._apply_change(verdict)
            return
        if not self.is_running:
            return
        # RuntimeError / CancelledError: the app is shutting down, nothing left to show it on
        with contextlib.suppress(RuntimeError, CancelledError):
            self.call_from_thread(self._apply_change, verdict)

    def _apply_change(self, verdict: Verdict | None) -> None:
        if verdict is not None:
            self.last_verdict = verdict
            self._show_banner(verdict.message, verdict.severity)
            self.query_one("#hint", Static).update(
                f"{verdict.hint} · {self.KEYS_HINT}" if verdict.hint else self.KEYS_HINT
            )
            if verdict.severity == "error":
                self.bell()
        self.refresh_view()

    def _show_banner(self, message: str, severity: str) -> None:
        banner = self.query_one("#banner", Static)
        banner.update(message)
        banner.set_classes(f"-{severity}")

    def _refresh_status(self) -> None:
        s = self.runtime.status()
        online = "● ONLINE" if s.online else "○ OFFLINE"
        parts = [
            f"Station {s.station} · site {s.site}",
            online,
            f"outbox {s.outbox_depth}",
            f"feed #{s.last_feed_seq}",
            f"open {s.orders_open} · packed {s.orders_packed}",
        ]
        trouble = []  # on its own line, never cut off: what the packer or a lead must act on
        if s.scanner not in ("ok", "none"):
            trouble.append(f"SCANNER: {s.scanner}")
        if s.last_error:
            trouble.append(f"SYNC: {s.last_error}")
        status = self.query_one("#status", Static)
        status.update("   ".join(parts) + "".join(f"\n⚠ {t}" for t in trouble))
        status.set_class(not s.online, "-offline")
        status.set_class(bool(trouble) and s.online, "-trouble")

    def refresh_view(self) -> None:
        self._refresh_status()
        order = self.runtime.engine.current_order()
        table = self.query_one(LinesTable)
        table.clear()
        panel = self.query_one("#order", Static)
        if order is None:
            panel.update("No order open — scan an order slip")
            return
        scanned, expected = order.units
        ship = order.ship_to
        panel.update(
            f"ORDER {order.external_id}  →  {ship.name}, {ship.city} {ship.country}"
            f"   [{order.service_level}]   {scanned}/{expected} items"
        )
        for line in order.lines:
            style = "bold green" if line.complete else ("bold" if line.scanned else "")
            table.add_row(
                Text("✔" if line.complete else "", style="bold green"),
                Text(line.sku, style=style),
                Text(line.name + ("  [lot]" if line.lot_tracked else ""), style=style),
                Text(str(line.scanned), style=style, justify="right"),
                Text(str(line.qty), style=style, justify="right"),
                key=str(line.line_no),
            )

    # -- keys -> runtime ------------------------------------------------------------------
    @property
    def pending_scan(self) -> str:
        """Characters typed by the wedge since the last Enter."""
        return "".join(self._buffer)

    def on_key(self, event: events.Key) -> None:
        if event.key != "escape":
            self._abort_armed_at = None
        now = time.monotonic()
        if event.key in self.terminator_keys:
            event.stop()
            self._end_frame()
            return
        if event.key in self.gs_keys or event.character == GS:
            char = GS
        elif event.character is not None and event.is_printable:
            char = event.character
        else:
            return  # F-keys, Esc, ctrl+q: the bindings handle them
        event.stop()
        if self._buffer and now - self._last_key_at > self.wedge_gap_s:
            self._buffer.clear()  # the rest of a scan that never got its Enter
        self._last_key_at = now
        if len(self._buffer) < MAX_FRAME_CHARS:
            self._buffer.append(char)
        if self.pending_scan == self.quit_key:
            self.set_timer(self.quit_key_delay_s, self._quit_if_lone_key)

    def _end_frame(self) -> None:
        frame = self.pending_scan
        self._buffer.clear()
        if frame.strip():
            self.runtime.submit_frame(frame.encode("utf-8"))

    def _quit_if_lone_key(self) -> None:
        # "q" followed by nothing for a moment is a person pressing q, not a wedge typing a code
        if (
            self.pending_scan == self.quit_key
            and time.monotonic() - self._last_key_at >= self.quit_key_delay_s * 0.9
        ):
            self._buffer.clear()
            self._quit()

    async def action_quit(self) -> None:
        self._quit()

    def _quit(self) -> None:
        self._detach()
        self.exit()

    def action_reprint(self) -> None:
        self._show_banner("PRINTING…", "info")
        self.runtime.request_reprint()

    def action_abort(self) -> None:
        now = time.monotonic()
        current = self.runtime.engine.current_order()
        if current is None:
            self._abort_armed_at = None
            self._show_banner("No order open", "info")
            return
        if self._abort_armed_at is not None and now - self._abort_armed_at <= self.abort_confirm_s:
            self._abort_armed_at = None
            self.runtime.request_abort()
            return
        self._abort_armed_at = now
        self._show_banner(
            f"ABORT {current.external_id}? Press Esc again to abort — scan to keep packing", "warning"
        )
