"""The engine: one ``SourceRunner`` per source database moves events from the reader
through each pipeline's transforms to its sinks, and advances the checkpoint only
over what every sink has acknowledged."""

from .process import tune_process
from .runner import SourceRunner
from .tracker import AckTracker
from .worker import SinkWorker

__all__ = ["SourceRunner", "AckTracker", "SinkWorker", "tune_process"]
