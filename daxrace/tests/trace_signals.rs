//! `daxrace trace` passes a signal on to its command only when the command
//! did not get it itself: a terminal's Ctrl-C reaches the whole foreground
//! process group, command included, and a second SIGINT makes fstests'
//! `check` or fio stop differently. A `kill` aimed at daxrace alone is
//! forwarded. Needs root (daxrace attaches its hooks first).
use std::{
    io::{BufRead, BufReader},
    os::{fd::FromRawFd, unix::process::CommandExt},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const DAXRACE: &str = env!("CARGO_BIN_EXE_daxrace");

fn assert_root() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root (daxrace trace loads BPF programs): run the tests as root"
    );
}

/// A command that logs each SIGINT it gets to `log` and exits after ~6 s;
/// it creates `<log>.ready` once its trap is set.
fn counting_command(log: &std::path::Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "trap 'echo INT >> {0}' INT; : > {0}.ready; i=0; while [ $i -lt 60 ]; do sleep 0.1; i=$((i+1)); done",
            log.display()
        ),
    ]
}

/// Gives the child SIGINT's default action: started from a background job
/// of a non-interactive shell (a CI runner's `cmd &`), the test inherits
/// SIGINT ignored, the command would inherit it too, and a shell cannot
/// trap a signal ignored on entry.
fn sigint_default() -> std::io::Result<()> {
    // SAFETY: async-signal-safe; called between fork and exec.
    if unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) } == libc::SIG_ERR {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until the command's trap is set: a signal sent before would kill
/// it instead of being counted, however loaded the machine is.
fn wait_trap_set(log: &std::path::Path) {
    let ready = log.with_extension("ready");
    let give_up = Instant::now() + Duration::from_secs(120);
    while !ready.exists() {
        assert!(Instant::now() < give_up, "the command never set its trap");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for daxrace's "hooks attached" line on `stderr`, then collects
/// the rest in the background (returned when daxrace exits).
fn wait_attached(
    stderr: impl std::io::Read + Send + 'static,
) -> std::thread::JoinHandle<Vec<String>> {
    let mut lines = BufReader::new(stderr).lines();
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < give_up, "daxrace trace never attached");
        let line = lines
            .next()
            .expect("daxrace trace exited before attaching")
            .expect("read stderr");
        if line.contains("hooks attached") {
            break;
        }
    }
    std::thread::spawn(move || lines.map_while(Result::ok).collect())
}

fn forwarded(stderr: &[String]) -> bool {
    stderr.iter().any(|l| l.contains("forwarding signal 2"))
}

fn sigints(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == "INT")
        .count()
}

#[test]
fn a_kill_aimed_at_daxrace_is_forwarded_once() {
    assert_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("ints");
    let mut child = Command::new(DAXRACE);
    child
        .env("RUST_LOG", "daxrace=debug")
        .arg("trace")
        .arg("--")
        .args(counting_command(&log))
        .stderr(Stdio::piped())
        // Its own process group, as a daemon's child would be: a kill of
        // daxrace's pid reaches daxrace only.
        .process_group(0);
    // SAFETY: only async-signal-safe calls between fork and exec.
    let mut child = unsafe { child.pre_exec(sigint_default) }
        .spawn()
        .expect("start daxrace trace");
    let stderr = wait_attached(child.stderr.take().expect("stderr"));
    wait_trap_set(&log);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    child.wait().expect("wait");
    let stderr = stderr.join().expect("stderr reader");
    assert!(forwarded(&stderr), "{stderr:?}");
    assert_eq!(sigints(&log), 1, "the command got the forwarded SIGINT");
}

#[test]
fn a_terminal_ctrl_c_is_not_forwarded_a_second_time() {
    assert_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("ints");
    // A pseudo-terminal whose slave is daxrace's controlling terminal.
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two descriptors; the null pointers ask for no
    // name, termios or window size.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    let mut cmd = Command::new(DAXRACE);
    cmd.env("RUST_LOG", "daxrace=debug")
        .arg("trace")
        .arg("--")
        .args(counting_command(&log))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::ioctl(slave, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            sigint_default()
        });
    }
    let mut child = cmd.spawn().expect("start daxrace trace on a terminal");
    // SAFETY: the slave is the child's now; the master stays ours.
    unsafe { libc::close(slave) };
    let stderr = wait_attached(child.stderr.take().expect("stderr"));
    wait_trap_set(&log);
    // Ctrl-C typed on the terminal: the line discipline signals the whole
    // foreground process group (daxrace and its command) with SI_KERNEL.
    // SAFETY: the master is an open descriptor we own.
    let mut tty = unsafe { std::fs::File::from_raw_fd(master) };
    std::io::Write::write_all(&mut tty, b"\x03").expect("type Ctrl-C");
    child.wait().expect("wait");
    let stderr = stderr.join().expect("stderr reader");
    assert!(
        stderr.iter().any(|l| l.contains("came from the terminal")),
        "{stderr:?}"
    );
    assert!(!forwarded(&stderr), "a second SIGINT was sent: {stderr:?}");
    assert_eq!(sigints(&log), 1, "the command got the terminal's SIGINT");
}
