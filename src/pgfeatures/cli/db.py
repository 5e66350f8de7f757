"""``pgfeatures db start|stop|status|dsn``: the embedded PostgreSQL server.

Only ``start`` creates or starts the cluster. ``dsn`` prints the DSN of an existing cluster
without starting it (a note on stderr says when it is not running; no cluster: exit 3), and
``status`` and ``stop`` never create anything either.
"""

from __future__ import annotations

import argparse

from .common import EXIT_NOT_RUNNING, CliError, Command, add_json, require
from .output import Output


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        choices=["start", "stop", "status", "dsn"],
        help="start: create the cluster if needed and start it; stop; status (exit 3 when not running); "
        "dsn: print the DSN of the existing cluster, without starting it (exit 3 when none exists)",
    )
    add_json(p)


def run(args: argparse.Namespace, out: Output) -> int:
    from .. import embedded

    st = embedded.status()
    if args.action == "status":
        info = {
            "home": str(st.home),
            "initialized": st.initialized,
            "running": st.running,
            "pid": st.pid,
            "port": st.port,
            "dsn": st.dsn,
        }
        if args.json:
            out.json(info)
        else:
            out.say(
                f"home: {st.home}\ninitialized: {st.initialized}\nrunning: {st.running}"
                + (f" (pid {st.pid})" if st.pid else "")
                + (f"\ndsn: {st.dsn}" if st.dsn else "")
            )
        return 0 if st.running else EXIT_NOT_RUNNING
    if args.action == "dsn":
        if not st.initialized or st.dsn is None:
            raise CliError(
                f"no embedded cluster in {st.home} (PGFEATURES_HOME): create and start it with 'pgfeatures db start'",
                EXIT_NOT_RUNNING,
            )
        if not st.running:
            out.note("note: the embedded server is not running: start it with 'pgfeatures db start'")
        if args.json:
            out.json({"dsn": st.dsn, "running": st.running})
        else:
            print(st.dsn, file=out.stdout, flush=True)  # the bare DSN, for $(pgfeatures db dsn)
        return 0
    if args.action == "stop":
        stopped = embedded.stop() if st.running else False
        if args.json:
            out.json({"stopped": stopped})
        else:
            out.say("stopped" if stopped else "not running")
        return 0
    require("db start", "embedded")
    dsn = embedded.ensure_running()
    if args.json:
        out.json({"dsn": dsn, "running": True})
    else:
        out.say(f"embedded PostgreSQL running: {dsn}")
    return 0


COMMANDS = (Command("db", "manage the embedded PostgreSQL server", configure, run),)
