#!/usr/bin/env bash
# A narrated tour: a 4-node local cluster, submitting and cancelling jobs, and
# QoS preemption. Leaves nothing running (the cluster goes down on exit).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
"$REPO/scripts/setup.sh"

export PATH="${CRANE_VENV:-/opt/crane-venv}/bin:$PATH"
DIR=/run/crane-demo

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

# jid SUBMIT-ARGS...: submit with cbatch --json, print the id
jid() { cbatch --json "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])'; }

# state JOBID: the job's state, from cqueue, else from cacct, else "?"
state() {
    { cqueue --json -j "$1"; echo; cacct --json -j "$1"; } 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin.read().split("\n"):
    try:
        jobs = json.loads(line)
    except ValueError:
        continue
    for j in jobs:
        if j["job_id"] == int(sys.argv[1]):
            print(j["state"]); sys.exit()
print("?")' "$1"
}

# wait_state SECONDS JOBID STATE [JOBID STATE ...]: poll until all hold
wait_state() {
    local deadline=$((SECONDS + $1)); shift
    while :; do
        local ok=1 args=("$@")
        for ((i = 0; i < ${#args[@]}; i += 2)); do
            [[ $(state "${args[i]}") == "${args[i+1]}" ]] || ok=0
        done
        ((ok)) && return 0
        if ((SECONDS >= deadline)); then
            for ((i = 0; i < ${#args[@]}; i += 2)); do
                echo "demo: job ${args[i]} is $(state "${args[i]}"), wanted ${args[i+1]}" >&2
            done
            return 1
        fi
        sleep 0.2
    done
}

if [[ -e $DIR/pids.json ]]; then
    say "A demo cluster is still up in $DIR: bringing it down first"
    crane local down --dir "$DIR" || true
fi

cleanup() {
    local rc=$?
    if ((rc)); then
        echo "demo: failed (exit $rc); logs in $DIR/log" >&2
    fi
    say "Bringing the cluster down"
    run crane local down --dir "$DIR" || true
    exit "$rc"
}
trap cleanup EXIT

say "Starting a local cluster: 1 controller + 4 node agents (CPU: crane01-02, GPU: crane03-04)"
rm -rf "$DIR"  # a fresh cluster each time: no jobs, accounts or QoS left from an earlier demo
out="$(crane local up --nodes 4 --dir "$DIR")"
echo "$out"
eval "$(grep '^export CRANE_CONF=' <<<"$out")"
: "${CRANE_CONF:?crane local up printed no export line}"

say "Partitions and nodes"
run cinfo

say "Submitting jobs to both partitions"
j1=$(jid -p CPU -J train --wrap "sleep 30");  echo "job $j1 (CPU)"
j2=$(jid -p CPU -J prep  --wrap "sleep 30");  echo "job $j2 (CPU)"
j3=$(jid -p GPU -J render -c 2 --wrap "sleep 30"); echo "job $j3 (GPU)"
j4=$(jid -p GPU -J infer --wrap "sleep 30");  echo "job $j4 (GPU)"
wait_state 30 "$j1" RUNNING "$j2" RUNNING "$j3" RUNNING "$j4" RUNNING
run cqueue

say "Cancelling job $j1 by id, with a message"
run ccancel -m "demo" "$j1"
wait_state 30 "$j1" CANCELLED

say "What would cancelling the GPU partition do?"
run ccancel --dry-run -p GPU

say "Cancelling everything in the GPU partition"
run ccancel -p GPU
wait_state 30 "$j3" CANCELLED "$j4" CANCELLED
run cqueue

say "Accounting: finished jobs"
run cacct

say "Preemption: a low-priority Background QoS and an Interactive QoS that may preempt it"
run cacctmgr add qos Background Priority=100
run cacctmgr add qos Interactive Priority=5000 Preempt=Background PreemptMode=CANCEL
run cacctmgr modify account where Name=default set AllowedQos+=Background,Interactive
run cacctmgr show qos format=Name,Priority,Preempt,PreemptMode

say "Cancelling job $j2 so the CPU partition is empty"
run ccancel "$j2"
wait_state 30 "$j2" CANCELLED

say "A Background job takes both CPU nodes exclusively"
bg=$(jid -p CPU --exclusive -N 2 -q Background -J background --wrap "sleep 300"); echo "job $bg"
wait_state 30 "$bg" RUNNING
run cqueue

say "An Interactive job arrives: it preempts the Background job"
ia=$(jid -p CPU -q Interactive -J interactive --wrap "sleep 5"); echo "job $ia"
wait_state 30 "$ia" RUNNING "$bg" CANCELLED
run cqueue
run cacct

say "Demo done"
