"""UPU S10 item identifiers: ``AA`` + 8-digit serial + check digit + ``BB`` (issuer's ISO country).

The check digit weights the serial's digits 8 6 4 2 3 5 9 7; C = 11 - (S mod 11), where 10 becomes 0
and 11 becomes 5. Published example: serial 47312482 -> S = 200 -> C = 9 ("RR473124829GB").
"""

from __future__ import annotations

import re

__all__ = ["S10_WEIGHTS", "format_s10", "is_valid_s10", "s10_check_digit"]

S10_WEIGHTS = (8, 6, 4, 2, 3, 5, 9, 7)
_S10 = re.compile(r"[A-Z]{2}(\d{8})(\d)[A-Z]{2}")


def s10_check_digit(serial8: str) -> int:
    """Check digit of an 8-digit S10 serial number."""
    if len(serial8) != 8 or not serial8.isascii() or not serial8.isdigit():
        raise ValueError(f"an S10 serial is exactly 8 digits, got {serial8!r}")
    c = 11 - sum(int(d) * w for d, w in zip(serial8, S10_WEIGHTS, strict=True)) % 11
    return {10: 0, 11: 5}.get(c, c)


def is_valid_s10(s: str) -> bool:
    """True for a well-formed S10 identifier with a correct check digit (upper case, no spaces)."""
    m = _S10.fullmatch(s)
    return m is not None and s10_check_digit(m.group(1)) == int(m.group(2))


def format_s10(service_indicator: str, serial: int, country: str) -> str:
    """Build an identifier such as ``format_s10("RR", 47312482, "GB") == "RR473124829GB"``."""
    if not re.fullmatch(r"[A-Z]{2}", service_indicator) or not re.fullmatch(r"[A-Z]{2}", country):
        raise ValueError("service indicator and country are two upper-case letters each")
    if not 0 <= serial <= 99_999_999:
        raise ValueError(f"S10 serial out of range 0..99999999: {serial}")
    serial8 = f"{serial:08d}"
    return f"{service_indicator}{serial8}{s10_check_digit(serial8)}{country}"
