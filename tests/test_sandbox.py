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
    """After every test: no sandbox process alive, no sandbox temp dir left."""
    yield
    deadline = time.monotonic() + 3.0
    while _processes_mentioning(str(root)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_mentioning(str(root)) == []
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


def _userns_prefix() -> tuple[str, ...]:
    """`unshare --user --map-root-user` (a user namespace, no mount namespace), or skip the test."""
    import shutil
    import subprocess

    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare here")
    prefix = (unshare, "--user", "--map-root-user")
    if subprocess.run([*prefix, "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("user namespaces unavailable here")
    return prefix


def test_config_file_with_the_token_is_gone_before_the_program_runs(root):
    """Even a program running as the evaluator's own uid (no uid drop) finds no token on disk."""
    import dataclasses

    plain = Sandbox(SandboxLimits(timeout_s=TIMEOUT), workers=1, root_dir=root, use_namespaces=False)
    plain.isolation = dataclasses.replace(plain.isolation, drop_uid=False)
    result = plain.run(textwrap.dedent("""
        import os
        arguments = open('/proc/self/cmdline', 'rb').read().split(b'\\0')
        config = [a for a in arguments if a.endswith(b'config.marshal')]
        assert len(config) == 1, arguments
        assert not os.path.exists(config[0]), 'the launcher config (pass token) is still on disk'
        """))
    assert result.passed, result.stderr


def test_working_dir_lies_on_the_private_tmp(sandbox):
    """The cwd is not the evaluator-made directory on the real /tmp (reachable through `..`)."""
    if not sandbox.isolation.private_tmp:
        pytest.skip("no private /tmp here (the sandbox logged a warning)")
    result = run(sandbox, """
        import os
        assert os.stat('.').st_dev == os.stat('/tmp').st_dev, 'cwd is not on the private tmpfs'
        assert os.listdir('/tmp') == [os.path.basename(os.getcwd())], os.listdir('/tmp')
        assert os.listdir('.') == []
        """)
    assert result.passed, result.stderr


def test_failed_private_tmp_is_loud_not_a_shared_tmp(root):
    """Claimed private /tmp without a mount namespace: a setup error, never a silent shared /tmp."""
    import dataclasses

    from retrofit.evaluation.sandbox import SandboxSetupError

    prefix = _userns_prefix()  # a user namespace without a mount namespace: mount() must fail
    broken = Sandbox(SandboxLimits(timeout_s=TIMEOUT), workers=1, root_dir=root)
    broken.isolation = dataclasses.replace(
        broken.isolation, unshare_command=(*prefix, "--net", "--pid", "--fork", "--kill-child"),
        drop_uid=False, private_tmp=True)
    with pytest.raises(SandboxSetupError, match="mount namespace"):
        broken.run("pass\n")


def test_launcher_checks_the_tmpfs_mount(tmp_path):
    """A mount() that fails raises (the return value is checked), naming the path and errno."""
    import subprocess
    import sys

    from retrofit.evaluation.sandbox import LAUNCHER

    prefix = _userns_prefix()  # root of a user namespace may not mount in the initial mount namespace
    target = tmp_path / "target"
    target.mkdir()
    code = (f"import sys; sys.path.insert(0, {str(LAUNCHER.parent)!r}); import sandbox_launcher; "
            f"sandbox_launcher._mount_private_tmp([{str(target)!r}], 1 << 20)")
    done = subprocess.run([*prefix, sys.executable, "-I", "-S", "-c", code], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "SandboxSetupError" in done.stderr and f"mount tmpfs on {target} failed" in done.stderr


def test_isolation_reports_private_tmp_honestly(monkeypatch, caplog):
    """The probe mounts a tmpfs in the namespace; where that fails private_tmp is False, loudly."""
    import subprocess

    from retrofit.evaluation import sandbox as sandbox_module

    found = sandbox_module.detect_isolation()
    if found.unshare_command is None:
        pytest.skip("no namespaces here")
    assert found.private_tmp  # the probe mounted a tmpfs over /tmp inside the namespace
    host = sandbox_module._mount_namespace() or ""
    # The probe itself: without a mount namespace of its own it refuses (exit 3), never mounts.
    no_mount_namespace = (*_userns_prefix(), "--net", "--pid", "--fork")
    probe = subprocess.run([*no_mount_namespace, found.python, "-I", "-S", "-c", sandbox_module._PROBE,
                            host], capture_output=True, timeout=60, check=False)
    assert probe.returncode == sandbox_module._PROBE_NO_TMPFS, probe.stderr
    # Where the probe cannot mount, the isolation says so and warns.
    monkeypatch.setattr(sandbox_module, "_PROBE", "import sys; sys.exit(3)")
    degraded = sandbox_module.detect_isolation()
    assert degraded.network and degraded.pid and not degraded.private_tmp
    assert degraded.describe()["private_tmp"] is False
    assert "SEE THE REAL /tmp" in caplog.text
