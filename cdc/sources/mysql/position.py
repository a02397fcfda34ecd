"""Binlog positions: a GTID set when the server has GTIDs, else file and position.

A checkpoint is a JSON dict taken only at a transaction boundary::

    {"gtid": "0-1-4711", "file": "binlog.000003", "pos": 81234}          # MariaDB
    {"gtid": "3e11fa47-...:1-4711", "file": "binlog.000003", "pos": 81234}  # MySQL, gtid_mode=ON
    {"file": "binlog.000003", "pos": 81234}                               # MySQL, gtid_mode=OFF

MariaDB always writes GTIDs (``domain-server-seq``); the state is the last GTID of
each domain, which is what ``@slave_connect_state`` takes.  MySQL's is the set of
executed GTIDs (``uuid:1-n``), what ``COM_BINLOG_DUMP_GTID`` takes.
"""

from __future__ import annotations

from pymysqlreplication.gtid import Gtid, GtidSet

__all__ = ["GtidState"]


class GtidState:
    """The GTIDs of every transaction read so far, as the server wants them on resume."""

    def __init__(self, text: str, mariadb: bool) -> None:
        self.mariadb = mariadb
        if mariadb:
            self.domains = {g.split("-", 1)[0]: g for g in text.replace(" ", "").split(",") if g}
        else:
            self.set = GtidSet(text.replace("\n", "") if text else None)

    def add(self, gtid: str) -> None:
        if self.mariadb:
            self.domains[gtid.split("-", 1)[0]] = gtid
        else:
            self.set = self.set + Gtid(gtid)

    def __str__(self) -> str:
        if self.mariadb:
            return ",".join(self.domains[d] for d in sorted(self.domains, key=int))
        return str(self.set)
