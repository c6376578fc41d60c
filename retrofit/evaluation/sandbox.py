"""Run untrusted Python programs (model-written code) in isolated, resource-limited subprocesses.

One program = one process tree, started by exec from a clean launcher:

    evaluator thread --Popen--> [unshare --net --pid --fork --mount-proc --kill-child]
                                  --> python -I -S sandbox_launcher.py CONFIG   (pid 1 of a new
                                      pid namespace: rlimits, private /tmp, uid drop, then the program)

* **exec, not fork-from-threads.** `subprocess.Popen` with no `preexec_fn` forks (vfork) and execs in
  C (`_posixsubprocess`) without running any Python code in the child, so it is safe from the
  evaluator's worker threads; everything that must happen in the child (rlimits, uid drop, mounts)
  happens in the freshly exec'd launcher instead. The worker threads only block in `wait()`, so a
  thread pool with one thread per core is enough to keep every core busy.
* **own session / process group** (`start_new_session=True`); a wall-clock timeout SIGKILLs the group.
  Inside a pid namespace the launcher is pid 1: when it dies the kernel kills every process left in
  the namespace, including `setsid` daemons that left the group.
* **rlimits**: CPU seconds, address space, file size (which also caps the stdout/stderr files),
  open files, processes, no core dumps.
* **no network** (empty network namespace: only a down loopback), **no view of other processes**
  (pid namespace with its own /proc), **private /tmp, /var/tmp, /dev/shm** (tmpfs in a private mount
  namespace; the program's working directory is a fresh one on that private /tmp, so not even `..`
  leads back to the real one), **minimal environment** (no tokens or secrets), a **temporary
  working directory** removed afterwards (without namespaces: `cwd/` inside the evaluator's
  mode-0700 control directory, which holds the program and its captured output).
* **unprivileged uid** when the evaluator runs as root: root ignores RLIMIT_NPROC and file
  permissions. Each worker slot gets its own uid (`uid_base + slot`), so the per-uid process limit of
  one program never starves another, and programs cannot signal each other.
* **pass = exit 0 and the pass token.** The launcher writes a fresh random token to stdout only after
  the program returned normally; `sys.exit(0)` / `os._exit(0)` before the asserts therefore fail. The
  launcher deletes its configuration file (which carries the token) as soon as it has read it, so
  the token is not on disk while the program runs. It does stay in the launcher's memory, which the
  program shares: the token guards against accidental early exits, not against code written to
  hunt for it (walking frames or the garbage collector finds it).
* **setup failures are loud.** A private /tmp that cannot be mounted, an rlimit or uid drop that
  fails: the launcher reports it (with the token, so a program cannot fake it) and `run` raises
  :class:`SandboxSetupError` instead of scoring the program as failed.

Where namespaces are unavailable (no `unshare`, no privileges for it) the sandbox still applies
rlimits, the session, the uid drop (as root) and the timeout, and logs a loud warning once per
`Sandbox`, since such programs can then use the network and a `setsid` daemon can outlive its group.
"""

from __future__ import annotations

import concurrent.futures
import logging
import marshal
import os
import queue
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("sandbox_launcher.py")
PASSED = "passed"
TIMED_OUT = "timed out"
_SETUP_FAILED_MARK = "SandboxSetupError"  # first word of the launcher's setup-failure report


class SandboxSetupError(RuntimeError):
    """The launcher could not set a program's sandbox up (e.g. the private /tmp mount failed)."""


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

    timeout_s: wall-clock seconds before the whole process group is killed ("timed out").
    cpu_s: RLIMIT_CPU (defaults to the wall timeout rounded up, plus one second).
    memory_bytes: RLIMIT_AS, address space of each process.
    output_bytes: RLIMIT_FSIZE; caps stdout/stderr files and any file the program writes.
    open_files: RLIMIT_NOFILE.  processes: RLIMIT_NPROC for the program's uid.
    tmpfs_bytes: size of each private tmpfs (/tmp, /var/tmp, /dev/shm) inside the namespace.
    """

    timeout_s: float = 3.0
    cpu_s: int | None = None
    memory_bytes: int = 2 * 1024**3
    output_bytes: int = 1024**2
    open_files: int = 64
    processes: int = 32
    tmpfs_bytes: int = 32 * 1024**2

    def rlimits(self) -> dict[str, tuple[int, int]]:
        """The `resource.RLIMIT_*` names and (soft, hard) values the launcher applies.

        CPU: SIGXCPU at the soft limit (reported as a timeout), SIGKILL one second later.
        """
        cpu = int(self.cpu_s if self.cpu_s is not None else int(self.timeout_s) + 2)
        fixed = {
            "RLIMIT_AS": int(self.memory_bytes),
            "RLIMIT_FSIZE": int(self.output_bytes),
            "RLIMIT_NOFILE": int(self.open_files),
            "RLIMIT_NPROC": int(self.processes),
            "RLIMIT_CORE": 0,
        }
        return {"RLIMIT_CPU": (cpu, cpu + 1), **{name: (value, value) for name, value in fixed.items()}}


@dataclass(frozen=True)
class Isolation:
    """What this machine allows: namespaces via `unshare`, uid drop, private /tmp."""

    unshare_command: tuple[str, ...] | None  # prefix to run the launcher under; None = no namespaces
    network: bool  # empty network namespace
    pid: bool  # own pid namespace (+ own /proc)
    drop_uid: bool  # evaluator is root and programs run as an unprivileged uid
    private_tmp: bool  # tmpfs over /tmp, /var/tmp, /dev/shm
    python: str  # interpreter that runs the launcher and the program

    def describe(self) -> dict[str, object]:
        """JSON-ready summary for result files."""
        return {
            "namespaces": " ".join(self.unshare_command) if self.unshare_command else None,
            "network_isolated": self.network,
            "pid_isolated": self.pid,
            "unprivileged_uid": self.drop_uid,
            "private_tmp": self.private_tmp,
            "python": self.python,
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
        """Exit status 0 and the pass token printed after the program's last statement."""
        return self.verdict == PASSED

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        return asdict(self)


def _world_accessible(path: Path, *, need_read: bool) -> bool:
    """True if a uid that is neither owner nor group can reach (and read) `path`."""
    path = path.resolve()
    for parent in list(path.parents)[::-1]:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
    mode = os.stat(path).st_mode
    return bool(mode & stat.S_IROTH) if need_read else True


def _stdlib_dir(python: str) -> Path | None:
    try:
        out = subprocess.run(
            [python, "-I", "-S", "-c", "import os; print(os.path.dirname(os.__file__))"],
            capture_output=True, text=True, timeout=20, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out.stdout.strip())


def _python_usable_by_others(python: str) -> bool:
    """The interpreter binary and its standard library are readable by an unprivileged uid."""
    try:
        if not _world_accessible(Path(python), need_read=True):
            return False
        stdlib = _stdlib_dir(python)
        return stdlib is not None and _world_accessible(stdlib, need_read=True)
    except OSError:
        return False


def _base_python() -> str:
    """The real interpreter behind the current one (a venv's `bin/python` is a symlink)."""
    return str(Path(getattr(sys, "_base_executable", sys.executable) or sys.executable).resolve())


def _mount_namespace() -> str | None:
    """This process's mount namespace ("mnt:[4026531841]"); None where /proc does not tell."""
    try:
        return os.readlink("/proc/self/ns/mnt")
    except OSError:
        return None


# Probe run under the namespace prefix: exit 0 if it is in a mount namespace of its own (argv[1] is
# the evaluator's) and may mount a tmpfs over /tmp there (as the launcher will), else 3.
_PROBE_NO_TMPFS = 3
_PROBE = (
    "import ctypes, os, sys\n"
    "if os.readlink('/proc/self/ns/mnt') == sys.argv[1]: sys.exit(3)\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "sys.exit(0 if libc.mount(b'tmpfs', b'/tmp', b'tmpfs', 0, b'size=65536,mode=1777') == 0 else 3)\n"
)


def detect_isolation(python: str | None = None, *, use_namespaces: bool = True) -> Isolation:
    """Probe what isolation works here (runs `unshare ... python` once, ~30 ms): namespaces, and
    whether a private tmpfs can be mounted in them (`private_tmp`).

    python: interpreter for programs; default the current base interpreter, or, when running as root,
    the first of it, `/usr/bin/python3`, `python3` on PATH whose standard library an unprivileged uid
    can read (a pyenv under /root is not).
    """
    is_root = os.geteuid() == 0
    candidates = [python] if python else [_base_python(), "/usr/bin/python3", shutil.which("python3")]
    candidates = [c for c in candidates if c and Path(c).exists()]
    if not candidates:
        raise FileNotFoundError(f"no Python interpreter found for the sandbox (tried {python!r})")
    chosen = candidates[0]
    drop_uid = False
    if is_root:
        usable = [c for c in candidates if _python_usable_by_others(c)]
        if usable:
            chosen, drop_uid = str(Path(usable[0]).resolve()), True
        else:
            logger.warning(
                "SANDBOX WARNING: running as root but no Python interpreter (%s) is readable by an "
                "unprivileged uid; programs will run AS ROOT (file permissions and process limits "
                "are not enforced). Pass a world-readable interpreter with `python=`.",
                ", ".join(candidates),
            )
    unshare = shutil.which("unshare") if use_namespaces else None
    prefixes: list[tuple[str, ...]] = []
    if unshare:
        base = (unshare, "--net", "--pid", "--fork", "--mount-proc", "--kill-child")
        prefixes = [base] if is_root else [(unshare, "--user", "--map-root-user") + base[1:]]
    host_namespace = _mount_namespace() or ""
    for prefix in prefixes:
        try:
            probe = subprocess.run([*prefix, chosen, "-I", "-S", "-c", _PROBE, host_namespace],
                                   capture_output=True, timeout=20, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode in (0, _PROBE_NO_TMPFS):
            private_tmp = probe.returncode == 0
            if not private_tmp:
                logger.warning(
                    "SANDBOX WARNING: `%s` gives no private mount namespace in which a tmpfs can be "
                    "mounted: sandboxed programs SEE THE REAL /tmp, /var/tmp and /dev/shm (network "
                    "and pid isolation still apply).", " ".join(prefix))
            return Isolation(prefix, network=True, pid=True, drop_uid=drop_uid,
                             private_tmp=private_tmp, python=chosen)
    logger.warning(
        "SANDBOX WARNING: Linux namespaces are unavailable (`unshare --net --pid` failed or is "
        "missing): sandboxed programs CAN USE THE NETWORK and see other processes, and a daemon that "
        "calls setsid() can outlive its time limit. Only rlimits%s and the timeout apply.",
        " + the uid drop" if drop_uid else "",
    )
    return Isolation(None, network=False, pid=False, drop_uid=drop_uid, private_tmp=False,
                     python=chosen)


def _remove_tree(path: Path) -> None:
    """rmtree that also removes entries the program made read-only."""

    def make_writable_and_retry(function, failed_path, _exc_info):
        try:
            os.chmod(os.path.dirname(failed_path), 0o700)
            os.chmod(failed_path, 0o700)
        except OSError:
            pass
        function(failed_path)

    if path.exists():
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=make_writable_and_retry)
        else:
            shutil.rmtree(path, onerror=make_writable_and_retry)


def _read_capped(path: Path, limit: int) -> str:
    with open(path, "rb") as handle:
        data = handle.read(limit)
    return data.decode("utf-8", errors="replace")


def _tail_contains(path: Path, needle: bytes, tail_bytes: int = 4096) -> bool:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - tail_bytes))
        return needle in handle.read()


class Sandbox:
    """Runs programs with `run(source)` / `run_many(sources)`; safe to call from many threads.

    workers: parallel programs in `run_many` (default: the CPU count).
    uid_base: first unprivileged uid (slot i runs as uid_base + i) when the evaluator is root;
        default a random block of 1024 uids above 2,000,000, so that sandboxes in other processes
        (accelerate ranks, parallel test sessions) never share a uid, its process limit or the
        timeout's kill-by-uid sweep.
    keep_output_bytes: how much of stdout/stderr to return in each result.
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
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.workers = max(1, int(workers or os.cpu_count() or 1))
        self.isolation = detect_isolation(python, use_namespaces=use_namespaces)
        if self.workers > 1024:
            raise ValueError(f"workers={self.workers}: at most 1024 parallel programs per sandbox")
        self.uid_base = int(uid_base) if uid_base is not None else \
            2_000_000 + 1024 * secrets.randbelow(1_000_000)
        self.keep_output_bytes = int(keep_output_bytes)
        self.root_dir = str(root_dir) if root_dir is not None else None
        self._host_mount_namespace = _mount_namespace()
        self._slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.workers):
            self._slots.put(slot)

    # ------------------------------------------------------------------ one program
    def run(self, source: str, *, timeout_s: float | None = None) -> ExecutionResult:
        """Execute one Python program. Blocks until it finished or was killed."""
        slot = self._slots.get()
        try:
            return self._run_in_slot(source, slot, timeout_s)
        finally:
            self._slots.put(slot)

    def _run_in_slot(self, source: str, slot: int, timeout_s: float | None) -> ExecutionResult:
        limits = self.limits
        timeout = float(timeout_s if timeout_s is not None else limits.timeout_s)
        uid = self.uid_base + slot if self.isolation.drop_uid else None
        # control: launcher config, program, captured output (evaluator only, mode 0700);
        # workdir: the program's cwd, owned by its uid.
        control = Path(tempfile.mkdtemp(prefix="retrofit-sandbox-", dir=self.root_dir))
        workdir = control / "cwd"
        try:
            workdir.mkdir()
            if uid is not None:
                os.chown(workdir, uid, uid)
            token = secrets.token_hex(16)
            program_path = control / "program.py"
            program_path.write_text(source, encoding="utf-8")
            config = {
                "token": token,
                "program_path": str(program_path),
                "result_path": str(control / "result"),
                "workdir": str(workdir),
                "rlimits": limits.rlimits(),
                "uid": uid,
                "private_tmp": self.isolation.private_tmp,
                "tmpfs_bytes": limits.tmpfs_bytes,
                "parent_death_signal": self.isolation.unshare_command is not None,
                # the launcher never mounts in this namespace (the shared /tmp) by mistake
                "host_mount_namespace": self._host_mount_namespace,
            }
            config_path = control / "config.marshal"
            config_path.write_bytes(marshal.dumps(config))
            command = [self.isolation.python, "-I", "-S", str(LAUNCHER), str(config_path)]
            if self.isolation.unshare_command:
                command = [*self.isolation.unshare_command, *command]
            stdout_path, stderr_path = control / "stdout", control / "stderr"
            start = time.monotonic()
            with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
                process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=str(workdir),
                    env=dict(_SANDBOX_ENV), start_new_session=True, close_fds=True,
                )
                timed_out = False
                try:
                    returncode = process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    self._kill_group(process.pid)
                    returncode = process.wait()
                finally:
                    # Whatever happened, nothing of this program may survive (group + leftovers).
                    self._kill_group(process.pid)
            duration = time.monotonic() - start
            if uid is not None and (timed_out or not self.isolation.pid):
                # A program that called setsid() in its own process left our group; without a pid
                # namespace its daemons outlive it. The slot's uid finds them all.
                self._kill_uid(uid)
            return self._verdict(returncode, timed_out, duration, token, control)
        finally:
            _remove_tree(control)

    @staticmethod
    def _kill_group(pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    @staticmethod
    def _kill_uid(uid: int) -> None:
        """Without a pid namespace: SIGKILL every process still running as the slot's uid."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid == uid:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue

    def _verdict(self, returncode: int, timed_out: bool, duration: float, token: str,
                 control: Path) -> ExecutionResult:
        stdout = _read_capped(control / "stdout", self.keep_output_bytes)
        stderr = _read_capped(control / "stderr", self.keep_output_bytes)
        result_path = control / "result"
        exception = None
        category = "other"
        if result_path.exists():
            # "<ExceptionName> <category>", written by the launcher when the program raised, or
            # "SandboxSetupError setup <token> <message>" when it never got to run the program.
            report = result_path.read_bytes()[:1000].decode("utf-8", errors="replace")
            words = report.split(maxsplit=3)
            if words[:3] == [_SETUP_FAILED_MARK, "setup", token]:
                detail = words[3] if len(words) > 3 else "no detail"
                raise SandboxSetupError(
                    f"the sandbox could not be set up for a program ({detail}); isolation: "
                    f"{self.isolation.describe()}. The program did not run; nothing was scored")
            if len(words) >= 2 and words[0].isidentifier():
                exception, category = words[0], words[1]
        cpu_killed = returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU) or category == "timeout"
        if timed_out or cpu_killed:
            verdict, category = TIMED_OUT, "timeout"
        elif returncode == 0 and _tail_contains(control / "stdout", token.encode()):
            verdict, category = PASSED, "passed"
        elif exception:
            verdict = f"failed:{exception}"
        elif returncode == 0:
            verdict = "failed:EarlyExit"  # exit status 0 without the token: os._exit(0) mid-program
        elif returncode is not None and (returncode < 0 or returncode > 128):
            number = -returncode if returncode < 0 else returncode - 128
            try:
                verdict = f"failed:{signal.Signals(number).name}"
            except ValueError:
                verdict = f"failed:signal{number}"
        else:
            verdict = f"failed:exit{returncode}"
        return ExecutionResult(verdict=verdict, category=category, returncode=returncode,
                               duration_s=duration, stdout=stdout, stderr=stderr, exception=exception)

    # ------------------------------------------------------------------ many programs
    def run_many(
        self,
        sources: Iterable[str],
        *,
        timeout_s: float | None = None,
        on_result: Callable[[int, ExecutionResult], None] | None = None,
    ) -> list[ExecutionResult]:
        """Run programs `workers` at a time; results in input order.

        on_result(index, result) is called (from a worker thread, serialised by a lock) as each
        program finishes, e.g. to update a progress bar.
        """
        sources = list(sources)
        results: list[ExecutionResult | None] = [None] * len(sources)
        lock = threading.Lock()
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures = {pool.submit(self.run, source, timeout_s=timeout_s): index
                       for index, source in enumerate(sources)}
            for future in concurrent.futures.as_completed(futures):
                index = futures[future]
                results[index] = future.result()
                if on_result is not None:
                    with lock:
                        on_result(index, results[index])
        return [result for result in results if result is not None]

    def imap(self, sources: Sequence[str], *, timeout_s: float | None = None
             ) -> Iterator[tuple[int, ExecutionResult]]:
        """Yield (index, result) as programs finish (completion order)."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures = {pool.submit(self.run, source, timeout_s=timeout_s): index
                       for index, source in enumerate(sources)}
            for future in concurrent.futures.as_completed(futures):
                yield futures[future], future.result()


__all__ = [
    "PASSED",
    "TIMED_OUT",
    "ExecutionResult",
    "Isolation",
    "Sandbox",
    "SandboxLimits",
    "SandboxSetupError",
    "detect_isolation",
]
