"""Sandbox launcher: the first Python code that runs inside a sandboxed process.

Started by `retrofit.evaluation.sandbox` as `python -I -S sandbox_launcher.py MARKER CONFIG_FD`,
normally inside a bubblewrap sandbox. Standard library only, no imports from `retrofit`: it runs in
a fresh interpreter that may not see the project's virtualenv, once per program, so it imports
only what is cheap (`marshal`, no json/re/traceback).

Channels (file descriptors the evaluator passed; their numbers are in the configuration):
- CONFIG_FD: the configuration (pass token, program source, limits) in a memory file, read once
  and closed: the token is on disk nowhere and in no file the program can open;
- status pipe: `ready`, or `error <message>` when the setup failed. The launcher closes it before
  the program's first statement, so nothing the program does can report a setup failure (which
  the evaluator raises for the whole run) or fake a successful setup;
- result pipe: `<token> passed`, `<token> raised <Exception> <category>` or `<token> timeout ...`
  after the program. The program can write there too, but without the token its lines are
  ignored, and the pipe only ever decides this one program's verdict;
- lifeline: the read end of a pipe whose write end only the evaluator holds; end of file means the
  evaluator is gone, and the launcher exits instead of starting the program;
- gate (only with a cgroup memory budget): one byte arrives once the evaluator has moved this
  process into the program's cgroup.

Order of operations (while still privileged, then not):
1. read the configuration; wait at the gate if there is one;
2. change into the work directory (without bubblewrap: the evaluator-made one);
3. apply resource limits (CPU seconds, address space, file size, open files, processes, no core);
4. as root, drop to the slot's unprivileged uid/gid; without bubblewrap, arm the parent-death
   signal; then check the lifeline (closing the race with an evaluator that died before its
   processes' death signals were armed);
5. write `ready`, close the status pipe and the lifeline, run the program in this interpreter.
   Only if it returns normally is `<token> passed` written, so `sys.exit(0)` or `os._exit(0)`
   before the tests finish cannot pass.

Known limit: the token lives in this interpreter's memory while the program runs, so code written
to hunt for it (walking frames or the garbage collector) can make its OWN program pass. It cannot
reach another program's token, the status pipe, or anything outside its sandbox.
"""

import builtins
import marshal
import os
import resource
import signal
import sys

# Exit status of a run whose sandbox setup failed (the status pipe says why).
SETUP_FAILED = 125


class SandboxSetupError(Exception):
    """The sandbox could not be set up as configured (rlimit, uid drop, ...)."""


def _read_config(fd):
    """The marshalled configuration from its memory file, which is closed afterwards."""
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return marshal.loads(b"".join(chunks))


def _set_parent_death_signal():
    """Without bubblewrap: SIGKILL this process when its parent (the evaluator's thread) dies.

    Armed after the uid drop, which would clear it.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG = 1
        raise SandboxSetupError(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}")


def _evaluator_gone(lifeline_fd):
    """True once every write end of the lifeline pipe is closed (the evaluator exited)."""
    os.set_blocking(lifeline_fd, False)
    try:
        return os.read(lifeline_fd, 1) == b""
    except BlockingIOError:
        return False


def _category(error):
    if isinstance(error, SyntaxError):
        return "syntax"
    if isinstance(error, AssertionError):
        return "assertion"
    return "other"


def _setup(config):
    """Steps 2-4 of the module docstring."""
    if config.get("workdir"):
        os.chdir(config["workdir"])
    for name, (soft, hard) in config["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    uid = config.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise SandboxSetupError(f"uid drop to {uid} did not take effect")
    if config.get("death_signal"):
        _set_parent_death_signal()


def _run_program(source, token, result_fd):
    """Step 5: run the program here; report how it ended on the result pipe, then exit."""
    main_pid = os.getpid()

    def report(message):
        # Only the launcher process itself reports: forked children share the pipe.
        if os.getpid() == main_pid:
            os.write(result_fd, token + b" " + message.encode() + b"\n")

    def cpu_time_exceeded(_signum, _frame):
        # RLIMIT_CPU soft limit reached (the hard limit, one second later, is SIGKILL).
        report("timeout CPUTimeLimit")
        os._exit(137)

    signal.signal(signal.SIGXCPU, cpu_time_exceeded)
    # `python -S` skips site, which is what defines exit() and quit(); programs may call them.
    builtins.exit = builtins.quit = sys.exit
    sys.argv = ["program.py"]
    namespace = {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__}
    try:
        code = compile(source, "program.py", "exec")
        del source
        exec(code, namespace)  # noqa: S102 - running the program is the point; it is sandboxed
    except SystemExit as error:
        # sys.exit() inside the program: never a pass, whatever the code.
        report(f"raised SystemExit {_category(error)}")
        sys.stdout.flush()
        sys.stderr.flush()
        code = error.code
        os._exit(code if isinstance(code, int) else (0 if code is None else 1))
    except BaseException as error:  # noqa: BLE001 - the verdict names whatever the program raised
        try:
            report(f"raised {type(error).__name__} {_category(error)}")
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
        report("passed")  # a forked child that reached the end is not the program: report() skips it
    finally:
        os._exit(0)


def main():
    config = _read_config(int(sys.argv[2]))
    token = config["token"].encode()
    status_fd = config["status_fd"]
    try:
        if config.get("gate_fd") is not None:
            os.read(config["gate_fd"], 1)
            os.close(config["gate_fd"])
        _setup(config)
    except Exception as error:  # noqa: BLE001 - any setup failure is reported to the evaluator
        message = f"{type(error).__name__}: {error}"
        try:
            os.write(status_fd, b"error " + message.encode(errors="replace"))
        finally:
            os._exit(SETUP_FAILED)
    if _evaluator_gone(config["lifeline_fd"]):
        os._exit(SETUP_FAILED)
    os.write(status_fd, b"ready")
    # From here on, nothing the program does can reach the status pipe or the evaluator's lifeline.
    os.close(status_fd)
    os.close(config["lifeline_fd"])
    source, result_fd = config["source"], config["result_fd"]
    del config
    _run_program(source, token, result_fd)


if __name__ == "__main__":
    main()
