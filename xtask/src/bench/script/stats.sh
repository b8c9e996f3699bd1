# The stats phase: each tracer once with BPF statistics on; daxrace first,
# since the bpftrace script is built from what it attached. Then phase(),
# which the rate phases call.
echo "@@KERNEL $(uname -r)"
echo "@@PREEMPT $(cat /sys/kernel/debug/sched/preempt 2>/dev/null)"
BT_OK=0
# What the bpftrace script must know of this kernel, as daxrace found it.
daxrace probes --json > /tmp/facts.json 2>/dev/null
REFOFF=$(fact wait_var_offset); IDLE=$(fact idle_refcount)
echo "@@FACTS wait_var_offset=$REFOFF idle_refcount=$IDLE"
if [ -z "$REFOFF" ] || [ -z "$IDLE" ]; then echo "@@BTMISSING facts"; fi
echo 1 > /proc/sys/kernel/bpf_stats_enabled || echo "@@NOSTATS"
echo "== stats phase: daxrace --attach auto"
: > /tmp/attach.txt
if start_tracer daxrace-auto stats-daxrace-auto; then
  workload stats daxrace-auto
  prog_stats daxrace-auto > /tmp/dr-progs.txt
  cat /tmp/dr-progs.txt
  awk '{ print $8 }' /tmp/dr-progs.txt | tr ',' '\n' | grep ':' > /tmp/attach.txt
  # Kprobes attached through BPF links do not answer BPF_TASK_FD_QUERY
  # (and their link info needs 6.6+): take them from the kernel's kprobe
  # list, where only daxrace's are now.
  awk '$2 == "k" || $2 == "r" { s = $3; sub(/\+0x[0-9a-f]+$/, "", s); print ($2 == "k" ? "kprobe:" : "kretprobe:") s }' \
    /sys/kernel/debug/kprobes/list >> /tmp/attach.txt
  sed 's/^/@@ATTACH daxrace-auto /' /tmp/attach.txt
  stop_tracer
fi
if [ -s /tmp/attach.txt ]; then
  for kf in 1 0; do
    bt_plan /tmp/attach.txt $kf > /tmp/plan.txt
    bt_build /tmp/plan.txt
    echo "== stats phase: bpftrace ($(wc -l < /tmp/plan.txt) probes, kfunc=$kf)"
    if start_tracer bpftrace stats-bpftrace-$kf; then
      BT_OK=1; [ $kf = 1 ] && echo "@@BTMODE kfunc" || echo "@@BTMODE kprobe"; break
    fi
    grep -q -e '^kfunc' -e '^kretfunc' /tmp/plan.txt || break
  done
  sed 's/^/@@BT| /' /tmp/bench.bt
  if [ $BT_OK = 1 ]; then
    workload stats bpftrace
    prog_stats bpftrace
    stop_tracer
    # The same probes, empty: the floor.
    bt_build /tmp/plan.txt /tmp/bt-empty /tmp/empty.bt
    echo "== stats phase: empty programs on the same probes"
    if start_tracer empty stats-empty; then
      workload stats empty
      prog_stats empty
      stop_tracer
    fi
  fi
fi
echo "== stats phase: daxrace --attach kprobe"
if start_tracer daxrace-kprobe stats-daxrace-kprobe; then
  workload stats daxrace-kprobe
  prog_stats daxrace-kprobe
  stop_tracer
fi
echo 0 > /proc/sys/kernel/bpf_stats_enabled
# phase TAG TRACER: both workloads under TRACER (none: untraced).
phase() {
  echo "@@PHASE $1 $2"
  case $2 in
    none) workload $1 none; loops $1 none; return 0 ;;
    bpftrace|empty) [ $BT_OK = 1 ] || return 0 ;;
  esac
  start_tracer $2 $1-$2 && { workload $1 $2; loops $1 $2; stop_tracer; }
}
