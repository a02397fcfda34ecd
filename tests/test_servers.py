"""One real round-trip per throwaway server, plus restart and settings checks."""

import time
import uuid

import pika
import psycopg
import pymysql
import redis
from confluent_kafka import Consumer, Producer

from servers import MariaDBServer, PostgresServer


def test_postgres_select(pg_database):
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT 1, current_setting('wal_level')").fetchone() == (1, "logical")


def test_mariadb_select(mariadb_server, mariadb_database):
    db = mariadb_database.rsplit("/", 1)[1]
    conn = pymysql.connect(host="127.0.0.1", port=mariadb_server.port, user="cdc", password="cdc", database=db)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT 1, @@binlog_format, @@binlog_row_image, @@log_bin")
        assert cur.fetchone() == (1, "ROW", "FULL", 1)


def test_kafka_produce_consume(kafka_server):
    topic = f"t-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": kafka_server.bootstrap})
    producer.produce(topic, key=b"k", value=b"hello")
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": kafka_server.bootstrap, "group.id": topic,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 60
        msg = None
        while msg is None and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error():
                raise AssertionError(msg.error())
        assert msg is not None and (msg.key(), msg.value()) == (b"k", b"hello")
    finally:
        consumer.close()


def test_rabbitmq_publish_get(rabbitmq_server):
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_server.url))
    try:
        channel = conn.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.basic_publish("", queue, b"hello")
        _method, _props, body = channel.basic_get(queue, auto_ack=True)
        assert body == b"hello"
    finally:
        conn.close()


def test_redis_set_get(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    client.set("k", "v")
    assert client.get("k") == b"v"


def test_postgres_survives_kill_and_restart():
    with PostgresServer() as pg:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (42)")
        pg.kill()
        assert not pg.running
        pg.start()
        with psycopg.connect(pg.dsn()) as conn:
            assert conn.execute("SELECT id FROM t").fetchone() == (42,)


def test_settings_override():
    with PostgresServer(settings={"wal_level": "replica"}) as pg, psycopg.connect(pg.dsn()) as conn:
        assert conn.execute("SHOW wal_level").fetchone() == ("replica",)
    with MariaDBServer(settings={"binlog_format": "STATEMENT"}) as db, db.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT @@binlog_format")
        assert cur.fetchone() == ("STATEMENT",)
