#!/bin/bash
# sample_rss.sh LOG CMD...: runs CMD, writes "time rss_mib" every 0.5 s to LOG
LOG=$1; shift
"$@" & pid=$!
while kill -0 $pid 2>/dev/null; do
  r=$(awk '/VmRSS/{print int($2/1024)}' /proc/$pid/status 2>/dev/null); echo "$(date +%H:%M:%S.%N | cut -c1-10) $r" >> $LOG; sleep 0.5
done
wait $pid
