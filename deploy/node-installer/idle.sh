#!/bin/sh
# The DaemonSet's long-running container: a DaemonSet pod must keep running once its init container (install.sh)
# has set the node up. It does nothing, and exits at once on SIGTERM (a pid 1 without a handler would wait for the
# grace period's SIGKILL).
trap 'exit 0' TERM INT
while :; do
    sleep 3600 &
    wait $!
done
