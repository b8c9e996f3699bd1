//! The bench guest's script: the twin's probe files as here-documents,
//! the shell functions and the stats phase (`script/*.sh`), then the rate
//! phases.
use std::fmt::Write as _;

use super::{
    twin::{empty_twin, fragments, BT_HEAD},
    ATTACH_LIMIT_S, BT_FULL, BT_RUN, DR_FULL, DR_RUN, EMPTY, NONE,
};

/// Shell functions of the bench guest. `@ATTACH@`, `@SECS@`, `@LOOPSECS@`, `@SETTLE@`,
/// `@IDLESECS@`, `@MIX@` are filled in.
const GUEST_FUNCTIONS: &str = include_str!("script/functions.sh");
/// The stats phase: each tracer once with BPF statistics on; each daxrace
/// mode before its twin, since a twin is built from what its mode attached.
const GUEST_STATS: &str = include_str!("script/stats.sh");

/// The rate phases: every traced phase between two untraced ones, the
/// tracers' order rotating from round to round.
pub fn rate_phases(rounds: u32) -> Vec<&'static str> {
    let tracers = [DR_RUN, DR_FULL, BT_RUN, BT_FULL, EMPTY];
    let mut v = vec![NONE];
    for r in 0..rounds as usize {
        for i in 0..tracers.len() {
            v.push(tracers[(i + r) % tracers.len()]);
            v.push(NONE);
        }
    }
    v
}

/// What the guest's workloads run: seconds of each phase, and the mix's
/// operation budget.
#[derive(Clone, Copy, Debug)]
pub struct Workloads {
    /// The pin-punch mix's longest run (seconds) per filesystem.
    pub secs: u32,
    /// Each lone operation's time (seconds) per filesystem.
    pub loop_secs: u32,
    /// The mix's budget: modifications, reads (none: it runs `secs`).
    pub mix: Option<(u64, u64)>,
    /// A new filesystem (mkfs) before every rate phase.
    pub fresh_fs: bool,
    /// Guest seconds a tracer runs before its rate phase measures.
    pub settle_secs: u32,
}

pub fn guest_script(rounds: u32, w: Workloads) -> String {
    let Workloads {
        secs,
        loop_secs,
        mix,
        fresh_fs,
        settle_secs,
    } = w;
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
        .replace("@IDLESECS@", &loop_secs.to_string())
        .replace("@FRESH@", if fresh_fs { "1" } else { "0" })
        .replace("@SETTLE@", &settle_secs.to_string())
        .replace(
            "@MIX@",
            &mix.map_or(String::new(), |(m, r)| format!("--mods {m} --reads {r}")),
        )
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
pub fn phase_tag(i: usize) -> String {
    format!("p{:02}", i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

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
        assert_eq!(v.len(), 21);
        assert_eq!(v.first(), Some(&NONE));
        for (i, t) in v.iter().enumerate() {
            assert_eq!(*t == NONE, i % 2 == 0, "{v:?}");
        }
        // The order rotates: each tracer comes first once in five rounds.
        let firsts: BTreeSet<&str> = (0..5).map(|r| rate_phases(5)[1 + 10 * r]).collect();
        assert_eq!(firsts.len(), 5);
        assert_eq!(phase_tag(0), "p01");
    }

    /// The guest script must at least parse (busybox sh -n).
    #[test]
    fn guest_script_parses() {
        let script = guest_script(
            2,
            Workloads {
                secs: 1,
                loop_secs: 1,
                mix: Some((10, 20)),
                fresh_fs: true,
                settle_secs: 3,
            },
        );
        assert!(script.contains("--mods 10 --reads 20"));
        assert!(!script.contains("@MIX@") && !script.contains("@IDLESECS@"));
        assert!(script.contains("SETTLE=3") && !script.contains("@SETTLE@"));
        assert!(script.contains("FRESH=1") && !script.contains("@FRESH@"));
        crate::vm::guest::tests::assert_sh_parses(&script);
    }
}
