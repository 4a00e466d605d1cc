"""Compiled programs: JAX's persistent compilation cache, on by default, and a count of compilations.

Persistent cache: importing `mnist_jax` points JAX's persistent compilation cache at
`<cache dir>/xla` (`mnist_jax.data.default_cache_dir()`, i.e. `$MNIST_JAX_CACHE/xla`), so a second
process (a second run of an experiment, a resumed run, `reproduce`, the test suite) loads the
programs the first one compiled instead of compiling them again. XLA:CPU supports it in jax 0.10
(measured: `benchmarks/compile_cache.py`, docs/performance.md). Every program is written to the cache
(`MIN_COMPILE_SECONDS` = 0; JAX's default is 1 s): most of the quick profile's programs compile in
under a second each, and a second run loads those too (`benchmarks/compile_cache.py` measures
it). A loaded program is the same executable, so it gives bit-identical numbers (tested, and
`python -m mnist_jax.compare` on the two runs of the benchmark).

- `MNIST_JAX_COMPILE_CACHE=0` leaves JAX's cache settings as they are (JAX's default: no cache);
- a cache folder of your own (`JAX_COMPILATION_CACHE_DIR`, or `jax_compilation_cache_dir` set
  before `mnist_jax` is imported) is kept, and so is your `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`;
- a cache folder that cannot be created or written leaves the cache off with one line on stderr;
  JAX itself turns a failed read or write of an entry into a warning and compiles, never an error;
- each entry is written atomically (`atomic_writes`: a temporary file, then a rename), where JAX
  writes it in place: a process killed in the middle of the write (the tests kill runs with
  SIGKILL), or two processes writing one entry at once, would leave a damaged entry that every
  later process warns about and compiles again, since JAX never replaces an entry.

The cache is trusted code: do not point it at a folder that others can write.

Counting: `counts()` is this process's running total of compiled programs, from JAX's own
monitoring events (listeners registered when `mnist_jax` is imported): programs built by XLA or
loaded from the persistent cache, the seconds that took, the seconds spent tracing and lowering
to XLA before it, and cache hits and misses. `since(before)` is the difference: what one
experiment compiled (`cli.run_in_workdir` records it in metrics.json `timing.compilation`).
"""

from __future__ import annotations

import functools
import os
import pathlib
import sys
import threading

CACHE_ENV = "MNIST_JAX_COMPILE_CACHE"
JAX_DIR_ENV = "JAX_COMPILATION_CACHE_DIR"
JAX_MIN_TIME_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
MIN_COMPILE_SECONDS = 0.0  # cache every program (see the module docstring)

# jax.monitoring event names (jax/_src/dispatch.py and jax/_src/compiler.py, jax 0.10).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # per program, cache loads included
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
CACHE_MISS_EVENT = "/jax/compilation_cache/cache_misses"

_DURATIONS = {BACKEND_COMPILE_EVENT: "compile_seconds", TRACE_EVENT: "trace_lower_seconds",
              LOWER_EVENT: "trace_lower_seconds"}
_EVENTS = {CACHE_HIT_EVENT: "cache_hits", CACHE_MISS_EVENT: "cache_misses"}

# The process-wide totals (jax.monitoring's listeners are process-wide too).
_lock = threading.Lock()
_totals = {"programs": 0, "compile_seconds": 0.0, "trace_lower_seconds": 0.0, "cache_hits": 0, "cache_misses": 0}
_listening = False


def cache_requested(environ: dict | None = None) -> bool:
    """Whether the user leaves mnist_jax's persistent compilation cache on (the default):
    MNIST_JAX_COMPILE_CACHE != 0."""
    environ = os.environ if environ is None else environ
    return environ.get(CACHE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def default_dir() -> pathlib.Path:
    """`<mnist_jax cache dir>/xla`."""
    from mnist_jax.data import default_cache_dir

    return default_cache_dir() / "xla"


def _writable_dir(path: pathlib.Path) -> bool:
    """Whether `path` is, or can be made, a writable folder; creates nothing (JAX makes the folder
    when it first writes to it, so importing mnist_jax leaves the file system as it was)."""
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def enable_cache(environ: dict | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache unless opted out; return its folder (None: off).

    Keeps a folder the user chose for JAX; otherwise uses `default_dir()` when it can be written.
    `mnist_jax/__init__.py` calls it.
    """
    import jax

    environ = os.environ if environ is None else environ
    if not cache_requested(environ):
        return jax.config.jax_compilation_cache_dir  # the user's own, if any
    path = jax.config.jax_compilation_cache_dir or environ.get(JAX_DIR_ENV)
    if path:
        jax.config.update("jax_compilation_cache_dir", path)
    else:
        folder = default_dir()
        if not _writable_dir(folder):
            print(f"mnist_jax: cannot write the compilation cache {folder}; compiling without it "
                  f"(set MNIST_JAX_CACHE or {JAX_DIR_ENV} to a writable folder, or {CACHE_ENV}=0)", file=sys.stderr)
            return None
        path = str(folder)
        jax.config.update("jax_compilation_cache_dir", path)
    if JAX_MIN_TIME_ENV not in environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    atomic_writes()
    return path


def _put_atomically(folder: pathlib.Path, key: str, value: bytes) -> None:
    """jax's LRUCache.put without eviction (an existing entry is kept), through a temporary file."""
    from jax._src import lru_cache

    path = folder / f"{key}{lru_cache._CACHE_SUFFIX}"
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # never read by jax
    try:
        tmp.write_bytes(value)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _make_atomic(cache) -> None:
    from jax._src import lru_cache

    if type(cache) is not lru_cache.LRUCache or cache.eviction_enabled or "://" in str(cache.path):
        return  # another cache, one with eviction (and its lock), or a remote file system: JAX's own writes
    cache.put = functools.partial(_put_atomically, pathlib.Path(os.fspath(cache.path)))


def atomic_writes() -> bool:
    """Make JAX's file cache write each entry atomically; False where this jax's private
    `compilation_cache.get_file_cache` is not there to wrap (JAX's own writes then)."""
    try:
        from jax._src import compilation_cache as cc
        from jax._src import lru_cache
    except ImportError:
        return False
    if not (callable(getattr(cc, "get_file_cache", None)) and hasattr(lru_cache, "LRUCache")
            and hasattr(lru_cache, "_CACHE_SUFFIX")):
        return False
    original = cc.get_file_cache
    if getattr(original, "_mnist_jax_atomic", False):
        return True

    def get_file_cache(path):
        made = original(path)
        if made is not None:
            _make_atomic(made[0])
        return made

    get_file_cache._mnist_jax_atomic = True
    cc.get_file_cache = get_file_cache
    if getattr(cc, "_cache", None) is not None:  # initialized before mnist_jax was imported
        _make_atomic(cc._cache)
    return True


def cache_dir() -> str | None:
    """The persistent cache folder JAX uses in this process (None: off)."""
    import jax

    return jax.config.jax_compilation_cache_dir if jax.config.jax_enable_compilation_cache else None


def cache_label(environ: dict | None = None) -> str | None:
    """Which persistent cache this process uses, named without this machine's paths (None: off):
    `<cache dir>/xla` (mnist_jax's default: $MNIST_JAX_CACHE/xla, else ~/.cache/mnist_jax/xla) or
    `JAX_COMPILATION_CACHE_DIR` / `jax_compilation_cache_dir` (a folder of the user's own).
    metrics.json records this label, so results copied from another machine hold no foreign path."""
    path = cache_dir()
    if path is None:
        return None
    if pathlib.Path(path).absolute() == default_dir().absolute():
        return "<cache dir>/xla"
    environ = os.environ if environ is None else environ
    return JAX_DIR_ENV if environ.get(JAX_DIR_ENV) == path else "jax_compilation_cache_dir"


def cache_entries() -> int | None:
    """How many programs the persistent cache folder of this process holds now (None: no cache,
    or a folder that cannot be listed, such as a remote one)."""
    path = cache_dir()
    if path is None or "://" in str(path):
        return None
    try:
        return sum(1 for p in os.scandir(path) if p.name.endswith("-cache") and not p.name.startswith("."))
    except OSError:
        return 0 if not os.path.exists(path) else None


def _on_duration(event: str, seconds: float, **_) -> None:
    key = _DURATIONS.get(event)
    if key is None:
        return
    with _lock:
        _totals[key] += seconds
        if event == BACKEND_COMPILE_EVENT:
            _totals["programs"] += 1


def _on_event(event: str, **_) -> None:
    key = _EVENTS.get(event)
    if key is not None:
        with _lock:
            _totals[key] += 1


def listen() -> None:
    """Register the monitoring listeners that `counts` reads (once per process)."""
    global _listening
    from jax import monitoring

    with _lock:
        if _listening:
            return
        _listening = True
    monitoring.register_event_duration_secs_listener(_on_duration)
    monitoring.register_event_listener(_on_event)


def counts() -> dict:
    """This process's compilations so far: programs (built by XLA or loaded from the persistent
    cache), compile_seconds (their backend compile or cache-load time), trace_lower_seconds,
    cache_hits and cache_misses."""
    with _lock:
        return dict(_totals)


def since(before: dict) -> dict:
    """The compilations after the `counts()` snapshot `before`, with the cache in use (`cache_label`)."""
    now = counts()
    out = {k: now[k] - before.get(k, 0) for k in now}
    out["persistent_cache"] = cache_label()
    return out
