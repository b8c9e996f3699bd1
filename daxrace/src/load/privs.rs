//! Privileges: whether this process may load and attach at all, and least
//! privilege after: once the probes are attached, the daemon keeps only the
//! capabilities tracing still needs (attaching hooks of a module loaded
//! later) and drops the rest from its effective, permitted and bounding sets.
use std::io;

use super::tracer::TraceError;

pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYSLOG: u32 = 34;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;
/// Capabilities kept after attaching: BPF and perf for late attaches, syslog
/// for real addresses in /proc/kallsyms. CAP_SYS_ADMIN is not kept, so a
/// late attach has neither a module's BTF object (fentry) nor, on kernels
/// with Debian's perf_event_paranoid=3, perf_event_open (kprobes): such a
/// module's hooks then wait for a restart, or for `--keep-caps`.
pub const KEPT: u64 = (1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_SYSLOG);

/// `CAP_BPF CAP_PERFMON` for a set of capability bits (`none` when empty).
pub fn names(caps: u64) -> String {
    const NAMES: &[(u32, &str)] = &[
        (0, "CAP_CHOWN"),
        (1, "CAP_DAC_OVERRIDE"),
        (2, "CAP_DAC_READ_SEARCH"),
        (12, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (24, "CAP_SYS_RESOURCE"),
        (CAP_SYSLOG, "CAP_SYSLOG"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_BPF, "CAP_BPF"),
    ];
    let mut out: Vec<String> = Vec::new();
    for cap in 0..=CAP_LAST {
        if caps & (1 << cap) != 0 {
            out.push(match NAMES.iter().find(|(n, _)| *n == cap) {
                Some((_, name)) => name.to_string(),
                None => format!("cap_{cap}"),
            });
        }
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(" ")
    }
}

/// Whether this process has `cap` in its effective set.
pub fn has_capability(cap: u32) -> bool {
    effective_caps() & (1 << cap) != 0
}

/// CapEff bits from /proc/self/status.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Whether this process may load and attach: root, or CAP_BPF with
/// CAP_PERFMON.
pub fn check_privileges() -> Result<(), TraceError> {
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    const CAP_PERFMON: u64 = 1 << 38;
    const CAP_BPF: u64 = 1 << 39;
    let caps = effective_caps();
    if caps & CAP_SYS_ADMIN != 0 || (caps & CAP_BPF != 0 && caps & CAP_PERFMON != 0) {
        Ok(())
    } else {
        Err(TraceError::NotPrivileged)
    }
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const CAP_LAST: u32 = 40;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Whether `cap` is in this process's bounding set (false for a
/// capability this kernel does not know).
fn in_bounding_set(cap: u32) -> bool {
    // SAFETY: prctl with integer arguments; 1 in the set, 0 not, -1 EINVAL.
    unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) == 1 }
}

/// Drops every capability not in `keep`. Returns the effective set left.
///
/// Only capabilities still in the bounding set are dropped from it: under
/// systemd's `CapabilityBoundingSet=` the set is already narrow, and
/// `PR_CAPBSET_DROP` needs CAP_SETPCAP, which such a unit does not grant.
/// A bounding capability that cannot be dropped without CAP_SETPCAP is
/// left there: it only matters across execve(2), which the daemon never
/// calls, and the effective and permitted sets below lose it anyway.
pub fn drop_capabilities(keep: u64) -> io::Result<u64> {
    for cap in 0..=CAP_LAST {
        if keep & (1 << cap) != 0 || !in_bounding_set(cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EPERM) {
                return Err(e);
            }
        }
    }
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget fills two CapData for version 3.
    if unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let current = |d: &[CapData; 2]| d[0].effective as u64 | (d[1].effective as u64) << 32;
    let want = current(&data) & keep;
    for (i, d) in data.iter_mut().enumerate() {
        let bits = (want >> (32 * i)) as u32;
        d.effective = bits;
        d.permitted = bits;
        d.inheritable = 0;
    }
    // SAFETY: capset with a valid header and two CapData.
    if unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(want)
}

#[cfg(test)]
mod tests {
    #[test]
    fn capability_names() {
        assert_eq!(super::names(super::KEPT), "CAP_SYSLOG CAP_PERFMON CAP_BPF");
        assert_eq!(super::names(0), "none");
        assert_eq!(super::names(1 << 21 | 1 << 5), "cap_5 CAP_SYS_ADMIN");
    }
}
