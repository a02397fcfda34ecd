"""``type: mysql``: MySQL 8 / MariaDB 10.11 binlog source (see docs/mysql.md)."""

from .source import MySQLSource

__all__ = ["MySQLSource"]
