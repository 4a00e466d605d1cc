"""Which code, on which machine, with which libraries made a result; and deterministic GPU ops.

Every `metrics.json` carries `schema_version` and a `provenance` block (`collect`): the git
commit and whether the tree was dirty (with a hash of the uncommitted changes, so two dirty
trees are told apart), or the package version outside a git checkout; the versions of python,
jax, jaxlib, flax, optax, orbax and numpy; backend, device kind and count; the XLA flags and
whether deterministic GPU ops were on; the command line; start and end time.

`code_id` names the code in one string; `experiments.reproduce` reuses a finished stage only
when its `code_id` is the current one.

Deterministic ops: XLA's GPU backend picks atomics-based reductions and autotuned kernels that
make two runs of one program differ in the last bits, which training amplifies (measured on an
H100: the dropout sweep's per-run test errors differed between two processes). `mnist_jax`
therefore adds `--xla_gpu_deterministic_ops=true` to `XLA_FLAGS` when it is imported, before
JAX starts a backend, unless `MNIST_JAX_DETERMINISTIC=0` is set or XLA_FLAGS already names the
flag. On the CPU the flag changes nothing (XLA:CPU is deterministic for a fixed program).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import importlib.metadata
import json
import os
import pathlib
import platform
import shlex
import site
import subprocess
import sys
from typing import Any

SCHEMA_VERSION = 2  # 1: metrics.json before provenance; 2: + schema_version, provenance

DETERMINISTIC_ENV = "MNIST_JAX_DETERMINISTIC"
GPU_DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops"
MANIFEST_ENV = "MNIST_JAX_CODE_MANIFEST"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# Set by enable_deterministic_ops(): whether the flag was in XLA_FLAGS before JAX started a backend.
_deterministic_before_backends: bool | None = None


def deterministic_requested(environ: dict | None = None) -> bool:
    """Whether the user leaves deterministic GPU ops on (the default): MNIST_JAX_DETERMINISTIC != 0."""
    environ = os.environ if environ is None else environ
    return environ.get(DETERMINISTIC_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def flag_value(xla_flags: str, flag: str = GPU_DETERMINISTIC_FLAG) -> bool | None:
    """The boolean value of `flag` in an XLA_FLAGS string (the last occurrence), None if absent."""
    value = None
    for token in xla_flags.split():
        name, _, text = token.partition("=")
        if name == flag:
            value = text.strip().lower() not in ("false", "0")
    return value


def enable_deterministic_ops(environ: dict | None = None) -> bool:
    """Add `--xla_gpu_deterministic_ops=true` to XLA_FLAGS unless opted out or already set.

    Must run before JAX starts a backend (XLA reads its flags then); `mnist_jax/__init__.py`
    calls it. Returns whether deterministic GPU ops are on for the backend this process starts.
    """
    global _deterministic_before_backends
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    if flag_value(flags) is None and deterministic_requested(environ):
        flags = f"{flags} {GPU_DETERMINISTIC_FLAG}=true".strip()
        environ["XLA_FLAGS"] = flags
    on = bool(flag_value(flags))
    if environ is os.environ:
        started = _backends_started()
        _deterministic_before_backends = on and not started
        if started and on:
            print(f"mnist_jax: JAX had started its backend before mnist_jax was imported, so {GPU_DETERMINISTIC_FLAG} "
                  "may not apply; import mnist_jax first for deterministic GPU runs", file=sys.stderr)
    return on


def _backends_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # a jax without this private helper: assume the flag was in time
        return False


def _git(*args: str, root: pathlib.Path = REPO_ROOT) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode("utf-8", "replace")


@functools.cache
def code_version(root: pathlib.Path = REPO_ROOT) -> dict:
    """The code that runs: {source: "git", commit, dirty, changes_sha256} in a git checkout
    (changes_sha256 hashes the uncommitted diff and the untracked Python files),
    else {source: "package", version}. Cached: the code of a process does not change."""
    if os.environ.get(MANIFEST_ENV):  # a copy of a commit's files, checked file by file
        return _manifest_version(pathlib.Path(os.environ[MANIFEST_ENV]), root)
    commit = _git("rev-parse", "HEAD", root=root) if (root / ".git").exists() else None
    if not commit:
        try:
            version = importlib.metadata.version("mnist-jax")
        except importlib.metadata.PackageNotFoundError:
            version = None
        return {"source": "package", "version": version}
    status = _git("status", "--porcelain", "--untracked-files=normal", root=root) or ""
    info = {"source": "git", "commit": commit.strip(), "dirty": bool(status.strip())}
    if info["dirty"]:
        digest = hashlib.sha256((_git("diff", "HEAD", "--binary", root=root) or "").encode())
        # untracked Python files are code too (a new module, a config); other untracked files, such
        # as a workdir inside the checkout, are not, and must not change the id while a run writes
        for name in sorted((_git("ls-files", "--others", "--exclude-standard", "--", "*.py", root=root) or "").splitlines()):
            try:
                digest.update(name.encode() + b"\0" + (root / name).read_bytes())
            except OSError:
                digest.update(f"{name}\0?".encode())
        info["changes_sha256"] = digest.hexdigest()
    return info


def write_manifest(path: str | os.PathLike, root: pathlib.Path = REPO_ROOT) -> dict:
    """Write the commit and the sha256 of every tracked file to `path` (JSON), for a copy of the
    tree without .git (a GPU machine): with MNIST_JAX_CODE_MANIFEST=path set there, provenance
    checks the copy against it and names the commit."""
    code = code_version.__wrapped__(root)
    if code["source"] != "git":
        raise ValueError(f"{root} is not a git checkout")
    files = {name: hashlib.sha256((root / name).read_bytes()).hexdigest()
             for name in (_git("ls-files", root=root) or "").splitlines() if (root / name).is_file()}
    manifest = {"commit": code["commit"], "dirty": code["dirty"], "changes_sha256": code.get("changes_sha256"),
                "files": files}
    pathlib.Path(path).write_text(json.dumps(manifest, indent=1))
    return manifest


def _manifest_version(path: pathlib.Path, root: pathlib.Path) -> dict:
    manifest = json.loads(path.read_text())
    changed = [name for name, digest in manifest["files"].items()
               if not (root / name).is_file() or hashlib.sha256((root / name).read_bytes()).hexdigest() != digest]
    extra = [str(p.relative_to(root)) for folder in ("mnist_jax", "experiments", "configs")
             for p in (root / folder).rglob("*.py") if str(p.relative_to(root)) not in manifest["files"]]
    info = {"source": "git-manifest", "commit": manifest["commit"], "dirty": bool(manifest["dirty"] or changed or extra)}
    if info["dirty"]:
        digest = hashlib.sha256(f"{manifest.get('changes_sha256')}{sorted(changed)}{sorted(extra)}".encode())
        info["changes_sha256"] = digest.hexdigest()
    return info


def copy_code_id(base: str, commit: str, root: pathlib.Path = REPO_ROOT) -> str:
    """The code_id that `code_version` reports in a copy of `commit`'s files whose .git is at
    `base` (a machine that got the files but a stale .git), computed from git's objects alone.

    If it equals the code_id a result recorded, the result was made by exactly `commit`'s code.
    """
    def git_bytes(*args: str) -> bytes:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=60, check=True).stdout

    base, commit = (git_bytes("rev-parse", c).decode().strip() for c in (base, commit))
    tracked = git_bytes("ls-tree", "-r", "--name-only", base).decode().splitlines()
    diff = git_bytes("diff", "--binary", base, commit, "--", *tracked)  # what `git diff HEAD` shows there
    new = sorted(set(git_bytes("ls-tree", "-r", "--name-only", commit).decode().splitlines()) - set(tracked))
    if not diff and not new:
        return f"git:{base}"
    digest = hashlib.sha256(diff.decode("utf-8", "replace").encode())
    for name in new:  # untracked there; the Python ones count as code
        if name.endswith(".py"):
            digest.update(name.encode() + b"\0" + git_bytes("show", f"{commit}:{name}"))
    return f"git:{base}+dirty:{digest.hexdigest()[:12]}"


def _installed_roots() -> tuple[str, ...]:
    """Folders whose modules are installed software (the interpreter's and its site-packages)."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages(), site.getusersitepackages()}
    return tuple(os.path.realpath(r) + os.sep for r in roots if r)


@functools.cache
def _outside_file(path: str, inside: tuple[str, ...]) -> str | None:
    """The real path of a module's file when it is outside `inside` (this repository and installed
    software), else None. Kept for the process: a module's file does not move while it runs."""
    real = os.path.realpath(path)
    return None if real.startswith(inside) else real


_digests: dict[str, tuple[tuple[int, int, int], str]] = {}  # real path -> (its stat, its sha256)


def _file_digest(real: str) -> str | None:
    """sha256 of a file, read again whenever its size or times change (an edit between two runs
    of one process); None when it is not a file."""
    try:
        st = os.stat(real)
    except OSError:
        return None
    if not os.path.isfile(real):
        return None
    stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    known = _digests.get(real)
    if known is None or known[0] != stamp:
        try:
            digest = hashlib.sha256(pathlib.Path(real).read_bytes()).hexdigest()
        except OSError:
            digest = "unreadable"
        _digests[real] = known = (stamp, digest)
    return known[1]


def outside_code(root: pathlib.Path = REPO_ROOT) -> dict[str, str]:
    """{file: sha256} of every imported module that is neither this repository's nor installed
    software: a researcher's own model file on PYTHONPATH. Config files are not code: config.json
    records what they gave."""
    inside = (os.path.realpath(root) + os.sep, *_installed_roots())
    out = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not path or name.startswith("_mnist_jax_config_") or not path.endswith(".py"):
            continue
        real = _outside_file(path, inside)
        if real is not None and (digest := _file_digest(real)) is not None:
            out[real] = digest
    return dict(sorted(out.items()))


def code_id(code: dict | None = None, outside: dict[str, str] | None = None) -> str:
    """One string naming the code: 'git:<commit>', 'git:<commit>+dirty:<hash12>' or
    'package:<version>', with '+outside:<hash12>' when modules from outside the repository run
    (`outside_code`: an edit of a researcher's model file changes the id)."""
    code = code_version() if code is None else code
    outside = outside_code() if outside is None else outside
    if code.get("source") in ("git", "git-manifest"):
        text = f"git:{code['commit']}" + (f"+dirty:{code['changes_sha256'][:12]}" if code.get("dirty") else "")
    else:
        text = f"package:{code.get('version')}"
    if outside:
        text += "+outside:" + hashlib.sha256(json.dumps(outside, sort_keys=True).encode()).hexdigest()[:12]
    return text


def short_code(code: dict) -> str:
    """'commit 1a2b3c4' (+ ' with uncommitted changes'), or 'package mnist-jax 0.1.0'."""
    if code.get("source") in ("git", "git-manifest"):
        return f"commit {code['commit'][:7]}" + (" with uncommitted changes" if code.get("dirty") else "")
    return f"package mnist-jax {code.get('version')}"


def cpu_model() -> str:
    """The host CPU's model name (from /proc/cpuinfo where there is one)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def describe_devices() -> str:
    """e.g. '1 x cpu (Intel(R) Xeon(R) Processor, 2 cores)' or '8 x gpu (NVIDIA H100 80GB HBM3)'."""
    import jax

    devs = jax.devices()
    if devs[0].platform == "cpu":
        return f"{len(devs)} x cpu ({cpu_model()}, {os.cpu_count()} cores)"
    return f"{len(devs)} x {devs[0].platform} ({getattr(devs[0], 'device_kind', str(devs[0]))})"


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def command_line(argv: list[str] | None, module: str | None = None) -> str:
    """The command that ran, as a shell line: `python -m <module> <argv>` (sys.argv by default)."""
    if module is None or module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = spec.name if spec is not None else None
    args = sys.argv[1:] if argv is None else list(argv)
    head = ["python", "-m", module] if module else ["python", sys.argv[0]]
    inside = str(REPO_ROOT) + os.sep  # paths into the checkout as the user would type them, from its root
    return shlex.join([*head, *(a.replace(inside, "") for a in args)])


def collect(command: str, started: str, ended: str | None = None, precision: dict | None = None) -> dict:
    """The provenance block of a result made by `command` between `started` and `ended` (UTC);
    `precision`: its compute dtype and matmul precision with what the backend did with them
    (`mnist_jax.precision.describe`; the defaults, float32 and "default", when not given)."""
    import jax

    from mnist_jax import precision as precision_lib

    devs = jax.devices()
    flags = os.environ.get("XLA_FLAGS", "")
    backend = jax.default_backend()
    deterministic = bool(flag_value(flags)) and _deterministic_before_backends is not False
    return {
        "code": code_version(),
        "code_id": code_id(),
        "outside_code": outside_code(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "backend": backend,
        "device_kind": getattr(devs[0], "device_kind", devs[0].platform),
        "device_count": len(devs),
        "process_count": jax.process_count(),
        "devices": describe_devices(),
        "host_cpu": f"{cpu_model()}, {os.cpu_count()} cores",
        "xla_flags": flags,
        "deterministic_gpu_ops": deterministic,
        "precision": precision or precision_lib.describe(precision_lib.DEFAULT_COMPUTE_DTYPE,
                                                         precision_lib.DEFAULT_MATMUL_PRECISION, backend),
        "deterministic": ("yes: XLA:CPU, fixed program" if backend == "cpu"
                          else "yes: deterministic GPU ops" if deterministic and backend == "gpu"
                          else "no: GPU ops may reorder sums between runs" if backend == "gpu" else "unknown"),
        "command": command,
        "started": started,
        "ended": ended or now(),
    }


def describe(prov: dict | None) -> str:
    """One line for a report: which code, where, with what, when."""
    if not prov:
        return "Provenance: not recorded (metrics.json written before schema version 2)."
    from mnist_jax import precision as precision_lib

    pk = prov.get("packages", {})
    return (f"Made by {short_code(prov['code'])} on {prov['devices']} with jax {pk.get('jax')}, "
            f"flax {pk.get('flax')}, optax {pk.get('optax')}; deterministic: {prov['deterministic']}; "
            f"precision: {precision_lib.text(prov.get('precision'))}; "
            f"{prov['started']} to {prov['ended']}; `{prov['command']}`.")


VOLATILE_KEYS = frozenset({"timing", "timing_note", "seconds", "seconds_per_run", "iwae_seconds_per_run",
                           "sample_seconds_per_run", "started", "ended"})


def comparable(obj: Any) -> Any:
    """`obj` (a metrics.json tree) without what legitimately differs between two identical runs:
    timings (any key in VOLATILE_KEYS, at any depth) and start / end times."""
    if isinstance(obj, dict):
        return {k: comparable(v) for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [comparable(v) for v in obj]
    return obj

