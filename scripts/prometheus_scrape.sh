#!/usr/bin/env bash
# Runs a real Prometheus on loopback against a poolserver metrics endpoint,
# waits (at most 60 s) until it has scraped it, prints a few queries, and
# stops it. Needs Debian's `prometheus` package and curl.
#
#   poolserver --metrics-addr 127.0.0.1:9464 &
#   scripts/prometheus_scrape.sh 127.0.0.1:9464
#
# Reading the endpoint by hand needs nothing but curl:
#   curl -s http://127.0.0.1:9464/metrics
set -euo pipefail
target=${1:?usage: $0 HOST:PORT (the poolserver --metrics-addr)}
web=${PROMETHEUS_WEB:-127.0.0.1:19090}
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT

cat > "$dir/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: poolserver
    static_configs:
      - targets: ['$target']
YML
prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
    --web.listen-address="$web" >"$dir/prometheus.log" 2>&1 &
pid=$!

query() {
    curl -s --max-time 2 "http://$web/api/v1/query" --data-urlencode "query=$1"
}
start=$(date +%s)
until query up | grep -q '"value":\[[0-9.]*,"1"\]'; do
    if (( $(date +%s) - start >= 60 )); then
        echo "Prometheus did not report the target up within 60 s; its log:" >&2
        cat "$dir/prometheus.log" >&2
        exit 1
    fi
    sleep 0.5
done
echo "target up after $(( $(date +%s) - start )) s"
sleep 3 # a few more scrapes, so that rate() has samples to work with
for q in up \
    poolserver_connections_accepted_total \
    poolserver_workers_busy \
    'histogram_quantile(0.99, sum by (le) (rate(poolserver_queue_wait_seconds_bucket[1m])))'; do
    echo "$q => $(query "$q")"
done
