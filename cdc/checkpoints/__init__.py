"""Checkpoint stores keep a source's last fully acknowledged position."""

CHECKPOINTS = {
    "file": "cdc.checkpoints.file:FileCheckpointStore",
    "postgres": "cdc.checkpoints.postgres:PostgresCheckpointStore",
    "memory": "cdc.checkpoints.memory:MemoryCheckpointStore",
}
