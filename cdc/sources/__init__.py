"""Sources read a database's change log and yield ``ChangeEvent``s and ``Commit``s.

Built-in types (YAML ``type``) map to their classes here; installed packages may add
more through the entry-point group ``cdc.sources``.
"""

SOURCES = {
    "postgres": "cdc.sources.postgres:PostgresSource",
    "mysql": "cdc.sources.mysql:MySQLSource",
}
