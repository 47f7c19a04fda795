package dev.edgesync.analytics;

import io.apicurio.registry.serde.SerdeConfig;
import io.apicurio.registry.serde.avro.AvroSerde;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.avro.generic.GenericRecord;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;

/**
 * What an analytics team runs on edgesync.events: a Kafka Streams application that reads the
 * events through the Schema Registry (Apicurio's Avro serde, in Confluent wire-format mode)
 * and keeps, per device (the record key), the number of events and the sum of their
 * {@code pressure_kpa} field, written to the output topic as "count sum" on every change.
 * Exactly-once (v2): it reads only committed events and commits its totals with its offsets.
 *
 * <p>Usage: DeviceTotals BOOTSTRAP REGISTRY_V2_URL INPUT_TOPIC OUTPUT_TOPIC APPLICATION_ID
 * STATE_DIR. Runs until killed.
 */
public final class DeviceTotals {
    private DeviceTotals() {}

    public static void main(String[] args) throws InterruptedException {
        if (args.length != 6) {
            System.err.println(
                    "usage: DeviceTotals BOOTSTRAP REGISTRY_V2_URL INPUT OUTPUT APPLICATION_ID STATE_DIR");
            System.exit(2);
        }
        Properties p = new Properties();
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, args[4]);
        p.put(StreamsConfig.STATE_DIR_CONFIG, args[5]);
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");

        AvroSerde<GenericRecord> events = new AvroSerde<>();
        events.configure(
                Map.of(SerdeConfig.REGISTRY_URL, args[1], SerdeConfig.ENABLE_CONFLUENT_ID_HANDLER, true),
                false);

        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(args[2], Consumed.with(Serdes.String(), events))
                .groupByKey()
                .aggregate(
                        () -> "0 0.0",
                        (device, event, totals) -> add(totals, event),
                        Materialized.with(Serdes.String(), Serdes.String()))
                .toStream()
                .to(args[3], Produced.with(Serdes.String(), Serdes.String()));

        KafkaStreams streams = new KafkaStreams(builder.build(), p);
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close();
            stopped.countDown();
        }));
        streams.start();
        stopped.await();
    }

    /** "count sum" with one more event. */
    private static String add(String totals, GenericRecord event) {
        String[] parts = totals.split(" ");
        long count = Long.parseLong(parts[0]) + 1;
        double sum = Double.parseDouble(parts[1]);
        Object fields = event.get("fields");
        if (fields instanceof Map<?, ?> map) {
            for (Map.Entry<?, ?> e : map.entrySet()) {
                if (e.getKey().toString().equals("pressure_kpa") && e.getValue() instanceof Number n) {
                    sum += n.doubleValue();
                }
            }
        }
        return count + " " + sum;
    }
}
