//! Bounded waits. Each worker thread publishes when it enters and leaves a
//! syscall that may block in break-layouts; the watchdog (the main thread)
//! sends SIGUSR1 to a thread that has been inside one for longer than the
//! stall timeout. The handler does nothing and is installed without
//! SA_RESTART, so the interruptible wait returns -ERESTARTSYS and the
//! syscall fails with EINTR instead of being restarted into the same sleep.
use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use crate::pattern::now_ns;

extern "C" fn on_sigusr1(_: libc::c_int) {}

pub fn install_sigusr1() {
    // SAFETY: a zeroed sigaction with a handler that does nothing is valid;
    // sa_flags has no SA_RESTART on purpose (see the module comment).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as *const () as usize;
        sa.sa_flags = 0;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
}

/// Where a worker thread is: idle or inside a syscall since some time.
pub struct Slot {
    pub name: String,
    since: AtomicU64,
    signals: AtomicU32,
    thread: AtomicU64,
    /// What the thread is doing (for reports), e.g. "punch".
    op: std::sync::Mutex<&'static str>,
}

impl Slot {
    pub fn new(name: impl Into<String>) -> Slot {
        Slot {
            name: name.into(),
            since: AtomicU64::new(0),
            signals: AtomicU32::new(0),
            thread: AtomicU64::new(0),
            op: std::sync::Mutex::new(""),
        }
    }

    /// Called by the worker thread itself before its first syscall.
    pub fn bind(&self) {
        // SAFETY: pthread_self has no preconditions.
        self.thread
            .store(unsafe { libc::pthread_self() } as u64, Ordering::SeqCst);
    }

    pub fn enter(&self, op: &'static str) {
        *self.op.lock().unwrap() = op;
        self.signals.store(0, Ordering::SeqCst);
        self.since.store(now_ns(), Ordering::SeqCst);
    }

    /// Returns how long the syscall took and how many signals it needed.
    pub fn leave(&self) -> (Duration, u32) {
        let since = self.since.swap(0, Ordering::SeqCst);
        let d = Duration::from_nanos(now_ns().saturating_sub(since));
        (d, self.signals.load(Ordering::SeqCst))
    }

    pub fn busy_for(&self) -> Option<Duration> {
        match self.since.load(Ordering::SeqCst) {
            0 => None,
            s => Some(Duration::from_nanos(now_ns().saturating_sub(s))),
        }
    }

    pub fn op(&self) -> &'static str {
        *self.op.lock().unwrap()
    }
}

/// One watchdog pass over `slots`. A thread past `timeout` gets SIGUSR1,
/// then one more each second while it stays in the same syscall. Returns the
/// threads still inside after `give_up` more seconds of signals.
pub fn watch(slots: &[&Slot], timeout: Duration, give_up: u32) -> Vec<String> {
    let mut stuck = Vec::new();
    for s in slots {
        let Some(age) = s.busy_for() else { continue };
        let sent = s.signals.load(Ordering::SeqCst);
        if age < timeout + Duration::from_secs(sent as u64) {
            continue;
        }
        if sent >= give_up {
            stuck.push(format!(
                "{} stuck in {} for {:.1} s despite {sent} signals",
                s.name,
                s.op(),
                age.as_secs_f64()
            ));
            continue;
        }
        if sent == 0 {
            eprintln!(
                "daxrace-workload: STALL: {} in {} for {:.1} s: interrupting it with SIGUSR1",
                s.name,
                s.op(),
                age.as_secs_f64()
            );
        }
        s.signals.fetch_add(1, Ordering::SeqCst);
        let t = s.thread.load(Ordering::SeqCst);
        if t != 0 {
            // SAFETY: t is the pthread_t of a thread of ours that has not been
            // joined (workers are joined only after the watchdog stops).
            unsafe { libc::pthread_kill(t as libc::pthread_t, libc::SIGUSR1) };
        }
    }
    stuck
}
