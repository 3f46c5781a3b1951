"""Memory sharing (issue 17): what a paged pool held with sharing and without, as pure arithmetic.

Blocks. A paged pool after each engine step (`records.KvSample`; vLLM, and hf/continuous whose n
samples transformers forks): `blocks_used` is the physical blocks in use (a block shared by several
sequences counts once); `held_blocks` is the sum over the running sequences' block tables (a shared
block counts once per table that holds it: the blocks the same sequences would hold without sharing,
under the same schedule).

- blocks held: the mean of `blocks_used` over the pass's engine steps, and its peak. Step-weighted,
  not time-weighted: the runs with and without sharing run the same steps at different speeds.
- memory saving (the paper's definition, Figure 15): (B_without - B_with) / B_without, B the blocks
  held. Measured two ways: across runs (vllm/offline with the prefix cache off against vllm/shared
  with it on, the same workload) and within a run that shares (its tables' blocks against its pool's:
  vllm/shared, and hf/continuous, which has no run without sharing beside it).
- prefix-cache hit rate: tokens found / tokens looked up, summed over the pass's steps (vLLM's
  `prefix_cache_stats`).
- requests the KV budget holds: usable blocks / blocks one request holds, at the step where the pool
  held most; a request's blocks are its sequences' (n samples or beams; vLLM counts each running).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lab.records import KvSample


@dataclass(frozen=True)
class PoolUse:
    """A paged pool over one timed pass, in blocks (see the module docstring)."""

    steps: int
    mean_blocks: float | None  # physical blocks in use, mean over the steps (None: never seen in use)
    peak_blocks: int | None
    mean_table_blocks: float | None  # blocks in the running requests' tables, mean over the steps
    usable_blocks: int | None
    prefix_queries: int | None  # prompt tokens looked up in the prefix cache
    prefix_hits: int | None
    requests_per_budget: float | None

    @property
    def hit_rate(self) -> float | None:
        """Prefix-cache hits / queries (None where nothing was looked up)."""
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else None

    @property
    def in_run_saving(self) -> float | None:
        """1 - physical / table blocks within this run: what its sharing saved under its own schedule."""
        if not self.mean_table_blocks:
            return None
        return memory_saving(self.mean_blocks, self.mean_table_blocks)

    def to_dict(self) -> dict:
        return dict(asdict(self), hit_rate=self.hit_rate, in_run_saving=self.in_run_saving)

    @classmethod
    def unmeasured(cls, samples: list[KvSample], counts: tuple[int | None, int | None]) -> PoolUse:
        """No block in use after any step: the blocks are unknown (None), the prefix cache's counts kept."""
        return cls(len(samples), None, None, None, None, counts[0], counts[1], None)


def memory_saving(blocks_with: float, blocks_without: float) -> float | None:
    """(blocks_without - blocks_with) / blocks_without: the paper's memory saving (None without a baseline)."""
    if not blocks_without:
        return None
    return (blocks_without - blocks_with) / blocks_without


def pool_use(samples: list[KvSample], sequences: int = 1) -> PoolUse | None:
    """The pass's blocks from its KV samples (None without samples); `sequences`: per request."""
    used = [s for s in samples if s.blocks_used is not None]
    if not any(s.blocks_used for s in used):
        # NOTE: vLLM's beam search submits one-token requests, which free their blocks within the step
        # that runs them: the pool is empty whenever the scheduler reports, so nothing is measured.
        return PoolUse.unmeasured(used, prefix_counts(used)) if used else None
    tables = [s.held_blocks for s in used if s.held_blocks is not None]
    queries, hits = prefix_counts(used)
    peak = max(used, key=lambda s: s.blocks_used)
    usable = peak.usable_blocks or (peak.num_blocks - 1 if peak.num_blocks else None)
    return PoolUse(
        steps=len(used),
        mean_blocks=sum(s.blocks_used for s in used) / len(used),
        peak_blocks=peak.blocks_used,
        mean_table_blocks=sum(tables) / len(tables) if len(tables) == len(used) else None,
        usable_blocks=usable,
        prefix_queries=queries,
        prefix_hits=hits,
        requests_per_budget=requests_per_budget(usable, peak.blocks_used, (peak.running or 0) / sequences),
    )


def prefix_counts(samples: list[KvSample]) -> tuple[int | None, int | None]:
    """Prompt tokens looked up in the prefix cache and found, summed over the samples (None: not reported)."""
    queries = [s.prefix_queries for s in samples if s.prefix_queries is not None]
    hits = [s.prefix_hits for s in samples if s.prefix_hits is not None]
    return (sum(queries) if queries else None), (sum(hits) if hits else None)


def requests_per_budget(budget_blocks: float | None, blocks_held: float, requests: float) -> float | None:
    """Requests `budget_blocks` holds at `blocks_held / requests` blocks each (None where unknown)."""
    if not budget_blocks or not blocks_held or not requests:
        return None
    return budget_blocks / (blocks_held / requests)
