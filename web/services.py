"""What the web tier talks to, built once per app: settings, database sessions, storage, and
the Celery app it enqueues with."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import Flask, current_app
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, session_factory
from shared.settings import Settings
from shared.storage import Storage, open_storage
from shared.tasks import make_celery


@dataclass
class Services:
    settings: Settings
    sessions: sessionmaker[Session]
    storage: Storage
    celery: Celery

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        return cls(
            settings=settings,
            sessions=session_factory(make_engine(settings.database_url)),
            storage=open_storage(settings.storage_url, s3_endpoint_url=settings.s3_endpoint_url),
            celery=make_celery(settings),
        )


def init_services(app: Flask, services: Services) -> None:
    app.extensions["impasto"] = services


def services() -> Services:
    return current_app.extensions["impasto"]
