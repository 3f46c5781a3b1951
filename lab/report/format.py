"""How numbers are written in the reports: one place, so that every table writes them alike."""

from __future__ import annotations

MIB = 1024**2


def fmt(value, digits: int = 2) -> str:
    """A float with `digits` decimals and thousands separators, an int with separators, '-' for None."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def pct(share: float | None) -> str:
    """A share of 1 as a percentage with one decimal, '-' for None; one that rounds to zero is "0.0", never
    "-0.0" (a saving of -0.0004 is no saving, not a negative one)."""
    if share is None:
        return "-"
    text = f"{100 * share:.1f}"
    return "0.0" if text == "-0.0" else text


def mib(n_bytes: float | None) -> float | None:
    """Bytes in MiB (2^20 bytes); None stays None."""
    return None if n_bytes is None else n_bytes / MIB


def version(value) -> str:
    """A version as the environment records it: {"version": v} (or {"error": why}) or a plain string."""
    if isinstance(value, dict):
        return str(value.get("version") or value.get("error") or "-")
    return str(value or "-")
