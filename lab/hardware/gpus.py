"""Which GPUs a run may use, checked before anything starts, and the environment every process gets.

GPUs are chosen with `LAB_GPUS` (NVML indices, "0,1": the compose convention) or, natively, with
`CUDA_VISIBLE_DEVICES`. Natively the lab passes `LAB_GPUS` on as `CUDA_VISIBLE_DEVICES` together
with `CUDA_DEVICE_ORDER=PCI_BUS_ID`, so that CUDA numbers the GPUs in NVML's order (CUDA's default,
fastest first, can differ from it on a host with mixed GPUs).

NVLink multicast (NVLS) stays off in every process the lab starts unless the caller's environment
says otherwise: `multicast_env` fills in `NCCL_NVLS_ENABLE=0`, `TORCH_SYMM_MEM_DISABLE_MULTICAST=1`
and `NVSHMEM_DISABLE_NVLS=1` where they are unset, and never overrides a value that is set. Why off
by default: NCCL's NVLS buffers take GPU memory of their own, which would enter the per-GPU memory
the lab measures on hosts with NVSwitch and not on others; and on the shared hosts this lab is
measured on, a program using multicast can put every GPU of the host out of service. A user who
wants it exports `NCCL_NVLS_ENABLE=1`; the manifest records the values each process had.

Pure functions: the CLI layer passes the environment's values in.
"""

from __future__ import annotations

from lab.errors import LabInputError

MULTICAST_OFF = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def parse_gpu_list(text: str | None) -> list[str]:
    """'0,1' -> ['0', '1']; None -> []; blanks dropped. Entries stay strings (CUDA also takes UUIDs)."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def check_lab_gpus(lab_gpus: str, nvml_count: int) -> list[int]:
    """LAB_GPUS as NVML indices; LabInputError for an entry that is not an index NVML sees, or a repeat."""
    indices = []
    for item in parse_gpu_list(lab_gpus):
        if not item.isdigit():
            raise LabInputError(f"LAB_GPUS={lab_gpus!r}: {item!r} is not a GPU index; write e.g. LAB_GPUS=0,1")
        index = int(item)
        if nvml_count and index >= nvml_count:
            raise LabInputError(
                f"LAB_GPUS={lab_gpus!r} names GPU {index}, but NVML sees {nvml_count} GPU(s), "
                f"indices 0..{nvml_count - 1}: fix LAB_GPUS"
            )
        if index in indices:
            raise LabInputError(f"LAB_GPUS={lab_gpus!r} names GPU {index} twice: list each GPU once")
        indices.append(index)
    if not indices:
        raise LabInputError("LAB_GPUS is set but empty: name the GPUs, e.g. LAB_GPUS=0,1, or unset it")
    return indices


def visible_gpu_count(lab_gpus: str | None, cuda_visible: str | None, nvml_count: int) -> tuple[int, str]:
    """(GPUs this run may use, where that number comes from), for `check_gpu_request`'s message.

    LAB_GPUS first, then CUDA_VISIBLE_DEVICES (at most what NVML sees), then every GPU NVML sees.
    """
    if lab_gpus is not None:
        return len(check_lab_gpus(lab_gpus, nvml_count)), f"LAB_GPUS={lab_gpus}"
    if cuda_visible is not None:
        listed = parse_gpu_list(cuda_visible)
        usable = [g for g in listed if g != "-1"]  # CUDA reads "-1" as "no GPU"
        count = min(len(usable), nvml_count) if nvml_count else 0
        return count, f"CUDA_VISIBLE_DEVICES={cuda_visible!r}, NVML sees {nvml_count}"
    return nvml_count, f"NVML sees {nvml_count} GPU(s)"


def check_gpu_request(
    tensor_parallel_size: int,
    device: str,
    lab_gpus: str | None,
    cuda_visible: str | None,
    nvml_count: int,
    nvml_reason: str | None = None,
) -> None:
    """LabInputError (exit 2) when a CUDA run asks for more GPUs than this host lets it use, or when
    LAB_GPUS and CUDA_VISIBLE_DEVICES disagree. On the CPU the ranks are processes: nothing to check
    but LAB_GPUS's own form."""
    if lab_gpus is not None and cuda_visible is not None and parse_gpu_list(lab_gpus) != parse_gpu_list(cuda_visible):
        raise LabInputError(
            f"LAB_GPUS={lab_gpus!r} and CUDA_VISIBLE_DEVICES={cuda_visible!r} disagree: set one of them"
        )
    if device != "cuda":
        if lab_gpus is not None:
            check_lab_gpus(lab_gpus, nvml_count)
        return
    count, source = visible_gpu_count(lab_gpus, cuda_visible, nvml_count)
    if count == 0:
        why = f" ({nvml_reason})" if nvml_reason else ""
        raise LabInputError(f"--device cuda, but no GPU is usable here: {source}{why}. Run with --device cpu")
    if tensor_parallel_size > count:
        raise LabInputError(
            f"--tensor-parallel-size {tensor_parallel_size} needs {tensor_parallel_size} GPUs, but this run may "
            f"use {count} ({source}): lower --tensor-parallel-size, or choose {tensor_parallel_size} GPUs with "
            f"LAB_GPUS (e.g. LAB_GPUS={','.join(str(i) for i in range(tensor_parallel_size))})"
        )


def docker_gpus(lab_gpus: str | None, tensor_parallel_size: int) -> str:
    """The device ids compose gives a backend container: LAB_GPUS, else the first N GPUs."""
    if lab_gpus is not None:
        return ",".join(parse_gpu_list(lab_gpus))
    return ",".join(str(i) for i in range(tensor_parallel_size))


def native_gpu_env(lab_gpus: str | None) -> dict[str, str]:
    """What a native child process gets from LAB_GPUS: CUDA's view of the same GPUs, in NVML's order."""
    if lab_gpus is None:
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(parse_gpu_list(lab_gpus)), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def collector_gpus(lab_gpus: str | None, cuda_visible: str | None) -> str | None:
    """The NVML indices the collector reads for a native run ("2" or "0,1"), or None: every GPU.

    LAB_GPUS when set; else CUDA_VISIBLE_DEVICES when it lists indices (UUIDs or "-1": None). Why:
    the device-wide figures (memory used, power, utilization) are summed over the GPUs read, so a
    run on GPU 2 of a shared host must not read the others, where other jobs run. CUDA_VISIBLE_DEVICES
    indices are CUDA's order, which is NVML's (PCI bus) order on a host of one GPU model; the lab
    sets CUDA_DEVICE_ORDER=PCI_BUS_ID itself only for LAB_GPUS, the exact way to choose GPUs.
    """
    if lab_gpus is not None:
        return ",".join(parse_gpu_list(lab_gpus))
    listed = parse_gpu_list(cuda_visible)
    if listed and all(item.isdigit() for item in listed):
        return ",".join(listed)
    return None


def multicast_env(environ: dict[str, str]) -> dict[str, str]:
    """The NVLink-multicast switches `environ` lacks, set to off (`MULTICAST_OFF`); set ones are kept."""
    return {name: value for name, value in MULTICAST_OFF.items() if name not in environ}


def cpu_rank_binding(ranks: int, cpus: list[int]) -> str:
    """vLLM's VLLM_CPU_OMP_THREADS_BIND for `ranks` CPU workers: the allowed CPUs in `ranks` even,
    contiguous groups ("0,1|2,3"); a rank shares a CPU where there are fewer CPUs than ranks.

    Why: vllm-cpu binds each worker to a NUMA node of its own by default and refuses to start several
    on a host with one node; an explicit split lets tensor parallelism run on any CPU host.
    """
    ordered = sorted(cpus)
    size = max(1, len(ordered) // ranks)
    groups = [ordered[(k * size) % len(ordered) :][:size] for k in range(ranks)]
    return "|".join(",".join(str(c) for c in group) for group in groups)
