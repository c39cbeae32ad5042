#!/bin/sh
# Example Crane epilog (config: "Epilog: /etc/crane/epilog.sh", mode 0755,
# owned by root). Runs on every node of a job after all its steps there ended,
# before the node's resources go back to the scheduler. Non-zero exit = failure.
#
# Environment: CRANE_JOB_ID CRANE_JOB_NAME CRANE_JOB_NODELIST CRANE_JOB_ACCOUNT
#              CRANE_JOB_PARTITION CRANE_JOB_QOS CRANE_NODE
set -u

log() { logger -t crane-epilog "job ${CRANE_JOB_ID:-?} on ${CRANE_NODE:-?}: $*" 2>/dev/null || true; }

# per-job scratch space, if the prolog made one
scratch="/scratch/crane/${CRANE_JOB_ID:?}"
if [ -d "$scratch" ]; then
    rm -rf -- "$scratch" || { log "cannot remove $scratch"; exit 1; }
fi

# drop the job's shared-memory segments and semaphores left in /dev/shm
find /dev/shm -maxdepth 1 -name "crane-${CRANE_JOB_ID}-*" -exec rm -rf -- {} + 2>/dev/null || true

log "epilog done"
exit 0
