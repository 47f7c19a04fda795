# Shared by the scripts in this folder. Sourced, not executed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Build caches and tools live outside the work tree so every clone (and CI) on this machine
# shares them.
export EDGESYNC_HOME="${EDGESYNC_HOME:-$HOME/.cache/edgesync}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$EDGESYNC_HOME/target}"
mkdir -p "$CARGO_TARGET_DIR"

# Pinned outside components (see ARCHITECTURE.md, "Brokers").
export TANSU_VERSION=0.6.0
export TANSU_BIN="$EDGESYNC_HOME/tools/bin/tansu"
export EDGESYNC_PYTHON="$EDGESYNC_HOME/venv/bin/python"
export CONFLUENT_KAFKA_VERSION=2.16.1
# Apache Kafka: the version lives in the POM setup installs from (testkit reads it there too).
KAFKA_VERSION=$(sed -n 's|.*<kafka.version>\(.*\)</kafka.version>.*|\1|p' "$ROOT/scripts/kafka/pom.xml")
export KAFKA_VERSION
export EDGESYNC_KAFKA_LIBS="$EDGESYNC_HOME/kafka-$KAFKA_VERSION/libs"
# The Schema Registry (Apicurio): the version lives in the POM setup builds it from.
APICURIO_VERSION=$(sed -n 's|.*<apicurio.version>\(.*\)</apicurio.version>.*|\1|p' "$ROOT/scripts/schema-registry/pom.xml")
export APICURIO_VERSION
export EDGESYNC_SCHEMA_REGISTRY="$EDGESYNC_HOME/apicurio-registry-$APICURIO_VERSION"
# The analytics team's tools for the tests (tests/java): console consumer, Kafka Streams app.
export EDGESYNC_ANALYTICS="$EDGESYNC_HOME/analytics"
export FASTAVRO_VERSION=1.13.1
# Draws the capacity curve (scripts/plot_capacity.py).
export MATPLOTLIB_VERSION=3.11.2
# The Sparkplug B client the edge tests drive sensors with.
export PYSPARKPLUG_VERSION=0.6.1

say() { printf '\n==> %s\n' "$*"; }
