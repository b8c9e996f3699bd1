//! `daxrace doctor`: explain a break-layouts wait that began before
//! daxrace did.
//!
//! Every task asleep in `wait_var_event()` sits on one of the kernel's
//! hashed wait queues ([`crate::kernel::waiters`]). Those whose kernel stack
//! (`/proc/PID/task/TID/stack`) shows a break-layouts function of the plan's
//! table ([`daxrace_plan::BREAK_WAITS`]) wait on a DAX page: the wait
//! variable is that page's `_refcount` or the page itself, as the plan's
//! refcount model ([`daxrace_plan::WAIT_MODELS`]) says. A page back at its
//! idle refcount, and still so after a confirming delay, with its waiter
//! still queued, is a lost wake-up; otherwise the waiter waits on a pinned
//! page, legitimately.
//!
//! The verdict ([`verdict`]) and the finding it becomes for `run` and
//! `trace` ([`StuckTask::finding`]) are pure; [`Doctor::examine`] does the
//! reading.
use std::{
    collections::HashSet,
    io,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    detect::{split_refcount, Finding},
    event::{Comm, Filesystem, Task},
    kernel::{
        btf::{Btf, BtfError},
        facts::{self, KernelFacts},
        kallsyms::{Kallsyms, KernelSymbol},
        ksym::SymbolLookup,
        waiters::{self, KernelMemory, PageLayout, PageState, VarWaiter, WaitLayout},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("daxrace doctor needs root (CAP_SYS_ADMIN: it reads kernel stacks and kernel memory): run it with sudo")]
    NotPrivileged,
    #[error("no kernel BTF ({0}): the doctor reads the kernel's wait queues by their BTF layout (CONFIG_DEBUG_INFO_BTF)")]
    NoBtf(BtfError),
    #[error("the kernel's BTF has no {0}: cannot read its wait queues")]
    Layout(String),
    #[error("the kernel refused the doctor's BPF syscall program ({0}): it needs Linux 5.16 or later (BPF_PROG_TYPE_SYSCALL, bpf_kallsyms_lookup_name) and no kernel lockdown")]
    Program(io::Error),
    #[error("kernel symbol {0} not found (looked up and searched in /proc/kallsyms): cannot find the wait queues")]
    MissingSymbol(&'static str),
    #[error("reading kernel memory: {0}")]
    Read(io::Error),
}

/// What a stuck task's page says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The page is idle (and stayed so over the confirming delay) but its
    /// waiter still sleeps: nobody woke it.
    LostWakeup,
    /// The page is still referenced: the waiter waits for a pin to go.
    Pinned,
}

/// The verdict on a waiter from its page's refcount at the first and the
/// confirming look: idle both times is a lost wake-up.
pub fn verdict(first: i32, confirmed: i32, idle: i32) -> Verdict {
    if first == idle && confirmed == idle {
        Verdict::LostWakeup
    } else {
        Verdict::Pinned
    }
}

/// One task asleep in a break-layouts wait.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StuckTask {
    /// Process and thread id, and the thread's name.
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// The break-layouts function its stack shows, and the filesystem (the
    /// page's inode's, else the function's).
    pub function: String,
    pub fs: String,
    /// Its kernel stack as `/proc` showed it.
    pub stack: Vec<String>,
    /// The wait variable, and the page it stands for (refcount as confirmed).
    pub wait_var: u64,
    pub page: PageState,
    pub idle_refcount: i32,
    /// `refcount - idle` split into FOLL_PIN pins and plain references
    /// (`pins` is absent where pins are plain references).
    pub pins: Option<u32>,
    pub refs: u32,
    /// How long it has slept: since it last got a CPU (its
    /// `sched_info.last_arrival`; the sleep began in that last run).
    pub asleep_ns: Option<u64>,
    pub verdict: Verdict,
    /// What unsticks it.
    pub remedy: Option<String>,
}

fn plural(n: u32, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

impl StuckTask {
    /// "refcount 1025 (1 pin)".
    pub fn refcount_words(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = self.pins {
            if p > 0 {
                parts.push(plural(p, "pin"));
            }
        }
        if self.refs > 0 || parts.is_empty() {
            parts.push(plural(self.refs, "ref"));
        }
        format!("refcount {} ({})", self.page.refcount, parts.join(" + "))
    }

    /// The one human line.
    pub fn line(&self) -> String {
        let who = if self.tid == self.pid {
            format!("pid {} ({})", self.pid, self.comm)
        } else {
            format!("pid {} thread {} ({})", self.pid, self.tid, self.comm)
        };
        let asleep = self.asleep_ns.map_or_else(
            || "asleep".to_string(),
            |ns| format!("asleep {:.1} s", ns as f64 / 1e9),
        );
        let file = if self.page.ino != 0 {
            format!(
                " ({} inode {} on {}, index {})",
                if self.page.fs.is_empty() {
                    &self.fs
                } else {
                    &self.page.fs
                },
                self.page.ino,
                if self.page.device.is_empty() {
                    crate::detect::format_dev(self.page.dev)
                } else {
                    self.page.device.clone()
                },
                self.page.index
            )
        } else {
            " (no file: page->mapping is empty)".to_string()
        };
        let head = format!(
            "{who} {asleep} in {} on page pfn {:#x}{file}",
            self.function, self.page.pfn
        );
        match self.verdict {
            Verdict::LostWakeup => format!(
                "{head}: lost wake-up — the page is idle (refcount {}); remedy: {}",
                self.page.refcount,
                self.remedy.as_deref().unwrap_or("none known")
            ),
            Verdict::Pinned => format!(
                "{head}: waiting on a pinned page: {}",
                self.refcount_words()
            ),
        }
    }

    /// The `lost_wakeup` finding of the start-up check of `run` and
    /// `trace` (`seen_at_start`): the waiter was asleep before daxrace
    /// attached, so no release or wait event of it was ever seen.
    pub fn finding(&self, now_ns: u64) -> Finding {
        let fs = match self.page.fs.as_str() {
            "ext4" => Filesystem::Ext4,
            "xfs" => Filesystem::Xfs,
            _ => match self.fs.as_str() {
                "ext4" => Filesystem::Ext4,
                "xfs" => Filesystem::Xfs,
                _ => Filesystem::Generic,
            },
        };
        Finding::seen_at_start(
            now_ns,
            fs,
            self.page.dev,
            self.page.ino,
            self.page.mapping,
            self.page.pfn,
            self.page.refcount,
            self.pins,
            self.refs,
            Task {
                pid: self.pid,
                tid: self.tid,
                comm: Comm::new(&self.comm),
                cpu: 0,
            },
            self.asleep_ns,
        )
    }
}

/// What one look found.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Examination {
    /// The tasks in a break-layouts wait.
    pub stuck: Vec<StuckTask>,
    /// Tasks asleep on a wait variable whose kernel stack could not be
    /// read (so whether they are in a break-layouts wait is unknown), why.
    pub unjudged: Vec<String>,
}

/// The function names of a `/proc/PID/stack` text, innermost first
/// (`[<0>] ext4_break_layouts+0x8f/0xd0 [ext4]` -> `ext4_break_layouts`).
pub fn stack_functions(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let sym = l.split_once("] ").map_or(l, |(_, s)| s).trim();
            let name = sym.split(['+', ' ']).next()?;
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// The innermost break-layouts frame of a stack, and its table row.
pub fn break_frame(functions: &[String]) -> Option<(&str, &'static daxrace_plan::BreakWait)> {
    functions
        .iter()
        .find_map(|f| daxrace_plan::break_wait(f).map(|w| (f.as_str(), w)))
}

/// The doctor's view of the running kernel, loaded once.
pub struct Doctor {
    lookup: SymbolLookup,
    layout: WaitLayout,
    page: PageLayout,
    table: u64,
    wake: u64,
    /// `var - page` of a break-layouts wait.
    pub wait_var_offset: u64,
    pub idle_refcount: i32,
    pub pin_bias: i32,
    pub model: &'static daxrace_plan::WaitModel,
    /// Kernel facts that were guessed rather than read (to show once).
    pub warnings: Vec<String>,
}

/// Whether this process has CAP_SYS_ADMIN (kernel stacks need it).
fn has_sys_admin() -> bool {
    crate::load::privs::has_capability(crate::load::privs::CAP_SYS_ADMIN)
}

fn symbol(lookup: &SymbolLookup, name: &'static str) -> Result<u64, DoctorError> {
    if let Some(a) = lookup.address(name).map_err(DoctorError::Program)? {
        return Ok(a);
    }
    Kallsyms::read(&[name])
        .ok()
        .and_then(|k| k.get(name).map(|s| s.addr))
        .filter(|&a| a != 0)
        .ok_or(DoctorError::MissingSymbol(name))
}

/// The table's address from the code of the function that indexes it,
/// where the table has no symbol of its own (no CONFIG_KALLSYMS_ALL).
fn table_from_code(lookup: &SymbolLookup, l: &WaitLayout) -> Result<Option<u64>, DoctorError> {
    let Some(at) = lookup
        .address(daxrace_plan::WAIT_TABLE_USER)
        .map_err(DoctorError::Program)?
    else {
        return Ok(None);
    };
    let code = lookup.read(at).map_err(DoctorError::Read)?;
    let found = waiters::table_candidates(&code, at)
        .into_iter()
        .filter(|&t| waiters::looks_like_table(lookup, l, t, daxrace_plan::WAIT_TABLE_SIZE))
        .collect::<Vec<_>>();
    log::debug!(
        "{} has no symbol: found at {found:x?} from the code of {}",
        daxrace_plan::WAIT_TABLE,
        daxrace_plan::WAIT_TABLE_USER
    );
    // Two tables would be a guess.
    Ok((found.len() == 1).then(|| found[0]))
}

impl Doctor {
    /// Checks privileges, reads BTF, loads the read program, finds the
    /// wait table and the wake function.
    pub fn new() -> Result<Doctor, DoctorError> {
        if !has_sys_admin() {
            return Err(DoctorError::NotPrivileged);
        }
        let btf = Btf::from_kernel().map_err(DoctorError::NoBtf)?;
        let layout = WaitLayout::from_btf(&btf).map_err(DoctorError::Layout)?;
        let lookup = SymbolLookup::load().map_err(DoctorError::Program)?;
        let table = match symbol(&lookup, daxrace_plan::WAIT_TABLE) {
            Ok(t) => t,
            Err(e) => table_from_code(&lookup, &layout)?.ok_or(e)?,
        };
        let wake = symbol(&lookup, daxrace_plan::VAR_WAKE_FUNCTION)?;
        // The facts every command reads (offsets, idle refcount, the page
        // array), from the same symbols.
        let mut k = Kallsyms::default();
        for name in facts::SYMBOLS {
            if let Some(addr) = lookup.address(name).map_err(DoctorError::Program)? {
                let kind = if *name == "vmemmap_base" { 'D' } else { 'T' };
                k.insert(
                    name,
                    KernelSymbol {
                        name: name.to_string(),
                        addr,
                        kind,
                        module: None,
                        size: None,
                    },
                );
            }
        }
        let facts = KernelFacts::gather(Some(&btf), &k);
        let c = facts.config;
        let vmemmap_base = if c.vmemmap_base_addr != 0 {
            let mut b = [0u8; 8];
            KernelMemory::read(&lookup, c.vmemmap_base_addr, &mut b).map_err(DoctorError::Read)?;
            u64::from_le_bytes(b)
        } else {
            c.vmemmap_default
        };
        let model = daxrace_plan::wait_model(|s| k.resolve_function(s).is_some());
        Ok(Doctor {
            lookup,
            layout,
            page: PageLayout {
                refcount: c.page_refcount,
                mapping: c.page_mapping,
                index: c.page_index,
                struct_size: c.page_struct_size,
                vmemmap_base,
                mapping_host: c.mapping_host,
                inode_ino: c.inode_ino,
                inode_sb: c.inode_sb,
                sb_dev: c.sb_dev,
            },
            table,
            wake,
            wait_var_offset: u64::from(facts.wait_var_offset),
            idle_refcount: facts.idle_refcount as i32,
            pin_bias: facts.pin_bias as i32,
            model,
            warnings: facts.warnings,
        })
    }

    fn walk(&self) -> Result<Vec<VarWaiter>, DoctorError> {
        let mut w = waiters::var_waiters(
            &self.lookup,
            &self.layout,
            self.table,
            daxrace_plan::WAIT_TABLE_SIZE,
            self.wake,
        )
        .map_err(DoctorError::Read)?;
        let mut seen = HashSet::new();
        w.retain(|x| seen.insert((x.entry, x.task, x.var)));
        Ok(w)
    }

    /// Every task asleep in a break-layouts wait, with its verdict; a
    /// task seen idle is looked at again after `confirm`.
    pub fn examine(&self, confirm: Duration) -> Result<Examination, DoctorError> {
        let mut found = Vec::new();
        let mut unjudged = Vec::new();
        for w in self.walk()? {
            let Ok(task) = waiters::read_task(&self.lookup, &self.layout, w.task) else {
                continue;
            };
            let path = format!("/proc/{}/task/{}/stack", task.pid, task.tid);
            let stack = match std::fs::read_to_string(&path) {
                Ok(s) => s,
                Err(e) => {
                    // Gone, or hidden (systemd's ProtectProc=, another
                    // user's task without CAP_SYS_PTRACE): said, if it is
                    // still waiting at the second look.
                    unjudged.push((
                        w,
                        format!(
                            "pid {} thread {} ({}): {path}: {e}",
                            task.pid, task.tid, task.comm
                        ),
                    ));
                    continue;
                }
            };
            let functions = stack_functions(&stack);
            let Some((function, row)) = break_frame(&functions) else {
                continue;
            };
            let function = function.to_string();
            let page = w.var.wrapping_sub(self.wait_var_offset);
            let state = waiters::read_page(&self.lookup, &self.page, &self.layout, page)
                .map_err(DoctorError::Read)?;
            found.push((w, task, functions, function, row.fs, state));
        }
        if found.is_empty() && unjudged.is_empty() {
            return Ok(Examination::default());
        }
        // The second look: still queued, and the page's count again.
        let confirm_from = Instant::now();
        if found.iter().any(|(.., s)| s.refcount == self.idle_refcount) {
            std::thread::sleep(confirm);
        }
        let again: HashSet<(u64, u64)> = self
            .walk()?
            .into_iter()
            .map(|w| (w.entry, w.task))
            .collect();
        log::debug!("confirmed after {} ms", confirm_from.elapsed().as_millis());
        let now = crate::kernel::waiters::clock_ns();
        let unjudged = unjudged
            .into_iter()
            .filter(|(w, _)| again.contains(&(w.entry, w.task)))
            .map(|(_, why)| why)
            .collect();
        let mut out = Vec::new();
        for (w, task, functions, function, fs, mut state) in found {
            if !again.contains(&(w.entry, w.task)) {
                log::debug!("task {} woke during the confirming delay", task.tid);
                continue;
            }
            let first = state.refcount;
            state.refcount = waiters::read_refcount(&self.lookup, &self.page, state.page)
                .map_err(DoctorError::Read)?;
            let v = verdict(first, state.refcount, self.idle_refcount);
            let (pins, refs) = split_refcount(state.refcount, self.idle_refcount, self.pin_bias);
            out.push(StuckTask {
                pid: task.pid,
                tid: task.tid,
                comm: task.comm,
                function,
                // The inode's filesystem where the page has one (the 6.15+
                // helper serves both), else the break function's.
                fs: if state.fs.is_empty() {
                    fs.to_string()
                } else {
                    state.fs.clone()
                },
                stack: functions,
                wait_var: w.var,
                idle_refcount: self.idle_refcount,
                pins,
                refs,
                asleep_ns: task
                    .last_arrival_ns
                    .filter(|&t| t != 0 && t <= now)
                    .map(|t| now - t),
                verdict: v,
                // The wait is interruptible: a signal makes the task leave
                // it, its syscall restarts (no handler runs for a stop) and
                // the break re-checks the page. The continue must follow
                // the stop, not cancel it while still pending
                // (docs/lost-wakeup-6.1.md): hence the pause.
                remedy: (v == Verdict::LostWakeup)
                    .then(|| format!("kill -STOP {0}; sleep 1; kill -CONT {0}", task.pid)),
                page: state,
            });
        }
        Ok(Examination {
            stuck: out,
            unjudged,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examines_the_running_kernel() {
        crate::load::privs::check_privileges()
            .expect("this test needs root (it loads a BPF program): run the tests as root");
        // The host kernel has wait queues but no DAX: the walk must run
        // (finding the table by symbol or from __var_waitqueue's code) and
        // whatever it reports must be a break-layouts wait.
        let d = Doctor::new().unwrap_or_else(|e| panic!("the doctor cannot start here: {e}"));
        let found = d
            .examine(Duration::from_millis(10))
            .unwrap_or_else(|e| panic!("the walk failed: {e}"));
        assert!(found.stuck.iter().all(|s| break_frame(&s.stack).is_some()));
    }

    #[test]
    fn stacks_name_their_break_frame() {
        let s61 = "[<0>] ext4_break_layouts+0x8f/0xd0 [ext4]\n[<0>] ext4_punch_hole+0x140/0x4a0 [ext4]\n[<0>] ext4_fallocate+0x10c/0x14a0 [ext4]\n[<0>] vfs_fallocate+0x14f/0x380\n";
        let f = stack_functions(s61);
        assert_eq!(f[0], "ext4_break_layouts");
        assert_eq!(
            break_frame(&f).map(|(n, w)| (n, w.fs)),
            Some(("ext4_break_layouts", "ext4"))
        );
        let s73 = "[<0>] dax_break_layout+0x1a5/0x2b0\n[<0>] ext4_break_layouts+0x2e/0x40 [ext4]\n";
        assert_eq!(
            break_frame(&stack_functions(s73)).map(|(n, _)| n),
            Some("dax_break_layout")
        );
        let other = "[<0>] do_sys_poll+0x3d0/0x570\n[<0>] __x64_sys_poll+0xb7/0x140\n";
        assert!(break_frame(&stack_functions(other)).is_none());
    }

    #[test]
    fn idle_twice_is_a_lost_wakeup_anything_else_a_pin() {
        assert_eq!(verdict(1, 1, 1), Verdict::LostWakeup);
        assert_eq!(verdict(0, 0, 0), Verdict::LostWakeup);
        assert_eq!(verdict(1, 2, 1), Verdict::Pinned);
        assert_eq!(verdict(1025, 1025, 1), Verdict::Pinned);
        assert_eq!(verdict(2, 1, 1), Verdict::Pinned);
    }

    fn stuck(verdict: Verdict, refcount: i32, pins: Option<u32>, refs: u32) -> StuckTask {
        StuckTask {
            pid: 157,
            tid: 160,
            comm: "daxrace-workloa".into(),
            function: "ext4_break_layouts".into(),
            fs: "ext4".into(),
            stack: vec!["ext4_break_layouts".into()],
            wait_var: 0xffff_ea00_0120_4034,
            page: PageState {
                page: 0xffff_ea00_0120_4000,
                pfn: 0x48100,
                refcount,
                mapping: 0xffff_8880_0400_0000,
                index: 0,
                ino: 12,
                dev: 259 << 20,
                device: "pmem0".into(),
                fs: "ext4".into(),
            },
            idle_refcount: 1,
            pins,
            refs,
            asleep_ns: Some(1_500_000_000),
            verdict,
            remedy: (verdict == Verdict::LostWakeup)
                .then(|| "kill -STOP 157; sleep 1; kill -CONT 157".to_string()),
        }
    }

    #[test]
    fn one_line_per_task() {
        let lost = stuck(Verdict::LostWakeup, 1, None, 0);
        assert_eq!(
            lost.line(),
            "pid 157 thread 160 (daxrace-workloa) asleep 1.5 s in ext4_break_layouts on page pfn 0x48100 (ext4 inode 12 on pmem0, index 0): lost wake-up — the page is idle (refcount 1); remedy: kill -STOP 157; sleep 1; kill -CONT 157"
        );
        let pinned = stuck(Verdict::Pinned, 1025, Some(1), 0);
        assert!(
            pinned
                .line()
                .ends_with(": waiting on a pinned page: refcount 1025 (1 pin)"),
            "{}",
            pinned.line()
        );
        assert!(!pinned.line().contains("lost wake-up"));
    }

    #[test]
    fn the_start_check_makes_a_lost_wakeup_finding() {
        let f = stuck(Verdict::LostWakeup, 1, None, 0).finding(5_000_000_000);
        assert_eq!(f.kind, crate::detect::FindingKind::LostWakeup);
        assert!(f.seen_at_start);
        assert_eq!((f.pfn, f.ino, f.fs), (0x48100, 12, Filesystem::Ext4));
        assert_eq!(f.since_ns, Some(3_500_000_000));
        let v = serde_json::to_value(&f).expect("serializes");
        assert_eq!(v["seen_at_start"], true);
        assert!(f.summary().contains("already asleep when daxrace started"));
    }
}
