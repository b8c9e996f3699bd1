# Shell functions of the bench guest (xtask/src/bench/script.rs fills in
# the workload durations and budgets and the attach time limit). Under
# icount every duration here is guest time, that is an instruction budget
# (at shift 3, 1 s = 125 M instructions).
S=@SECS@
MIX="@MIX@"
FRESH=@FRESH@
# Guest seconds a tracer runs before a rate phase measures (bench --settle-seconds).
SETTLE=@SETTLE@
TP=
# The daemon's full-evidence flag, or nothing where `daxrace run` does not
# take --evidence (clap: exit 2, "unexpected argument"): then both daxrace
# modes run plain `daxrace run`.
EVFULL="--evidence full"
daxrace run --evidence full --help >/tmp/evidence.out 2>&1
if [ $? = 2 ] && grep -q 'unexpected argument' /tmp/evidence.out; then
  EVFULL=; echo "@@NOEVIDENCE"
fi
alive() { [ -e /proc/$1 ] && ! grep -q ') Z' /proc/$1/stat 2>/dev/null; }
# User + system clock ticks a process used (its own: BPF programs run in
# the workload's tasks and are not counted here).
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' /proc/$1/stat 2>/dev/null || echo 0; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
stop_tracer() {
  [ -n "$TP" ] || return 0
  # The tracer's CPU from hooks attached to now, in USER_HZ (100) ticks:
  # @@CPU NAME TAG TICKS T0 T1.
  [ "$TP_READY" = 1 ] && echo "@@CPU $TP_NAME $TP_TAG $(( $(cpu_ticks $TP) - TP_CPU0 )) $TP_T0 $(uptime_s)"
  kill -INT $TP 2>/dev/null
  i=0; while alive $TP && [ $i -lt 240 ]; do sleep 0.25; i=$((i+1)); done
  if alive $TP; then echo "@@STOPKILL $TP_NAME"; kill -9 $TP; fi
  wait $TP 2>/dev/null
  TP=
}
# start_tracer NAME TAG: launch, wait until its hooks are attached, print
# @@START NAME TAG MS (from the process's start to the ready line).
start_tracer() {
  TP_NAME=$1; TP_TAG=$2; TP_READY=0; out=/tmp/$2.out
  case $1 in
    daxrace-run) daxrace-workload sigdfl daxrace run --attach auto >$out 2>&1 & pat='hooks attached' ;;
    daxrace-full) daxrace-workload sigdfl daxrace run --attach auto $EVFULL >$out 2>&1 & pat='hooks attached' ;;
    daxrace-kprobe) daxrace-workload sigdfl daxrace run --attach kprobe $EVFULL >$out 2>&1 & pat='hooks attached' ;;
    bpftrace-run) BPFTRACE_MAP_KEYS_MAX=8192 daxrace-workload sigdfl bpftrace /tmp/bench-run.bt >$out 2>&1 & pat='@@BT-READY' ;;
    bpftrace-full) BPFTRACE_MAP_KEYS_MAX=8192 daxrace-workload sigdfl bpftrace /tmp/bench-full.bt >$out 2>&1 & pat='@@BT-READY' ;;
    empty) daxrace-workload sigdfl bpftrace /tmp/empty.bt >$out 2>&1 & pat='@@BT-READY' ;;
  esac
  TP=$!
  if r=$(daxrace-workload wait-line --pid $TP --file $out --pattern "$pat" --timeout @ATTACH@ 2>&1); then
    TP_CPU0=$(cpu_ticks $TP); TP_T0=$(uptime_s); TP_READY=1
    echo "@@START $1 $2 ${r#@@READY }"
    grep -m1 'hooks attached' $out
    return 0
  fi
  echo "@@STARTFAIL $1 $2 $r"
  grep -v '^;' $out | tail -n 25 | sed 's/^/  | /'
  stop_tracer
  return 1
}
# loops TAG TRACER: each operation alone (op-loop) on each DAX filesystem.
loops() {
  for fs in $DAX_FS; do
    for op in read punch truncate; do
      sync
      daxrace-workload op-loop --dir /mnt/$fs --op $op --seconds @LOOPSECS@ --json >/tmp/wl.out 2>&1
      rc=$?
      echo "@@LOOP $1 $2 $fs $op $rc $(grep '^{' /tmp/wl.out | tail -n 1)"
      [ $rc = 0 ] || tail -n 3 /tmp/wl.out | sed 's/^/  | /'
    done
  done
}
# workload TAG TRACER: pin-punch on each DAX filesystem, one JSON line each.
workload() {
  for fs in $DAX_FS; do
    sync
    daxrace-workload pin-punch --dir /mnt/$fs --seconds $S $MIX --stall-timeout 3 --max-stalls 1 --json >/tmp/wl.out 2>&1
    rc=$?
    echo "@@WL $1 $2 $fs $rc $(grep '^{' /tmp/wl.out | tail -n 1)"
  done
  if [ -n "$TP" ] && ! alive $TP; then
    echo "@@DIED $2 $1"; tail -n 20 /tmp/$1-$2.out 2>/dev/null | sed 's/^/  | /'
  fi
}
# fresh_fs: with --fresh-fs, a new filesystem on each DAX device (so that
# every phase starts from the same on-disk state), warmed up untraced.
fresh_fs() {
  [ "$FRESH" = 1 ] || return 0
  for fs in $DAX_FS; do
    dev=$(awk -v m=/mnt/$fs '$2 == m { print $1 }' /proc/mounts)
    sync
    if ! umount /mnt/$fs; then echo "@@FRESHFAIL $fs umount"; continue; fi
    case $fs in
      ext4) /usr/sbin/mke2fs -q -F -t ext4 -E nodiscard $dev ;;
      xfs) /usr/sbin/mkfs.xfs -q -f -m reflink=0 $dev ;;
    esac
    mount -t $fs -o dax $dev /mnt/$fs || echo "@@FRESHFAIL $fs mount"
  done
  loops warmup none > /dev/null
}
prog_stats() { daxrace-workload bpf-prog-stats --pid $TP | sed "s/^@@PROG /@@PROG $1 /"; }
# attached: what the running tracer has attached now, as kind:symbol lines.
attached() {
  daxrace-workload bpf-prog-stats --pid $TP | awk '{ print $7 }' | tr ',' '\n' | grep ':'
  # Kprobes attached through BPF links do not answer BPF_TASK_FD_QUERY
  # (and their link info needs 6.6+): take them from the kernel's kprobe
  # list, where only the running tracer's are.
  awk '$2 == "k" || $2 == "r" { s = $3; sub(/\+0x[0-9a-f]+$/, "", s); print ($2 == "k" ? "kprobe:" : "kretprobe:") s }' \
    /sys/kernel/debug/kprobes/list
}
# idle_check TRACER: O_DIRECT reads alone (op-loop) on each filesystem
# under TRACER with BPF statistics on: how many BPF program runs the reads
# cost, in all and per program. A run of no reads first (the same file
# set-up and removal) takes what that costs off. @@IDLE TRACER FS RUNS
# JSON; @@IDLERUN TRACER FS PROGRAM RUNS.
idle_check() {
  for fs in $DAX_FS; do
    sync
    daxrace-workload bpf-prog-stats > /tmp/idle0.txt 2>/dev/null
    daxrace-workload op-loop --dir /mnt/$fs --op read --seconds 0 >/dev/null 2>&1
    daxrace-workload bpf-prog-stats > /tmp/idle1.txt 2>/dev/null
    daxrace-workload op-loop --dir /mnt/$fs --op read --seconds @IDLESECS@ --json >/tmp/idle.out 2>&1
    daxrace-workload bpf-prog-stats > /tmp/idle2.txt 2>/dev/null
    awk -v t=$1 -v fs=$fs '
      FILENAME == ARGV[1] { a[$2] = $5; next }
      FILENAME == ARGV[2] { b[$2] = $5; next }
      { d = ($5 - b[$2]) - (b[$2] - a[$2]); if (d != 0) print "@@IDLERUN", t, fs, $4, d }' \
      /tmp/idle0.txt /tmp/idle1.txt /tmp/idle2.txt > /tmp/idle-runs.txt
    echo "@@IDLE $1 $fs $(awk '{ s += $5 } END { print s + 0 }' /tmp/idle-runs.txt) $(grep '^{' /tmp/idle.out | tail -n 1)"
    cat /tmp/idle-runs.txt
  done
}
# bt_plan ATTACHED KFUNC: what daxrace attached (kind:symbol lines) as
# "bpftrace-kind key symbol" lines; KFUNC=0 turns fentry/fexit into kprobes.
bt_plan() {
  sort -u "$1" | while IFS=: read kind sym; do
    case $kind in
      fentry) bk=kfunc ;; fexit) bk=kretfunc ;;
      kprobe) bk=kprobe ;; kretprobe) bk=kretprobe ;;
      raw_tracepoint|tracepoint|tp_btf) bk=tracepoint ;;
      *) echo "@@BTMISSING $kind:$sym" >&2; continue ;;
    esac
    if [ "$2" != 1 ]; then case $bk in kfunc) bk=kprobe ;; kretfunc) bk=kretprobe ;; esac; fi
    base=${sym%%.*}; key=$base; [ "$base" != "$sym" ] && key=$base.clone
    echo "$bk $key $sym"
  done | sort -u
}
# bt_build PLAN [DIR OUT]: the script for PLAN from the fragments in DIR.
bt_build() {
  dir=${2:-/tmp/bt}; outf=${3:-/tmp/bench.bt}
  cp /tmp/bt/head.bt $outf
  while read bk key sym; do
    f=$dir/$bk-$key.bt
    if [ -f "$f" ]; then
      sed -e "s/@SYM@/$sym/g" -e "s/@REFOFF@/$REFOFF/g" -e "s/@IDLE@/$IDLE/g" "$f" >> $outf
    else echo "@@BTMISSING $bk:$sym"; fi
  done < "$1"
}
# fact NAME: a number from daxrace's kernel facts (`daxrace probes --json`).
fact() { sed -n "s/.*\"$1\": *\([0-9][0-9]*\).*/\1/p" /tmp/facts.json | head -n 1; }
