"""`impasto db`: bring the database named by IMPASTO_DATABASE_URL to the schema's revision."""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files

from .db import describe_db_error
from .settings import SettingsError, load_settings


def alembic_config(database_url: str):  # -> alembic.config.Config
    """Alembic's configuration without an alembic.ini: the scripts ship inside the package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(files("migrations")))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(database_url), revision)


def current_revision(database_url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from .db import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """Create or upgrade the database schema (upgrade, downgrade, current, revision)."""
    parser = argparse.ArgumentParser(prog="impasto db", description=main.__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    up = sub.add_parser("upgrade", help="upgrade to a revision (default: head)")
    up.add_argument("revision", nargs="?", default="head")
    down = sub.add_parser("downgrade", help="downgrade to a revision (base: drop everything)")
    down.add_argument("revision")
    sub.add_parser("current", help="print the database's revision")
    new = sub.add_parser("revision", help="write a new revision from the models (developers)")
    new.add_argument("-m", "--message", required=True)
    args = parser.parse_args(argv)
    try:
        url = load_settings().database_url
    except SettingsError as err:
        print(f"impasto db: error: {err}", file=sys.stderr)
        return 2
    import sqlalchemy.exc
    from alembic.util import CommandError

    try:
        if args.action == "upgrade":
            upgrade(url, args.revision)
        elif args.action == "downgrade":
            downgrade(url, args.revision)
        elif args.action == "current":
            print(current_revision(url) or "(empty database)")
        else:
            from alembic import command

            command.revision(alembic_config(url), message=args.message, autogenerate=True)
    except sqlalchemy.exc.OperationalError as err:
        print(f"impasto db: error: cannot reach the database: {describe_db_error(err)}", file=sys.stderr)
        return 1
    except CommandError as err:
        print(f"impasto db: error: {err}", file=sys.stderr)
        return 2
    return 0
