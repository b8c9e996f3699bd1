//! `cargo xtask bench`: what daxrace costs the DAX I/O path, measured for
//! real in the VM and compared, in the same boot, with no tracer and with an
//! equivalent bpftrace script (Debian's bpftrace 0.17).
//!
//! Under TCG every absolute time is inflated many times over, so the figures
//! that count are ratios taken in the same run:
//!  1. workload rates untraced, under `daxrace run`, under bpftrace and
//!     under empty programs on bpftrace's probes (the cost of hooking those
//!     functions at all). Two workloads: each operation alone on one thread
//!     (`op-loop`: O_DIRECT reads into a DAX mapping, punches, truncates;
//!     the quiet path a host runs almost always), and the pin-punch mix
//!     where pinned pages make breaks wait. Every traced phase sits between
//!     two untraced ones and is compared with their mean, so that drift over
//!     the boot cancels out; the untraced phases compared with each other in
//!     the same way give the noise;
//!  2. per-hook BPF cost (run time / run count with `kernel.bpf_stats_enabled`),
//!     daxrace (auto: fentry where it attaches; and `--attach kprobe`) vs
//!     bpftrace, in a separate phase so that the statistics' own cost does
//!     not touch the rate rounds;
//!  3. start-up: from the tracer's launch to all hooks attached;
//!  4. on the host, the userspace decode + detect throughput
//!     (`cargo bench -p daxrace --bench pipeline`).
//!
//! The bpftrace script is assembled in the guest from what daxrace attached
//! there (kind and symbol of every link, read back with BPF_TASK_FD_QUERY and
//! link fdinfo by `daxrace-workload bpf-prog-stats`), so both tracers hook
//! the same functions with the same flavour: kfunc/kretfunc where daxrace
//! uses fentry/fexit (kprobes if bpftrace cannot), kprobes where daxrace
//! does, tracepoints for daxrace's ext4 tracepoints. Each bpftrace probe does
//! the equivalent work: per-task break/scan state, a per-page `@watched` map
//! filled by busy scans, map lookups on the page hooks, and a printed line
//! only for watched pages (or pinned/mismatched truncations).
//!
//! Nothing here fails on a figure: the goals are reported as met or not.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::vm::{guest, kernel};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Kernel series: 6.1, 6.12, newest, or all (default: newest and 6.12;
    /// 6.1's lost wake-up stalls the punches, so its rates mean little).
    #[arg(long)]
    pub kernel: Option<String>,
    /// Rounds of the rate phases: daxrace, bpftrace and empty programs,
    /// each between two untraced phases, in rotating order.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Seconds of the pin-punch mix per filesystem (ext4, xfs) in each phase.
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// Seconds of each lone operation (read, punch, truncate) per
    /// filesystem in each phase.
    #[arg(long, default_value_t = 2)]
    pub loop_seconds: u32,
    /// Skip the host pipeline benchmark.
    #[arg(long)]
    pub no_pipeline: bool,
    /// Print the guest's output as it comes.
    #[arg(long, short)]
    pub verbose: bool,
    /// QEMU accelerator. `kvm` where /dev/kvm works (it does not on the
    /// machines this project runs on: VM.md); under TCG, hooking a function
    /// at all costs more of an emulated operation than it would natively.
    #[arg(long, value_enum, default_value_t)]
    pub accel: crate::vm::guest::Accel,
    /// Debugging: run this shell code in the bench guest (with bpftrace)
    /// instead of the bench.
    #[arg(long, hide = true)]
    pub shell: Option<String>,
}

/// Extra guest RAM for bpftrace: its libraries (LLVM, clang: about 200 MB)
/// sit in the initramfs, and compiling a script takes a few hundred MB more.
const BPFTRACE_EXTRA_MIB: u64 = 512;
/// The longest one tracer may take to attach under TCG.
const ATTACH_LIMIT_S: u64 = 300;
/// Where the logs and the generated bpftrace scripts go.
fn out_dir() -> PathBuf {
    crate::setup::workspace_root().join("target/bench")
}

/// What the tracers are called in the guest script and the tables.
const NONE: &str = "none";
const DR: &str = "daxrace-auto";
const DR_KP: &str = "daxrace-kprobe";
const BT: &str = "bpftrace";
/// Empty programs on bpftrace's probes: the floor (stats phase only).
const EMPTY: &str = "empty";

pub fn run(args: BenchArgs) -> Result<()> {
    crate::vm::guest::set_accel(args.accel);
    let bpftrace = PathBuf::from("/usr/bin/bpftrace");
    if !bpftrace.exists() {
        bail!("/usr/bin/bpftrace is missing: run `cargo xtask setup` (Debian package bpftrace)");
    }
    if let Some(sh) = &args.shell {
        let k = kernel::fetch(args.kernel.as_deref().unwrap_or("newest"))?;
        let out = boot(&k, sh.clone(), Duration::from_secs(1800), true)?;
        println!(
            "bench: boot {:.1} s, command {:.1} s, exit status {}",
            out.boot.as_secs_f64(),
            out.command.as_secs_f64(),
            out.status
        );
        return Ok(());
    }
    let series: Vec<String> = match args.kernel.as_deref() {
        None => vec!["newest".into(), "6.12".into()],
        Some("all") => ["6.1", "6.12", "newest"].map(String::from).to_vec(),
        Some(s) => vec![s.to_string()],
    };
    std::fs::create_dir_all(out_dir())?;
    let mut reports = Vec::new();
    for s in &series {
        let t = Instant::now();
        match bench_series(s, &args) {
            Ok(r) => {
                println!("{}", r.text);
                println!("bench: {s}: {:.0} s", t.elapsed().as_secs_f64());
                reports.push(r);
            }
            Err(e) => println!(
                "bench: {s}: FAILED after {:.0} s: {e:#}",
                t.elapsed().as_secs_f64()
            ),
        }
    }
    let pipeline = if args.no_pipeline {
        None
    } else {
        match pipeline_bench() {
            Ok(p) => Some(p),
            Err(e) => {
                println!("bench: pipeline benchmark failed: {e:#}");
                None
            }
        }
    };
    println!("{}", goals(&reports, pipeline.as_ref()));
    Ok(())
}

fn boot(
    k: &kernel::Kernel,
    script: String,
    timeout: Duration,
    stream: bool,
) -> Result<guest::Outcome> {
    guest::boot_with(
        &guest::Spec {
            kernel: k,
            fs: guest::Fs::Both,
            script,
            timeout,
            verbose: false,
            stream,
            forward: None,
        },
        &crate::vm::guest_binaries(),
        &guest::Extras {
            host_programs: &[PathBuf::from("/usr/bin/bpftrace")],
            extra_mem_mib: BPFTRACE_EXTRA_MIB,
        },
    )
}

// ---- the bpftrace script -------------------------------------------------

/// The bodies, with `{A0}`.. for the hooked function's arguments, `{RET}`
/// for its return value and `@SYM@` for the symbol (filled in the guest).
const BREAK_ENTRY: &str = r#"{
  @brk_depth[tid] = @brk_depth[tid] + 1;
  if (@brk_depth[tid] == 1) {
    @brk_map[tid] = (uint64)((struct inode *){A0})->i_mapping;
    @brk_ts[tid] = nsecs;
    delete(@recent[tid]);
  }
}"#;
const BREAK_EXIT: &str = r#"/@brk_depth[tid]/ {
  @brk_depth[tid] = @brk_depth[tid] - 1;
  if (@brk_depth[tid] == 0) {
    if (@brk_busy[tid]) {
      @recent[tid] = @brk_map[tid];
      printf("break @SYM@ tid %d returned %d after %d us\n", tid, (int32){RET}, (nsecs - @brk_ts[tid]) / 1000);
    }
    delete(@brk_depth[tid]); delete(@brk_busy[tid]); delete(@brk_map[tid]); delete(@brk_ts[tid]);
  }
}"#;
const SCAN_ENTRY: &str = r#"{
  @scan_depth[tid] = @scan_depth[tid] + 1;
  if (@scan_depth[tid] == 1) { @scan_map[tid] = (uint64){A0}; }
}"#;
const SCAN_EXIT: &str = r#"/@scan_depth[tid]/ {
  @scan_depth[tid] = @scan_depth[tid] - 1;
  if (@scan_depth[tid] == 0) {
    $page = (uint64){RET};
    if ($page != 0) {
      @watched[$page] = nsecs;
      @wfile[@scan_map[tid]] = $page;
      @windex[$page] = *(uint64 *)($page + 32);
      if (@brk_depth[tid]) { @brk_busy[tid] = 1; }
      printf("busy page %lx refcount %d mapping %lx tid %d\n", $page, *(int32 *)($page + 52), @scan_map[tid], tid);
    }
    delete(@scan_depth[tid]); delete(@scan_map[tid]);
  }
}"#;
const WAIT_OR_WAKE: &str = r#"{
  $page = (uint64){VAR} - {REFOFF};
  if (@watched[$page]) { printf("@SYM@ tid %d page %lx refcount %d\n", tid, $page, *(int32 *)($page + 52)); }
}"#;
const PIN_DROP: &str = r#"{
  $page = (uint64){A0};
  if (@watched[$page]) {
    printf("pin drop page %lx refs %d refcount %d\n", $page, (int32){REFS}, *(int32 *)($page + 52));
    @put_watched = count();
  } else { @put_unwatched = count(); }
}"#;
/// The pages of a released bio, like daxrace's walk. daxrace walks up to 64
/// bvecs x 512 pages with bpf_loop, which bpftrace 0.17 cannot emit; an
/// open-coded walk that size (or even 64 pages in one loop) exceeds the
/// verifier's 1M-instruction limit (measured on 7.3), so this walks 16 bvecs
/// x 16 pages: all of the workload's reads (64 KiB at most).
const BIO_WALK: &str = r#"
  $n = (uint64)$bio->bi_vcnt;
  $i = (uint64)0;
  while ($i < 16 && $i < $n) {
    $bv = (struct bio_vec *)((uint64)$bio->bi_io_vec + $i * 16);
    $off = (uint64)$bv->bv_offset;
    $len = (uint64)$bv->bv_len;
    $first = $off >> 12;
    $np = (($off + $len - 1) >> 12) + 1 - $first;
    $pg = (uint64)$bv->bv_page + $first * 64;
    $j = (uint64)0;
    unroll(16) {
      if ($j < $np) {
        if (@watched[$pg + $j * 64]) {
          printf("released page %lx refcount %d\n", $pg + $j * 64, *(int32 *)($pg + $j * 64 + 52));
          @put_watched = count();
        } else { @put_unwatched = count(); }
      }
      $j = $j + 1;
    }
    $i = $i + 1;
  }
}"#;
const DISASSOCIATE: &str = r#"{
  $e = (uint64){A0};
  if ($e & 1) {
    $v = $e >> 1;
    if (($v & 12) == 0) {
      $page = *(uint64 *)kaddr("vmemmap_base") + ($v >> 4) * 64;
      $rc = *(int32 *)($page + 52);
      $pm = *(uint64 *)($page + 24);
      $m = (uint64){MAPPING};
      $trunc = (uint64){TRUNC} & 0xff;
      if (@watched[$page] || ($trunc && $rc > {IDLE}) || ($m != 0 && $pm > 1 && $pm != $m)) {
        printf("disassociate page %lx refcount %d mapping %lx page mapping %lx trunc %d\n", $page, $rc, $m, $pm, $trunc);
        if ($trunc) { delete(@watched[$page]); }
      } else { @disassociate_quiet = count(); }
    }
  }
}"#;
/// The range deletion of 6.15+ (daxrace's fe_delete_range): the watched
/// page of the file, if it lies in the range.
const DELETE_RANGE: &str = r#"{
  $m = (uint64){A0};
  $page = @wfile[$m];
  if ($page) {
    $ix = @windex[$page];
    if (@watched[$page] && $ix >= ((uint64){A1} >> 12) && $ix <= ((uint64){A2} >> 12)) {
      printf("delete range page %lx refcount %d mapping %lx\n", $page, *(int32 *)($page + 52), $m);
      delete(@watched[$page]); delete(@wfile[$m]);
    }
  } else { @disassociate_quiet = count(); }
}"#;
const DELETE_ENTRY: &str = r#"{
  if (@recent[tid] == (uint64){A0}) {
    printf("delete entry mapping %lx index %d tid %d\n", (uint64){A0}, (uint64){A1}, tid);
  } else { @delete_quiet = count(); }
}"#;
const FS_OP: &str = r#"{ printf("@SYM@ tid %d ino %d\n", tid, args->ino); }"#;

/// One probe file for the guest: `/tmp/bt/<bpftrace kind>-<key>.bt`.
struct Fragment {
    kind: &'static str,
    key: String,
    text: String,
}

/// Every probe the script may need, in each flavour. The guest picks the
/// ones daxrace attached (see `GUEST_FUNCTIONS`).
fn fragments() -> Vec<Fragment> {
    // (symbol key, parameter names as BTF has them, entry body, exit body)
    type Spec = (
        &'static str,
        &'static [&'static str],
        String,
        Option<String>,
    );
    let wait = |var: &str| WAIT_OR_WAKE.replace("{VAR}", var);
    let pin = |refs: &str| PIN_DROP.replace("{REFS}", refs);
    let dis = |mapping: &str, trunc: &str| {
        DISASSOCIATE
            .replace("{MAPPING}", mapping)
            .replace("{TRUNC}", trunc)
    };
    let specs: Vec<Spec> = vec![
        (
            "ext4_break_layouts",
            &["inode"],
            BREAK_ENTRY.into(),
            Some(BREAK_EXIT.into()),
        ),
        (
            "xfs_break_layouts",
            &["inode"],
            BREAK_ENTRY.into(),
            Some(BREAK_EXIT.into()),
        ),
        (
            "xfs_break_dax_layouts",
            &["inode"],
            BREAK_ENTRY.into(),
            Some(BREAK_EXIT.into()),
        ),
        (
            "dax_break_layout",
            &["inode"],
            BREAK_ENTRY.into(),
            Some(BREAK_EXIT.into()),
        ),
        (
            "dax_layout_busy_page_range",
            &["mapping"],
            SCAN_ENTRY.into(),
            Some(SCAN_EXIT.into()),
        ),
        (
            "dax_layout_busy_page",
            &["mapping"],
            SCAN_ENTRY.into(),
            Some(SCAN_EXIT.into()),
        ),
        (
            "init_wait_var_entry",
            &["wbq_entry", "var"],
            wait("{A1}"),
            None,
        ),
        ("wake_up_var", &["var"], wait("{A0}"), None),
        (
            "__put_devmap_managed_page_refs",
            &["page", "refs"],
            pin("{A1}"),
            None,
        ),
        (
            "__put_devmap_managed_folio_refs",
            &["folio", "refs"],
            pin("{A1}"),
            None,
        ),
        ("put_devmap_managed_page", &["page"], pin("1"), None),
        ("__put_devmap_managed_page", &["page"], pin("1"), None),
        ("free_zone_device_folio", &["folio"], pin("1"), None),
        (
            "dax_disassociate_entry",
            &["entry", "mapping", "trunc"],
            dis("{A1}", "{A2}"),
            None,
        ),
        // The `.isra` clone of 6.15+ keeps only the entry (as daxrace's
        // kp_disassociate_clone assumes).
        (
            "dax_disassociate_entry.clone",
            &["entry"],
            dis("0", "0"),
            None,
        ),
        (
            "dax_delete_mapping_range",
            &["mapping", "start", "end"],
            DELETE_RANGE.into(),
            None,
        ),
        (
            "dax_delete_mapping_entry",
            &["mapping", "index"],
            DELETE_ENTRY.into(),
            None,
        ),
    ];
    let fill = |body: &str, args: &[String], ret: &str| {
        let mut b = body
            .replace("{RET}", ret)
            // Kernel facts, filled in the guest from daxrace's own
            // (`daxrace probes --json`): no version check here.
            .replace("{REFOFF}", "@REFOFF@")
            .replace("{IDLE}", "@IDLE@");
        for (i, a) in args.iter().enumerate() {
            b = b.replace(&format!("{{A{i}}}"), a);
        }
        b
    };
    let mut out = Vec::new();
    for (key, params, entry, exit) in specs {
        let kp_args: Vec<String> = (0..params.len()).map(|i| format!("arg{i}")).collect();
        let kf_args: Vec<String> = params.iter().map(|p| format!("args->{p}")).collect();
        for (kind, args) in [("kprobe", &kp_args), ("kfunc", &kf_args)] {
            out.push(Fragment {
                kind,
                key: key.into(),
                text: format!("{kind}:@SYM@ {}\n", fill(&entry, args, "")),
            });
        }
        if let Some(exit) = exit {
            for kind in ["kretprobe", "kretfunc"] {
                out.push(Fragment {
                    kind,
                    key: key.into(),
                    text: format!("{kind}:@SYM@ {}\n", fill(&exit, &[], "retval")),
                });
            }
        }
    }
    // The bio release hook runs after the pages were released: daxrace uses
    // fexit, or kprobe + kretprobe with the bio stashed per task. kretprobe
    // here brings its own stash so that it also serves as fexit's fallback.
    let walk = |head: &str| format!("{head}{BIO_WALK}\n");
    out.push(Fragment {
        kind: "kretfunc",
        key: "__bio_release_pages".into(),
        text: walk("kretfunc:@SYM@ {\n  $bio = args->bio;"),
    });
    out.push(Fragment {
        kind: "kretprobe",
        key: "__bio_release_pages".into(),
        text: format!(
            "kprobe:@SYM@ {{ @bio_stash[tid] = arg0; }}\n{}",
            walk("kretprobe:@SYM@ /@bio_stash[tid]/ {\n  $bio = (struct bio *)@bio_stash[tid];\n  delete(@bio_stash[tid]);")
        ),
    });
    for kind in ["kprobe", "kfunc"] {
        out.push(Fragment {
            kind,
            key: "__bio_release_pages".into(),
            text: String::new(),
        });
    }
    for tp in [
        "ext4_punch_hole",
        "ext4_zero_range",
        "ext4_collapse_range",
        "ext4_insert_range",
        "ext4_truncate_enter",
    ] {
        out.push(Fragment {
            kind: "tracepoint",
            key: tp.into(),
            text: format!("tracepoint:ext4:@SYM@ {FS_OP}\n"),
        });
    }
    out
}

/// The script's head: the ready line (built with %s so that bpftrace's
/// echo of the source in an error message cannot look like it).
const BT_HEAD: &str = r#"BEGIN { printf("@@BT-%s\n", "READY"); }
"#;

/// The same probes with empty bodies: what attaching a program there costs
/// before it does anything (trampoline or kprobe entry, the statistics' own
/// clock reads), the floor under both tracers' per-hook figures.
fn empty_twin(text: &str) -> String {
    const KINDS: [&str; 5] = [
        "kprobe:",
        "kretprobe:",
        "kfunc:",
        "kretfunc:",
        "tracepoint:",
    ];
    text.lines()
        .filter(|l| KINDS.iter().any(|k| l.starts_with(k)))
        .filter_map(|l| l.split_whitespace().next())
        .map(|spec| format!("{spec} {{ }}\n"))
        .collect()
}

/// Shell functions of the bench guest. `@ATTACH@`, `@SECS@` are filled in.
const GUEST_FUNCTIONS: &str = r#"
S=@SECS@
TP=
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
    daxrace-auto) daxrace-workload sigdfl daxrace run --attach auto >$out 2>&1 & pat='hooks attached' ;;
    daxrace-kprobe) daxrace-workload sigdfl daxrace run --attach kprobe >$out 2>&1 & pat='hooks attached' ;;
    bpftrace) BPFTRACE_MAP_KEYS_MAX=8192 daxrace-workload sigdfl bpftrace /tmp/bench.bt >$out 2>&1 & pat='@@BT-READY' ;;
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
    daxrace-workload pin-punch --dir /mnt/$fs --seconds $S --stall-timeout 3 --max-stalls 1 --json >/tmp/wl.out 2>&1
    rc=$?
    echo "@@WL $1 $2 $fs $rc $(grep '^{' /tmp/wl.out | tail -n 1)"
  done
  if [ -n "$TP" ] && ! alive $TP; then
    echo "@@DIED $2 $1"; tail -n 20 /tmp/$1-$2.out 2>/dev/null | sed 's/^/  | /'
  fi
}
prog_stats() { daxrace-workload bpf-prog-stats --pid $TP | sed "s/^@@PROG /@@PROG $1 /"; }
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
"#;

/// The stats phase: each tracer once with BPF statistics on; daxrace first,
/// since the bpftrace script is built from what it attached.
const GUEST_STATS: &str = r#"
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
"#;

/// The rate phases: every traced phase between two untraced ones, the
/// tracers' order rotating from round to round.
fn rate_phases(rounds: u32) -> Vec<&'static str> {
    let tracers = [DR, BT, EMPTY];
    let mut v = vec![NONE];
    for r in 0..rounds as usize {
        for i in 0..tracers.len() {
            v.push(tracers[(i + r) % tracers.len()]);
            v.push(NONE);
        }
    }
    v
}

fn guest_script(rounds: u32, secs: u32, loop_secs: u32) -> String {
    let mut s = String::from("mkdir -p /tmp/bt\n");
    // Quoted here-documents: the probe text reaches the files verbatim.
    let _ = write!(s, "cat > /tmp/bt/head.bt <<'BTEOF'\n{BT_HEAD}BTEOF\n");
    s += "mkdir -p /tmp/bt-empty\n";
    for f in fragments() {
        let _ = write!(
            s,
            "cat > /tmp/bt/{}-{}.bt <<'BTEOF'\n{}BTEOF\n",
            f.kind, f.key, f.text
        );
        let _ = write!(
            s,
            "cat > /tmp/bt-empty/{}-{}.bt <<'BTEOF'\n{}BTEOF\n",
            f.kind,
            f.key,
            empty_twin(&f.text)
        );
    }
    s += &GUEST_FUNCTIONS
        .replace("@SECS@", &secs.to_string())
        .replace("@LOOPSECS@", &loop_secs.to_string())
        .replace("@ATTACH@", &ATTACH_LIMIT_S.to_string());
    s += GUEST_STATS;
    let phases = rate_phases(rounds);
    // A first op-loop on a fresh filesystem runs slower (the first punches
    // ran at 40% of the later ones'): warm up before the first phase.
    s += "loops warmup none > /dev/null\n";
    let _ = writeln!(s, "echo \"== rate phases: {}\"", phases.join(" "));
    for (i, p) in phases.iter().enumerate() {
        let _ = writeln!(s, "phase {} {p}", phase_tag(i));
    }
    s
}

/// The tag of the i-th rate phase: sorts in run order.
fn phase_tag(i: usize) -> String {
    format!("p{:02}", i + 1)
}

// ---- results ----------------------------------------------------------------

/// One `@@PROG` line: a loaded program during a stats phase.
#[derive(Clone, Debug)]
struct Prog {
    kind: String,
    name: String,
    runs: u64,
    ns: u64,
    attach: Vec<String>,
}

#[derive(Default)]
struct Parsed {
    kernel: String,
    /// (tag, tracer, fs) -> the pin-punch mix's JSON summary.
    workloads: BTreeMap<(String, String, String), Value>,
    /// (tag, tracer, fs, op) -> a lone operation's JSON summary.
    loops: BTreeMap<(String, String, String, String), Value>,
    /// The rate phases in the order they ran: (tag, tracer).
    phases: Vec<(String, String)>,
    /// tracer -> start-up times (ms).
    starts: BTreeMap<String, Vec<f64>>,
    start_failures: Vec<String>,
    /// tracer -> its programs in the stats phase.
    progs: BTreeMap<String, Vec<Prog>>,
    /// tracer -> share of the vCPU its own process used while attached
    /// (rate rounds only).
    cpu: BTreeMap<String, Vec<f64>>,
    bt_mode: Option<String>,
    /// The kernel's preemption model, from `sched/preempt` ("(lazy)" ->
    /// "lazy"), when it says.
    preempt: Option<String>,
    bt_script: Vec<String>,
    notes: Vec<String>,
}

fn parse(lines: &[String]) -> Parsed {
    let mut p = Parsed::default();
    for l in lines {
        if let Some(rest) = l.strip_prefix("@@BT| ") {
            p.bt_script.push(rest.to_string());
            continue;
        }
        if l == "@@BT|" {
            p.bt_script.push(String::new());
            continue;
        }
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["@@KERNEL", k] => p.kernel = k.to_string(),
            ["@@PREEMPT", modes @ ..] => p.preempt = preempt_mode(modes),
            ["@@START", tracer, _, ms] => {
                if let Ok(ms) = ms.parse() {
                    p.starts.entry(tracer.to_string()).or_default().push(ms);
                }
            }
            ["@@STARTFAIL", tracer, tag, ..] => {
                p.start_failures.push(format!("{tracer} ({tag})"));
            }
            ["@@WL", tag, tracer, fs, _rc, ..] => {
                let json = l.splitn(6, ' ').nth(5).unwrap_or("");
                if let Ok(v) = serde_json::from_str::<Value>(json) {
                    p.workloads
                        .insert((tag.to_string(), tracer.to_string(), fs.to_string()), v);
                }
            }
            ["@@LOOP", tag, tracer, fs, op, _rc, ..] => {
                let json = l.splitn(7, ' ').nth(6).unwrap_or("");
                if let Ok(v) = serde_json::from_str::<Value>(json) {
                    p.loops.insert(
                        (
                            tag.to_string(),
                            tracer.to_string(),
                            fs.to_string(),
                            op.to_string(),
                        ),
                        v,
                    );
                }
            }
            ["@@PHASE", tag, tracer] => p.phases.push((tag.to_string(), tracer.to_string())),
            ["@@PROG", tracer, _id, kind, name, runs, ns, attach] => {
                p.progs.entry(tracer.to_string()).or_default().push(Prog {
                    kind: kind.to_string(),
                    name: name.to_string(),
                    runs: runs.parse().unwrap_or(0),
                    ns: ns.parse().unwrap_or(0),
                    attach: attach
                        .split(',')
                        .filter(|a| a.contains(':'))
                        .map(String::from)
                        .collect(),
                });
            }
            ["@@CPU", tracer, tag, ticks, t0, t1] => {
                if let (Ok(ticks), Ok(t0), Ok(t1)) =
                    (ticks.parse::<f64>(), t0.parse::<f64>(), t1.parse::<f64>())
                {
                    if t1 > t0 && tag.starts_with('p') {
                        // USER_HZ is 100 on x86.
                        p.cpu
                            .entry(tracer.to_string())
                            .or_default()
                            .push(ticks / 100.0 / (t1 - t0));
                    }
                }
            }
            ["@@BTMODE", m] => p.bt_mode = Some(m.to_string()),
            ["@@BTMISSING", what] => p.notes.push(format!("bpftrace has no probe for {what}")),
            ["@@DIED", tracer, tag] => p.notes.push(format!("{tracer} died during {tag}")),
            ["@@STOPKILL", tracer] => p
                .notes
                .push(format!("{tracer} did not stop within 60 s of SIGINT")),
            ["@@NOSTATS"] => p
                .notes
                .push("cannot enable kernel.bpf_stats_enabled: no per-hook cost".into()),
            _ => {}
        }
    }
    p
}

/// The workload figures compared: JSON op names summed into one rate.
const RATES: &[(&str, &[&str])] = &[
    ("read", &["read"]),
    ("punch", &["punch"]),
    ("truncate", &["truncate"]),
    (
        "all modifications",
        &["punch", "zero", "collapse", "insert", "truncate"],
    ),
];

/// The two workloads of the rate phases.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Load {
    /// One operation in a loop on one thread (op-loop).
    Alone,
    /// pin-punch: pinned pages make breaks wait.
    Mix,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Alone => "alone",
            Load::Mix => "mix",
        }
    }
}

/// One line of the rate table: a rate of one workload on one filesystem.
struct RateRow {
    load: Load,
    fs: String,
    name: &'static str,
    ops: &'static [&'static str],
}

impl RateRow {
    fn rate(&self, p: &Parsed, tag: &str, tracer: &str) -> Option<f64> {
        let (tag, tracer, fs) = (tag.to_string(), tracer.to_string(), self.fs.clone());
        let v = match self.load {
            Load::Alone => p.loops.get(&(tag, tracer, fs, self.name.to_string())),
            Load::Mix => p.workloads.get(&(tag, tracer, fs)),
        };
        v.and_then(|v| rate(v, self.ops))
    }
}

/// The table's rows: each lone operation, then the mix's rates, per fs.
fn rate_rows(p: &Parsed) -> Vec<RateRow> {
    let mut rows = Vec::new();
    let loop_fs: BTreeSet<&String> = p.loops.keys().map(|(_, _, f, _)| f).collect();
    for fs in loop_fs {
        // op-loop runs one operation at a time: the single-operation rates.
        for (name, ops) in RATES.iter().filter(|(_, ops)| ops.len() == 1) {
            rows.push(RateRow {
                load: Load::Alone,
                fs: fs.clone(),
                name,
                ops,
            });
        }
    }
    let mix_fs: BTreeSet<&String> = p.workloads.keys().map(|(_, _, f)| f).collect();
    for fs in mix_fs {
        for (name, ops) in RATES {
            rows.push(RateRow {
                load: Load::Mix,
                fs: fs.clone(),
                name,
                ops,
            });
        }
    }
    rows
}

/// Each phase's value over the mean of the nearest untraced phases before
/// and after it (one of them at either end), grouped by tracer. A drift
/// over the boot cancels out to first order. Untraced phases get the same
/// treatment against their untraced neighbours: how far apart two runs of
/// the same thing land, the resolution of every other ratio.
fn bracketed(
    phases: &[(String, String)],
    value: impl Fn(&str, &str) -> Option<f64>,
) -> BTreeMap<String, Vec<f64>> {
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let untraced = |mut it: Box<dyn Iterator<Item = &(String, String)> + '_>| {
        it.find(|(_, t)| t == NONE)
            .and_then(|(g, _)| value(g, NONE))
    };
    for (i, (tag, tracer)) in phases.iter().enumerate() {
        let Some(v) = value(tag, tracer) else {
            continue;
        };
        let around: Vec<f64> = [
            untraced(Box::new(phases[..i].iter().rev())),
            untraced(Box::new(phases[i + 1..].iter())),
        ]
        .into_iter()
        .flatten()
        .collect();
        if around.is_empty() {
            continue;
        }
        let base = around.iter().sum::<f64>() / around.len() as f64;
        if base > 0.0 {
            out.entry(tracer.clone()).or_default().push(v / base);
        }
    }
    out
}

/// The median of some ratios, with their range.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(v: &[f64]) -> Option<Spread> {
        Some(Spread {
            median: median(v.to_vec())?,
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
    /// "0.951 [0.93-0.97]"
    fn show(v: &[f64]) -> String {
        Spread::of(v).map_or("-".into(), |s| {
            format!("{:.3} [{:.2}-{:.2}]", s.median, s.min, s.max)
        })
    }
}

fn rate(v: &Value, ops: &[&str]) -> Option<f64> {
    let secs = v["duration_s"].as_f64().filter(|d| *d > 0.0)?;
    let n: u64 = ops
        .iter()
        .map(|o| v["ops"][*o]["count"].as_u64().unwrap_or(0))
        .sum();
    Some(n as f64 / secs)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The logical hook a kernel symbol serves (as in daxrace's probe plan).
fn hook_of(symbol: &str) -> &'static str {
    let base = symbol.split('.').next().unwrap_or(symbol);
    match base {
        "ext4_break_layouts" => "ext4 break-layouts",
        "xfs_break_layouts" | "xfs_break_dax_layouts" => "xfs break-layouts",
        "dax_break_layout" => "dax_break_layout",
        "dax_layout_busy_page" | "dax_layout_busy_page_range" => "busy scan",
        "init_wait_var_entry" => "wait start",
        "wake_up_var" => "wake_up_var",
        "__put_devmap_managed_page_refs"
        | "__put_devmap_managed_folio_refs"
        | "put_devmap_managed_page"
        | "__put_devmap_managed_page"
        | "free_zone_device_folio" => "pin drop",
        "__bio_release_pages" => "bio release",
        "dax_disassociate_entry" | "dax_delete_mapping_range" => "disassociate",
        "dax_delete_mapping_entry" => "delete entry",
        s if s.starts_with("ext4_") => "ext4 tracepoints",
        _ => "other",
    }
}

#[derive(Default, Clone)]
struct HookCost {
    kinds: BTreeSet<String>,
    runs: u64,
    ns: u64,
}

impl HookCost {
    fn ns_per_run(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.ns as f64 / self.runs as f64)
    }
}

/// The hook and attach kind of a daxrace program from its name (as the
/// kernel keeps it: 15 characters), for programs whose links do not say
/// where they are attached (kprobes through BPF links).
fn classify_program(name: &str) -> Option<(&'static str, &'static str)> {
    let (kind, rest) = name.split_once('_')?;
    let kind = match kind {
        "fe" => "fentry",
        "fx" => "fexit",
        "kp" => "kprobe",
        "kr" => "kretprobe",
        "raw" => "raw_tracepoint",
        "tp" => "tp_btf",
        _ => return None,
    };
    const HOOKS: &[(&str, &str)] = &[
        ("ext4_break", "ext4 break-layouts"),
        ("xfs_break", "xfs break-layouts"),
        ("generic_brea", "dax_break_layout"),
        ("busy_scan", "busy scan"),
        ("wait_start", "wait start"),
        ("pin_dropped", "pin drop"),
        ("page_freed", "pin drop"),
        ("bio_release", "bio release"),
        ("wake_up", "wake_up_var"),
        ("disassociat", "disassociate"),
        ("delete_range", "disassociate"),
        ("delete_entry", "delete entry"),
        ("ext4_", "ext4 tracepoints"),
    ];
    HOOKS
        .iter()
        .find(|(k, _)| rest.starts_with(k))
        .map(|(_, h)| (*h, kind))
}

/// A tracer's programs grouped by hook (a program attached to several
/// symbols of one hook counts once; BEGIN/END uprobes are left out).
fn hook_costs(progs: &[Prog]) -> BTreeMap<&'static str, HookCost> {
    let mut out: BTreeMap<&'static str, HookCost> = BTreeMap::new();
    for p in progs {
        let hooks: BTreeSet<&'static str> = p
            .attach
            .iter()
            .filter(|a| !a.starts_with("uprobe") && !a.starts_with("uretprobe"))
            .filter_map(|a| a.split_once(':').map(|(_, s)| hook_of(s)))
            .collect();
        let named = classify_program(&p.name);
        let Some(hook) = hooks.first().copied().or(named.map(|n| n.0)) else {
            continue;
        };
        let h = out.entry(hook).or_default();
        for a in &p.attach {
            if let Some((k, _)) = a.split_once(':') {
                h.kinds.insert(k.to_string());
            }
        }
        if p.attach.is_empty() {
            h.kinds
                .insert(named.map_or(p.kind.clone(), |n| n.1.to_string()));
        }
        h.runs += p.runs;
        h.ns += p.ns;
    }
    out
}

/// The selected preemption model in `/sys/kernel/debug/sched/preempt`
/// ("none (voluntary) full lazy": the one in parentheses).
fn preempt_mode(words: &[&str]) -> Option<String> {
    words
        .iter()
        .find_map(|w| w.strip_prefix('(')?.strip_suffix(')'))
        .map(String::from)
}

/// What daxrace's code costs over bpftrace's once the empty program's cost
/// (the attach and statistics floor both pay) is taken off; none when
/// bpftrace's code costs nothing measurable over the floor.
fn above_floor(dr: Option<f64>, bt: Option<f64>, empty: Option<f64>) -> Option<f64> {
    let (d, b, e) = (dr?, bt?, empty?);
    (b - e > 0.0).then(|| (d - e).max(0.0) / (b - e))
}

/// Workload operations (reads + modifications) in a stats phase: the
/// denominator that makes total BPF time comparable between tracers.
fn stats_ops(p: &Parsed, tracer: &str) -> u64 {
    p.workloads
        .iter()
        .filter(|((tag, t, _), _)| tag == "stats" && t == tracer)
        .map(|(_, v)| {
            ["read", "punch", "zero", "collapse", "insert", "truncate"]
                .iter()
                .map(|o| v["ops"][*o]["count"].as_u64().unwrap_or(0))
                .sum::<u64>()
        })
        .sum()
}

struct SeriesReport {
    series: String,
    text: String,
    /// (workload, fs, rate name) -> daxrace / untraced.
    dr_ratios: BTreeMap<(Load, String, String), Spread>,
    /// workload -> untraced phases against their untraced neighbours.
    noise: BTreeMap<Load, Spread>,
    /// Per hook: daxrace auto ns/run, bpftrace ns/run.
    hook_pairs: Vec<(String, f64, f64)>,
    /// Total BPF ns per workload op: daxrace auto, bpftrace.
    total_per_op: Option<(f64, f64)>,
    /// Median start-up ms: daxrace auto, bpftrace.
    starts: (Option<f64>, Option<f64>),
}

fn bench_series(series: &str, args: &BenchArgs) -> Result<SeriesReport> {
    let k = kernel::fetch(series)?;
    let rounds = args.rounds.max(1);
    let (secs, loop_secs) = (args.seconds.max(1), args.loop_seconds.max(1));
    let script = guest_script(rounds, secs, loop_secs);
    // Per phase: the workloads on two filesystems, one attach (bounded),
    // stop (bounded).
    let per_phase = 2 * u64::from(secs + 3 * loop_secs) + 60;
    let phases = rate_phases(rounds).len() as u64;
    let timeout =
        Duration::from_secs(4 * (per_phase + ATTACH_LIMIT_S) + phases * (per_phase + 90) + 300);
    println!(
        "bench: {series}: {} {}; one boot, stats phase then {phases} rate phases of {} s per filesystem (several minutes)",
        k.pkg,
        k.version,
        secs + 3 * loop_secs
    );
    let t = Instant::now();
    let out = boot(&k, script, timeout, args.verbose)?;
    let log = out_dir().join(format!("{series}.log"));
    std::fs::write(&log, out.output.join("\n") + "\n")
        .with_context(|| format!("writing {}", log.display()))?;
    if out.status != 0 {
        bail!(
            "the bench guest script exited with {} (output in {})",
            out.status,
            log.display()
        );
    }
    let p = parse(&out.output);
    if !p.bt_script.is_empty() {
        let bt = out_dir().join(format!("bpftrace-{series}.bt"));
        std::fs::write(&bt, p.bt_script.join("\n") + "\n")?;
    }
    Ok(report(
        series,
        &p,
        &out,
        t.elapsed(),
        (rounds, secs, loop_secs),
        &log,
    ))
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.prec$}"))
}

fn report(
    series: &str,
    p: &Parsed,
    out: &guest::Outcome,
    took: Duration,
    (rounds, secs, loop_secs): (u32, u32, u32),
    log: &std::path::Path,
) -> SeriesReport {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n=== {series}: kernel {} ({} rounds of daxrace, bpftrace, empty programs, each between untraced phases, rotating order; boot {:.0} s, guest run {:.0} s, total {:.0} s)",
        p.kernel,
        rounds,
        out.boot.as_secs_f64(),
        out.command.as_secs_f64(),
        took.as_secs_f64()
    );
    // 1. rates
    let _ = writeln!(
        t,
        "workload rates, ops/s (median over phases); ratio = a phase's rate / the mean of the untraced phases just before and after it, median [min-max] over rounds"
    );
    let _ = writeln!(
        t,
        "  {:<6} {:<5} {:<17} {:>9} {:>9} {:>19} {:>19} {:>19} {:>19}",
        "load",
        "fs",
        "operation",
        "untraced",
        "daxrace",
        "daxrace ratio",
        "bpftrace ratio",
        "empty progs ratio",
        "untraced (noise)"
    );
    let mut dr_ratios = BTreeMap::new();
    let mut noise: BTreeMap<Load, Vec<f64>> = BTreeMap::new();
    for row in rate_rows(p) {
        let by_tracer = bracketed(&p.phases, |tag, tracer| row.rate(p, tag, tracer));
        let ratios = |tr: &str| by_tracer.get(tr).cloned().unwrap_or_default();
        let rates = |tr: &str| -> Vec<f64> {
            p.phases
                .iter()
                .filter(|(_, t)| t == tr)
                .filter_map(|(tag, _)| row.rate(p, tag, tr))
                .collect()
        };
        noise.entry(row.load).or_default().extend(ratios(NONE));
        if let Some(d) = Spread::of(&ratios(DR)) {
            dr_ratios.insert((row.load, row.fs.clone(), row.name.to_string()), d);
        }
        let _ = writeln!(
            t,
            "  {:<6} {:<5} {:<17} {:>9} {:>9} {:>19} {:>19} {:>19} {:>19}",
            row.load.name(),
            row.fs,
            row.name,
            fmt_opt(median(rates(NONE)), 1),
            fmt_opt(median(rates(DR)), 1),
            Spread::show(&ratios(DR)),
            Spread::show(&ratios(BT)),
            Spread::show(&ratios(EMPTY)),
            Spread::show(&ratios(NONE)),
        );
    }
    let _ = writeln!(
        t,
        "  alone: one operation in a loop on one thread (op-loop, {} s per phase); mix: pin-punch ({secs} s), where pinned pages make breaks wait; empty progs: empty bpftrace programs on the same probes; untraced (noise): the untraced phases compared in the same way with their untraced neighbours",
        loop_secs
    );
    let cpu = |tr: &str| {
        let v = p.cpu.get(tr).cloned().unwrap_or_default();
        format!("{}%", fmt_opt(median(v).map(|x| x * 100.0), 1))
    };
    let _ = writeln!(
        t,
        "  tracer process CPU while attached (share of the guest's one vCPU, median of rounds): daxrace {}, bpftrace {}, empty programs {}",
        cpu(DR),
        cpu(BT),
        cpu(EMPTY)
    );
    // 2. per-hook cost
    let costs: BTreeMap<&str, BTreeMap<&str, HookCost>> = [DR, DR_KP, BT, EMPTY]
        .iter()
        .map(|tr| (*tr, hook_costs(p.progs.get(*tr).map_or(&[][..], |v| v))))
        .collect();
    let _ = writeln!(
        t,
        "per-hook BPF cost in the stats phase (run time / run count, ns per program run; TCG-inflated){}",
        p.bt_mode
            .as_deref()
            .map(|m| format!("; bpftrace used {m}"))
            .unwrap_or_default()
    );
    if let Some(m) = p
        .preempt
        .as_deref()
        .filter(|m| *m == "full" || *m == "lazy")
    {
        let _ = writeln!(
            t,
            "  note: this kernel preempts in kernel mode ({m}): fentry/fexit programs run preemptible, and their run time includes any time preempted, for both tracers; kprobe programs run with preemption off. Long programs under contention read high."
        );
    }
    let _ = writeln!(
        t,
        "  {:<17} {:<17} {:>7} {:>8}   {:>8}   {:<19} {:>7} {:>8}  {:>6}  {:>6}  {:>11}",
        "hook",
        "daxrace (auto)",
        "runs",
        "ns/run",
        "kprobe",
        "bpftrace",
        "runs",
        "ns/run",
        "dr/bt",
        "empty",
        "above empty"
    );
    let mut below_floor = Vec::new();
    let hooks: BTreeSet<&str> = costs.values().flat_map(|m| m.keys().copied()).collect();
    let mut hook_pairs = Vec::new();
    let kinds = |h: &HookCost| h.kinds.iter().cloned().collect::<Vec<_>>().join("+");
    for h in hooks {
        let get = |tr: &str| {
            costs
                .get(tr)
                .and_then(|m| m.get(h))
                .cloned()
                .unwrap_or_default()
        };
        let (a, k, b, e) = (get(DR), get(DR_KP), get(BT), get(EMPTY));
        if let (Some(y), Some(f)) = (b.ns_per_run(), e.ns_per_run()) {
            if y / 3.0 < f {
                below_floor.push(format!("{h} ({:.0} < {f:.0} ns)", y / 3.0));
            }
        }
        let ratio = match (a.ns_per_run(), b.ns_per_run()) {
            (Some(x), Some(y)) if y > 0.0 => {
                hook_pairs.push((h.to_string(), x, y));
                Some(x / y)
            }
            _ => None,
        };
        let _ = writeln!(
            t,
            "  {:<17} {:<17} {:>7} {:>8}   {:>8}   {:<19} {:>7} {:>8}  {:>6}  {:>6}  {:>11}",
            h,
            kinds(&a),
            a.runs,
            fmt_opt(a.ns_per_run(), 0),
            fmt_opt(k.ns_per_run(), 0),
            kinds(&b),
            b.runs,
            fmt_opt(b.ns_per_run(), 0),
            fmt_opt(ratio, 2),
            fmt_opt(e.ns_per_run(), 0),
            fmt_opt(
                above_floor(a.ns_per_run(), b.ns_per_run(), e.ns_per_run()),
                2
            )
        );
    }
    let _ = writeln!(
        t,
        "  empty: an empty bpftrace program on the same probes (what any program there costs); above empty: (daxrace - empty) / (bpftrace - empty), what each tracer's own code costs; a third of bpftrace's cost is below the empty program for: {}",
        if below_floor.is_empty() {
            "no hook".to_string()
        } else {
            below_floor.join(", ")
        }
    );
    // The programs behind the figures, costliest per run first: where a
    // hook stands out, this names the program.
    for (label, tr) in [("daxrace (auto)", DR), ("bpftrace", BT)] {
        let mut v: Vec<&Prog> = p
            .progs
            .get(tr)
            .map(|v| v.iter().filter(|p| p.runs > 0).collect())
            .unwrap_or_default();
        v.sort_by_key(|p| std::cmp::Reverse(p.ns / p.runs));
        let list: Vec<String> = v
            .iter()
            .take(6)
            .map(|p| format!("{} {} ns x {}", p.name, p.ns / p.runs, p.runs))
            .collect();
        if !list.is_empty() {
            let _ = writeln!(t, "  costliest {label} programs: {}", list.join(", "));
        }
    }
    let total = |tr: &str| -> (u64, u64) {
        costs.get(tr).map_or((0, 0), |m| {
            m.values().fold((0, 0), |(r, n), h| (r + h.runs, n + h.ns))
        })
    };
    let per_op = |tr: &str| {
        let ops = stats_ops(p, tr);
        (ops > 0).then(|| total(tr).1 as f64 / ops as f64)
    };
    for (label, tr) in [
        ("daxrace (auto)", DR),
        ("daxrace kprobe", DR_KP),
        ("bpftrace", BT),
    ] {
        let (runs, ns) = total(tr);
        let _ = writeln!(
            t,
            "  total {label:<15} {runs:>9} runs {:>9.1} ms, {:>8} ns of BPF per workload op ({} ops)",
            ns as f64 / 1e6,
            fmt_opt(per_op(tr), 0),
            stats_ops(p, tr)
        );
    }
    let total_per_op = match (per_op(DR), per_op(BT)) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => None,
    };
    // 4. start-up
    let st = |tr: &str| p.starts.get(tr).cloned().unwrap_or_default();
    let _ = writeln!(
        t,
        "start-up, launch to all hooks attached (ms, median of n): daxrace auto {} (n={}), daxrace kprobe {} (n={}), bpftrace {} (n={})",
        fmt_opt(median(st(DR)), 0),
        st(DR).len(),
        fmt_opt(median(st(DR_KP)), 0),
        st(DR_KP).len(),
        fmt_opt(median(st(BT)), 0),
        st(BT).len()
    );
    let stalled = p
        .workloads
        .values()
        .filter(|v| v["stalls"].as_array().is_some_and(|a| !a.is_empty()))
        .count();
    if stalled > 0 {
        let _ = writeln!(
            t,
            "  note: {stalled} of {} workload runs stalled (break-layouts slept until signalled: the lost wake-up); their rates measure the stall timeout, not a tracer's cost",
            p.workloads.len()
        );
    }
    for f in &p.start_failures {
        let _ = writeln!(t, "  note: {f} did not attach (see {})", log.display());
    }
    for n in &p.notes {
        let _ = writeln!(t, "  note: {n}");
    }
    for l in &out.dmesg {
        let _ = writeln!(t, "  kernel: {l}");
    }
    SeriesReport {
        series: series.to_string(),
        text: t,
        dr_ratios,
        noise: noise
            .iter()
            .filter_map(|(l, v)| Spread::of(v).map(|s| (*l, s)))
            .collect(),
        hook_pairs,
        total_per_op,
        starts: (median(st(DR)), median(st(BT))),
    }
}

// ---- the host pipeline -----------------------------------------------------

struct Pipeline {
    /// (stream, best, median) decode + detect M events/s per core.
    lines: Vec<(String, f64, f64)>,
}

/// Runs `cargo bench -p daxrace --bench pipeline` and takes its
/// "decode + detect" figures.
fn pipeline_bench() -> Result<Pipeline> {
    println!("bench: host pipeline: cargo bench -p daxrace --bench pipeline");
    let out = crate::vm::run_with_timeout(
        crate::setup::cargo()
            .current_dir(crate::setup::workspace_root())
            .args(["bench", "-p", "daxrace", "--bench", "pipeline"]),
        Duration::from_secs(1200),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "cargo bench failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    let mut lines = Vec::new();
    let mut stream = String::new();
    for l in text.lines() {
        if !l.starts_with(' ') {
            stream = l.split(':').next().unwrap_or("").to_string();
        }
        // "  decode + detect    31.1 M events/s per core (median  22.4),  32.2 ns/event"
        if let Some(rest) = l.trim_start().strip_prefix("decode + detect") {
            let nums: Vec<f64> = rest
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .filter_map(|x| x.parse().ok())
                .collect();
            if nums.len() >= 2 {
                lines.push((stream.clone(), nums[0], nums[1]));
            }
        }
    }
    if lines.is_empty() {
        bail!("no \"decode + detect\" line in the benchmark's output");
    }
    Ok(Pipeline { lines })
}

// ---- goals -----------------------------------------------------------------

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn goals(reports: &[SeriesReport], pipeline: Option<&Pipeline>) -> String {
    let mut t = String::from("\n=== goals\n");
    for r in reports {
        let s = &r.series;
        // Judged on the median ratio; the range and the untraced phases'
        // own spread say how firmly.
        let check = |load: Load, names: &[&str], goal: f64| -> Option<(bool, String)> {
            let rows: Vec<(&(Load, String, String), &Spread)> = r
                .dr_ratios
                .iter()
                .filter(|((l, _, n), _)| *l == load && names.contains(&n.as_str()))
                .collect();
            let v: Vec<String> = rows
                .iter()
                .map(|((_, fs, n), x)| {
                    format!("{fs} {n} {:.3} [{:.2}-{:.2}]", x.median, x.min, x.max)
                })
                .collect();
            let ok = rows.iter().all(|(_, x)| x.median >= goal);
            (!v.is_empty()).then(|| (ok, v.join(", ")))
        };
        for load in [Load::Alone, Load::Mix] {
            let noise = r
                .noise
                .get(&load)
                .map(|n| format!("; untraced vs untraced {:.2}-{:.2}", n.min, n.max))
                .unwrap_or_default();
            for (names, goal, what) in [
                (
                    &["punch", "truncate"][..],
                    0.95,
                    "punch/truncate rate >= 0.95 of untraced",
                ),
                (&["read"][..], 0.99, "read rate >= 0.99 of untraced"),
            ] {
                match check(load, names, goal) {
                    Some((ok, v)) => {
                        let _ = writeln!(
                            t,
                            "  {s}: {}: {what}: {} ({v}{noise})",
                            load.name(),
                            verdict(ok)
                        );
                    }
                    None => {
                        let _ = writeln!(t, "  {s}: {}: {what}: no figures", load.name());
                    }
                }
            }
        }
        if r.hook_pairs.is_empty() {
            let _ = writeln!(t, "  {s}: per-hook cost <= 1/3 of bpftrace's: no figures");
        } else {
            let worst = r
                .hook_pairs
                .iter()
                .map(|(h, a, b)| (h, a / b))
                .max_by(|x, y| x.1.total_cmp(&y.1))
                .expect("not empty");
            let over: Vec<String> = r
                .hook_pairs
                .iter()
                .filter(|(_, a, b)| a / b > 1.0 / 3.0)
                .map(|(h, a, b)| format!("{h} {:.2}", a / b))
                .collect();
            let _ = writeln!(
                t,
                "  {s}: per-hook cost <= 1/3 of bpftrace's: {} (worst {} at {:.2}{})",
                verdict(over.is_empty()),
                worst.0,
                worst.1,
                if over.is_empty() {
                    String::new()
                } else {
                    format!("; above 1/3: {}", over.join(", "))
                }
            );
        }
        match r.total_per_op {
            Some((a, b)) if b > 0.0 => {
                let _ = writeln!(
                    t,
                    "  {s}: total BPF time <= 1/3 of bpftrace's: {} ({a:.0} vs {b:.0} ns per workload op, {:.2})",
                    verdict(a / b <= 1.0 / 3.0),
                    a / b
                );
            }
            _ => {
                let _ = writeln!(t, "  {s}: total BPF time <= 1/3 of bpftrace's: no figures");
            }
        }
        match r.starts {
            (Some(a), Some(b)) if a > 0.0 => {
                let _ = writeln!(
                    t,
                    "  {s}: start-up >= 10x faster than bpftrace: {} ({a:.0} vs {b:.0} ms, {:.1}x)",
                    verdict(b / a >= 10.0),
                    b / a
                );
            }
            _ => {
                let _ = writeln!(t, "  {s}: start-up >= 10x faster than bpftrace: no figures");
            }
        }
    }
    match pipeline {
        Some(p) => {
            let worst = p
                .lines
                .iter()
                .map(|(_, _, m)| *m)
                .fold(f64::INFINITY, f64::min);
            let v: Vec<String> = p
                .lines
                .iter()
                .map(|(s, b, m)| format!("{s}: best {b:.1}, median {m:.1}"))
                .collect();
            let _ = writeln!(
                t,
                "  host: pipeline >= 20 M events/s/core (decode + detect, median): {} ({})",
                verdict(worst >= 20.0),
                v.join("; ")
            );
        }
        None => {
            let _ = writeln!(t, "  host: pipeline >= 20 M events/s/core: not measured");
        }
    }
    t
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn every_fragment_is_filled() {
        for f in fragments() {
            assert!(!f.text.contains("{A"), "{} {}: {}", f.kind, f.key, f.text);
            assert!(!f.text.contains("{RET}") && !f.text.contains("{REFS}"));
            if f.kind.starts_with("kret") {
                assert!(!f.text.contains("args->") || f.kind == "kretfunc");
            }
        }
    }

    /// The guest script must at least parse (busybox sh -n).
    #[test]
    fn empty_twins_keep_every_probe_and_drop_every_body() {
        let frags = fragments();
        let bio = frags
            .iter()
            .find(|f| f.kind == "kretprobe" && f.key == "__bio_release_pages")
            .expect("bio fragment");
        assert_eq!(
            empty_twin(&bio.text),
            "kprobe:@SYM@ { }\nkretprobe:@SYM@ { }\n"
        );
        for f in &frags {
            let twin = empty_twin(&f.text);
            let probes = f
                .text
                .lines()
                .filter(|l| l.starts_with(f.kind) || l.starts_with("kprobe:"))
                .count();
            assert_eq!(twin.lines().count(), probes, "{} {}", f.kind, f.key);
            assert!(twin.lines().all(|l| l.ends_with(" { }")), "{twin}");
        }
    }

    #[test]
    fn the_guest_reads_kernel_facts_from_daxraces_json() {
        // The `fact` helper of the guest script, on what `daxrace probes
        // --json` prints (serde_json's pretty form).
        let facts = serde_json::json!({
            "kernel": "6.12.118",
            "facts": {"idle_refcount": 1, "wait_var_offset": 52, "pin_bias": 1024},
        });
        let json = std::env::temp_dir().join(format!("daxrace-facts-{}.json", std::process::id()));
        std::fs::write(&json, serde_json::to_string_pretty(&facts).expect("json")).expect("write");
        let helper = GUEST_FUNCTIONS
            .lines()
            .find(|l| l.starts_with("fact()"))
            .expect("fact() in the guest functions")
            .replace("/tmp/facts.json", &json.display().to_string());
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{helper}\necho $(fact wait_var_offset) $(fact idle_refcount) x$(fact nope)"
            ))
            .output()
            .expect("sh runs");
        let _ = std::fs::remove_file(&json);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "52 1 x");
        for f in fragments().iter().filter(|f| f.key == "wake_up_var") {
            assert!(f.text.contains("@REFOFF@"), "{}", f.text);
        }
    }

    #[test]
    fn every_traced_phase_sits_between_untraced_ones() {
        let v = rate_phases(2);
        assert_eq!(v.len(), 13);
        assert_eq!(v.first(), Some(&NONE));
        for (i, t) in v.iter().enumerate() {
            assert_eq!(*t == NONE, i % 2 == 0, "{v:?}");
        }
        // The order rotates: each tracer comes first once in three rounds.
        let firsts: BTreeSet<&str> = (0..3).map(|r| rate_phases(3)[1 + 6 * r]).collect();
        assert_eq!(firsts.len(), 3);
        assert_eq!(phase_tag(0), "p01");
    }

    #[test]
    fn the_preemption_model_is_the_one_in_parentheses() {
        assert_eq!(
            preempt_mode(&["none", "(voluntary)", "full"]),
            Some("voluntary".into())
        );
        assert_eq!(preempt_mode(&["full", "(lazy)"]), Some("lazy".into()));
        assert_eq!(preempt_mode(&[]), None);
        let p = parse(&["@@PREEMPT full (lazy)".to_string()]);
        assert_eq!(p.preempt.as_deref(), Some("lazy"));
    }

    #[test]
    fn the_floor_comes_off_both_sides() {
        assert_eq!(
            above_floor(Some(300.0), Some(500.0), Some(200.0)),
            Some(1.0 / 3.0)
        );
        assert_eq!(
            above_floor(Some(150.0), Some(500.0), Some(200.0)),
            Some(0.0)
        );
        assert_eq!(above_floor(Some(300.0), Some(190.0), Some(200.0)), None);
        assert_eq!(above_floor(Some(300.0), None, Some(200.0)), None);
    }

    #[test]
    fn bracketed_ratios_cancel_a_linear_drift() {
        // Rates falling 5% a phase: a tracer costing nothing reads 1.0.
        let phases: Vec<(String, String)> = rate_phases(2)
            .iter()
            .enumerate()
            .map(|(i, t)| (phase_tag(i), t.to_string()))
            .collect();
        let value = |tag: &str, tr: &str| {
            let i: f64 = tag[1..].parse().expect("tag");
            let cost = if tr == BT { 0.8 } else { 1.0 };
            Some((100.0 - 5.0 * i) * cost)
        };
        let by = bracketed(&phases, value);
        for r in &by[DR] {
            assert!((r - 1.0).abs() < 1e-12, "{r}");
        }
        for r in &by[BT] {
            assert!((r - 0.8).abs() < 1e-12, "{r}");
        }
        // Untraced phases against their untraced neighbours: 1 inside,
        // off at the ends where only one neighbour exists.
        assert_eq!(by[NONE].len(), 7);
        assert!((by[NONE][3] - 1.0).abs() < 1e-12);
        let s = Spread::of(&[1.0, 0.9, 1.2]).expect("spread");
        assert_eq!((s.median, s.min, s.max), (1.0, 0.9, 1.2));
        assert_eq!(Spread::show(&[]), "-");
        assert_eq!(Spread::show(&[0.95]), "0.950 [0.95-0.95]");
    }

    #[test]
    fn guest_script_parses() {
        let script = guest_script(2, 1, 1);
        crate::vm::guest::tests::assert_sh_parses(&script);
    }

    #[test]
    fn parse_and_group() {
        let lines: Vec<String> = [
            "@@KERNEL 7.3.4",
            "@@START daxrace-auto stats-daxrace-auto 3400",
            "@@START bpftrace stats-bpftrace-1 11000",
            "@@CPU bpftrace p02-bpftrace 50 10.0 20.0",
            "@@CPU daxrace-auto stats-daxrace-auto 50 10.0 20.0",
            "@@PHASE p01 none",
            r#"@@WL p01 none ext4 0 {"duration_s":2.0,"ops":{"read":{"count":100},"punch":{"count":10}}}"#,
            r#"@@LOOP p01 none ext4 read 0 {"duration_s":2.0,"ops":{"read":{"count":1000}}}"#,
            "@@PHASE p02 daxrace-auto",
            r#"@@WL p02 daxrace-auto ext4 0 {"duration_s":2.0,"ops":{"read":{"count":99},"punch":{"count":10}}}"#,
            r#"@@LOOP p02 daxrace-auto ext4 read 0 {"duration_s":2.0,"ops":{"read":{"count":940}}}"#,
            "@@PHASE p03 none",
            r#"@@LOOP p03 none ext4 read 0 {"duration_s":2.0,"ops":{"read":{"count":900}}}"#,
            "@@PROG daxrace-auto 5 tracing fe_busy_scan_ra 10 1000 fentry:dax_layout_busy_page_range",
            "@@PROG daxrace-auto 6 kprobe kr_busy_scan 10 3000 kretprobe:dax_layout_busy_page,kretprobe:dax_layout_busy_page_range",
            "@@PROG daxrace-auto 7 kprobe kp_disassociate 4 400 -",
            "@@PROG bpftrace 9 kprobe BEGIN 1 100 uprobe:/usr/bin/bpftrace",
            "@@BT| kfunc:wake_up_var {",
        ]
        .map(String::from)
        .to_vec();
        let p = parse(&lines);
        assert_eq!(p.kernel, "7.3.4");
        assert_eq!(p.starts["bpftrace"], [11000.0]);
        assert_eq!(p.cpu["bpftrace"], [0.05]);
        assert!(
            !p.cpu.contains_key("daxrace-auto"),
            "stats phases are not rate phases"
        );
        assert_eq!(p.workloads.len(), 2);
        assert_eq!(p.loops.len(), 3);
        assert_eq!(p.phases.len(), 3);
        let rows = rate_rows(&p);
        assert_eq!(
            rows.iter()
                .map(|r| (r.load.name(), r.name))
                .collect::<Vec<_>>(),
            [
                ("alone", "read"),
                ("alone", "punch"),
                ("alone", "truncate"),
                ("mix", "read"),
                ("mix", "punch"),
                ("mix", "truncate"),
                ("mix", "all modifications")
            ]
        );
        // The lone reads under daxrace against the mean of 1000 and 900.
        let by = bracketed(&p.phases, |tag, tr| rows[0].rate(&p, tag, tr));
        assert_eq!(by[DR], [940.0 / 950.0]);
        assert_eq!(by[NONE], [1000.0 / 900.0, 900.0 / 1000.0]);
        // The mix's p03 is missing: p02 is compared with p01 alone.
        let by = bracketed(&p.phases, |tag, tr| rows[3].rate(&p, tag, tr));
        assert_eq!(by[DR], [0.99]);
        let c = hook_costs(&p.progs["daxrace-auto"]);
        assert_eq!(c["busy scan"].runs, 20);
        assert_eq!(c["busy scan"].ns_per_run(), Some(200.0));
        assert_eq!(c["disassociate"].runs, 4);
        assert!(c["disassociate"].kinds.contains("kprobe"));
        assert!(hook_costs(&p.progs["bpftrace"]).is_empty());
        assert_eq!(p.bt_script, ["kfunc:wake_up_var {"]);
        let v = &p.workloads[&("p01".into(), "none".into(), "ext4".into())];
        assert_eq!(rate(v, &["read"]), Some(50.0));
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
    }
}
