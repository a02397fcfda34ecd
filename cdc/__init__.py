"""cdc: change data capture for Python teams.

Read the PostgreSQL WAL (pgoutput) or the MySQL/MariaDB binlog, transform each
committed row change with plain Python callables, and deliver it to files,
brokers, HTTP endpoints or databases, checkpointing only what every sink
acknowledged.
"""

from .abc import CheckpointStore, Sink, Source, Transform
from .config import Config, Context, load_config
from .errors import (
    CdcError,
    CheckpointError,
    ConfigError,
    PermanentError,
    PermanentSinkError,
    SinkError,
    SourceConnectionError,
    SourceError,
    SourceSetupError,
    TransformError,
    TransientError,
    TransientSinkError,
)
from .event import UNAVAILABLE, ChangeEvent, Commit
from .transforms.chain import DropEvent

__version__ = "0.1.0"

__all__ = [
    "ChangeEvent",
    "Commit",
    "UNAVAILABLE",
    "DropEvent",
    "Source",
    "Sink",
    "Transform",
    "CheckpointStore",
    "Config",
    "Context",
    "load_config",
    "CdcError",
    "ConfigError",
    "SourceError",
    "SourceSetupError",
    "SourceConnectionError",
    "TransformError",
    "SinkError",
    "TransientSinkError",
    "PermanentSinkError",
    "CheckpointError",
    "TransientError",
    "PermanentError",
]
