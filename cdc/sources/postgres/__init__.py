"""PostgreSQL source: pgoutput over the streaming replication protocol."""

from .source import PostgresSource

__all__ = ["PostgresSource"]
