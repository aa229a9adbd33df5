"""The engine's guard: a tiny stdlib-only process between the daemon and the engine.

Why it exists: real vLLM's EngineCore survives a SIGKILLed API server, so signalling the
engine's process group from the daemon is not enough when the *daemon* is the one killed.
The daemon starts the guard in a new session; the guard

* marks itself a child subreaper, so engine processes orphaned by a dead API server are
  reparented to it rather than to init;
* forks the engine into its own process group (pgid = engine pid), applies the CPU/NUMA
  placement in the child between fork and exec, so every engine process inherits it;
* watches a control socket from the daemon: a "stop" line means staged stop, a "kill" line
  (the daemon's second stop signal) means SIGKILL now, even in the middle of a staged stop, and
  end of file means the daemon died, which also means staged stop. PR_SET_PDEATHSIG backs it up;
* when the engine's main process exits, stops whatever is left of its tree (SIGTERM, a
  deadline, SIGKILL, reap), reports the exit status and exits with it.

The guard itself must not be lost silently. The engine holds none of the guard's descriptors:
its output goes to a pipe of its own (`--output-fd`, which the daemon reads) and the control
socket is close-on-exec, so the daemon sees the guard's death at once (its process exits,
nothing keeps a pipe of it open) and ends what the guard left. Two kernel backstops act even
when the daemon is gone too:

* the engine's main process gets PR_SET_PDEATHSIG = SIGKILL pointing at the guard;
* the guard is the controlling process of a pseudo-terminal whose foreground process group is
  the engine's group: when the guard dies, however, the kernel hangs the terminal up and sends
  SIGHUP to every process of that group (EngineCore, workers), which vLLM leaves at its default
  action (terminate). What escapes both (a process that ignores SIGHUP, or one that left the
  group with setsid) is left to systemd's KillMode=mixed under the unit.

Protocol to the daemon, one line each: `pid N`, `placement TEXT`, `backstop TEXT`,
`exit CODE SIGNAL`.

Usage: python -m llm_supervisor.runtime.guard --control-fd FD [--output-fd FD]
       [--parent-pid PID] [--cpus LIST] [--mems LIST] [--mempolicy none|preferred|bind]
       [--stop-timeout S] -- COMMAND ARGS…
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import os
import select
import signal
import socket
import sys
import termios
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _parse_list(text: str | None) -> list[int] | None:
    if not text:
        return None
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out


def descendants(root: int) -> list[int]:
    """Every live process whose parent chain leads to `root` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        if fields[0] == b"Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _debug(text: str) -> None:
    if os.environ.get("LLM_SUPERVISOR_GUARD_DEBUG"):
        os.write(2, f"guard: {text}\n".encode())


def controlling_terminal() -> tuple[int, int] | str:
    """A new pseudo-terminal made this session's controlling terminal: (master, slave), or why
    not. Both ends stay open in the guard only (close-on-exec): the engine never sees them."""
    try:
        master, slave = os.openpty()
    except OSError as exc:
        return f"no pseudo-terminal ({exc.strerror})"
    try:
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    except OSError as exc:
        os.close(master)
        os.close(slave)
        return f"cannot take a controlling terminal ({exc.strerror})"
    return master, slave


class Guard:
    def __init__(self, control: socket.socket, stop_timeout: float, output_fd: int | None = None) -> None:
        self.control = control
        self.stop_timeout = stop_timeout
        self.output_fd = output_fd
        self.tty: tuple[int, int] | None = None
        self.parent_pid = os.getppid()
        self.engine_pid = 0
        self.engine_status: int | None = None
        self.stop_requested = False
        self.kill_requested = False
        self.parent_gone = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)

    # ------------------------------------------------------------ messages
    def tell(self, line: str) -> None:
        try:
            self.control.sendall((line + "\n").encode())
        except OSError:
            pass

    # ------------------------------------------------------------ engine
    def spawn(self, argv: list[str], cpus: list[int] | None, mems: list[int] | None, policy: str) -> None:
        result_r, result_w = os.pipe()
        backstops = []
        tty = controlling_terminal()
        if isinstance(tty, tuple):
            self.tty = tty
            backstops.append("hangup")
        guard_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # child: own process group, placement, exec
            try:
                os.close(result_r)
                os.setpgid(0, 0)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP, signal.SIGPIPE,
                            signal.SIGTTOU, signal.SIGTTIN, signal.SIGTSTP):
                    signal.signal(sig, signal.SIG_DFL)
                signal.set_wakeup_fd(-1)
                if self.output_fd is not None:  # the engine's own pipe: the guard holds none of it
                    os.dup2(self.output_fd, 1)
                    os.dup2(self.output_fd, 2)
                    if self.output_fd > 2:
                        os.close(self.output_fd)
                # Killed with the guard, however the guard dies; if it already died, do not start.
                _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                if os.getppid() != guard_pid:
                    os._exit(127)
                text = "none"
                if cpus or (mems and policy != "none"):
                    from llm_supervisor.host.numa import apply_placement

                    text = apply_placement(cpus, mems, policy)
                os.write(result_w, text.encode()[:4000])
                os.close(result_w)
                os.execvp(argv[0], argv)
            except BaseException as exc:  # noqa: BLE001 - the child must never return
                try:
                    os.write(2, f"llm-supervisor guard: cannot start {argv[0]!r}: {exc}\n".encode())
                finally:
                    os._exit(127)
        os.close(result_w)
        if self.output_fd is not None:
            os.close(self.output_fd)
            self.output_fd = None
        try:
            os.setpgid(pid, pid)  # also from the parent, to close the race
        except OSError:
            pass
        if self.tty is not None:
            try:  # the engine's group in the foreground: the terminal's hangup reaches all of it
                os.tcsetpgrp(self.tty[1], pid)
            except OSError as exc:
                backstops.remove("hangup")
                tty = f"cannot give the terminal to the engine's group ({exc.strerror})"
        self.engine_pid = pid
        self.tell(f"pid {pid}")
        self.tell("backstop " + " and ".join(["pdeathsig", *backstops])
                  + ("" if isinstance(tty, tuple) else f" (no hangup: {tty})"))
        chunks = []
        while True:
            chunk = os.read(result_r, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(result_r)
        if chunks:
            self.tell("placement " + b"".join(chunks).decode(errors="replace").replace("\n", " "))

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.engine_pid and self.engine_status is None:
                self.engine_status = status

    def tree(self) -> list[int]:
        return descendants(os.getpid())

    def signal_tree(self, sig: int) -> None:
        if self.engine_pid:
            try:
                os.killpg(self.engine_pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in self.tree():  # escaped the group (setsid) or reparented to us
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop_tree(self, timeout: float) -> None:
        """SIGTERM to everything below us, wait until the deadline (cut short by a "kill" from the
        daemon), SIGKILL, reap."""
        if not self.kill_requested:
            self.signal_tree(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.kill_requested:
            self.reap()
            if not self.tree():
                return
            self.listen(0.05)
        self.signal_tree(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.tree() and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.02)
        self.reap()

    def listen(self, timeout: float) -> None:
        """Up to `timeout` for the daemon's next word (or the engine's SIGCHLD): "stop", "kill",
        or end of file (the daemon is gone)."""
        watched = [self.wake_r] if self.parent_gone else [self.control, self.wake_r]
        try:
            ready, _, _ = select.select(watched, [], [], timeout)
        except InterruptedError:
            return
        if self.wake_r in ready:
            try:
                while os.read(self.wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        if self.control in ready:
            try:
                data = self.control.recv(4096)
            except OSError:
                data = b""
            if not data:
                self.parent_gone = True
                _debug("control socket closed: the daemon is gone")
            self.stop_requested |= b"stop" in data
            self.kill_requested |= b"kill" in data

    # ------------------------------------------------------------ loop
    def run(self) -> int:
        while True:
            self.reap()
            if self.engine_status is not None:
                # The main engine process is gone; finish what it left (EngineCore, workers).
                if self.tree():
                    self.stop_tree(min(self.stop_timeout, 5.0) if not self.stop_requested else self.stop_timeout)
                break
            if self.stop_requested or self.kill_requested or self.parent_gone:
                self.stop_tree(self.stop_timeout)
                self.reap()
                if self.engine_status is None:
                    # It was killed by us and reaped inside stop_tree before we recorded it.
                    self.engine_status = 0
                break
            self.listen(0.5)
            if os.getppid() != self.parent_pid:
                self.parent_gone = True
                _debug("reparented: the daemon is gone")
        status = self.engine_status or 0
        if os.WIFSIGNALED(status):
            code, sig = 128 + os.WTERMSIG(status), os.WTERMSIG(status)
        else:
            code, sig = os.WEXITSTATUS(status), 0
        self.tell(f"exit {code} {sig}")
        return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm_supervisor.runtime.guard")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--output-fd", type=int, help="the engine's stdout and stderr (default: the guard's)")
    parser.add_argument("--parent-pid", type=int, help="the daemon: if it is no longer our parent, do nothing")
    parser.add_argument("--cpus")
    parser.add_argument("--mems")
    parser.add_argument("--mempolicy", default="none", choices=["none", "preferred", "bind"])
    parser.add_argument("--stop-timeout", type=float, default=15.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")

    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    os.set_inheritable(args.control_fd, False)  # the engine must not keep the daemon's socket open
    if args.output_fd is not None:
        os.set_inheritable(args.output_fd, False)  # dup2'ed onto 1 and 2 in the child only
    control = socket.socket(fileno=args.control_fd)
    guard = Guard(control, args.stop_timeout, args.output_fd)

    def on_stop(signum: int, frame: object) -> None:
        guard.stop_requested = True
        _debug(f"signal {signum}: stopping")

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_stop)
    signal.signal(signal.SIGCHLD, lambda s, f: None)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # tcsetpgrp from what becomes a background group
    signal.set_wakeup_fd(guard.wake_w)
    # The daemon died before PR_SET_PDEATHSIG was armed: nobody would ever stop us.
    if os.getppid() == 1 or (args.parent_pid and os.getppid() != args.parent_pid):
        return 1
    try:
        guard.spawn(command, _parse_list(args.cpus), _parse_list(args.mems), args.mempolicy)
    except OSError as exc:
        guard.tell("exit 127 0")
        print(f"llm-supervisor guard: {exc}", file=sys.stderr)
        return 127
    return guard.run()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            sys.exit(1)
        raise
