"""One backend/mode in one process: load, warm-up, the timed pass, records.

The runner owns fairness: one clock (`Clock`, synchronised with the device), warm-up outside the
timed pass, output lengths fixed by the workload. Bad input (the model, the workload, the context)
raises LabInputError before anything is written. Then it writes into its folder
(`run_folder.PartFolder`):

    pid            this process's id, first thing (the collector watches this process tree); under
                   torchrun the agent's, parent of every rank (rank k > 0 writes into ranks/<k>/)
    spec.json      its configuration (unless the experiment wrote it there to start this process)
    records.jsonl  one line per request per timed pass (`pass_index`; --repeats N: N passes per offered
                   rate; online serving: each rate's passes in turn, `request_rate`, `lab.arrivals`)
    kv.jsonl       KV-cache samples the backend took during the last timed pass; kv_passes.jsonl the
                   same during every pass; each tagged with its `pass_index` and `request_rate`
    result.json    status ("ok" or "error" with the message), timings, each timed pass with the
                   compilations it saw (a pass that compiled is marked invalid) and the allocator's
                   figures after it (`memory`, its peaks reset before the pass), engine and memory
                   figures, and the epoch start/end of each phase (load, warm-up, repeat, generate) to
                   line up with the collector's timeline, with every GPU's energy counter and the
                   host's, the cgroup's and the process tree's CPU counters at both ends;
                   written before the engine is closed and again after it (`close_error`: a close that
                   failed or hung), so a teardown that hangs keeps the run (`lab.teardown`)

No compilation inside a timed pass: the warm-up runs every shape the passes will use
(`Backend.warmup_plan`, warm-up "shapes") or the whole workload once ("full-pass"), and torch.compile's
counters are read around the load, the warm-up and each pass (`Backend.compile_snapshot`).

A failure (an exception, out of memory) is written as status "error" with its message; the process
then exits with 1, and the experiment goes on with the next backend. An interrupt closes the engine
(vLLM's engine core with it), writes the result as interrupted and goes on up. Either way an online
sweep keeps the rates it finished (`lab.rates_kept`).
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from lab import arrivals
from lab import run_folder as rf
from lab.accounting.parallel import spec_problem
from lab.backends.base import Backend, Clock
from lab.backends.registry import backend_class
from lab.config import RunSpec
from lab.cut import Cut
from lab.errors import LabInputError
from lab.gc_pauses import GcPauses
from lab.hardware.device import resolve_device, resolve_dtype
from lab.hardware.energy import open_meter
from lab.hardware.env import collect_environment
from lab.hardware.host_cpu import HostCpuMeter
from lab.launchers import torchrun
from lab.models.build import load_tokenizer, prompt_vocab_ids
from lab.models.resolve import MissingTokenizer, config_prompt_ids, has_tokenizer, model_info, resolve_model
from lab.online_metrics import describe_point, rate_metrics, started_early
from lab.online_settings import rate_text
from lab.pass_records import CompileCount, TimedPass, last_pass_samples
from lab.phases import PhaseHook, Phases, say
from lab.rates_kept import FinishedRates, keep_finished_rates
from lab.records import BackendResult, KvSample, RequestRecord
from lab.teardown import StillRunning
from lab.workloads import Request, build_workload


@dataclass(frozen=True)
class Inputs:
    """What a run spec resolves to: the model (built if synthetic and missing), its facts, the requests."""

    model_path: Path | str  # a folder, or a hub id
    model: dict  # lab.models.resolve.model_info(), at the run's dtype
    device: str
    dtype: str
    requests: list[Request]

    def workload(self, name: str) -> dict:
        """The workload as result.json records it."""
        return {
            "name": name,
            "requests": len(self.requests),
            "prompt_tokens": sum(r.prompt_tokens for r in self.requests),
            "output_tokens": sum(r.output_tokens for r in self.requests),
        }

    def to_dict(self) -> dict:
        """What `lab resolve` reports: the model and the (prompt, output) length of every request."""
        return {
            "model_path": str(self.model_path),
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "lengths": [(r.prompt_tokens, r.output_tokens) for r in self.requests],
        }


def resolve_inputs(spec: RunSpec, cache_dir: Path | None) -> Inputs:
    """The spec's device, dtype, model and requests. Raises LabInputError for a model or workload that
    cannot work (e.g. an output beyond the context, text prompts for a model without a tokenizer)."""
    engine = spec.engine
    device = resolve_device(engine.device)
    dtype = resolve_dtype(engine.dtype, device)
    model_path = resolve_model(engine.model, cache_dir)
    info = model_info(model_path, dtype=dtype)
    if has_tokenizer(model_path):
        tokenizer = load_tokenizer(model_path)
        vocab_ids = prompt_vocab_ids(tokenizer)
    else:  # token counts need no tokenizer; a text prompt raises, naming the missing files
        tokenizer, vocab_ids = MissingTokenizer(Path(model_path)), config_prompt_ids(Path(model_path))
    requests = build_workload(
        engine.workload,
        tokenizer,
        vocab_ids,
        context_tokens(engine.max_model_len, info),
        seed=engine.seed,
        num_requests=engine.num_requests,
        output_tokens=engine.output_tokens,
        shared_prefix_tokens=engine.shared_prefix_tokens,
    )
    return Inputs(model_path, info, device, dtype, requests)


def context_tokens(max_model_len: int | None, info: dict) -> int:
    """--max-model-len, or the model's context; more than the model's context is refused."""
    context = info["max_position_embeddings"]
    if max_model_len is None:
        return context
    if context is not None and max_model_len > context:
        raise LabInputError(
            f"--max-model-len {max_model_len:,} exceeds the model's context of {context:,} tokens "
            f"(max_position_embeddings in its config.json); give at most {context:,}, or leave it out"
        )
    return max_model_len


def run_backend(
    spec: RunSpec, out_dir: Path, cache_dir: Path | None = None, on_phase: PhaseHook | None = None
) -> BackendResult:
    """Run one backend/mode and write its folder. Returns its result (status ok or error).

    Bad input (a LabInputError: the model, the workload, the context) is raised before anything is
    written. An interrupt (KeyboardInterrupt, or SIGTERM turned into one by the CLI) closes the engine,
    writes the result as interrupted, and is raised again.
    """
    # NOTE: first, before torch is imported here: collect_environment() then probes torch in a child
    # Python instead of this process, so no CUDA context is created beside vLLM's engine.
    environment = collect_environment()
    inputs = resolve_inputs(spec, cache_dir)
    part = rf.PartFolder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    part.pid.write_text(str(torchrun.tree_root_pid()))  # under torchrun: the agent, parent of every rank
    if not part.spec.exists():  # the experiment writes it itself, to start this process with it
        rf.write_json(part.spec, spec.to_dict())
    meter, meter_facts = open_meter(torchrun.tree_root_pid()) if not torchrun.rank() else (None, None)
    host = HostCpuMeter(torchrun.tree_root_pid()) if not torchrun.rank() else None
    phases = Phases(meter, on_phase, host)
    result = BackendResult(
        spec.backend, spec.mode, phases=phases.items, environment=environment, energy_meter=meter_facts
    )
    backend = None
    finished = FinishedRates()  # an online sweep's rates as they finish: kept if a later one is cut
    try:
        backend, requests = _start_backend(spec, inputs, phases, result)
        _warm_up(spec, backend, requests, phases, result)
        records, kv_samples = _sweep(spec, backend, requests, phases, result, finished)
        _write_records(part, records, kv_samples)
        say("records: written")
        result.engine = backend.engine_info()
        result.status = "ok" if all(r.ok for r in records) else "error"
        if not result.ok:
            result.error = "some requests failed; see records.jsonl"
    except BaseException as exc:  # noqa: BLE001 - every failure, OOM included, becomes a record
        if isinstance(exc, KeyboardInterrupt):
            result.error = f"interrupted ({exc or 'SIGINT'})"
        else:
            result.error = f"{type(exc).__name__}: {exc}"
            result.traceback = traceback.format_exc(limit=20)
        phases.end_open()
        if keep_finished_rates(result, finished, spec.engine.online.request_rates, Cut.of(exc)):
            _write_records(part, finished.records, finished.kv_samples)
            result.engine = _engine_info(backend)
        if isinstance(exc, KeyboardInterrupt):
            raise
    finally:
        _end(part, result, backend, phases)
        if meter is not None:
            meter.close()
        rf.write_json(part.result, result.to_dict())  # again, with what the close said
        say("result: written")
    return result


def _end(part: rf.PartFolder, result: BackendResult, backend: Backend | None, phases: Phases) -> None:
    """result.json first, then the engine closed: a close or an exit that hangs keeps the finished run
    (`lab.teardown`). A close that fails or hangs (`StillRunning`) is the result's `close_error`."""
    rf.write_json(part.result, result.to_dict())
    say("result: written, before the close")
    if backend is None:
        return
    say("close: started")
    phases.step("close")
    t0 = time.perf_counter()
    try:
        backend.close()
    except Exception as exc:  # noqa: BLE001 - the run's own result matters more
        result.close_error = str(exc) if isinstance(exc, StillRunning) else repr(exc)
        say(f"close: failed after {time.perf_counter() - t0:.1f} s: {result.close_error}")
        return
    say(f"close: done in {time.perf_counter() - t0:.1f} s")


def _engine_info(backend: Backend | None) -> dict | None:
    """The engine's figures after a cut (its pool's bytes per block), if it can still give them."""
    try:
        return backend.engine_info() if backend is not None else None
    except Exception:  # noqa: BLE001 - the kept rates matter more than the engine's figures
        return None


def _write_records(part: rf.PartFolder, records: list[RequestRecord], kv_samples: list[KvSample]) -> None:
    rf.write_jsonl(part.records, (r.to_dict() for r in records))
    rf.write_jsonl(part.kv_samples, (s.to_dict() for s in last_pass_samples(kv_samples)))
    rf.write_jsonl(part.kv_passes, (s.to_dict() for s in kv_samples))


def _start_backend(spec: RunSpec, inputs: Inputs, phases: Phases, result: BackendResult):
    result.device, result.dtype = inputs.device, inputs.dtype
    result.model_path, result.model = str(inputs.model_path), inputs.model
    result.workload = inputs.workload(spec.engine.workload)
    check_tensor_parallel(spec, inputs.model)
    backend = backend_class(spec.backend, spec.mode)(spec, str(inputs.model_path), inputs.device, inputs.dtype)
    phases.start("load")
    t0 = time.perf_counter()
    backend.load()
    backend.prepare(inputs.requests)
    result.load_s = time.perf_counter() - t0
    phases.end()
    loaded = backend.compile_snapshot()
    result.compile = {"load": _counted(CompileCount.between(_NOTHING_COMPILED, loaded))}
    return backend, inputs.requests


_NOTHING_COMPILED = {"frames": 0, "graphs": 0, "recompiles": {}}


def _counted(count: CompileCount | None) -> dict | None:
    return None if count is None else count.to_dict()


def warmup_calls(kind: str, backend: Backend, requests: list[Request]) -> list[list[Request]]:
    """The generate() calls of warm-up `kind` (lab.config.WARMUPS)."""
    if kind == "shapes":
        return backend.warmup_plan(requests)
    if kind == "full-pass":
        return [requests]
    if kind == "first-batch":
        return [backend.warmup_requests(requests)]
    return []


class CannotRunTensorParallel(Exception):
    """This backend/mode cannot split this model over the GPUs asked for; it is not run on fewer."""


def check_tensor_parallel(spec: RunSpec, model: dict) -> None:
    """CannotRunTensorParallel where `spec` cannot split `model`. Such a run is one process, never
    torchrun's ranks (`torchrun.needs_ranks`), so nothing stops it before its result records why."""
    problem = spec_problem(spec, model)
    if problem:
        raise CannotRunTensorParallel(
            f"{spec.label} cannot split {spec.engine.model} over {spec.engine.tensor_parallel_size} GPUs: {problem}; "
            "not run (rather than on fewer GPUs)"
        )


def _warm_up(spec: RunSpec, backend: Backend, requests: list[Request], phases: Phases, result: BackendResult) -> None:
    calls = warmup_calls(spec.engine.warmup, backend, requests)
    before = backend.compile_snapshot()
    phases.start("warmup")
    clock = Clock(backend.device_sync())
    clock.start()
    for number, call in enumerate(calls, 1):
        backend.generate(call, clock)
        if len(calls) > 1:  # untimed: a long warm-up shows it is moving
            say(f"warmup: call {number}/{len(calls)} done at {clock.now():.1f} s")
    seconds = clock.now()
    phases.end()
    result.warmup = {
        "kind": spec.engine.warmup,
        "calls": len(calls),
        "requests": sum(len(c) for c in calls),
        "output_tokens": sum(r.output_tokens for c in calls for r in c),
        "s": seconds,
    }
    result.compile["warmup"] = _counted(CompileCount.between(before, backend.compile_snapshot()))


def _sweep(
    spec: RunSpec,
    backend: Backend,
    requests: list[Request],
    phases: Phases,
    result: BackendResult,
    finished: FinishedRates,
) -> tuple[list[RequestRecord], list[KvSample]]:
    """Every offered rate of --request-rate in turn (offline: inf alone), `repeats` timed passes each, the
    requests arriving on the rate's seeded schedule (`lab.arrivals`, the same for every backend). With
    --stop-at-saturation, the rates above the first that saturated are skipped (`result.skipped_rates`).
    Each rate goes into `finished` when its passes are done. Returns every pass's records and KV samples,
    each with its `request_rate` (None: inf)."""
    online = spec.engine.online
    passes: list[TimedPass] = []
    for number, rate in enumerate(online.request_rates):
        timed = arrivals.schedule(requests, rate, online.burstiness, spec.engine.seed)
        last = number == len(online.request_rates) - 1
        rate_records, rate_samples = _timed_passes(spec.engine.repeats, backend, timed, phases, result, passes, last)
        offered = None if math.isinf(rate) else rate
        for record in rate_records:
            record.request_rate = offered
            if started_early(record):
                record.status, record.error = "error", "the records show it started before its arrival"
        for sample in rate_samples:
            sample.request_rate = offered
        finished.add(rate, rate_records, rate_samples, len(passes))
        if not online.is_sweep:
            continue
        point = rate_metrics(rate_records, rate, online.slos)
        print(f"lab: {rate_text(rate)} req/s: {describe_point(point)}", flush=True)
        if online.stop_at_saturation and point["saturated"] and not last:
            result.skipped_rates = [rate_text(r) for r in online.request_rates[number + 1 :]]
            phases.items[-1]["phase"] = "generate"  # the last pass that ran
            break
    return finished.records, finished.kv_samples


def _timed_passes(
    repeats: int,
    backend: Backend,
    requests: list[Request],
    phases: Phases,
    result: BackendResult,
    passes: list[TimedPass],
    last_rate: bool = True,
) -> tuple[list[RequestRecord], list[KvSample]]:
    """`repeats` timed passes of the workload: every pass's records and KV samples (tagged with its
    `pass_index`, counted over the sweep; a record also with why it does not count if it compiled).
    `passes` gets every pass, with the allocator's figures after it and the garbage collections in it
    (this process's, `lab.gc_pauses`; the engine's, `Backend.engine_gc`). result.passes_s and
    result.passes get each pass as it ends (a later failure keeps the earlier ones); result.memory and
    the "generate" phase are the last pass's, the earlier ones' phases are named "repeat"."""
    records: list[RequestRecord] = []
    kv_samples: list[KvSample] = []
    for repeat in range(repeats):
        phase = "generate" if last_rate and repeat == repeats - 1 else "repeat"
        index = len(passes)
        before = backend.compile_snapshot()
        pass_records, pass_samples, gc = _timed_pass(backend, requests, phases, result, phase)
        compiled = CompileCount.between(before, backend.compile_snapshot())
        timed = TimedPass(index, result.generate_s, compiled, result.memory or None, gc, backend.engine_gc())
        for record in pass_records:
            record.pass_index, record.pass_invalid = index, timed.invalid
        for sample in pass_samples:
            sample.pass_index = index
        records.extend(pass_records)
        kv_samples.extend(pass_samples)
        passes.append(timed)
        result.passes_s = [p.duration_s for p in passes]
        result.passes = [p.to_dict() for p in passes]
    return records, kv_samples


def _timed_pass(
    backend: Backend, requests: list[Request], phases: Phases, result: BackendResult, phase: str
) -> tuple[list[RequestRecord], list[KvSample], dict]:
    backend.reset_memory_stats()
    clock = Clock(backend.device_sync())
    with GcPauses(freeze=True) as pauses:  # this process's heap frozen first, outside the pass: lab.gc_pauses
        phases.start(phase)
        clock.start()
        records = backend.generate(requests, clock)
        result.generate_s = clock.now()
    phases.end()
    result.clock_wall_t0 = clock.wall_t0
    result.memory = backend.memory_stats()
    for record in records:
        record.backend, record.mode = backend.spec.backend, backend.spec.mode
    return records, backend.kv_samples(), pauses.totals()
