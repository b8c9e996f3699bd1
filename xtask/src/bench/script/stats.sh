# The stats phase: each tracer once with BPF statistics on; each daxrace
# mode before its bpftrace twin, since the twin is built from what that
# mode attached. Then phase(), which the rate phases call.
echo "@@KERNEL $(uname -r)"
echo "@@PREEMPT $(cat /sys/kernel/debug/sched/preempt 2>/dev/null)"
# What the bpftrace script must know of this kernel, as daxrace found it.
daxrace probes --json > /tmp/facts.json 2>/dev/null
REFOFF=$(fact wait_var_offset); IDLE=$(fact idle_refcount)
echo "@@FACTS wait_var_offset=$REFOFF idle_refcount=$IDLE"
if [ -z "$REFOFF" ] || [ -z "$IDLE" ]; then echo "@@BTMISSING facts"; fi
echo 1 > /proc/sys/kernel/bpf_stats_enabled || echo "@@NOSTATS"
rm -f /tmp/bt-ok-run /tmp/bt-ok-full
# Each daxrace mode: `run` (the daemon's default) and `full` (--evidence
# full). What a mode has attached right after start-up is what it keeps on
# while no page is watched: its twin attaches that.
for m in run full; do
  echo "== stats phase: daxrace-$m"
  : > /tmp/attach-$m.txt
  if start_tracer daxrace-$m stats-daxrace-$m; then
    attached | sort -u > /tmp/attach-$m.txt
    sed "s/^/@@ATTACH daxrace-$m /" /tmp/attach-$m.txt
    idle_check daxrace-$m
    workload stats daxrace-$m
    prog_stats daxrace-$m
    stop_tracer
  fi
done
# The twin of each mode, from what that mode attached; the run mode's is
# left out when it would be the full mode's again.
for m in full run; do
  [ -s /tmp/attach-$m.txt ] || continue
  if [ $m = run ] && cmp -s /tmp/attach-run.txt /tmp/attach-full.txt; then
    echo "@@SAMEPLAN run full"; continue
  fi
  for kf in 1 0; do
    bt_plan /tmp/attach-$m.txt $kf > /tmp/plan-$m.txt
    bt_build /tmp/plan-$m.txt /tmp/bt /tmp/bench-$m.bt
    echo "== stats phase: bpftrace-$m ($(wc -l < /tmp/plan-$m.txt) probes, kfunc=$kf)"
    if start_tracer bpftrace-$m stats-bpftrace-$m; then
      touch /tmp/bt-ok-$m; [ $kf = 1 ] && echo "@@BTMODE $m kfunc" || echo "@@BTMODE $m kprobe"; break
    fi
    grep -q -e '^kfunc' -e '^kretfunc' /tmp/plan-$m.txt || break
  done
  sed "s/^/@@BT-$m| /" /tmp/bench-$m.bt
  if [ -f /tmp/bt-ok-$m ]; then
    idle_check bpftrace-$m
    workload stats bpftrace-$m
    prog_stats bpftrace-$m
    stop_tracer
  fi
done
# The full mode's probes, empty: the floor.
if [ -f /tmp/bt-ok-full ]; then
  bt_build /tmp/plan-full.txt /tmp/bt-empty /tmp/empty.bt
  echo "== stats phase: empty programs on the full mode's probes"
  if start_tracer empty stats-empty; then
    workload stats empty
    prog_stats empty
    stop_tracer
  fi
fi
echo "== stats phase: daxrace-kprobe (full evidence, --attach kprobe)"
if start_tracer daxrace-kprobe stats-daxrace-kprobe; then
  workload stats daxrace-kprobe
  prog_stats daxrace-kprobe
  stop_tracer
fi
echo 0 > /proc/sys/kernel/bpf_stats_enabled
# phase TAG TRACER: both workloads under TRACER (none: untraced).
phase() {
  fresh_fs
  echo "@@PHASE $1 $2"
  case $2 in
    none) loops $1 none; workload $1 none; return 0 ;;
    bpftrace-run) [ -f /tmp/bt-ok-run ] || return 0 ;;
    bpftrace-full|empty) [ -f /tmp/bt-ok-full ] || return 0 ;;
  esac
  # The lone operations first: they are the quiet path, which a mix just
  # before would not leave quiet (the daemon's page hooks stay on a moment
  # after the last busy page).
  start_tracer $2 $1-$2 && { sleep $SETTLE; loops $1 $2; workload $1 $2; stop_tracer; }
}
