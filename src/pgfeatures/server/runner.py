"""Running the service: uvicorn, one or more worker processes, each with its own store and pools.

uvicorn starts workers by spawning fresh interpreters that import the app
factory by name, so the resolved settings travel to them as JSON in
``$PGFEATURES_SERVER_CONFIG``. With more than one worker, Prometheus
metrics are kept in a shared directory (``$PROMETHEUS_MULTIPROC_DIR``,
created here unless set) so that any worker's ``/metrics`` reports all.

Why uvicorn (with uvloop and httptools) rather than granian: on this
machine, with this app, granian's latency was the same within noise and its
server CPU per request the same or higher (0.45 against 0.34 ms at one
client, 0.34-0.37 against 0.30-0.35 ms at 32), so it bought nothing; uvicorn
drains in-flight requests on SIGTERM, runs ``workers=N`` from one call, and
is what Starlette deploys with. See docs/http.md.

The listening socket is bound here (``bind``), before anything is printed or started, and handed
to uvicorn: an address in use is an OSError for the caller to report, not uvicorn's log line and
exit code after a banner that said the service was up.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import socket
import tempfile
from typing import cast

from .config import ServerConfig
from .metrics import MULTIPROC_ENV
from .protocol import HeaderTimeoutProtocol

CONFIG_ENV = "PGFEATURES_SERVER_CONFIG"
FACTORY = "pgfeatures.server.app:app_from_env"


def config_from_env() -> ServerConfig:
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise RuntimeError(f"${CONFIG_ENV} is not set: start the service with 'pgfeatures serve'")
    return ServerConfig.from_json(text)


def log_config() -> dict:
    """uvicorn's logging setup plus the ``pgfeatures`` logger on its default handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["pgfeatures"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def bind(config: ServerConfig) -> socket.socket:
    """The socket the service will listen on, bound to ``host:port`` and listening (connections
    queue until the service accepts them). Raises OSError: the address is in use, not this
    machine's, or not permitted."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET  # as uvicorn decides
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart reuses its port at once
        sock.bind((config.host, config.port))
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)  # the workers (with --workers > 1) are spawned with it
    return sock


def _reloading_workers() -> type:
    from uvicorn.supervisors import Multiprocess

    class ReloadingWorkers(Multiprocess):
        """uvicorn's supervisor of worker processes, but SIGHUP reloads the definitions in every worker
        (passed on to each: they reload in place, ``Service.reload``) instead of restarting the workers,
        whose replacements would answer 503 while they warm up."""

        def handle_hup(self) -> None:
            for worker in self.processes:
                if worker.process.pid is not None and worker.is_alive(timeout=1):
                    os.kill(worker.process.pid, signal.SIGHUP)

    return ReloadingWorkers


def run(config: ServerConfig, sock: socket.socket | None = None) -> bool:
    """Serve on ``sock`` (default: ``bind(config)``, raising its OSError) until SIGINT/SIGTERM;
    in-flight requests get ``graceful_timeout`` seconds to finish. Closes the socket. False if the
    service did not start (uvicorn logged why)."""
    import uvicorn

    ReloadingWorkers = _reloading_workers()
    sock = sock or bind(config)

    os.environ[CONFIG_ENV] = config.to_json()
    metrics_dir = None
    if config.workers > 1 and not os.environ.get(MULTIPROC_ENV):
        metrics_dir = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="pgfeatures-metrics-")
    try:
        uvicorn_config = uvicorn.Config(
            FACTORY,
            factory=True,
            host=config.host,
            port=config.port,
            workers=config.workers,
            loop="auto",  # uvloop when installed
            http=HeaderTimeoutProtocol,  # httptools, plus the header timeout uvicorn lacks
            log_level=config.log_level,
            log_config=log_config(),
            access_log=config.access_log,
            # uvicorn annotates both int but uses them as asyncio delays, where fractions of a second work
            timeout_graceful_shutdown=cast(int, config.graceful_timeout),
            timeout_keep_alive=cast(int, config.keep_alive),
            server_header=False,
        )
        if config.workers > 1:
            ReloadingWorkers(uvicorn_config, sockets=[sock]).run()
            return True
        server = uvicorn.Server(uvicorn_config)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # as uvicorn.run: Ctrl-C during startup
            pass
        return server.started
    finally:
        sock.close()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
