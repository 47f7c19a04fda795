// Prints an Apache Kafka broker's request counters, read over JMX from the broker's own
// process (attach API, same user, no port opened): one line per request type,
// "<type> <requests> <local-time-ms-total>", then "records <records appended>", then per
// topic "topic <name> <produce requests> <records appended>".
// Run as `java BrokerRequests.java <pid>` (Java 11+ runs a single source file).
import com.sun.tools.attach.VirtualMachine;
import java.util.Map;
import java.util.TreeMap;
import javax.management.MBeanServerConnection;
import javax.management.ObjectName;
import javax.management.remote.JMXConnectorFactory;
import javax.management.remote.JMXServiceURL;

public class BrokerRequests {
    public static void main(String[] args) throws Exception {
        VirtualMachine vm = VirtualMachine.attach(args[0]);
        String address = vm.startLocalManagementAgent();
        try (var connector = JMXConnectorFactory.connect(new JMXServiceURL(address))) {
            MBeanServerConnection c = connector.getMBeanServerConnection();
            Map<String, long[]> byType = new TreeMap<>();
            sum(c, "RequestsPerSec", "Count", byType, 0);
            sum(c, "LocalTimeMs", "Mean", byType, 1);
            for (var e : byType.entrySet()) {
                System.out.println(e.getKey() + " " + e.getValue()[0] + " " + e.getValue()[1]);
            }
            var in = new ObjectName("kafka.server:type=BrokerTopicMetrics,name=MessagesInPerSec");
            System.out.println("records " + c.getAttribute(in, "Count"));
            // Per topic: produce requests (one per partition batch) and records appended.
            var perTopic = new ObjectName(
                "kafka.server:type=BrokerTopicMetrics,name=TotalProduceRequestsPerSec,topic=*");
            for (ObjectName n : c.queryNames(perTopic, null)) {
                String topic = n.getKeyProperty("topic");
                var msgs = new ObjectName(
                    "kafka.server:type=BrokerTopicMetrics,name=MessagesInPerSec,topic=" + topic);
                long records = c.isRegistered(msgs) ? ((Number) c.getAttribute(msgs, "Count")).longValue() : 0;
                System.out.println("topic " + topic + " " + c.getAttribute(n, "Count") + " " + records);
            }
        } finally {
            vm.detach();
        }
    }

    // Sums `attribute` of every version of each request type's `name` metric into slot `slot`
    // (for LocalTimeMs the mean is weighted by the count, giving total milliseconds).
    static void sum(MBeanServerConnection c, String name, String attribute,
                    Map<String, long[]> into, int slot) throws Exception {
        var pattern = new ObjectName("kafka.network:type=RequestMetrics,name=" + name + ",*");
        for (ObjectName n : c.queryNames(pattern, null)) {
            String type = n.getKeyProperty("request");
            long[] v = into.computeIfAbsent(type, k -> new long[2]);
            if (slot == 0) {
                v[0] += ((Number) c.getAttribute(n, attribute)).longValue();
            } else {
                double mean = ((Number) c.getAttribute(n, "Mean")).doubleValue();
                long count = ((Number) c.getAttribute(n, "Count")).longValue();
                v[1] += Math.round(mean * count);
            }
        }
    }
}
