#!/usr/bin/env bash
# Creates the topic catalogue (schemas/topics.py) on a Kafka cluster with Kafka's own tooling.
# Idempotent: existing topics are left alone. tests/test_deploy_compose.py checks that the table
# below matches the catalogue.
#   BOOTSTRAP            bootstrap servers (required)
#   TOPIC_PREFIX         prefix put before every name (CONVOSTREAM_TOPIC_PREFIX of the services)
#   REPLICATION_FACTOR   default 3
#   MIN_INSYNC_REPLICAS  default 2 (with acks=all, one broker may be down)
set -euo pipefail

: "${BOOTSTRAP:?set BOOTSTRAP to the Kafka bootstrap servers}"
KAFKA_TOPICS=${KAFKA_TOPICS:-/opt/kafka/bin/kafka-topics.sh}
RETENTION_MS=604800000 # 7 days, for delete topics

# name partitions cleanup.policy
CATALOGUE="
convai.conversations 12 delete
convai.monitor.events 12 delete
convai.monitor.dlq 3 delete
convai.commands 6 delete
convai.command-results 6 delete
convai.command-intents 6 delete
convai.metrics.conversations 12 compact
convai.metrics.agent-windows 6 delete
convai.events.late 3 delete
convai.alerts 6 delete
convai.rules.state 12 compact
convai.postcall 6 compact
"

while read -r name partitions policy; do
    [[ -n "$name" ]] || continue
    configs=(--config "cleanup.policy=$policy"
        --config "min.insync.replicas=${MIN_INSYNC_REPLICAS:-2}")
    if [[ "$policy" == delete ]]; then
        configs+=(--config "retention.ms=$RETENTION_MS")
    fi
    "$KAFKA_TOPICS" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
        --topic "${TOPIC_PREFIX:-}$name" --partitions "$partitions" \
        --replication-factor "${REPLICATION_FACTOR:-3}" "${configs[@]}"
done <<<"$CATALOGUE"
echo "topic catalogue ready on $BOOTSTRAP"
