"""Start local stage processes: fresh interpreters, or forks of a template that imported everything once.

One protocol, two launchers. ``launcher.start(stage, ctx_path, log_path)`` starts
``python -m stream worker STAGE --context FILE`` with stdin on /dev/null and stdout/stderr appended,
unbuffered, to ``log_path``, and returns a handle with ``pid``, ``poll()``, ``returncode``,
``send_signal()``, ``terminate()``, ``kill()`` and ``wait(timeout)`` (``subprocess.Popen``'s meaning,
exit codes included: negative for a signal).

- ``PopenLauncher``: a new interpreter per stage. Each pays interpreter start-up plus numpy, cv2, zmq,
  av and onnxruntime imports (≈ 0.3-0.5 s CPU per stage, five stages in a file run).
- ``ForkserverLauncher``: every stage is forked from multiprocessing's forkserver, started once per run
  (``prestart``, as early as the CLI knows it will run a pipeline, so its imports overlap the
  supervisor's own preparation) with those modules preloaded; a stage is then running in milliseconds.
  The child sets its process title to the command line above, so ``ps``/psutil show which stage it is.

Dying with the supervisor holds along the chain supervisor -> forkserver -> stage: the forkserver exits
when the last holder of its "alive" pipe goes (the supervisor, at any exit, SIGKILL included: each stage
closes the copy multiprocessing hands it), and a stage gets SIGTERM from the kernel when the forkserver
exits (PR_SET_PDEATHSIG, stream.stages.base; ``--parent-pid`` tells it that its parent is the
forkserver). The forkserver's socket lives in a folder named like a run folder, so that a next run
removes it after a SIGKILL (stream.pipeline.remove_orphan_run_dirs).

``default()`` picks the forkserver on Linux when setproctitle is installed, Popen elsewhere;
``SEGSTREAM_LAUNCHER=popen`` (or ``forkserver``) forces one, e.g. to compare their start-up costs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Protocol

# Imported by the forkserver before the first stage is forked: the heavy libraries every stage needs and
# the project modules the stages import during set-up. A name that fails with ImportError is skipped by
# the forkserver (e.g. onnxruntime on a TensorRT-only install). No name may contain "worker": the
# forkserver's own command line lists them, and stage processes are recognised by "worker STAGE".
# Only imports happen there, never a session or a socket: forking a process that holds one is unsafe.
# onnxruntime stays out: its import starts a native telemetry thread that writes a sqlite file, and a fork
# taken while that thread holds a lock could hang a stage; each infer stage imports it itself (~0.2 s).
PRELOAD = [
    "numpy",
    "cv2",
    "zmq",
    "av",
    "stream.cli",
    "stream.config",
    "stream.cpus",
    "stream.transport",
    "stream.shm",
    "stream.headers",
    "stream.metrics",
    "stream.uri",
    "stream.overlay",
    "stream.sources.base",
    "stream.sources.file",
    "stream.sinks.base",
    "stream.sinks.video",
    "stream.stages.capture",
    "stream.stages.preprocess",
    "stream.stages.infer",
    "stream.stages.overlay",
    "engines.meta",
    "engines.runtime",
    "engines.runtime.preprocess",
    "stream.launch",
]
ENV = "SEGSTREAM_LAUNCHER"


class StageHandle(Protocol):
    """A started stage process (``subprocess.Popen`` is one)."""

    pid: int

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class Launcher(Protocol):
    name: str

    def start(self, stage: str, ctx_path: Path, log_path: Path) -> StageHandle: ...


def command(stage: str, ctx_path: Path | str) -> list[str]:
    """The command line of a stage process (its real one with Popen, its title when forked)."""
    return [sys.executable, "-m", "stream", "worker", stage, "--context", str(ctx_path)]


class PopenLauncher:
    """A fresh interpreter per stage: works everywhere, pays every import in every stage."""

    name = "popen"

    def start(self, stage: str, ctx_path: Path, log_path: Path) -> StageHandle:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # the child must import this very package, installed or not
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                command(stage, ctx_path),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=os.getcwd(),
            )


class ForkedStage:
    """A stage forked by the forkserver, with ``subprocess.Popen``'s methods and meanings."""

    def __init__(self, proc, args: list[str]) -> None:  # proc: multiprocessing.Process, started
        self._proc = proc
        self.pid: int = proc.pid
        self.args = args

    @property
    def returncode(self) -> int | None:
        return self._proc.exitcode

    def poll(self) -> int | None:
        # the forkserver reaps the stage and writes its exit status to our sentinel pipe
        return self._proc.exitcode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # a reaped pid may belong to someone else by now
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        import signal

        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        import signal

        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        code = self._proc.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return code


class ForkserverLauncher:
    """Stages forked from multiprocessing's forkserver with PRELOAD imported (Linux)."""

    name = "forkserver"

    def __init__(self) -> None:
        import multiprocessing

        self._mp = multiprocessing.get_context("forkserver")
        self._fallback: PopenLauncher | None = None
        self._started = False

    def prestart(self) -> None:
        """Start the forkserver now (it imports PRELOAD while the caller goes on); idempotent."""
        if self._started:
            return
        self._started = True
        import multiprocessing.process
        import multiprocessing.util

        cfg = multiprocessing.process.current_process()._config
        if "tempdir" not in cfg:
            # the forkserver's socket folder, named like a run folder (with our pid) so that the next run
            # removes it should this process be SIGKILLed; multiprocessing itself would leave a pymp-*
            import shutil
            import tempfile

            from stream.pipeline import RUN_DIR_PREFIX

            d = tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-launcher-")
            cfg["tempdir"] = d
            multiprocessing.util.Finalize(
                None, shutil.rmtree, args=(d,), kwargs={"ignore_errors": True}, exitpriority=-100
            )
        self._mp.set_forkserver_preload(PRELOAD)
        import signal
        from multiprocessing import forkserver

        # started with SIGINT ignored (kept across exec): a Ctrl-C to the terminal's process group while it
        # imports would otherwise print its traceback there; the supervisor orchestrates Ctrl-C
        try:
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the main thread: leave signals alone
            old = None
        try:
            forkserver.ensure_running()
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)
        import atexit

        atexit.register(self.close)  # reaped by us: its CPU time (and its stages') counts as ours

    def close(self) -> None:
        """Stop the forkserver now (after the run; or before it, when a user error ends the command while
        the forkserver is still importing, which it would otherwise finish before noticing)."""
        if not self._started:
            return
        self._started = False
        import signal
        from multiprocessing import forkserver

        server = getattr(forkserver, "_forkserver", None)
        pid = getattr(server, "_forkserver_pid", None)
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
            server._stop()  # closes our end of its pipe, reaps it, removes its socket
        except (OSError, AttributeError):
            pass

    def start(self, stage: str, ctx_path: Path, log_path: Path) -> StageHandle:
        if self._fallback is not None:
            return self._fallback.start(stage, ctx_path, log_path)
        self.prestart()
        proc = self._mp.Process(
            target=stage_main,
            args=(stage, str(ctx_path), str(log_path)),
            name=f"segstream-{stage}",
            daemon=True,  # our exit terminates a stage that outlived stop_all (it never should)
        )
        try:
            proc.start()
        except (OSError, EOFError) as e:  # the forkserver died (e.g. a preload crashed it)
            print(
                f"segstream: cannot fork stages from the template process ({e}); starting fresh interpreters",
                file=sys.stderr,
            )
            self._fallback = PopenLauncher()
            return self._fallback.start(stage, ctx_path, log_path)
        return ForkedStage(proc, command(stage, ctx_path))


def stage_main(stage: str, ctx_path: str, log_path: str) -> None:
    """Entry point of a forked stage: become ``python -m stream worker STAGE --context FILE``."""
    import signal

    parent = os.getppid()  # the forkserver: the stage dies with it, and it dies with the supervisor
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor orchestrates Ctrl-C (stages.base)
    _drop_alive_pipe()
    _redirect(log_path)
    import setproctitle

    setproctitle.setproctitle(" ".join(command(stage, ctx_path)))
    from stream.cli import main

    raise SystemExit(main(["worker", stage, "--context", ctx_path, "--parent-pid", str(parent)]))


def _drop_alive_pipe() -> None:
    """multiprocessing hands every forked child the forkserver's "alive" pipe (for grandchildren of its
    own); a stage holding it would keep the forkserver, and so itself, alive after the supervisor died."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
        server._forkserver_alive_fd = None


def _redirect(log_path: str) -> None:
    """stdin from /dev/null; stdout and stderr appended to the log, unbuffered (as PYTHONUNBUFFERED)."""
    import io

    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    # new objects on fds 1 and 2; the old ones stay referenced by sys.__stdout__/__stderr__ (their
    # collection would close the fds)
    enc = getattr(sys.__stdout__, "encoding", None) or "utf-8"
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding=enc, write_through=True)
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding=enc, errors="backslashreplace", write_through=True
    )


def forkserver_usable() -> bool:
    """Linux (fork + PR_SET_PDEATHSIG) with setproctitle (stages keep their command line)."""
    if not sys.platform.startswith("linux"):
        return False
    import importlib.util
    import multiprocessing

    return (
        "forkserver" in multiprocessing.get_all_start_methods()
        and importlib.util.find_spec("setproctitle") is not None
    )


_default: Launcher | None = None


def default() -> Launcher:
    """The launcher of this process (one forkserver per supervisor process, shared by every run)."""
    global _default
    if _default is None:
        want = os.environ.get(ENV, "").strip().lower()
        if want not in ("", "popen", "forkserver"):
            from engines.errors import SegstreamError

            raise SegstreamError(f"{ENV}={want!r}: expected 'popen' or 'forkserver'")
        if want == "forkserver" and not forkserver_usable():
            from engines.errors import SegstreamError

            raise SegstreamError(f"{ENV}=forkserver needs Linux and the setproctitle package")
        if want == "popen" or (want == "" and not forkserver_usable()):
            _default = PopenLauncher()
        else:
            _default = ForkserverLauncher()
    return _default


def prestart() -> None:
    """Start the default launcher's template process now, if it has one (cheap to call again)."""
    launcher = default()
    if isinstance(launcher, ForkserverLauncher):
        launcher.prestart()


def shutdown() -> None:
    """Stop the default launcher's template process, if one was started."""
    if isinstance(_default, ForkserverLauncher):
        _default.close()
