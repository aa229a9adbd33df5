"""What every long-running role (the engine's daemon, a Ray worker host) runs around its loop:
logging, the state-dir lock and the bind check (`daemon_process`), signal handlers that only
record and the REST API (`served`), and two background loops: the GPU memory poll and the
systemd watchdog, paced by the loop's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from typing import Any

from llm_supervisor.api.embedded import EmbeddedServer
from llm_supervisor.api.server import check_bind_allowed, create_app, start_api, stop_api
from llm_supervisor.config.redaction import Redactor
from llm_supervisor.config.settings import Settings
from llm_supervisor.host import gpus as host_gpus
from llm_supervisor.clock import Clock, first_of
from llm_supervisor.runtime.notify import Notifier
from llm_supervisor.store.lock import DaemonLock

log = logging.getLogger("llm_supervisor")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class RedactingFilter(logging.Filter):
    """Every record's message with the known secrets masked (config/redaction.py)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if self.redactor:
            message = record.getMessage()
            masked = self.redactor.text(message)
            if masked != message or record.args:
                record.msg, record.args = masked, ()
            if record.exc_info and not record.exc_text:
                record.exc_text = self.redactor.text(logging.Formatter().formatException(record.exc_info))
            elif record.exc_text:
                record.exc_text = self.redactor.text(record.exc_text)
        return True


def configure_logging(redactor: Redactor | None = None) -> None:
    level = os.environ.get("LLM_SUPERVISOR_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler()
    fmt = "%(levelname)s %(message)s" if os.environ.get("INVOCATION_ID") else "%(asctime)s %(levelname)s %(message)s"
    handler.setFormatter(logging.Formatter(fmt, "%Y-%m-%d %H:%M:%S"))
    if redactor:
        handler.addFilter(RedactingFilter(redactor))
    root = logging.getLogger("llm_supervisor")
    root.handlers[:] = [handler]
    root.setLevel(level if level in logging._nameToLevel else "INFO")
    root.propagate = False


@contextlib.contextmanager
def daemon_process(settings: Settings, redactor: Redactor | None = None) -> Iterator[None]:
    """What every long-running role does first: logging (secrets masked), the bind check for the
    admin API, and the lock that keeps one daemon per state dir (held until the block ends)."""
    configure_logging(redactor or Redactor.from_inputs(settings, None, os.environ))
    token = settings.api_token.get_secret_value() if settings.api_token else None
    check_bind_allowed(settings.api_host, token)
    lock = DaemonLock(settings.state_dir)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


class EarlySignals:
    """SIGTERM, SIGINT and SIGHUP from just before a daemon's event loop is built until `served`
    hands them to the loop: recorded, not raised. A KeyboardInterrupt while asyncio builds its
    loop leaves a half-made loop that prints a traceback as it is collected, and a coroutine never
    awaited; recorded, the Ctrl-C reaches the daemon's own handler as soon as there is one, and one
    that comes while the finished loop is torn down is dropped (the daemon is exiting anyway).
    Signals belong to the process, so does this record: one instance, EARLY."""

    def __init__(self) -> None:
        self.active = False
        self._seen: list[signal.Signals] = []

    def __call__(self, signum: int, frame: Any) -> None:
        self._seen.append(signal.Signals(signum))

    def take(self) -> list[signal.Signals]:
        seen, self._seen = self._seen, []
        return seen


EARLY = EarlySignals()


def run_daemon_loop(start: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """asyncio.run(start()) for a long-running role whose coroutine enters `served`, with stop
    signals recorded around it (EarlySignals); the handlers from before it are back after it."""
    previous = {sig: signal.signal(sig, EARLY) for sig in SIGNALS}
    EARLY.active = True
    try:
        return asyncio.run(start())
    finally:
        EARLY.active = False
        EARLY.take()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def log_placement(placement: Any, what: str = "placement") -> None:
    log.info("%s: %s CPUs %s, memory policy %s%s", what, "pinned to" if placement.pinned else "not pinned;",
             placement.to_json()["cpulist"], placement.memory_policy,
             f" {placement.nodes}" if placement.nodes else "")


@contextlib.asynccontextmanager
async def served(settings: Settings, status: Callable[[], dict[str, Any]], command: Callable[[str], None],
                 on_signal: Callable[[signal.Signals], None], collectors: Iterable[Any] = (), *,
                 series: Callable[[], dict[str, Any]] | None = None, logs: Callable[..., Any] | None = None
                 ) -> AsyncIterator[EmbeddedServer]:
    """SIGTERM, SIGINT and SIGHUP to `on_signal` (which only records), and the REST API over
    `status` and `command` (and more Prometheus `collectors`, the status page's `series`, the
    engine's `logs`), for as long as the block runs."""
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    for sig in EARLY.take():  # a Ctrl-C while the loop was being built
        on_signal(sig)
    try:
        token = settings.api_token.get_secret_value() if settings.api_token else None
        api = await start_api(create_app(status, command, token, collectors, series_source=series, logs_source=logs),
                              settings.api_host, settings.api_port)
        log.info("REST API on %s (status page: %s/)", settings.url, settings.url)
        try:
            yield api
        finally:
            await stop_api(api)
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
            if EARLY.active:
                signal.signal(sig, EARLY)


async def poll_gpus(inventory: host_gpus.GpuInventory | None, clock: Clock, interval_s: float,
                    publish: Callable[[list[dict[str, Any]]], None], wake: asyncio.Event | None = None) -> None:
    """GPU memory for /status, read in a thread (NVML blocks) every `interval_s`, and at once when
    `wake` is set (the daemon sets it as its state changes, so a ready engine's memory shows with
    `ready` and a relaunch's freed memory with `backoff`, not up to `interval_s` later)."""
    while True:
        if wake is not None:
            wake.clear()
        if inventory is not None:
            try:
                publish(await asyncio.to_thread(host_gpus.gpu_memory, inventory))
            except Exception as exc:  # noqa: BLE001 - NVML hiccups must not kill the daemon
                log.debug("gpu poll failed: %s", exc)
        if wake is None:
            await clock.sleep(interval_s)
        else:
            await first_of(clock, wake.wait(), interval_s)


async def keep_watchdog(notifier: Notifier, clock: Clock) -> None:
    """WATCHDOG=1 from the loop at half of WATCHDOG_USEC: a loop that hangs stops pinging."""
    interval = notifier.watchdog_interval_s()
    while interval:
        notifier.watchdog()
        await clock.sleep(interval)
