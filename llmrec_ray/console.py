"""What a person sees: one progress bar per long step, short stage summaries, the tables.

The command line calls `setup(log_dir, verbose)`: every log record (ours, Ray's, Ray Data's, Ray
Train's, Feast's, transformers') and every Python warning then goes, with its full text, to
`<log_dir>/llmrec.log`; the terminal gets only our own warnings and errors from any library,
unless `verbose`, which brings everything back to the terminal. Output that libraries print
themselves (Feast's materialization bars and lines) is sent to the same file by `quiet()`.

Library code reports progress through `progress(desc, total, unit)`: a tqdm bar when the
terminal is a TTY, one line every `LINE_INTERVAL_S` seconds (and a last one) when it is not, and
only log lines when no terminal was set up (tests, notebooks, library use).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from tqdm import tqdm

logger = logging.getLogger(__name__)

LINE_INTERVAL_S = 15.0
LOG_FILE = "llmrec.log"
# Loggers whose records go to the log file only (unless verbose).
LIBRARIES = ("ray", "ray.data", "ray.train", "ray.tune", "feast", "transformers", "torch",
             "urllib3", "filelock", "fsspec", "py.warnings", "sqlalchemy")

_state: dict = {"stream": None, "tty": False, "log_stream": None, "verbose": True, "log_path": None}


class _TerminalFilter(logging.Filter):
    """Our own warnings and errors, and any library's errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("llmrec_ray"):
            return record.levelno >= logging.WARNING
        return record.levelno >= logging.ERROR


def filter_known_warnings() -> None:
    """Upstream deprecation warnings that say nothing to our users, filtered at their source
    (category and the module that triggers them), not with a blanket filter."""
    for module in ("feast", "feast\\..*", "ray\\..*", "pydantic\\..*", "google\\..*", "pkg_resources",
                   "dask\\..*", "sqlalchemy\\..*"):
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
    warnings.filterwarnings("ignore", category=FutureWarning, module="feast\\..*")
    # Feast warns of its own "experimental" features (the project's offline store plugs into one)
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="feast\\..*",
                            message=".*is an experimental feature.*")


def setup(log_dir: Path, verbose: bool = False, stream=None, level: str | int = logging.INFO,
          capture_fd: bool = True) -> Path:
    """Route logs and warnings: full text to `<log_dir>/llmrec.log`, the terminal as described in
    the module docstring. Returns the log file's path.

    With `capture_fd` (and not verbose), file descriptor 2 itself goes to the log file: what
    native code writes there (Ray's C++ core worker) lands in the log, while Python's
    `sys.stderr`, our warnings, errors and tracebacks stay on the terminal (a duplicate of the
    original descriptor)."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / LOG_FILE
    teardown()  # a second setup in one process (tests) starts from a clean state
    log_stream = open(path, "a", buffering=1)
    saved = {"stderr": sys.stderr, "fd2": None, "handlers": list(logging.getLogger().handlers),
             "level": logging.getLogger().level}
    if stream is None:
        stream = sys.stderr
        # only the process's own stderr (not a harness's capture object) is redirected
        if capture_fd and not verbose and sys.stderr is sys.__stderr__:
            try:
                sys.stderr.flush()
                saved["fd2"] = os.dup(2)
                terminal_fd = os.dup(2)
                os.dup2(log_stream.fileno(), 2)
                stream = sys.stderr = os.fdopen(terminal_fd, "w", buffering=1)
            except (OSError, ValueError):  # no real descriptor 2
                stream = sys.stderr
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    file_handler = logging.StreamHandler(log_stream)
    file_handler.setFormatter(fmt)
    file_handler.setLevel(level)
    root.addHandler(file_handler)
    terminal = logging.StreamHandler(stream)
    terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not verbose:
        terminal.addFilter(_TerminalFilter())
    root.addHandler(terminal)
    root.setLevel(logging.INFO)
    adopt_library_loggers()
    logging.captureWarnings(True)
    filter_known_warnings()
    _state.update(stream=stream, tty=bool(getattr(stream, "isatty", lambda: False)()),
                  log_stream=log_stream, verbose=verbose, log_path=path, saved=saved,
                  handlers=[file_handler, terminal])
    return path


def teardown() -> None:
    """Undo `setup`: the original stderr and descriptor 2, root handlers and level; progress
    back to log lines only. Safe to call when `setup` was not."""
    saved = _state.get("saved")
    if not saved:
        return
    root = logging.getLogger()
    for h in _state.get("handlers", []):
        root.removeHandler(h)
    for h in saved["handlers"]:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(saved["level"])
    logging.captureWarnings(False)
    if sys.stderr is not saved["stderr"]:
        try:
            sys.stderr.flush()
        except ValueError:
            pass
        sys.stderr = saved["stderr"]
    if saved["fd2"] is not None:
        os.dup2(saved["fd2"], 2)
        os.close(saved["fd2"])
    if _state["log_stream"] is not None:
        _state["log_stream"].close()
    _state.update(stream=None, tty=False, log_stream=None, verbose=True, log_path=None, saved=None,
                  handlers=[])


def adopt_library_loggers() -> None:
    """Libraries that attach their own terminal handlers (Ray, Ray Data, transformers) send their
    records up to ours instead. Called again after Ray starts (it configures logging then)."""
    for name in LIBRARIES:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
        lg.propagate = True
    transformers = sys.modules.get("transformers")  # never imported here: seconds of start-up
    if transformers is not None:
        transformers.utils.logging.disable_default_handler()
        transformers.utils.logging.enable_propagation()


def log_path() -> Path | None:
    return _state["log_path"]


def verbose() -> bool:
    """Whether library output belongs on the terminal (verbose, or no terminal set up)."""
    return _state["verbose"]


def say(line: str = "") -> None:
    """A line for the person at the terminal (stdout), also kept in the log file."""
    print(line, flush=True)
    if _state["log_stream"] is not None:
        _state["log_stream"].write(line + "\n")


@contextlib.contextmanager
def quiet():
    """What libraries print themselves (Feast's materialization lines and bars) goes to the log
    file instead of the terminal; nothing changes when verbose or when no terminal was set up."""
    if _state["log_stream"] is None or _state["verbose"]:
        yield
        return
    with contextlib.redirect_stdout(_state["log_stream"]), contextlib.redirect_stderr(_state["log_stream"]):
        yield


def _rate(n: float, seconds: float, unit: str) -> str:
    """The rate in tqdm's numbers (`1.23k rows/s`), or the seconds per item when under one a
    second (`2.50 s per row`); empty before the first item."""
    if seconds <= 0 or n <= 0:
        return ""
    if n >= seconds:
        return f"{tqdm.format_sizeof(n / seconds)} {unit}/s"
    return f"{tqdm.format_sizeof(seconds / n)} s per {unit.rstrip('s')}"


class Progress:
    """`done` of `total` `unit`: a tqdm bar on a terminal, periodic lines otherwise."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "rows", brief: bool = False):
        self.desc, self.total, self.unit, self.brief = desc, total, unit, brief
        self.printed = False
        self.done, self.start, self.last = 0, time.perf_counter(), time.perf_counter()
        self.postfix = ""
        self.bar = None
        self.closed = False
        if _state["stream"] is not None and _state["tty"]:
            self.bar = tqdm(total=total, desc=f"  {desc}", unit=f" {unit}", file=_state["stream"],
                            dynamic_ncols=True, leave=True, mininterval=0.5)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.set(self.done + n, postfix)

    def set(self, done: int, postfix: str | None = None) -> None:
        step = done - self.done
        self.done = done
        if postfix is not None:
            self.postfix = postfix
        if self.bar is not None:
            if postfix is not None:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(step)
            return
        now = time.perf_counter()
        if now - self.last >= LINE_INTERVAL_S:
            self.last = now
            self._line(now)

    def _line(self, now: float, final: bool = False) -> None:
        elapsed = now - self.start
        if self.total:
            share = f"{self.done:,}/{self.total:,} {self.unit} ({100 * self.done / self.total:.0f}%)"
        else:
            share = f"{self.done:,} {self.unit}"
        parts = [share, _rate(self.done, elapsed, self.unit)]
        if final:
            parts.append(f"in {tqdm.format_interval(elapsed)}")
        elif self.total and self.done:
            parts.append(f"ETA {tqdm.format_interval(elapsed * (self.total - self.done) / self.done)}")
        if self.postfix:
            parts.append(self.postfix)
        text = f"  {self.desc}: " + ", ".join(p for p in parts if p)
        if final and self.brief and not self.printed:  # a short step: the log file only
            logger.info(text.strip())
            return
        self.printed = True
        if _state["stream"] is not None and not _state["verbose"]:
            print(text, file=_state["stream"], flush=True)
        logger.info(text.strip())  # verbose: the terminal shows it as a log line, once

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
            logger.info("%s: %d %s in %.1fs", self.desc, self.done, self.unit,
                        time.perf_counter() - self.start)
        else:
            self._line(time.perf_counter(), final=True)


def progress(desc: str, total: int | None = None, unit: str = "rows", brief: bool = False) -> Progress:
    """A progress report (`Progress`). `brief`: a step that ends before its first periodic line
    leaves no line on the terminal (only in the log), so short runs stay short."""
    return Progress(desc, total, unit, brief)
