"""Hardware drivers: barcode scanners and label printers, chosen by URL.

Knows nothing of Packline's domain and imports nothing of ours. Simulators that speak
the real wire protocols live in :mod:`drivers.sim`.
"""

from drivers.errors import DeviceError, UnsupportedURL
from drivers.printer import LabelPrinter, PrinterStatus, open_printer, parse_host_status, parse_printer_url
from drivers.scanner import Scan, ScanFramer, Scanner, decode_scan, open_scanner, parse_scanner_url

__all__ = [
    "DeviceError",
    "LabelPrinter",
    "PrinterStatus",
    "Scan",
    "ScanFramer",
    "Scanner",
    "UnsupportedURL",
    "decode_scan",
    "open_printer",
    "open_scanner",
    "parse_host_status",
    "parse_printer_url",
    "parse_scanner_url",
]
