"""The code-execution sandbox: every escape attempt is contained, bounded in time, and cleaned up."""

from __future__ import annotations

import os
import socket
import textwrap
import time
from pathlib import Path

import pytest

from retrofit.evaluation.sandbox import Sandbox, SandboxLimits

TIMEOUT = 1.5  # wall-clock limit per program in these tests
BOUND = TIMEOUT + 5.0  # generous bound on how long any contained program may take end to end


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line mentions `text` (every sandboxed process carries its config path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sandbox-root")


@pytest.fixture(scope="module")
def sandbox(root: Path) -> Sandbox:
    return Sandbox(SandboxLimits(timeout_s=TIMEOUT, memory_bytes=512 * 1024**2,
                                 output_bytes=256 * 1024), workers=2, root_dir=root)


@pytest.fixture(autouse=True)
def no_leftovers(root: Path):
    """After every test: no sandbox process alive, no sandbox temp dir left.

    Every sandboxed process of this evaluator carries `retrofit-sandbox-<evaluator pid>` in its
    command line (bwrap's, the launcher's, and the program's forks).
    """
    yield
    marker = f"retrofit-sandbox-{os.getpid()}"
    deadline = time.monotonic() + 3.0
    while _processes_mentioning(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_mentioning(marker) == []
    assert list(root.iterdir()) == []


def run(sandbox: Sandbox, source: str):
    start = time.monotonic()
    result = sandbox.run(textwrap.dedent(source))
    elapsed = time.monotonic() - start
    assert elapsed < BOUND, f"program took {elapsed:.1f}s, limit {BOUND}s"
    return result


def test_passing_program_and_failure_kinds(sandbox):
    ok = run(sandbox, "assert sum([1, 2]) == 3\nprint('done')\n")
    assert ok.passed and ok.verdict == "passed" and ok.returncode == 0 and "done" in ok.stdout
    failed = run(sandbox, "def f():\n    return 1\nassert f() == 2\n")
    assert failed.verdict == "failed:AssertionError" and failed.category == "assertion"
    syntax = run(sandbox, "def f(:\n    pass\n")
    assert syntax.verdict == "failed:SyntaxError" and syntax.category == "syntax"
    indent = run(sandbox, "def f():\nreturn 1\n")
    assert indent.verdict == "failed:IndentationError" and indent.category == "syntax"
    name = run(sandbox, "undefined_name\n")
    assert name.verdict == "failed:NameError" and name.category == "other"
    # standard-library imports still work after the privilege drop
    libs = run(sandbox, "import math, json, hashlib, collections, itertools, fractions, re\n"
                        "assert math.gcd(12, 18) == 6\n")
    assert libs.passed, libs.stderr


def test_infinite_loop_times_out(sandbox):
    start = time.monotonic()
    result = run(sandbox, "while True:\n    pass\n")
    assert result.verdict == "timed out" and result.category == "timeout"
    assert time.monotonic() - start < TIMEOUT + 2.0


def test_sleep_times_out(sandbox):
    result = run(sandbox, "import time\ntime.sleep(60)\n")
    assert result.verdict == "timed out"


def test_cpu_limit_applies_even_without_wall_clock(root):
    limited = Sandbox(SandboxLimits(timeout_s=30, cpu_s=1), workers=1, root_dir=root)
    start = time.monotonic()
    result = limited.run("while True:\n    pass\n")
    assert result.verdict == "timed out"
    assert time.monotonic() - start < 10


def test_fork_bomb_is_contained(sandbox):
    result = run(sandbox, """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """)
    assert not result.passed
    # the autouse fixture checks that no forked process survived


def test_memory_bomb_fails_and_evaluator_memory_stays_flat(sandbox):
    before = _rss_bytes()
    big = run(sandbox, "block = bytearray(8 * 1024**3)\n")
    assert big.verdict == "failed:MemoryError"
    growing = run(sandbox, "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024**2))\n")
    # 512 MiB of address space runs out after ~30 chunks; a heavily loaded machine may hit the
    # wall clock first, which is contained too.
    assert growing.verdict in ("failed:MemoryError", "timed out")
    flood = run(sandbox, "while True:\n    print('x' * 65536)\n")
    assert not flood.passed
    assert len(flood.stdout) <= sandbox.keep_output_bytes
    assert _rss_bytes() - before < 30 * 1024**2


def test_output_flood_is_capped(sandbox):
    result = run(sandbox, """
        import sys
        for _ in range(10**6):
            sys.stdout.write('y' * 100000)
            sys.stderr.write('z' * 100000)
        """)
    assert not result.passed
    assert len(result.stdout) <= sandbox.keep_output_bytes
    assert len(result.stderr) <= sandbox.keep_output_bytes


def test_cannot_delete_a_canary_outside_its_temp_dir(sandbox, tmp_path):
    tmp_path.chmod(0o755)  # reachable by path: only the sandbox must stop the program
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    canary.chmod(0o644)
    result = run(sandbox, f"""
        import os, shutil
        os.remove({str(canary)!r})
        """)
    assert not result.passed
    assert canary.read_text() == "alive"


def test_uid_drop_alone_protects_files(root, tmp_path):
    """Without namespaces (no private /tmp), dropping root still stops the deletion."""
    if os.geteuid() != 0:
        pytest.skip("the uid drop only applies when the evaluator runs as root")
    plain = Sandbox(SandboxLimits(timeout_s=TIMEOUT), workers=1, root_dir=root, use_namespaces=False)
    assert plain.isolation.drop_uid, "running as root, a world-readable Python must exist for the drop"
    tmp_path.chmod(0o755)
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    result = plain.run(f"import os\nos.remove({str(canary)!r})\n")
    assert result.verdict == "failed:PermissionError"
    assert canary.read_text() == "alive"


def test_no_network(sandbox):
    if not sandbox.isolation.network:
        pytest.skip("network namespaces unavailable here (the sandbox logged a warning)")
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        result = run(sandbox, f"""
            import socket
            connection = socket.create_connection(("127.0.0.1", {port}), timeout=1)
            connection.sendall(b"escaped")
            """)
        assert result.verdict in ("failed:ConnectionRefusedError", "failed:OSError")
        with pytest.raises(socket.timeout):
            server.accept()
        outside = run(sandbox, "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n")
        assert not outside.passed
    finally:
        server.close()


def test_early_exit_cannot_pass(sandbox):
    for exit_call in ("import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit",
                      "exit()", "import sys\nsys.stdout.flush()\nos_exit = __import__('os')._exit\nos_exit(0)"):
        result = run(sandbox, f"def check():\n    assert False\n{exit_call}\ncheck()\n")
        assert not result.passed, exit_call
        assert result.verdict in ("failed:SystemExit", "failed:EarlyExit"), (exit_call, result.verdict)


def test_forked_child_cannot_pass_for_its_parent(sandbox):
    result = run(sandbox, """
        import os
        if os.fork() != 0:
            os._exit(0)
        """)
    assert not result.passed


def test_setsid_daemon_is_killed(sandbox):
    result = run(sandbox, """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                while True:
                    time.sleep(0.1)
            os._exit(0)
        time.sleep(0.2)
        """)
    assert result.passed  # the program itself finished normally; its daemon must not survive it


def test_program_that_leaves_the_group_is_killed(sandbox):
    result = run(sandbox, "import os, time\nos.setsid()\ntime.sleep(60)\n")
    assert result.verdict == "timed out"


def test_environment_is_minimal(sandbox, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws_secret_value")
    result = run(sandbox, "import os\nprint(sorted(os.environ.items()))\n")
    assert result.passed
    assert "secret_value" not in result.stdout
    assert "HF_TOKEN" not in result.stdout


def test_working_dir_is_private_and_removed(sandbox, root):
    result = run(sandbox, """
        import os
        with open('scratch.txt', 'w') as handle:
            handle.write('x')
        os.makedirs('deep/locked')
        os.chmod('deep', 0o500)
        print(os.getcwd())
        """)
    assert result.passed, result.stderr
    # the autouse fixture checks the directory is gone


def test_parallel_runs_keep_order(sandbox):
    sources = [f"assert {i} % 3 != 0\n" for i in range(12)]
    results = sandbox.run_many(sources)
    assert [r.passed for r in results] == [i % 3 != 0 for i in range(12)]


def test_token_is_on_disk_nowhere_and_setup_channels_are_closed(root):
    """Even without bubblewrap and as the evaluator's own uid, a program finds no configuration
    file, and holds no descriptor but stdio and its result pipe (the status pipe and the lifeline
    were closed before its first statement)."""
    import dataclasses

    plain = Sandbox(SandboxLimits(timeout_s=TIMEOUT), workers=1, root_dir=root, use_namespaces=False)
    plain.isolation = dataclasses.replace(plain.isolation, drop_uid=False)
    for sandbox in (plain, Sandbox(SandboxLimits(timeout_s=TIMEOUT), workers=1, root_dir=root)):
        result = sandbox.run(textwrap.dedent("""
            import os, stat
            fds = sorted(int(fd) for fd in os.listdir('/proc/self/fd'))
            arguments = open('/proc/self/cmdline', 'rb').read().split(b'\\0')
            assert not any(os.path.exists(a) for a in arguments if a.endswith(b'.marshal')), arguments
            def is_pipe(fd):
                try:
                    return stat.S_ISFIFO(os.fstat(fd).st_mode)
                except OSError:  # the descriptor listdir itself used
                    return False
            pipes = [fd for fd in fds[3:] if is_pipe(fd)]
            assert len(pipes) == 1, ('more than the result pipe is open', fds)
            assert os.readlink('/proc/self/fd/0') == '/dev/null'
            """))
        assert result.passed, (sandbox.isolation.mechanism, result.stderr)


def test_working_dir_lies_on_the_private_tmp(sandbox):
    """The cwd is a fresh directory on a private tmpfs, and /tmp holds nothing else."""
    if not sandbox.isolation.private_tmp:
        pytest.skip("no private /tmp here (the sandbox logged a warning)")
    result = run(sandbox, """
        import os
        assert os.stat('.').st_dev == os.stat('/tmp').st_dev, 'cwd is not on the private tmpfs'
        assert os.listdir('/tmp') == [os.path.basename(os.getcwd())], os.listdir('/tmp')
        assert os.listdir('.') == []
        """)
    assert result.passed, result.stderr


def test_a_sandbox_that_cannot_start_is_loud_not_unisolated(root):
    """A bubblewrap that fails at run time raises SandboxSetupError (the program never ran, never
    runs without isolation), naming bwrap's own message."""
    import dataclasses

    from retrofit.evaluation.sandbox import SandboxSetupError

    broken = Sandbox(SandboxLimits(timeout_s=TIMEOUT), workers=1, root_dir=root)
    if not broken.isolation.isolated:
        pytest.skip("no bubblewrap here (the sandbox logged a warning)")
    fake = root.parent / "fake-bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: Creating new namespace failed: nope' >&2\nexit 1\n")
    fake.chmod(0o755)
    broken.isolation = dataclasses.replace(broken.isolation, bwrap=str(fake))
    with pytest.raises(SandboxSetupError, match="before the program started: bwrap: Creating new"):
        broken.run("open('/tmp/ran', 'w')\n")


def test_launcher_setup_failure_raises_once_with_its_reason(root):
    """A failure inside the launcher's setup (here an impossible rlimit) comes on the status pipe
    and raises SandboxSetupError naming it, instead of a verdict."""
    from retrofit.evaluation.sandbox import SandboxSetupError

    class BadLimits(SandboxLimits):
        def rlimits(self, memory_mode="rlimit-as"):
            return {**super().rlimits(memory_mode), "RLIMIT_NOFILE": (64, 32)}  # soft > hard

    sandbox = Sandbox(SandboxLimits(timeout_s=TIMEOUT), workers=1, root_dir=root)
    sandbox.limits = BadLimits(timeout_s=TIMEOUT)
    with pytest.raises(SandboxSetupError, match="launcher: ValueError"):
        sandbox.run("pass\n")


def test_isolation_reports_what_is_in_force(monkeypatch, caplog, root):
    """Where bubblewrap cannot run, the isolation says so and warns loudly; with
    require_isolation=True the sandbox refuses to start."""
    from retrofit.evaluation import sandbox as sandbox_module

    found = Sandbox(SandboxLimits(timeout_s=TIMEOUT, memory_bytes=1024**3, processes=8), workers=1,
                    root_dir=root)
    described = found.isolation.describe()
    assert described["mechanism"] in ("bubblewrap", "none")
    assert described["memory_limit"]["budget_bytes"] == 1024**3
    if described["memory_limit"]["mode"] == "rlimit-as":
        assert described["memory_limit"]["per_process_bytes"] * 8 <= 1024**3
    monkeypatch.setattr(sandbox_module, "find_bwrap", lambda: "/bin/false")
    degraded = sandbox_module.detect_isolation(root_dir=str(root))
    assert not degraded.isolated and not degraded.network and not degraded.private_tmp
    assert degraded.describe()["mechanism"] == "none"
    assert degraded.describe()["filesystem_isolated"] is False
    assert "SANDBOX WARNING" in caplog.text and "WITHOUT filesystem" in caplog.text
    assert "bubblewrap with" in degraded.warning  # says why
    with pytest.raises(sandbox_module.SandboxSetupError, match="isolation required"):
        Sandbox(workers=1, root_dir=root, require_isolation=True)
