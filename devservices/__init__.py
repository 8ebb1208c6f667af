"""Throwaway Redis/PostgreSQL servers and a fault-injecting TCP proxy for dev runs and tests.

`python -m devservices env` provisions REDIS_URL / DATABASE_URL for `make run` / `make test`.
"""

from .binaries import find_postgres_bindir, find_redis_server
from .postgres import PostgresServer
from .proxy import TcpProxy
from .redis import RedisServer

__all__ = ["PostgresServer", "RedisServer", "TcpProxy", "find_postgres_bindir", "find_redis_server"]
