package bench;

import java.io.IOException;
import java.io.PrintStream;
import java.lang.management.ManagementFactory;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicReference;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.StringSerializer;

import io.debezium.DebeziumException;
import io.debezium.embedded.async.ConvertingAsyncEngineBuilderFactory;
import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.Header;
import io.debezium.engine.format.Json;

/**
 * Debezium's PostgreSQL connector in the embedded engine, timed until it has delivered N changes.
 *
 * <pre>
 * java -jar target/debezium-bench.jar --mode discard|kafka --port 5432 --dbname bench --slot s1 \
 *      --publication pub --count 400000 --offsets /tmp/offsets.dat [--bootstrap 127.0.0.1:9092] [--topic-prefix dbz]
 *      [--snapshot-mode no_data|initial_only]
 * </pre>
 *
 * The engine is built the way Debezium Server builds it (the asynchronous engine, JSON key, value and
 * header formats) and configured with the connector's defaults except: pgoutput, the given slot and
 * publication (the publication created beforehand; the slot too, except for a snapshot),
 * {@code snapshot.mode=no_data} (or {@code --snapshot-mode}: {@code initial_only} times the initial snapshot
 * of {@code bench/snapshot_bench.py}), JSON without schemas.
 *
 * <ul>
 * <li>{@code discard}: each change is counted (and its JSON length summed) and dropped.</li>
 * <li>{@code kafka}: Debezium Server's Kafka sink loop: every record of the batch is sent with one
 * KafkaProducer (acks=all, idempotence on, String serializers, other settings at their defaults), then
 * the sink waits for each send's acknowledgement in order, marks that record processed, and marks the
 * batch finished once all are acknowledged.</li>
 * </ul>
 *
 * When the N-th change has been delivered it prints one JSON line on stdout
 * ({@code {"delivered": N, "done_at": epoch seconds, "jvm_start": epoch seconds, ...}}), closes the
 * engine and exits 0.  Exits 1 when the engine stops with an error before that.
 */
public final class DebeziumBench {

    private static final long DELIVERY_TIMEOUT_MS = 30_000; // Debezium Server's wait.message.delivery.timeout.ms

    private final String mode;
    private final long target;
    private final KafkaProducer<String, String> producer;
    private final CountDownLatch finished = new CountDownLatch(1);
    private final AtomicReference<String> failure = new AtomicReference<>();
    private long delivered;
    private long jsonBytes;
    private long batches;
    private double firstAt;
    private double doneAt;

    private DebeziumBench(String mode, long target, KafkaProducer<String, String> producer) {
        this.mode = mode;
        this.target = target;
        this.producer = producer;
    }

    private static double now() {
        return System.currentTimeMillis() / 1000.0;
    }

    /** Called by the engine with each batch, on the engine's thread. */
    private void handleBatch(List<ChangeEvent<String, String>> records,
                             DebeziumEngine.RecordCommitter<ChangeEvent<String, String>> committer)
            throws InterruptedException {
        if (batches++ == 0) {
            firstAt = now();
        }
        if (producer == null) {
            for (ChangeEvent<String, String> record : records) {
                delivered(record);
                committer.markProcessed(record);
            }
        }
        else {
            List<Future<RecordMetadata>> sent = new ArrayList<>(records.size());
            for (ChangeEvent<String, String> record : records) {
                RecordHeaders headers = new RecordHeaders();
                for (Header<?> header : record.headers()) {
                    Object value = header.getValue();
                    headers.add(header.getKey(), value == null ? null
                            : value instanceof byte[] ? (byte[]) value : value.toString().getBytes(StandardCharsets.UTF_8));
                }
                sent.add(producer.send(new ProducerRecord<>(record.destination(), null, null,
                        record.key(), record.value(), headers)));
            }
            for (int i = 0; i < records.size(); i++) {
                try {
                    sent.get(i).get(DELIVERY_TIMEOUT_MS, TimeUnit.MILLISECONDS);
                }
                catch (ExecutionException | TimeoutException e) {
                    throw new DebeziumException("delivery to Kafka failed", e);
                }
                delivered(records.get(i));
                committer.markProcessed(records.get(i));
            }
        }
        committer.markBatchFinished();
    }

    private void delivered(ChangeEvent<String, String> record) {
        if (record.value() == null) {
            return; // a tombstone: not a change (none in this workload)
        }
        jsonBytes += record.value().length();
        if (++delivered == target) {
            doneAt = now();
            finished.countDown();
        }
    }

    private static Map<String, String> parseArgs(String[] args) {
        Map<String, String> opts = new HashMap<>();
        for (int i = 0; i + 1 < args.length; i += 2) {
            if (!args[i].startsWith("--")) {
                throw new IllegalArgumentException("expected --option value, got " + args[i]);
            }
            opts.put(args[i].substring(2), args[i + 1]);
        }
        return opts;
    }

    private static Properties connectorConfig(Map<String, String> opts) {
        Properties props = new Properties();
        props.setProperty("name", "debezium-bench");
        props.setProperty("connector.class", "io.debezium.connector.postgresql.PostgresConnector");
        props.setProperty("offset.storage", "org.apache.kafka.connect.storage.FileOffsetBackingStore");
        props.setProperty("offset.storage.file.filename", opts.get("offsets"));
        props.setProperty("database.hostname", opts.getOrDefault("host", "127.0.0.1"));
        props.setProperty("database.port", opts.getOrDefault("port", "5432"));
        props.setProperty("database.user", opts.getOrDefault("user", "postgres"));
        props.setProperty("database.password", opts.getOrDefault("password", ""));
        props.setProperty("database.dbname", opts.getOrDefault("dbname", "bench"));
        props.setProperty("topic.prefix", opts.getOrDefault("topic-prefix", "dbz"));
        props.setProperty("plugin.name", "pgoutput");
        props.setProperty("slot.name", opts.get("slot"));
        props.setProperty("publication.name", opts.get("publication"));
        props.setProperty("publication.autocreate.mode", "disabled");
        props.setProperty("table.include.list", opts.getOrDefault("table", "public.orders"));
        props.setProperty("snapshot.mode", opts.getOrDefault("snapshot-mode", "no_data"));
        // JSON without schemas (Debezium Server: debezium.format.schemas.enable=false)
        props.setProperty("key.converter.schemas.enable", "false");
        props.setProperty("value.converter.schemas.enable", "false");
        props.setProperty("header.converter.schemas.enable", "false");
        return props;
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> opts = parseArgs(args);
        String mode = opts.getOrDefault("mode", "discard");
        long target = Long.parseLong(opts.getOrDefault("count", "400000"));
        if (!mode.equals("discard") && !mode.equals("kafka")) {
            throw new IllegalArgumentException("--mode must be discard or kafka");
        }
        KafkaProducer<String, String> producer = null;
        if (mode.equals("kafka")) {
            Properties conf = new Properties();
            conf.setProperty(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, opts.get("bootstrap"));
            conf.setProperty(ProducerConfig.ACKS_CONFIG, "all");
            conf.setProperty(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
            conf.setProperty(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
            conf.setProperty(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
            producer = new KafkaProducer<>(conf);
        }
        DebeziumBench bench = new DebeziumBench(mode, target, producer);
        System.exit(bench.run(connectorConfig(opts)));
    }

    private int run(Properties props) throws InterruptedException {
        DebeziumEngine<ChangeEvent<String, String>> engine = DebeziumEngine
                .create(Json.class, Json.class, Json.class, ConvertingAsyncEngineBuilderFactory.class.getName())
                .using(props)
                .using((DebeziumEngine.CompletionCallback) (success, message, error) -> {
                    if (!success) {
                        failure.compareAndSet(null, message + (error != null ? ": " + error : ""));
                    }
                    finished.countDown();
                })
                .notifying(this::handleBatch)
                .build();
        ExecutorService executor = Executors.newSingleThreadExecutor(task -> {
            Thread thread = new Thread(task, "debezium-engine");
            thread.setDaemon(true); // never keeps the JVM alive after main returns
            return thread;
        });
        executor.execute(engine);
        finished.await();

        PrintStream out = System.out;
        int status = 0;
        if (delivered >= target) {
            out.printf("{\"mode\": \"%s\", \"delivered\": %d, \"json_bytes\": %d, \"batches\": %d, "
                    + "\"jvm_start\": %.3f, \"first_at\": %.3f, \"done_at\": %.3f}%n",
                    mode, delivered, jsonBytes, batches,
                    ManagementFactory.getRuntimeMXBean().getStartTime() / 1000.0, firstAt, doneAt);
        }
        else {
            System.err.println("debezium-bench: engine stopped after " + delivered + " of " + target
                    + " changes: " + failure.get());
            status = 1;
        }
        out.flush();
        try {
            engine.close();
        }
        catch (IOException | RuntimeException e) { // e.g. the engine has already shut down after a failure
            if (status == 0) {
                System.err.println("debezium-bench: closing the engine: " + e);
            }
        }
        executor.shutdown();
        executor.awaitTermination(30, TimeUnit.SECONDS);
        if (producer != null) {
            producer.close(Duration.ofSeconds(5));
        }
        return status;
    }
}
