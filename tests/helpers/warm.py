"""delving's commands without the interpreter's start: a warm server forks each run.

Half of a tiny command's time is its imports (torch, Hydra, and torch's compiler where the run needs it):
about 5 s of CPU per launch, most of the suite. The server (a few per pytest worker) imports them once and
runs no torch op; each run is a child forked from it: its own process (own pid, exit status, signals, a
SIGKILL kills only it), its own environment, folder and argv, running `python -m delving.<module>` as `-m`
would, or an installed console script (`.venv/bin/delving-plan ...`) or one of `scripts/` as the interpreter
runs a script file.
`torchrun --standalone --nproc_per_node=N -m delving.<module>` becomes N such children with the variables
torchrun gives its ranks, ended together when one fails, as torchrun's agent ends them.
What the tests compare (weights, logs, exit codes) cannot tell the two apart: `test_warm_launch.py` checks a
warm run against a cold one bitwise (two ranks against torchrun's too), and a console script's refusal
against a cold one's.

`start` is `subprocess.Popen` for a run the test signals mid-work: its pid is the run's, its output is read
as it is written, and it can be its own process group with SIGINT at its default, as a terminal's foreground
job is (`test_warm_launch.py` checks a warm Ctrl-C against a new interpreter's).

Each server runs in one environment, and a run goes to the server of its environment (started when first
needed): torch and its compiler read their keys (kernel ISA caps, compile caches, threads) when imported or
first used, delving its config folder when imported, and a server has imported them all. Only the test hooks
delving reads at run time (`RUN_TIME_KEYS`) may differ between a run and its server. Commands whose test is
about how users start them (a console script's first start from another folder, torchrun's agent under a
signal and its own errors, SLURM) start cold by not using this helper.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_BIN = Path(sys.executable).parent
_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
# What torchrun's agent sets for each rank (torch/distributed/elastic/agent/server/local_elastic_agent.py);
# the rank's variables: rank 0 hosts the rendezvous store itself (no agent's store here).
_RANK_KEYS = frozenset({
    "RANK", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
    "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_USE_AGENT_STORE",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING",
})  # fmt: skip
# Read by delving and torch.distributed when the step, the file read or the process group happens, never at
# import (trainer.py, decode.py, dist.py).
RUN_TIME_KEYS = (
    frozenset({"DELVING_KILL_AT_STEP", "DELVING_STEP_SLEEP_S", "DELVING_READ_DELAY_S"}) | _RANK_KEYS
)
_TORCHRUN = ["-m", "torch.distributed.run", "--standalone"]
_RANKS_STOP_S = 30  # torchrun's agent: SIGTERM to the ranks left when one fails, SIGKILL after this grace
_NOT_READ = frozenset({"PYTEST_CURRENT_TEST"})  # pytest's, changed at every test
_MAX_SERVERS = 4
_THREADED = 3  # the server's exit status when its imports started a thread: it cannot fork safely
_cold_keys: set[frozenset[tuple[str, str]]] = set()
_servers: dict[frozenset[tuple[str, str]], tuple[subprocess.Popen, Path]] = {}
# Seconds this process has waited for servers to start (conftest leaves them out of test-quick's test times).
starting_s = 0.0


def _server_key(env: dict[str, str]) -> frozenset[tuple[str, str]]:
    return frozenset((k, v) for k, v in env.items() if k not in RUN_TIME_KEYS | _NOT_READ)


def _start_server(env: dict[str, str]) -> tuple[subprocess.Popen, Path] | None:
    """A server in `env`, ready to fork; None where `env` makes forking unsafe (threads at import)."""
    folder = Path(tempfile.mkdtemp(prefix="warm-"))
    address = folder / "socket"
    server = subprocess.Popen(
        [sys.executable, __file__, str(address)], env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "wb"),  # noqa: SIM115
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not address.exists():
        if server.poll() == _THREADED:
            shutil.rmtree(folder, ignore_errors=True)
            return None
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"the warm server did not start:\n{(folder / 'server.log').read_text()[-3000:]}"
            )
        time.sleep(0.05)
    return server, address


def _stop(server: subprocess.Popen, address: Path) -> None:
    server.kill()
    server.wait()
    shutil.rmtree(address.parent, ignore_errors=True)


def _stop_servers() -> None:
    for server, address in _servers.values():
        _stop(server, address)


atexit.register(_stop_servers)


def _torchrun_ranks(command: list[str]) -> tuple[int, list[str]] | None:
    """(N, the rank's command) for `python -m torch.distributed.run --standalone --nproc_per_node=N -m
    delving.<module> ...`; None for any other command or torchrun option."""
    if command[:4] != [sys.executable, *_TORCHRUN] or len(command) < 7:
        return None
    option, _, count = command[4].partition("=")
    if option != "--nproc_per_node" or not count.isdigit():
        return None
    return int(count), [sys.executable, *command[5:]]


def would_run_warm(command: list[str]) -> bool:
    """Whether `run` may fork `command` from a warm server: `python -m delving.<module> ...`, one of this
    environment's console scripts, `python scripts/<name>.py ...` of this repository, or torchrun of a delving
    module on one node (`DELVING_TESTS_COLD=1` turns them all off, for a suite timed without)."""
    if os.environ.get("DELVING_TESTS_COLD"):
        return False
    ranks = _torchrun_ranks(command)
    if ranks is not None:
        command = ranks[1]
    module = command[2] if command[:2] == [sys.executable, "-m"] and len(command) > 2 else ""
    script = Path(command[0])
    repo_script = Path(command[1]) if len(command) > 1 and command[0] == sys.executable else Path()
    return (
        module.startswith("delving.")
        or (script.parent == _BIN and script.name.startswith("delving-"))
        or (repo_script.parent == _SCRIPTS and repo_script.suffix == ".py")
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank_environments(env: dict[str, str], ranks: int) -> list[dict[str, str]]:
    """Each rank's environment as torchrun's agent makes it for one node (`--standalone`)."""
    port, run_id = str(_free_port()), f"warm-{os.getpid()}-{time.monotonic_ns()}"
    shared = {
        "GROUP_RANK": "0", "ROLE_NAME": "default", "LOCAL_WORLD_SIZE": str(ranks), "WORLD_SIZE": str(ranks),
        "GROUP_WORLD_SIZE": "1", "ROLE_WORLD_SIZE": str(ranks), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
        "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0", "TORCHELASTIC_RUN_ID": run_id,
        "TORCHELASTIC_USE_AGENT_STORE": "False",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": env.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
    }  # fmt: skip
    return [
        {**env, **shared, "RANK": str(r), "LOCAL_RANK": str(r), "ROLE_RANK": str(r)} for r in range(ranks)
    ]


def has_server(env: dict[str, str]) -> bool:
    """Whether a warm server runs in `env` (runs in it are forked from it)."""
    return _server_key(env) in _servers


def _server_for(env: dict[str, str]) -> Path | None:
    """The socket of the server running in `env`, started if need be; None where `env` cannot have one."""
    key = _server_key(env)
    if key in _servers and _servers[key][0].poll() is not None:
        del _servers[key]
    if key not in _servers and key not in _cold_keys:
        if len(_servers) >= _MAX_SERVERS:  # the oldest goes: a few environments per worker in practice
            _stop(*_servers.pop(next(iter(_servers))))
        global starting_s
        started = time.monotonic()
        server = _start_server(env)
        starting_s += time.monotonic() - started
        if server is None:
            _cold_keys.add(key)
        else:
            _servers[key] = server
    return _servers[key][1] if key in _servers else None


def run(
    command: list[str], env: dict[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """`subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)`, forked
    from a warm server where `would_run_warm(command)`. Under torchrun the ranks write to one stdout and one
    stderr, as torchrun's do, and the exit code is torchrun's: 0, or 1 when a rank failed."""
    ranks = _torchrun_ranks(command)
    if ranks is not None:
        env = {**env, "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1")}  # as torchrun sets it for N > 1
    if not would_run_warm(command) or _server_for(env) is None:
        return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    if ranks is None:
        return forked([command], [env], cwd, timeout)
    result = forked([ranks[1]] * ranks[0], _rank_environments(env, ranks[0]), cwd, timeout, together=True)
    result.args = command
    return result


def forked(
    commands: list[list[str]],
    envs: list[dict[str, str]],
    cwd: Path,
    timeout: float,
    together: bool = False,
    grace_s: float = _RANKS_STOP_S,
) -> subprocess.CompletedProcess[str]:
    """The commands at once, each forked from the server of the first environment (the others may differ from
    it in `RUN_TIME_KEYS` only), writing to one stdout and one stderr. Exit code: the one command's, or 0 when
    all ended well, else 1. `together`: one failing stops the rest, as torchrun's agent does (SIGTERM, then
    SIGKILL to those still running `grace_s` later)."""
    assert all(_server_key(env) == _server_key(envs[0]) for env in envs)
    with tempfile.TemporaryDirectory(prefix="warm-run-") as folder:
        out, err = Path(folder) / "stdout", Path(folder) / "stderr"
        runs = [
            _run_request(command, env, cwd, out, err) for command, env in zip(commands, envs, strict=True)
        ]
        replies, pids = _send(envs[0], runs, together, grace_s)
        with replies.connection:
            reply = replies.next(timeout)
        if reply is None:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise subprocess.TimeoutExpired(commands[0], timeout)
        args = commands[0] if len(commands) == 1 else commands
        return subprocess.CompletedProcess(args, reply["status"], out.read_text(), err.read_text())


def start(
    command: list[str], env: dict[str, str], cwd: Path, merge_stderr: bool = True, foreground: bool = False
) -> subprocess.Popen | Started:
    """`subprocess.Popen(command, env=env, cwd=cwd, text=True, stdout=PIPE, stderr=STDOUT or PIPE)` for a run
    the test signals or watches mid-work, forked from a warm server where `would_run_warm(command)` and it is
    not torchrun's (its agent's handling of signals is what those tests stop). `foreground`: its own process
    group with SIGINT at its default, as a terminal's foreground job (a background job starts with SIGINT
    ignored): `start_new_session=True` and SIGINT reset before the exec for a new interpreter."""
    if _torchrun_ranks(command) is None and would_run_warm(command) and _server_for(env) is not None:
        return Started(command, env, cwd, merge_stderr, foreground)
    return subprocess.Popen(
        command, env=env, cwd=cwd, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE, start_new_session=foreground,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if foreground else None,
    )  # fmt: skip


class Started:
    """A run forked from a warm server, used as a `subprocess.Popen` with text pipes is: `pid` (the run's own
    process), `stdout` (and `stderr` unless merged) read as the run writes them, `poll`, `wait`,
    `send_signal`, `kill`, `communicate` and `returncode`."""

    def __init__(
        self, command: list[str], env: dict[str, str], cwd: Path, merge_stderr: bool, foreground: bool
    ) -> None:
        self.args = command
        self.returncode: int | None = None
        self._folder = tempfile.TemporaryDirectory(prefix="warm-run-")  # removed with this object
        out = Path(self._folder.name) / "stdout"
        err = out if merge_stderr else Path(self._folder.name) / "stderr"
        run = {**_run_request(command, env, cwd, out, err), "foreground": foreground}
        self._replies, (self.pid,) = _send(env, [run], together=False, grace_s=_RANKS_STOP_S)
        self.stdout = _Output(out, self)
        self.stderr = None if merge_stderr else _Output(err, self)

    def poll(self) -> int | None:
        return self.wait(0) if self.returncode is None and self._replies.ready() else self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            reply = self._replies.next(timeout)
            if reply is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self.returncode = reply["status"]
            self._replies.connection.close()
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str | None]:
        """The rest of the output once the run has ended; the files are closed, as Popen closes its pipes."""
        self.wait(timeout)
        return self.stdout.read_rest(), self.stderr.read_rest() if self.stderr else None


class _Output:
    """A run's output file read as a pipe is: a read waits for more until the run has ended."""

    def __init__(self, path: Path, process: Started) -> None:
        self._file: IO[str] = path.open()
        self._process = process

    def readline(self) -> str:
        line = ""
        while True:
            ended = self._process.poll() is not None  # asked first: after it, nothing more is written
            line += self._file.readline()
            if line.endswith("\n") or ended:
                return line
            time.sleep(0.02)

    def read(self) -> str:
        self._process.wait()
        return self._file.read()

    def read_rest(self) -> str:
        with self._file:
            return self.read()

    def __iter__(self) -> Iterator[str]:
        while line := self.readline():
            yield line


class _Replies:
    """The server's JSON lines on one connection, read without a buffer that `select` cannot see."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self._buffer = b""

    def ready(self) -> bool:
        return b"\n" in self._buffer or bool(select.select([self.connection], [], [], 0)[0])

    def next(self, timeout: float | None) -> dict | None:
        """The next line, or None when none came within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.connection], [], [], left)[0]:
                return None
            chunk = self.connection.recv(1 << 16)
            if not chunk:
                raise RuntimeError("the warm server ended while running a command")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)


def _run_request(command: list[str], env: dict[str, str], cwd: Path, out: Path, err: Path) -> dict:
    out.touch()
    err.touch()
    return {"argv": command, "env": env, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)}


def _send(
    env: dict[str, str], runs: list[dict], together: bool, grace_s: float
) -> tuple[_Replies, list[int]]:
    """The runs sent to the server of `env`: the connection its exit status will come on, and their pids."""
    address = _server_for(env)
    assert address is not None
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(str(address))
    connection.sendall(json.dumps({"runs": runs, "together": together, "grace_s": grace_s}).encode() + b"\n")
    replies = _Replies(connection)
    reply = replies.next(120)
    if reply is None:
        connection.close()
        raise RuntimeError(f"the warm server did not answer within 120 s: {runs[0]['argv']}")
    return replies, reply["pids"]


# ------------------------------------------------------------------------------------------------ the server


def _child(request: dict) -> None:
    """In the forked child: the request's folder, environment, argv and output files (appended to: the ranks
    of one run share them), then the module as `python -m` runs it or the script as `python script` does.
    Returns to let the interpreter end as a launched one would (atexit, flushing)."""
    import runpy

    if request.get(
        "foreground"
    ):  # as a terminal starts its job: own group, SIGINT as a new interpreter sets it
        os.setsid()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, flags in (
        (0, os.devnull, os.O_RDONLY),
        (1, request["stdout"], 0),
        (2, request["stderr"], 0),
    ):
        opened = os.open(path, flags | (os.O_WRONLY | os.O_APPEND if fd else 0))
        os.dup2(opened, fd)
        os.close(opened)
    command = request["argv"]
    if command[0] == sys.executable and command[1:2] != ["-m"]:  # python script.py ...: as the script alone
        command = command[1:]
    if command[1:2] == ["-m"]:  # sys.argv[0] becomes the module's file (alter_sys), sys.path[0] the folder
        sys.path[0] = os.getcwd()
        sys.argv = ["-m", *command[3:]]
        # Run as __main__ only, as a new interpreter does (runpy warns about a module already imported).
        sys.modules.pop(command[2], None)
        runpy.run_module(command[2], run_name="__main__", alter_sys=True)
    else:  # a script: argv[0] is its path, sys.path[0] its folder
        sys.path[0] = str(Path(command[0]).parent)
        sys.argv = list(command)
        runpy.run_path(command[0], run_name="__main__")


def _serve(address: str) -> None:
    import threading

    # What every training launch imports; nothing here may start a thread or run a torch op (a fork copies
    # only the forking thread, and torch fixes its kernel choice at the first op).
    import torch
    import torch._dynamo  # noqa: F401  (torch.optim imports it at the first optimizer)

    import delving.cli.eval
    import delving.cli.plan
    import delving.cli.train
    import delving.engine.app
    import delving.engine.trainer
    import delving.evaluation.app
    import delving.plan.app  # noqa: F401
    from delving.config import register_all

    register_all()  # what each command's main() does first (ConfigStore's schemas): a fork finds them filled

    if threading.active_count() != 1 or len(os.listdir("/proc/self/task")) != 1:
        sys.exit(_THREADED)  # torch started its thread pool (OMP_NUM_THREADS above 1): runs here go cold
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address + ".tmp")
    listener.listen()
    listener.settimeout(5)
    os.rename(address + ".tmp", address)
    owner = os.getppid()
    while True:
        with contextlib.suppress(ChildProcessError):  # reap the requests' monitors that have ended
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            if os.getppid() != owner:  # the pytest worker died without stopping us: end with it
                return
            continue
        if os.fork() == 0:  # this request's monitor: the server takes the next request meanwhile
            listener.close()
            run = _monitor(connection)  # returns in a forked run only
            _child(run)
            return
        connection.close()


def _monitor(connection: socket.socket) -> dict:
    """Forks the request's runs, sends their pids, waits for them and sends the exit status, then ends this
    process. In each forked run it returns that run's request instead."""
    connection.settimeout(None)
    request = json.loads(connection.makefile("r").readline())
    pids = []
    for run in request["runs"]:
        pid = os.fork()
        if pid == 0:
            connection.close()
            return run
        pids.append(pid)
        while (
            run.get("foreground") and os.getsid(pid) != pid
        ):  # its group exists before the test may signal it
            time.sleep(0.001)
    with contextlib.suppress(OSError):
        connection.sendall(json.dumps({"pids": pids}).encode() + b"\n")
    codes = _wait_for(pids, request["together"], request["grace_s"])
    status = codes[0] if len(codes) == 1 else int(any(codes))  # torchrun's code: 1 when a rank failed
    with contextlib.suppress(OSError):  # the client gave up (a timeout): nothing to tell
        connection.sendall(json.dumps({"status": status}).encode() + b"\n")
    os._exit(0)


def _wait_for(pids: list[int], together: bool, grace_s: float) -> list[int]:
    """Each child's exit code, in `pids`' order. `together`: when one fails, the others are stopped as
    torchrun's agent stops the ranks of a failed run."""
    codes: dict[int, int] = {}
    while len(codes) < len(pids):
        pid, status = os.waitpid(-1, 0)
        codes[pid] = os.waitstatus_to_exitcode(status)
        if together and codes[pid] != 0:
            _stop_the_rest([p for p in pids if p not in codes], codes, grace_s)
    return [codes[pid] for pid in pids]


def _stop_the_rest(rest: list[int], codes: dict[int, int], grace_s: float) -> None:
    """SIGTERM to each child in `rest`, SIGKILL to those still running `grace_s` later; their codes go into
    `codes`."""
    for pid in rest:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while rest and time.monotonic() < deadline:
        for pid in list(rest):
            ended, status = os.waitpid(pid, os.WNOHANG)
            if ended:
                codes[pid] = os.waitstatus_to_exitcode(status)
                rest.remove(pid)
        time.sleep(0.05)
    for pid in rest:
        os.kill(pid, signal.SIGKILL)
        codes[pid] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


if __name__ == "__main__":
    _serve(sys.argv[1])
