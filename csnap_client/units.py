"""Human sizes: parsing "64K", "1M", "10G" and printing them back.

Shared by the server, the tools and the client so every command accepts the
same suffixes (binary multiples: K = 1024).
"""

from __future__ import annotations

import re

_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGTP]?)(I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes in ``text`` ("4096", "64K", "1M", "10GiB"); ValueError if malformed."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (use a number with an optional K, M, G, T suffix)")
    return int(m.group(1)) * _SUFFIX[m.group(2).upper()]


def format_size(n: int) -> str:
    """Shortest exact-ish human form of ``n`` bytes."""
    for suffix in ("P", "T", "G", "M", "K"):
        unit = _SUFFIX[suffix]
        if n >= unit:
            value = n / unit
            return f"{value:.0f}{suffix}" if n % unit == 0 else f"{value:.1f}{suffix}"
    return f"{n}B"
