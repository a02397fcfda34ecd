"""A private single-node Apache Kafka (KRaft, broker+controller in one JVM).

The jars come from Maven Central, fetched once into
`${CDC_CACHE:-~/.cache/cdc}/kafka-<version>/libs` (`cd tests && python -m servers.kafka --fetch`).
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import tempfile
import uuid
from pathlib import Path

from cdc.demo.server import HOST, Server, ServerError, find_binary, free_port

KAFKA_VERSION = "4.4.0"

POM = """\
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>cdc</groupId><artifactId>kafka-jars</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{version}</version></dependency>
  </dependencies>
</project>
"""

LOG4J2 = """\
status = error
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""

STARTED = "Kafka Server started"


def cache_dir() -> Path:
    return Path(os.environ.get("CDC_CACHE") or "~/.cache/cdc").expanduser()


def _mvn(*args: str, cwd: Path) -> None:
    result = subprocess.run([find_binary("mvn"), "-q", "-B", *args], cwd=cwd,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ServerError(f"mvn {args[0]} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


def ensure_kafka_jars(version: str = KAFKA_VERSION) -> Path:
    """The libs dir for this Kafka version, downloading it with Maven the first time."""
    libs = cache_dir() / f"kafka-{version}" / "libs"
    if libs.is_dir():
        return libs
    libs.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=libs.parent) as tmp:
        work = Path(tmp)
        (work / "pom.xml").write_text(POM.format(version=version))
        _mvn("dependency:copy-dependencies", "-DincludeScope=runtime", "-DoutputDirectory=libs", cwd=work)
        # Kafka logs through SLF4J 1.x; route it to the log4j2 it ships with.
        log4j = next((work / "libs").glob("log4j-api-*.jar")).name[len("log4j-api-"):-len(".jar")]
        _mvn("dependency:copy", f"-Dartifact=org.apache.logging.log4j:log4j-slf4j-impl:{log4j}",
             "-DoutputDirectory=libs", cwd=work)
        try:
            os.replace(work / "libs", libs)
        except OSError:  # another process got there first
            if not libs.is_dir():
                raise
    return libs


class KafkaServer(Server):
    """`KafkaServer(port=None, data_dir=None, settings=None, version=KAFKA_VERSION)`.

    `.bootstrap` is "127.0.0.1:<port>"; the controller listens on `.controller_port`.
    `settings` add to or override server.properties.
    """

    name = "kafka"
    start_timeout = 120.0

    def __init__(self, port=None, data_dir=None, settings: dict | None = None, version: str = KAFKA_VERSION):
        super().__init__(port, data_dir)
        self.controller_port = free_port()
        self.version = version
        self.settings = settings or {}
        self.java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") \
            else find_binary("java")

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def properties(self) -> dict[str, str]:
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.bootstrap}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "kraft-logs"),
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # a restarted broker re-registers only once its old session has expired
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
            **self.settings,
        }

    def _java(self, main: str, *args: str) -> list[str]:
        return [self.java, "-Xms64m", "-Xmx512m", "-XX:+UseG1GC", "-XX:-UsePerfData",
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                "-cp", f"{ensure_kafka_jars(self.version)}/*", main, *args]

    def init(self) -> None:
        props = self.data_dir / "server.properties"
        props.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        (self.data_dir / "log4j2.properties").write_text(LOG4J2)
        if (self.data_dir / "kraft-logs" / "meta.properties").exists():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        # --cluster-id=ID: an id starting with "-" (1 in 64) must not read as an option
        self.run(self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(props)))

    def command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.data_dir / "server.properties"))

    def ready(self) -> bool:
        return STARTED in self.log_since_start() and super().ready()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m servers.kafka", description=__doc__)
    parser.add_argument("--fetch", action="store_true", help="download the Kafka jars (once) and print their dir")
    parser.add_argument("--version", default=KAFKA_VERSION)
    args = parser.parse_args()
    if not args.fetch:
        parser.error("nothing to do (try --fetch)")
    print(ensure_kafka_jars(args.version))


if __name__ == "__main__":
    main()
