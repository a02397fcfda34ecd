"""Sinks deliver batches of events and return once the destination accepted them.

To add one: write a class with ``open``, ``write(events)`` and ``close`` (see
``cdc.abc.Sink``) whose ``__init__`` keyword arguments are its YAML options, then
name it here, publish it under the entry-point group ``cdc.sinks``, or use
``type: mymodule:MySink`` in the config.
"""

SINKS = {
    "file": "cdc.sinks.file:FileSink",
    "stdout": "cdc.sinks.stdout:StdoutSink",
    "discard": "cdc.sinks.discard:DiscardSink",
    "kafka": "cdc.sinks.kafka:KafkaSink",
    "rabbitmq": "cdc.sinks.rabbitmq:RabbitMQSink",
    "redis": "cdc.sinks.redis:RedisSink",
    "http": "cdc.sinks.http:HttpSink",
    "postgres": "cdc.sinks.mirror:PostgresMirrorSink",
    "mysql": "cdc.sinks.mirror:MySQLMirrorSink",
    "table": "cdc.sinks.table:TableSink",
}
