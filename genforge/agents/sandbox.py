"""Run model-written Python where it cannot hurt the host.

Layers, outermost first (each one is what stops a class of attack in tests/agents/test_sandbox.py):

1. **bubblewrap** (`bwrap`, Debian package `bubblewrap`): new user, pid, net, ipc, uts and mount
   namespaces. The sandbox sees a read-only `/usr`, a fresh `/proc` of its own pid namespace, a
   minimal `/dev`, and two size-capped tmpfs folders (`/work`, its working folder, and `/tmp`). No
   `/etc`, no `/home`, no `/root`, no host `/tmp`: there is nothing of the host to read or write.
   `--unshare-net` leaves only a down loopback, so a listener on the host's 127.0.0.1 is unreachable.
   bwrap's reaper is pid 1 of the namespace; when it dies every process inside dies with it.
2. **An unprivileged user**: when genforge runs as root we drop to `nobody` (uid/gid 65534, no
   supplementary groups) *before* exec'ing bwrap, so bwrap is an unprivileged user-namespace sandbox
   (measured here: works as root -> nobody; mapping root into the namespace would make any bind
   mount root-owned on the host).
3. **rlimits** set in the child before exec: CPU seconds, address space, file size (which also caps
   the captured stdout/stderr, since they are files), process count and open files.
4. **A wall-clock timeout** that SIGKILLs the whole process group (which takes the namespace down).
5. **An empty environment** (`env={}` for bwrap itself and `--clearenv` inside), so neither the
   child's environment nor `/proc/1/environ` carries the parent's secrets.

Fallbacks, in order, when user namespaces are unavailable: `"rlimits-only"` (a plain subprocess as
`nobody` when root, with layers 3-5 and a throwaway folder as its cwd). It still reads the host's
files that `nobody` may read and can reach the network; that is stated in every `SandboxResult`
(`isolation`) and warned about once, never silent. `SandboxConfig(require_isolation=True)` refuses
to fall back at all.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from genforge.errors import GenforgeError

NOBODY = 65534


class SandboxError(GenforgeError):
    """The sandbox itself cannot run (not: the code inside it failed)."""


@dataclass
class SandboxConfig:
    """Limits for one run of untrusted code."""

    wall_seconds: float = 5.0  # wall-clock timeout; the process group is SIGKILLed after it
    cpu_seconds: int = 5  # RLIMIT_CPU
    memory_bytes: int = 1 << 30  # RLIMIT_AS (address space); a 4 GiB allocation fails with MemoryError
    file_bytes: int = 8 << 20  # RLIMIT_FSIZE: biggest file (and captured stdout/stderr) the code may write
    max_processes: int = 64  # RLIMIT_NPROC (per user, so it also bounds fork bombs)
    max_open_files: int = 64  # RLIMIT_NOFILE
    tmpfs_bytes: int = 16 << 20  # size of /work and of /tmp inside bwrap (bounds "fill the disk")
    max_output_chars: int = 20_000  # stdout/stderr returned to the caller are cut to this
    python: str = ""  # interpreter inside the sandbox; "" = /usr/bin/python3 when present, else sys.executable
    isolation: str = "auto"  # "auto" | "bwrap" | "rlimits-only"
    require_isolation: bool = False  # True: raise SandboxError instead of falling back to rlimits-only


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    returncode: int | None  # None when killed by the wall timeout
    timed_out: bool
    isolation: str  # "bwrap" | "rlimits-only": what actually isolated this run
    seconds: float
    truncated: bool = False  # stdout or stderr was longer than max_output_chars (or hit file_bytes)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def as_observation(self) -> str:
        """One text an agent can read: the output, or why there is none."""
        if self.timed_out:
            return f"error: timed out after the wall-clock limit; output so far: {self.stdout.strip()[-500:]}"
        if self.returncode != 0:
            if self.notes and self.notes[-1].startswith("killed by"):
                return f"error: {self.notes[-1]} (a CPU, memory or file-size limit)"
            last = self.stderr.strip().splitlines()[-1:] or [f"exit status {self.returncode}"]
            return f"error: {last[0]}"
        return self.stdout.strip()


def interpreter(cfg: SandboxConfig) -> str:
    """The Python the sandbox runs (system python by default: nobody can read a venv under /root)."""
    if cfg.python:
        return cfg.python
    return "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def _drop_and_limit(cfg: SandboxConfig):
    """preexec_fn: runs in the child between fork and exec (so the limits bind bwrap and all it starts)."""
    def fn() -> None:
        if os.getuid() == 0:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        resource.setrlimit(resource.RLIMIT_CPU, (cfg.cpu_seconds, cfg.cpu_seconds))
        resource.setrlimit(resource.RLIMIT_AS, (cfg.memory_bytes, cfg.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (cfg.file_bytes, cfg.file_bytes))
        resource.setrlimit(resource.RLIMIT_NPROC, (cfg.max_processes, cfg.max_processes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (cfg.max_open_files, cfg.max_open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return fn


def _bwrap_argv(code_dir: Path, cfg: SandboxConfig, python: str) -> list[str]:
    bwrap = shutil.which("bwrap") or "/usr/bin/bwrap"
    # --disable-userns: no nested user namespace in which the code could regain capabilities
    argv = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--clearenv", "--ro-bind", "/usr", "/usr"]
    # Debian's merged /usr: /bin, /lib, /lib64 are symlinks into /usr.
    for name in ("bin", "lib", "lib64", "sbin"):
        p = Path("/") / name
        if p.is_symlink():
            argv += ["--symlink", os.readlink(p), f"/{name}"]
        elif p.is_dir():
            argv += ["--ro-bind", str(p), f"/{name}"]
    if not python.startswith("/usr/"):  # an interpreter outside /usr: expose its prefix read-only
        prefix = str(Path(python).resolve().parent.parent)
        argv += ["--ro-bind", prefix, prefix]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--size", str(cfg.tmpfs_bytes), "--tmpfs", "/tmp",
             "--size", str(cfg.tmpfs_bytes), "--tmpfs", "/work",
             "--ro-bind", str(code_dir / "main.py"), "/code/main.py",
             "--chdir", "/work", "--setenv", "HOME", "/work", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
             python, "-I", "/code/main.py"]
    return argv


def _rlimits_argv(code_dir: Path, python: str) -> list[str]:
    return [python, "-I", str(code_dir / "main.py")]


@cache
def _bwrap_works() -> tuple[bool, str]:
    """Probe once: can this process start an unprivileged bwrap sandbox? (reason when not)"""
    if not shutil.which("bwrap"):
        return False, "bwrap not found (apt-get install -y bubblewrap)"
    cfg = SandboxConfig(wall_seconds=10)
    r = _run("print(6 * 7)", cfg, "bwrap")
    if r.stdout.strip() == "42":
        return True, ""
    return False, f"bwrap failed to start: {r.stderr.strip()[-200:] or r.returncode}"


def available_isolation() -> str:
    """The strongest isolation this machine offers: "bwrap" or "rlimits-only"."""
    return "bwrap" if _bwrap_works()[0] else "rlimits-only"


_warned = False


def _choose(cfg: SandboxConfig) -> str:
    global _warned
    if cfg.isolation not in ("auto", "bwrap", "rlimits-only"):
        raise SandboxError(f"SandboxConfig.isolation={cfg.isolation!r}; choose auto, bwrap or rlimits-only")
    if cfg.isolation == "rlimits-only":
        if cfg.require_isolation:
            raise SandboxError("SandboxConfig: isolation='rlimits-only' contradicts require_isolation=True")
        return "rlimits-only"
    ok, why = _bwrap_works()
    if ok:
        return "bwrap"
    if cfg.isolation == "bwrap" or cfg.require_isolation:
        raise SandboxError(f"sandbox: {why}; install bubblewrap or allow user namespaces")
    if not _warned:
        warnings.warn(f"sandbox falls back to rlimits-only ({why}): code can read host files and use the network",
                      stacklevel=3)
        _warned = True
    return "rlimits-only"


def _read_capped(f, limit: int) -> tuple[str, bool]:
    f.seek(0)
    data = f.read(limit * 4 + 4)  # utf-8: at most 4 bytes a character
    text = data.decode("utf-8", errors="replace")
    more = len(text) > limit or bool(f.read(1))
    return text[:limit], more


def _run(code: str, cfg: SandboxConfig, isolation: str) -> SandboxResult:
    t0 = time.perf_counter()
    python = interpreter(cfg)
    root = Path(tempfile.mkdtemp(prefix="genforge-sbx-"))  # throwaway: removed below, whatever happens
    try:
        (root / "main.py").write_text(code, encoding="utf-8")
        if os.getuid() == 0:  # the dropped user must read the code (and, rlimits-only, write its cwd)
            os.chown(root, NOBODY, NOBODY)
            os.chown(root / "main.py", NOBODY, NOBODY)
        argv = _bwrap_argv(root, cfg, python) if isolation == "bwrap" else _rlimits_argv(root, python)
        notes = [] if isolation == "bwrap" else ["no namespaces: host files readable by nobody, network reachable"]
        # stdout/stderr go to files the parent opened, so RLIMIT_FSIZE caps "huge output" too.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=root, env={},
                                    start_new_session=True, preexec_fn=_drop_and_limit(cfg), close_fds=True)
            timed_out = False
            try:
                proc.wait(timeout=cfg.wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # Kill the group even after a normal exit: nothing the code started may outlive the call
                # (inside bwrap the pid namespace already guarantees it; rlimits-only relies on this).
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            stdout, t1 = _read_capped(out, cfg.max_output_chars)
            stderr, t2 = _read_capped(err, cfg.max_output_chars)
        rc = None if timed_out else proc.returncode
        if rc is not None and (rc < 0 or (isolation == "bwrap" and rc > 128)):
            # bwrap reports a child killed by signal N as exit status 128 + N
            sig = -rc if rc < 0 else rc - 128
            notes.append(f"killed by {signal.Signals(sig).name}" if sig in signal.valid_signals() else f"signal {sig}")
        return SandboxResult(stdout, stderr, rc, timed_out, isolation, time.perf_counter() - t0, t1 or t2, notes)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_python(code: str, cfg: SandboxConfig | None = None) -> SandboxResult:
    """Run `code` as a Python script in the strongest sandbox available; never raises for the code's own
    failures (they are in `returncode`/`stderr`). `result.isolation` says what protected the host."""
    cfg = cfg or SandboxConfig()
    return _run(code, cfg, _choose(cfg))
