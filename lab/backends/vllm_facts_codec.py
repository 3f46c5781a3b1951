"""The scheduler's per-request step facts (`lab.backends.vllm_step_facts`) as one bytes object a step.

Each running request's facts are five ints, `FIELDS`. Sent as a list of five-int lists, one step of
N running requests becomes N + 1 Python lists in the lab's process (decoded from vLLM's message, while
the pass is timed) and as many in the engine core: objects the garbage collector counts and walks.
Packed as machine int64s (`array("q")`: both processes run on one machine) a step is one bytes object
of 8 x 5 x N bytes; `unpack` gives the rows back exactly, after the timed pass.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence

FIELDS = ("prompt_tokens", "computed_tokens", "output_tokens", "max_tokens", "blocks")
TYPECODE = "q"  # signed 64-bit: every count fits


def pack(rows: Iterable[Sequence[int]]) -> bytes:
    """Rows of len(FIELDS) ints -> bytes (a row of another length is an error: the layout is fixed)."""
    values = array(TYPECODE)
    for row in rows:
        if len(row) != len(FIELDS):
            raise ValueError(f"a step-facts row has {len(FIELDS)} ints ({', '.join(FIELDS)}), not {len(row)}")
        values.extend(row)
    return values.tobytes()


def unpack(data: bytes) -> list[tuple[int, ...]]:
    """`pack`'s bytes -> the rows, as tuples of len(FIELDS) ints."""
    values = array(TYPECODE)
    values.frombytes(data)
    width = len(FIELDS)
    return [tuple(values[i : i + width]) for i in range(0, len(values), width)]
