#!/usr/bin/env bash
# /opt/kafka/bin of the stand-in image: each kafka-*.sh is a link here and runs
# its tool's main class; `kafka-run-class.sh CLASS ARGS…` runs any class.
set -euo pipefail
lib='/opt/kafka/libs/*' # a class path wildcard, expanded by java
tool_jvm=(-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1
    -Dlog4j2.configurationFile=/opt/kafka/tools-log4j2.properties)
case $(basename "$0") in
    kafka-server-start.sh)
        read -r -a heap <<<"${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}"
        read -r -a opts <<<"${KAFKA_OPTS:-}"
        exec java "${heap[@]}" "${opts[@]}" -Dlog4j2.configurationFile=/opt/kafka/log4j2.properties \
            -cp "$lib" kafka.Kafka "$@" ;;
    kafka-storage.sh) class=kafka.tools.StorageTool ;;
    kafka-topics.sh) class=org.apache.kafka.tools.TopicCommand ;;
    kafka-console-consumer.sh) class=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
    kafka-console-producer.sh) class=org.apache.kafka.tools.ConsoleProducer ;;
    kafka-broker-api-versions.sh) class=org.apache.kafka.tools.BrokerApiVersionsCommand ;;
    kafka-consumer-groups.sh) class=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    *) class=${1:?usage: kafka-run-class.sh CLASS [ARGS...]}; shift ;;
esac
exec java "${tool_jvm[@]}" -cp "$lib" "$class" "$@"
