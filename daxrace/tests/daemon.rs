//! The daemon on the machine the tests run on (context hooks only: this
//! kernel has no kprobes): it serves /metrics and /healthz, drops its
//! capabilities after attaching, and leaves no program in the kernel after
//! SIGTERM, SIGINT or SIGKILL (programs show in /proc/kallsyms as
//! `bpf_prog_<tag>_<name>` while loaded).
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const DAXRACE: &str = env!("CARGO_BIN_EXE_daxrace");
/// Our context programs' names, as the kernel lists them (names are cut to 15 characters).
const OUR_PROGRAMS: &[&str] = &["_tp_ext4_punch_h", "_tp_ext4_zero_ra", "_tp_ext4_truncat"];

fn assert_root() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the daemon tests need root (they load BPF programs): run the tests as root"
    );
}

fn loaded_programs() -> usize {
    std::fs::read_to_string("/proc/kallsyms")
        .expect("read /proc/kallsyms")
        .lines()
        .filter(|l| l.contains("bpf_prog_") && OUR_PROGRAMS.iter().any(|p| l.contains(p)))
        .count()
}

/// Starts the daemon on a free port; returns it and the address it serves.
fn start() -> (Child, String) {
    let mut child = Command::new(DAXRACE)
        .args(["run", "--listen", "127.0.0.1:0", "--duration", "60"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start daxrace run");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let give_up = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        assert!(
            Instant::now() < give_up,
            "daxrace run never said where it serves"
        );
        let line = lines
            .next()
            .expect("daxrace run exited before serving")
            .expect("read stderr");
        if let Some(rest) = line.strip_prefix("daxrace: metrics on http://") {
            break rest.trim_end_matches("/metrics").to_string();
        }
    };
    // Keep draining stderr so the daemon never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the daemon");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    body
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        assert!(Instant::now() < give_up, "daxrace did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Programs are freed after an RCU grace period: poll, with a bound.
fn assert_no_programs_left(after: &str) {
    let give_up = Instant::now() + Duration::from_secs(20);
    while loaded_programs() > 0 {
        assert!(
            Instant::now() < give_up,
            "daxrace programs still loaded 20 s after {after}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_daemon_serves_drops_capabilities_and_detaches_on_every_stop() {
    assert_root();
    for (sig, name) in [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGKILL, "SIGKILL"),
    ] {
        let (mut child, addr) = start();
        assert!(loaded_programs() > 0, "the daemon's programs are loaded");

        let metrics = get(&addr, "/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("daxrace_build_info{"), "{metrics}");
        assert!(
            metrics.contains(
                r#"daxrace_probe_attached{attach_kind="tp_btf",hook="ext4_punch_hole"} 1"#
            ),
            "{metrics}"
        );
        let health = get(&addr, "/healthz");
        assert!(health.contains("hooks_attached 5"), "{health}");
        assert!(get(&addr, "/nope").starts_with("HTTP/1.1 404"));

        let status =
            std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("daemon status");
        let cap_eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
            .expect("CapEff line");
        assert_eq!(
            cap_eff & !daxrace::load::privs::KEPT,
            0,
            "capabilities beyond BPF/PERFMON/SYSLOG were kept: {cap_eff:#x}"
        );

        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let st = wait_exit(&mut child);
        if sig != libc::SIGKILL {
            assert!(st.success(), "clean exit on {name}: {st}");
        }
        assert_no_programs_left(name);
    }
}

/// The capabilities the shipped unit grants (`CapabilityBoundingSet=`), as
/// setpriv names them (`bpf`, `perfmon`, ...).
fn unit_capabilities() -> Vec<String> {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/daxrace.service"))
            .expect("read dist/daxrace.service");
    unit.lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet=")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// A uid and gid no account uses, standing in for the unit's DynamicUser=.
const DYNAMIC_UID: &str = "61234";

/// Under exactly the unit's privileges (an unprivileged uid as with
/// DynamicUser=yes; bounding, inheritable and ambient sets; no root
/// privileges through setuid bits) the daemon attaches, drops what it does
/// not keep and exits cleanly: it once exited 2 there because dropping from
/// the bounding set needs CAP_SETPCAP.
#[test]
fn the_daemon_runs_with_only_the_units_capabilities() {
    assert_root();
    let caps = unit_capabilities();
    assert!(caps.contains(&"bpf".to_string()), "{caps:?}");
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/daxrace.service"))
            .expect("read dist/daxrace.service");
    assert!(
        unit.lines().any(|l| l == "DynamicUser=yes"),
        "the unit no longer runs as a dynamic user: change the uid this test runs as"
    );
    let set = format!(
        "-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={DYNAMIC_UID}"),
            &format!("--regid={DYNAMIC_UID}"),
            "--clear-groups",
            &format!("--bounding-set={set}"),
            &format!("--inh-caps={set}"),
            &format!("--ambient-caps={set}"),
            "--securebits=+noroot,+noroot_locked",
            "--",
            DAXRACE,
            "run",
            "--no-metrics",
            "--duration",
            "1",
        ])
        .output()
        .expect("setpriv (util-linux) runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {stderr}", out.status);
    assert!(stderr.contains("hooks attached"), "{stderr}");
    assert!(!stderr.contains("cannot drop"), "{stderr}");
    // CAP_SYS_ADMIN (module BTF objects, kprobes on Debian) is for attaching.
    assert!(
        stderr.contains("capabilities after attaching: CAP_SYSLOG CAP_PERFMON CAP_BPF\n"),
        "{stderr}"
    );
    assert_no_programs_left("a run under the unit's capabilities");
}

/// Under socket activation (daxrace.socket) the daemon serves the socket
/// systemd passes (`LISTEN_FDS`) instead of binding its own: here --listen
/// names an address no interface has, so only the passed socket can answer.
/// `systemd-socket-activate` passes it as systemd does.
#[test]
fn the_daemon_serves_the_socket_systemd_passes() {
    assert_root();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new("systemd-socket-activate")
        .args([
            "-l",
            &addr,
            DAXRACE,
            "run",
            "--listen",
            "192.0.2.1:9",
            "--duration",
            "60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate (package systemd) runs");
    let stderr = child.stderr.take().expect("stderr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            seen2.lock().expect("lock").push_str(&(l + "\n"));
        }
    });
    // The first connection is what makes systemd-socket-activate start it.
    let give_up = Instant::now() + Duration::from_secs(30);
    let health = loop {
        if let Ok(mut s) = TcpStream::connect(&addr) {
            s.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            write!(s, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            break body;
        }
        assert!(Instant::now() < give_up, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        health.contains("\r\n\r\nok\n"),
        "{health}\n{}",
        seen.lock().expect("lock")
    );
    // SAFETY: signalling our own child (systemd-socket-activate execs daxrace).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = wait_exit(&mut child);
    let log = seen.lock().expect("lock").clone();
    assert!(st.success(), "exit {st}: {log}");
    assert!(
        log.contains(&format!("metrics on http://{addr}/metrics")),
        "{log}"
    );
    assert_no_programs_left("a socket-activated run");
}
