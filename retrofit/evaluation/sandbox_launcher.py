"""Sandbox launcher: the first Python code that runs inside a sandboxed process.

Started by `retrofit.evaluation.sandbox` as `python -I -S sandbox_launcher.py CONFIG`, usually
under `unshare --net --pid --fork --mount-proc --kill-child`. Standard library only, no imports from
`retrofit`, because it runs in a fresh interpreter that may not see the project's virtualenv. It
runs once per program, so it imports only what is cheap: the configuration is a `marshal` file (no
json/re import) and tracebacks go through the C-level `sys.__excepthook__` (no traceback import).

Order of operations (while still privileged, then not):
1. read the run configuration (and the pass token) and delete the configuration file at once, so
   the token is on disk nowhere the program could look, even where it runs as the evaluator's own
   uid (the non-root case, in a user namespace);
2. open the result file, change into the evaluator-made working directory, read the source;
3. inside a private mount namespace, mount small private tmpfs over /tmp, /var/tmp and /dev/shm (a
   failed mount stops the run with a setup error, never a silently shared /tmp) and change into a
   fresh directory on the private /tmp, so the program sees neither the evaluator's files nor
   other programs' working directories, not even through `..` of its working directory;
4. apply resource limits (CPU seconds, address space, file size, open files, processes, no core);
5. drop to the unprivileged uid/gid (root ignores RLIMIT_NPROC and file permissions);
6. run the program in this interpreter. Only if it returns normally is the token written to
   stdout, so a program that calls `sys.exit(0)` or `os._exit(0)` before its tests finish cannot
   pass. The token is never written into the program's source file.

A failure of steps 1 (the deletion) to 5 is reported as `SandboxSetupError setup <token> <message>`
in the result file (the token shows it came from the launcher, not from the program, which inherits
that file), and the evaluator raises it instead of scoring the program as failed. The mount step
also refuses to run in the evaluator's own mount namespace (it would cover the shared /tmp).

Known limit: the token lives in this interpreter's memory while the program runs, so code written
to hunt for it (walking frames or the garbage collector) can find it. It guards against accidental
early exits, not against adversarial programs; the isolation above is what contains those.
"""

import builtins
import marshal
import os
import resource
import signal
import sys

# The program's working directory on the private /tmp (made after the tmpfs mounts).
PRIVATE_WORKDIR = "/tmp/work"
# Exit status of a run whose sandbox setup failed (the result file says why).
SETUP_FAILED = 125


class SandboxSetupError(Exception):
    """The sandbox could not be set up as configured (mount, rlimit, uid drop)."""


def _mount_private_tmp(paths, size_bytes):
    """Mount an empty tmpfs on each existing path (only inside a private mount namespace).

    Raises SandboxSetupError naming the path and errno when a mount fails.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    options = f"size={int(size_bytes)},mode=1777".encode()
    for path in paths:
        if os.path.isdir(path) and libc.mount(b"tmpfs", path.encode(), b"tmpfs", 0, options) != 0:
            number = ctypes.get_errno()
            raise SandboxSetupError(f"mount tmpfs on {path} failed: {os.strerror(number)} "
                                    f"(errno {number})")


def _rearm_parent_death_signal():
    """Changing uid clears PR_SET_PDEATHSIG; set it again so killing `unshare` kills us."""
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1


def _category(error):
    if isinstance(error, SyntaxError):
        return "syntax"
    if isinstance(error, AssertionError):
        return "assertion"
    return "other"


def _setup(config):
    """Steps 2-5 of the module docstring; returns (result fd, program source)."""
    result_fd = os.open(config["result_path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(config["program_path"], encoding="utf-8") as handle:
        source = handle.read()
    os.chdir(config["workdir"])
    uid = config.get("uid")
    if config.get("private_tmp"):
        host = config.get("host_mount_namespace")
        if host is not None and os.readlink("/proc/self/ns/mnt") == host:
            raise SandboxSetupError("not in a private mount namespace: refusing to mount a tmpfs "
                                    "over the evaluator's own /tmp")
        _mount_private_tmp(["/tmp", "/var/tmp", "/dev/shm"], config["tmpfs_bytes"])
        # The evaluator-made directory lies on the real /tmp: leave it for one on the private one.
        os.mkdir(PRIVATE_WORKDIR, 0o700)
        if uid is not None:
            os.chown(PRIVATE_WORKDIR, uid, uid)
        os.chdir(PRIVATE_WORKDIR)

    for name, (soft, hard) in config["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if config.get("parent_death_signal"):
            _rearm_parent_death_signal()
    return result_fd, source


def main():
    with open(sys.argv[1], "rb") as handle:
        config = marshal.load(handle)
    token = config["token"].encode()
    try:
        os.unlink(sys.argv[1])  # the token is on disk no longer; nothing reads this file again
        result_fd, source = _setup(config)
    except Exception as error:  # noqa: BLE001 - any setup failure is reported to the evaluator
        message = f"{type(error).__name__}: {error}"
        try:
            fd = os.open(config["result_path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, b"SandboxSetupError setup " + token + b" " + message.encode(errors="replace"))
        finally:
            os.write(2, f"sandbox setup failed: {message}\n".encode(errors="replace"))
            os._exit(SETUP_FAILED)

    main_pid = os.getpid()

    def cpu_time_exceeded(_signum, _frame):
        # RLIMIT_CPU soft limit reached (the hard limit, one second later, is SIGKILL).
        if os.getpid() == main_pid:
            os.write(result_fd, b"CPUTimeLimit timeout")
        os._exit(137)

    signal.signal(signal.SIGXCPU, cpu_time_exceeded)
    # `python -S` skips site, which is what defines exit() and quit(); programs may call them.
    builtins.exit = builtins.quit = sys.exit
    sys.argv = ["program.py"]
    namespace = {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__}

    def report(error):
        # Only the launcher process itself reports: forked children share the result file.
        if os.getpid() != main_pid:
            return
        os.write(result_fd, (f"{type(error).__name__} {_category(error)}").encode())

    try:
        code = compile(source, "program.py", "exec")
        del source
        exec(code, namespace)  # noqa: S102 - running the program is the point; it is sandboxed
    except SystemExit as error:
        # sys.exit() inside the program: never a pass, whatever the code.
        report(error)
        sys.stdout.flush()
        sys.stderr.flush()
        code = error.code
        os._exit(code if isinstance(code, int) else (0 if code is None else 1))
    except BaseException as error:  # noqa: BLE001 - the verdict names whatever the program raised
        try:
            report(error)
            # Drop the launcher's own frame so the traceback starts in the program.
            trimmed = error.__traceback__.tb_next if error.__traceback__ is not None else None
            error.with_traceback(trimmed)
            sys.__excepthook__(type(error), error, trimmed)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(1)
    try:
        sys.stdout.flush()
        if os.getpid() == main_pid:  # a forked child that reached the end is not the program
            os.write(1, b"\n" + token + b"\n")
    finally:
        os._exit(0)


if __name__ == "__main__":
    main()
