"""The sandbox attack suite: each attack is one test and must be blocked or cut off.

Attacks that only namespaces can stop (host files, network, /proc) run under bwrap; the limits that
hold in every mode (memory, CPU, wall time, output, environment, processes) run under each
isolation this machine offers. CI installs bubblewrap (.ci/run), so there the bwrap tests run.
"""

from __future__ import annotations

import os
import socket
import textwrap
import threading
import time
from pathlib import Path

import pytest

from genforge.agents.sandbox import SandboxConfig, SandboxError, available_isolation, run_python

BWRAP = available_isolation() == "bwrap"
needs_bwrap = pytest.mark.skipif(not BWRAP, reason="bubblewrap cannot start here (see genforge.agents.sandbox)")
MODES = ["bwrap", "rlimits-only"] if BWRAP else ["rlimits-only"]
FAST = dict(wall_seconds=4.0, cpu_seconds=2)


def run(code: str, isolation: str = "bwrap", **kw) -> object:
    return run_python(textwrap.dedent(code), SandboxConfig(isolation=isolation, **{**FAST, **kw}))


def _sandbox_pids() -> list[int]:
    """Host pids still running code from a sandbox (its script path is in the command line)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "/code/main.py" in cmd or ("genforge-sbx-" in cmd and "main.py" in cmd):
                pids.append(int(d.name))
    return pids


def test_runs_code_and_states_isolation():
    r = run_python("print(6 * 7)")
    assert r.ok and r.stdout.strip() == "42"
    assert r.isolation == available_isolation()


@needs_bwrap
def test_read_host_passwd_blocked():
    host = Path("/etc/passwd").read_text().splitlines()[0]
    r = run("""
        for p in ("/etc/passwd", "/../etc/passwd", "/proc/1/root/etc/passwd", "/proc/self/root/etc/passwd"):
            try:
                print(open(p).read())
            except OSError as e:
                print("blocked", p, type(e).__name__)
        """)
    assert host not in r.stdout
    assert r.stdout.count("blocked") == 4


@needs_bwrap
def test_read_home_and_host_files_blocked(tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2-home-secret")
    secret.chmod(0o644)
    for d in (tmp_path, *tmp_path.parents):  # make it readable by anyone: only the namespace may stop it
        if d != Path("/"):
            os.chmod(d, os.stat(d).st_mode | 0o005)
    r = run(f"""
        import os
        for p in ({str(secret)!r}, os.path.expanduser("~/.bashrc"), "/root/.bashrc"):
            try:
                print(open(p).read())
            except OSError as e:
                print("blocked", type(e).__name__)
        print(sorted(os.listdir("/")))
        """)
    assert "hunter2-home-secret" not in r.stdout
    assert r.stdout.count("blocked") == 3
    assert "root" not in r.stdout and "home" not in r.stdout


@needs_bwrap
def test_write_outside_blocked(tmp_path: Path):
    target = tmp_path / "pwned"
    os.chmod(tmp_path, 0o777)
    r = run(f"""
        for p in ({str(target)!r}, "/tmp/genforge-pwned", "/usr/genforge-pwned", "/code/main.py"):
            try:
                open(p, "w").write("x")
                print("wrote", p)
            except OSError as e:
                print("blocked", type(e).__name__)
        open("/work/scratch", "w").write("fine")  # its own throwaway folder is writable
        print("scratch ok")
        """)
    assert "scratch ok" in r.stdout
    assert not target.exists() and not Path("/usr/genforge-pwned").exists()
    # /tmp inside is a private tmpfs: the write may succeed there but never reaches the host's /tmp
    assert not Path("/tmp/genforge-pwned").exists()
    assert "wrote /usr" not in r.stdout and "wrote /code" not in r.stdout


@needs_bwrap
def test_connect_to_host_listener_blocked():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(3.0)
    port = srv.getsockname()[1]
    got: list[object] = []

    def accept() -> None:
        try:
            got.append(srv.accept())
        except OSError:
            pass

    t = threading.Thread(target=accept)
    t.start()
    r = run(f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"leak")
            print("connected")
        except OSError as e:
            print("blocked", type(e).__name__)
        """)
    t.join()
    srv.close()
    assert "blocked" in r.stdout and not got


@pytest.mark.parametrize("mode", MODES)
def test_fork_200_processes_cut_off_and_nothing_left(mode: str):
    r = run("""
        import os, time
        n = 0
        for _ in range(200):
            try:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                n += 1
            except OSError:
                break
        print("forked", n, flush=True)
        """, isolation=mode, max_processes=32, wall_seconds=4.0)
    forked = int(r.stdout.split()[1])
    assert forked < 200
    time.sleep(0.2)
    assert _sandbox_pids() == []


@needs_bwrap
def test_daemon_escaping_the_session_does_not_survive():
    r = run("""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
        print("parent done")
        """)
    assert "parent done" in r.stdout
    time.sleep(0.2)
    assert _sandbox_pids() == []


@pytest.mark.parametrize("mode", MODES)
def test_allocate_4gib_blocked(mode: str):
    r = run("x = bytearray(4 << 30)\nprint('allocated')", isolation=mode)
    assert "allocated" not in r.stdout and not r.ok
    assert "MemoryError" in r.stderr


@pytest.mark.parametrize("mode", MODES)
def test_infinite_cpu_loop_cut_off(mode: str):
    t0 = time.perf_counter()
    r = run("while True:\n    pass", isolation=mode, cpu_seconds=1, wall_seconds=5.0)
    assert not r.ok and time.perf_counter() - t0 < 5.0
    assert any("SIGKILL" in n or "SIGXCPU" in n for n in r.notes)


@pytest.mark.parametrize("mode", MODES)
def test_sleep_forever_hits_wall_timeout(mode: str):
    t0 = time.perf_counter()
    r = run("import time\nprint('start', flush=True)\ntime.sleep(1000)", isolation=mode, wall_seconds=1.0)
    assert r.timed_out and r.returncode is None
    assert time.perf_counter() - t0 < 3.0
    assert "timed out" in r.as_observation()
    time.sleep(0.2)
    assert _sandbox_pids() == []


@needs_bwrap
def test_fill_the_disk_cut_off():
    free0 = os.statvfs("/tmp").f_bavail * os.statvfs("/tmp").f_frsize
    r = run("""
        i = 0
        try:
            while True:
                with open(f"/work/f{i}", "wb") as f:
                    f.write(b"0" * (1 << 20))
                i += 1
        except OSError as e:
            print("stopped", i, type(e).__name__)
        """, tmpfs_bytes=8 << 20)
    assert "stopped" in r.stdout and int(r.stdout.split()[1]) <= 8
    free1 = os.statvfs("/tmp").f_bavail * os.statvfs("/tmp").f_frsize
    assert free0 - free1 < 64 << 20  # other tests share the disk: allow noise, never gigabytes


@pytest.mark.parametrize("mode", MODES)
def test_huge_output_truncated(mode: str):
    r = run("import sys\nwhile True:\n    sys.stdout.write('A' * 65536)", isolation=mode, file_bytes=1 << 20,
            max_output_chars=1000)
    assert r.truncated and len(r.stdout) <= 1000 and not r.ok


@pytest.mark.parametrize("mode", MODES)
def test_parent_env_not_visible(mode: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GENFORGE_SBX_SECRET", "s3cr3t-token-value")
    r = run("""
        import os
        print(dict(os.environ))
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    print(open(f"/proc/{pid}/environ", "rb").read())
                except OSError:
                    pass
        """, isolation=mode)
    assert r.ok and "s3cr3t-token-value" not in r.stdout


@needs_bwrap
def test_proc_escape_blocked():
    r = run("""
        import os
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        print("pids", len(pids))
        for p in ("/proc/1/root/etc/shadow", "/proc/1/cwd/../../etc/hostname", "/proc/sysrq-trigger"):
            try:
                open(p, "rb").read()
                print("read", p)
            except OSError as e:
                print("blocked", type(e).__name__)
        """)
    n_pids = int(r.stdout.split()[1])
    assert n_pids < 10  # only the sandbox's own pid namespace, not the host's processes
    assert "read " not in r.stdout


@needs_bwrap
def test_ctypes_privilege_tricks_fail():
    r = run("""
        import ctypes, ctypes.util, os
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        print("setuid", libc.setuid(0), os.getuid())
        print("mount", libc.mount(b"/usr", b"/work", b"none", 4096, None))  # MS_BIND
        print("unshare", libc.unshare(0x10000000))  # CLONE_NEWUSER: nested namespace to regain caps
        """)
    out = dict(line.split(" ", 1) for line in r.stdout.strip().splitlines())
    assert out["setuid"].split()[0] == "-1" and out["setuid"].split()[1] != "0"
    assert out["mount"] == "-1"


def test_bad_isolation_setting_is_a_clean_error():
    with pytest.raises(SandboxError, match="isolation"):
        run_python("print(1)", SandboxConfig(isolation="docker"))
    with pytest.raises(SandboxError, match="require_isolation"):
        run_python("print(1)", SandboxConfig(isolation="rlimits-only", require_isolation=True))


def test_fallback_is_stated_and_warned(monkeypatch: pytest.MonkeyPatch):
    import genforge.agents.sandbox as sb
    monkeypatch.setattr(sb, "_bwrap_works", lambda: (False, "bwrap not found (apt-get install -y bubblewrap)"))
    monkeypatch.setattr(sb, "_warned", False)
    with pytest.warns(UserWarning, match="falls back to rlimits-only"):
        r = run_python("print(1)")
    assert r.ok and r.isolation == "rlimits-only" and "no namespaces" in r.notes[0]
    with pytest.raises(SandboxError, match="bwrap not found"):
        run_python("print(1)", SandboxConfig(require_isolation=True))
    with pytest.raises(SandboxError, match="bwrap not found"):
        run_python("print(1)", SandboxConfig(isolation="bwrap"))
