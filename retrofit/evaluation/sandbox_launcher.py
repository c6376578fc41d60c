"""Sandbox launcher: the first Python code that runs inside a sandboxed process.

Started by `retrofit.evaluation.sandbox` as `python -I -S sandbox_launcher.py CONFIG`, usually
under `unshare --net --pid --fork --mount-proc --kill-child`. Standard library only, no imports from
`retrofit`, because it runs in a fresh interpreter that may not see the project's virtualenv. It
runs once per program, so it imports only what is cheap: the configuration is a `marshal` file (no
json/re import) and tracebacks go through the C-level `sys.__excepthook__` (no traceback import).

Order of operations (while still privileged, then not):
1. read the run configuration (and the pass token) from a file the sandboxed program cannot read;
2. open the result file, change into the program's temporary working directory, read the source;
3. inside a private mount namespace, mount small private tmpfs over /tmp, /var/tmp and /dev/shm so
   the program sees neither the evaluator's files nor other programs' working directories;
4. apply resource limits (CPU seconds, address space, file size, open files, processes, no core);
5. drop to the unprivileged uid/gid (root ignores RLIMIT_NPROC and file permissions);
6. run the program in this interpreter. Only if it returns normally is the token written to
   stdout, so a program that calls `sys.exit(0)` or `os._exit(0)` before its tests finish cannot
   pass. The token is never written into the program's source file.
"""

import builtins
import marshal
import os
import resource
import signal
import sys


def _mount_private_tmp(paths, size_bytes):
    """Mount an empty tmpfs on each existing path (only inside a private mount namespace)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    options = f"size={int(size_bytes)},mode=1777".encode()
    for path in paths:
        if os.path.isdir(path):
            libc.mount(b"tmpfs", path.encode(), b"tmpfs", 0, options)


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


def main():
    with open(sys.argv[1], "rb") as handle:
        config = marshal.load(handle)
    token = config["token"].encode()
    result_fd = os.open(config["result_path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(config["program_path"], encoding="utf-8") as handle:
        source = handle.read()
    os.chdir(config["workdir"])
    if config.get("private_tmp"):
        _mount_private_tmp(["/tmp", "/var/tmp", "/dev/shm"], config["tmpfs_bytes"])

    for name, (soft, hard) in config["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    uid = config.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if config.get("parent_death_signal"):
            _rearm_parent_death_signal()

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
