"""The sandbox's life around its programs: leftovers of killed evaluators, interrupts, cgroups."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from retrofit.evaluation import sandbox as sandbox_module
from retrofit.evaluation.sandbox import DIR_PREFIX, MEMORY_CGROUP, Sandbox, SandboxLimits

REPO = Path(__file__).resolve().parents[1]


def _processes_with(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _wait_until_gone(text: str, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while _processes_with(text) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _processes_with(text)


def test_stale_dirs_of_dead_evaluators_are_removed(tmp_path):
    """Only `retrofit-sandbox-<pid>.<start>-*` dirs of this uid whose process is gone are removed."""
    finished = subprocess.Popen(["sleep", "0"])
    dead_tag = f"{finished.pid}.{sandbox_module._start_time(finished.pid)}"
    finished.wait()
    alive_tag = sandbox_module._owner_tag()
    names = {
        "dead": f"{DIR_PREFIX}{dead_tag}-abc",
        "pid reused": f"{DIR_PREFIX}{os.getpid()}.1-def",  # this pid, but not this process
        "alive": f"{DIR_PREFIX}{alive_tag}-ghi",
        "legacy": f"{DIR_PREFIX}x1y2z3q4",  # no owner in its name: left alone
    }
    for name in names.values():
        (tmp_path / name / "cwd").mkdir(parents=True)
        (tmp_path / name / "cwd" / "locked").mkdir(mode=0o500)
    if os.geteuid() == 0:
        foreign = tmp_path / f"{DIR_PREFIX}{dead_tag}-foreign"
        foreign.mkdir()
        os.chown(foreign, 12345, 12345)  # another user's: not ours to remove
    Sandbox(SandboxLimits(timeout_s=1.0), workers=1, root_dir=tmp_path)
    left = sorted(path.name for path in tmp_path.iterdir())
    expected = sorted([names["alive"], names["legacy"]] +
                      ([f"{DIR_PREFIX}{dead_tag}-foreign"] if os.geteuid() == 0 else []))
    assert left == expected


def test_killed_fallback_evaluator_leaves_dirs_the_next_sandbox_removes(tmp_path):
    """Without bubblewrap the working dirs are on disk: SIGKILL of the evaluator leaves them (and
    its launchers die with it); the next Sandbox removes them."""
    driver = (
        "import sys; from retrofit.evaluation.sandbox import Sandbox, SandboxLimits\n"
        "box = Sandbox(SandboxLimits(timeout_s=60), workers=2, root_dir=sys.argv[1], "
        "use_namespaces=False)\n"
        "box.run_many(['import time; time.sleep(60)'] * 2)\n")
    process = subprocess.Popen([sys.executable, "-c", driver, str(tmp_path)],
                               env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.DEVNULL)
    marker = f"{DIR_PREFIX}{process.pid}"
    deadline = time.monotonic() + 60
    while len(_processes_with(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(list(tmp_path.glob(DIR_PREFIX + "*"))) == 2
    process.kill()
    process.wait()
    assert _wait_until_gone(marker, 2.0) == []
    assert len(list(tmp_path.glob(DIR_PREFIX + "*"))) == 2  # what a killed run leaves
    Sandbox(SandboxLimits(timeout_s=1.0), workers=1, root_dir=tmp_path)
    assert list(tmp_path.glob(DIR_PREFIX + "*")) == []


@pytest.fixture(scope="module")
def sleepy() -> Sandbox:
    return Sandbox(SandboxLimits(timeout_s=20), workers=2)


def test_interrupt_kills_running_programs_and_cancels_the_rest(sleepy):
    """KeyboardInterrupt (SIGINT) during run_many: the running programs are killed, queued ones
    never start, and the interrupt propagates at once."""
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    start = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        sleepy.run_many(["import time\ntime.sleep(30)\n"] * 6)
    timer.join()
    assert time.monotonic() - start < 5.0
    assert _wait_until_gone(f"{DIR_PREFIX}{os.getpid()}", 2.0) == []
    assert sleepy.run("pass\n").passed  # the sandbox still works afterwards


def test_leaving_imap_early_kills_its_programs(sleepy):
    results = sleepy.imap(["pass\n", "import time\ntime.sleep(30)\n", "import time\ntime.sleep(30)\n"])
    index, first = next(results)
    assert (index, first.passed) == (0, True)
    start = time.monotonic()
    results.close()
    assert time.monotonic() - start < 3.0
    assert _wait_until_gone(f"{DIR_PREFIX}{os.getpid()}", 2.0) == []


def test_memory_cgroup_detection_says_why_not(tmp_path):
    """No usable memory controller: None and a reason (the sandbox then uses RLIMIT_AS)."""
    proc = tmp_path / "proc"
    mount = tmp_path / "cgroup"
    proc.mkdir()
    mount.mkdir()
    (proc / "mountinfo").write_text(f"30 23 0:26 / {mount} rw - cgroup2 cgroup2 rw\n")
    (proc / "cgroup").write_text("0::/\n")
    (mount / "cgroup.controllers").write_text("cpu io pids\n")
    cgroups, note = sandbox_module._MemoryCgroups.detect(proc)
    assert cgroups is None and "no memory controller" in note
    (proc / "mountinfo").write_text("")
    assert sandbox_module._MemoryCgroups.detect(proc)[0] is None


@pytest.mark.parametrize("use_namespaces", [True, False], ids=["bubblewrap", "fallback"])
def test_memory_cgroup_budget_is_written_and_the_program_moved_in(tmp_path, use_namespaces):
    """With cgroups (here a plain directory standing in for cgroupfs): the slot's leaf gets
    memory.max = the budget, the sandbox's pid goes into cgroup.procs before the program starts
    (bwrap waits on --block-fd, the fallback's launcher at its gate), and each process may then
    use the whole budget."""
    budget = 300 * 1024**2
    box = Sandbox(SandboxLimits(timeout_s=10, memory_bytes=budget, processes=4), workers=1,
                  use_namespaces=use_namespaces, root_dir=tmp_path)
    parent = tmp_path / "cg"
    parent.mkdir()
    box._cgroups = sandbox_module._MemoryCgroups(parent)
    box.isolation = dataclasses.replace(box.isolation, memory_mode=MEMORY_CGROUP,
                                        memory_per_process_bytes=budget)
    result = box.run("import resource\nprint(resource.getrlimit(resource.RLIMIT_AS)[0])\n")
    assert result.passed, result.stderr
    assert int(result.stdout.split()[0]) == budget
    leaf = parent / "slot0"
    assert (leaf / "memory.max").read_text() == str(budget)
    assert int((leaf / "cgroup.procs").read_text()) > 0
