#!/usr/bin/env bash
# The lab demo: two clusters with overlapping pod CIDRs on this machine, meshed; a global
# service load-balanced across them, kept local by affinity, and failing over when the local
# replicas go. Installs what is missing, builds, runs, and tears everything down again.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh

if [ "$(id -u)" -ne 0 ]; then
  echo "the lab builds network namespaces, cgroups and eBPF programs: run this as root" >&2
  exit 1
fi

echo "==> building (release)"
cargo build --release --locked -p clustermesh-cli -p clustermesh-apiserver -p clustermesh-node-agent

BIN="$PWD/target/release"
LAB=demo
cm() {
  local sub=$1
  shift
  "$BIN/clustermesh" lab "$sub" --name "$LAB" "$@"
}
say() { printf '\n\033[1m%s\033[0m\n' "$*"; }

# A lab left by an interrupted run is removed first; this run's lab is removed at exit.
"$BIN/clustermesh" lab down --name "$LAB" >/dev/null 2>&1 || true
trap '"$BIN/clustermesh" lab down --name "$LAB" >/dev/null 2>&1 || true' EXIT
started=$(date +%s)

say "1. Two clusters, east and west, each with its own etcd, clustermesh-apiserver and an agent per node."
echo "   Both use pod CIDR 10.244.0.0/16: the same pod IPs exist in both clusters."
cm up >/dev/null 2>"$(mktemp)"
cm status | sed -n '/^CLUSTER/,/^$/p' | sed 's/^/   /'
echo "   The lab connected them (in a real cluster: clustermesh connect): each apiserver mirrors"
echo "   the other's state, each agent trusts the other cluster's CA in the tunnel."

say "2. A global echo service (clustermesh.io/global: \"true\") with 2 replicas in each cluster."
printf '   %-8s %-16s %-10s %s\n' CLUSTER POD NODE 'POD IP'
for cluster in east west; do
  cm deploy --cluster "$cluster" --replicas 2 2>/dev/null | grep -E '^  default/' |
    awk -v c="$cluster" '{printf "   %-8s %-16s %-10s %s\n", c, $1, $2, $3}' || true
done
VIP=$(grep -m1 -A0 'clusterIP:' "/run/clustermesh-lab/$LAB/clusters/east/manifests/service-default-echo.yaml" | awk '{print $2}')
echo "   east's echo-0 and west's echo-0 have the same pod IP; west's is reached through the"
echo "   encrypted node-to-node tunnel, never locally."

# A client pod in east (client-0); N connections to the service's cluster IP, one line each.
cm exec --cluster east --node east-1 -- true >/dev/null 2>&1
client_requests() {
  cm exec --cluster east --pod client-0 -- bash -c "
    for i in \$(seq $1); do
      timeout 2 bash -c 'exec 3<>/dev/tcp/$VIP/8080; cat <&3' 2>/dev/null || echo FAILED
    done"
}
# Wait until east's agents program west's backends too.
for _ in $(seq 100); do
  if client_requests 20 | grep -q 'cluster=west'; then break; fi
  sleep 0.2
done

table() {
  printf '   %-8s %-10s %-16s %s\n' CLUSTER NODE POD ANSWERS
  sort | uniq -c | sort -k2 | while read -r count line; do
    if [ "$line" = FAILED ]; then
      printf '   %-8s %-10s %-16s %s\n' '-' '-' 'FAILED' "$count"
    else
      c=$(sed -n 's/.*cluster=\([^ ]*\).*/\1/p' <<<"$line")
      n=$(sed -n 's/.*node=\([^ ]*\).*/\1/p' <<<"$line")
      p=$(sed -n 's/.*pod=\([^ ]*\).*/\1/p' <<<"$line")
      printf '   %-8s %-10s %-16s %s\n' "$c" "$n" "$p" "$count"
    fi
  done
}

say "3. A client in east makes 100 requests to $VIP:8080 (affinity: none): both clusters answer."
client_requests 100 | table

say "4. clustermesh.io/affinity: local on east's service: east's replicas take everything."
cm annotate --cluster east --affinity local >/dev/null
for _ in $(seq 100); do
  if ! client_requests 20 | grep -q 'cluster=west'; then break; fi
  sleep 0.2
done
client_requests 100 | table

say "5. East's replicas go away (scale to 0). Requests keep flowing: failover to west."
log=$(mktemp)
cm exec --cluster east --pod client-0 -- bash -c "
  while [ ! -e /tmp/clustermesh-demo-stop ]; do
    r=\$(timeout 2 bash -c 'exec 3<>/dev/tcp/$VIP/8080; cat <&3' 2>/dev/null || echo FAILED)
    echo \"\$(date +%s%3N) \$r\"
  done" >"$log" &
loop=$!
sleep 1
t0=$(date +%s%3N)
cm scale --cluster east --replicas 0 >/dev/null 2>&1
sleep 1
touch /tmp/clustermesh-demo-stop
wait "$loop" || true
rm -f /tmp/clustermesh-demo-stop
total=$(wc -l <"$log")
failed=$(grep -c FAILED "$log" || true)
first_west=$(awk -v t0="$t0" '$1 >= t0 && /cluster=west/ {print $1; exit}' "$log")
cut -d' ' -f2- "$log" | table
if [ -n "$first_west" ]; then
  echo "   $total requests while the local replicas went, $failed failed;"
  echo "   the first answer from west came $((first_west - t0)) ms after east withdrew its endpoints."
else
  echo "   west never answered: failover did not happen (see clustermesh lab logs)" >&2
  exit 1
fi
rm -f "$log"

say "6. Tearing the lab down (namespaces, cgroups, pinned eBPF maps, processes)."
trap - EXIT
"$BIN/clustermesh" lab down --name "$LAB" 2>&1 | tail -1 | sed "s/^/   /"
echo
echo "demo finished in $(( $(date +%s) - started )) s. Try it yourself: target/release/clustermesh lab --help"
if [ "$failed" -ne 0 ]; then
  exit 1
fi
