#!/bin/sh
# For the chart's recovery init container (`sh ./entrypoint-recovery.sh`), which would create
# every partition in every pod's volume. The dataflow creates its own share of
# RECOVERY_PARTITIONS at start instead (flows/runtime/bytewax/recovery.py), so each partition
# exists once.
echo "recovery partitions are created by the dataflow itself (RECOVERY_PARTITIONS)"
