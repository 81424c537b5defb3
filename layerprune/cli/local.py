"""CLI commands that run on the server side: ``serve``, ``worker``, ``migrate``, ``keys create``.

They read the configuration from ``LAYERPRUNE_*`` like the service does. ``layerprune.cli`` imports
this module only for these commands, so ``layerprune --help`` and the client commands stay fast;
the API server and the Celery worker are imported only by the command that runs them.
"""

from __future__ import annotations

import argparse
import os
import sys

from layerprune.cli import EXIT_FAILED, EXIT_OK
from layerprune.db.keys import add_key, key_secret
from layerprune.db.migrate import current_revision, ensure_schema, upgrade_to_head
from layerprune.db.session import database_url, session_scope
from layerprune.settings import get_settings, reset_settings_cache

APP = "layerprune.api.app:app"


def migrate() -> None:
    upgrade_to_head(get_settings().effective_database_url)


def cmd_serve(args: argparse.Namespace) -> int:
    from layerprune.api.server import serve  # noqa: PLC0415 - uvicorn and the API: for `serve` only

    if args.no_migrate:
        # The app reads its settings from the environment: the flag is LAYERPRUNE_AUTO_MIGRATE=0.
        os.environ["LAYERPRUNE_AUTO_MIGRATE"] = "0"
        reset_settings_cache()
    settings = get_settings()
    key_secret(settings)  # a missing LAYERPRUNE_KEY_SECRET is one clear line, not a traceback from uvicorn
    # Migrations are the app's start-up work (db.migrate.ensure_schema), before it accepts connections.
    serve(APP, args.host, args.port, settings, log_level=args.log_level)
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    if args.queues:
        # The worker reads its queues from the settings; the flag is the same knob.
        os.environ["LAYERPRUNE_WORKER_QUEUES"] = args.queues
        reset_settings_cache()
    from layerprune.worker import main as worker_main  # noqa: PLC0415 - Celery's worker: for `worker` only

    extra = [a for a in (args.extra or []) if a != "--"]
    result = worker_main(extra)
    return int(result or 0)


def cmd_migrate(_: argparse.Namespace) -> int:
    migrate()
    print(f"database at revision {current_revision()} ({_redact(database_url())})")
    return EXIT_OK


def cmd_keys(args: argparse.Namespace) -> int:
    key_secret()  # before touching the database: a missing secret is a one-line error
    ensure_schema()  # LAYERPRUNE_AUTO_MIGRATE=0 and behind: a one-line error
    with session_scope() as session:
        key = add_key(session, args.tenant, name=args.name)
    # Printed once: only its hash is stored, so it cannot be shown again.
    print(key)
    print(
        f"created an API key for tenant {args.tenant!r}; store it now, it is not shown again", file=sys.stderr
    )
    return EXIT_OK


def _redact(url: str) -> str:
    # postgresql+psycopg://user:secret@host/db → postgresql+psycopg://user:***@host/db. The
    # credentials end at the authority's LAST "@" (a password may hold one; the path never counts).
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    cred, at, host = authority.rpartition("@")
    if not at:
        return url
    user = cred.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{slash}{path}"


def run(args: argparse.Namespace) -> int:
    commands = {"serve": cmd_serve, "worker": cmd_worker, "migrate": cmd_migrate, "keys": cmd_keys}
    try:
        return commands[args.command](args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
