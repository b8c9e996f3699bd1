//! The kernel's own verdict on a guest run: every VM test fails when the
//! kernel logged a BUG, an Oops, a general protection fault or a WARNING it
//! did not expect (daxrace runs on production hosts: it must not harm the
//! kernel it watches, and a test that only reads daxrace's output would miss
//! an oops after detach).

/// What marks a kernel fault in a dmesg line.
const FAULT_MARKS: &[&str] = &[
    "BUG:",
    "kernel BUG at",
    "Oops",
    "general protection fault",
    "WARNING:",
    "Kernel panic",
];

/// The fault lines of `dmesg` that no pattern of `expected` covers (a test
/// that provokes a WARN on purpose, such as the kernel's own truncation WARN,
/// names it), each with the few lines that follow it, for the report.
pub fn unexpected_faults(dmesg: &[String], expected: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, line) in dmesg.iter().enumerate() {
        if !FAULT_MARKS.iter().any(|m| line.contains(m)) {
            continue;
        }
        if expected.iter().any(|e| line.contains(e)) {
            continue;
        }
        let context: Vec<&str> = dmesg[i..dmesg.len().min(i + 4)]
            .iter()
            .map(String::as_str)
            .collect();
        out.push(format!("the kernel logged: {}", context.join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn faults_fail_unless_expected() {
        let dmesg = lines(&[
            "<4>daxrace_count_patch: tainting kernel with TAINT_LIVEPATCH",
            "<4>EXT4-fs (pmem0): DAX enabled. Warning: EXPERIMENTAL, use at your own risk",
            "<1>BUG: unable to handle page fault for address: ffffffffc0201000",
            "<1>#PF: supervisor instruction fetch in kernel mode",
            "<4>WARNING: CPU: 0 PID: 177 at fs/dax.c:398 dax_disassociate_entry+0x87/0xb0",
            "<4>general protection fault, probably for non-canonical address",
        ]);
        let all = unexpected_faults(&dmesg, &[]);
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(all[0].contains("BUG: unable") && all[0].contains("#PF"));
        let some = unexpected_faults(&dmesg, &["at fs/dax.c:398 dax_disassociate_entry"]);
        assert_eq!(some.len(), 2, "{some:?}");
        assert!(some
            .iter()
            .all(|f| !f.starts_with("the kernel logged: <4>WARNING")));
        // Taints and the DAX mount notice are not faults.
        assert!(unexpected_faults(&dmesg[..2], &[]).is_empty());
        assert!(unexpected_faults(&[], &[]).is_empty());
    }
}
