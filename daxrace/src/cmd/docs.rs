//! `daxrace generate-man DIR` and `daxrace generate-completions DIR`
//! (hidden): the man pages and shell completions the Debian package ships,
//! written from the same clap definitions the command parses with, so they
//! cannot drift from it.
use std::{fs, path::Path};

use anyhow::{Context, Result};
use clap_complete::Shell;

/// Shells completions are written for, with the file name each one's
/// completion loader looks for (bash-completion, zsh's `_name`, fish).
const SHELLS: &[(Shell, &str)] = &[
    (Shell::Bash, "daxrace"),
    (Shell::Zsh, "_daxrace"),
    (Shell::Fish, "daxrace.fish"),
];

/// Writes `daxrace.1` and `daxrace-SUB.1` for every visible subcommand.
/// Returns the files written.
pub fn man_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<String>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // `daxrace help SUB` prints what `daxrace-SUB(1)` already says: no page.
    let mut cmd = cmd.disable_help_subcommand(true);
    // Building fills in each subcommand's bin name ("daxrace run"), which
    // their synopses show.
    cmd.build();
    let version = cmd
        .get_version()
        .unwrap_or(env!("CARGO_PKG_VERSION"))
        .to_string();
    let mut pages = vec![(String::from("daxrace.1"), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("daxrace-{}", sub.get_name());
        // The main page refers to subcommands as daxrace-SUB(1): name them so.
        let page = sub.clone().name(name.clone()).version(version.clone());
        pages.push((format!("{name}.1"), page));
    }
    let mut written = Vec::new();
    for (file, page) in pages {
        let mut out = Vec::new();
        clap_mangen::Man::new(page)
            .date(man_date())
            .source(format!("daxrace {version}"))
            .manual("daxrace manual")
            .render(&mut out)
            .with_context(|| format!("rendering {file}"))?;
        let path = dir.join(&file);
        fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        written.push(file);
    }
    Ok(written)
}

/// Writes the bash, zsh and fish completions. Returns the files written.
pub fn completions(mut cmd: clap::Command, dir: &Path) -> Result<Vec<String>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for (shell, file) in SHELLS {
        let mut out = Vec::new();
        clap_complete::generate(*shell, &mut cmd, "daxrace", &mut out);
        let path = dir.join(file);
        fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        written.push(file.to_string());
    }
    Ok(written)
}

/// The pages' date: SOURCE_DATE_EPOCH's day when set (reproducible
/// packages), else none.
fn man_date() -> String {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .map(civil_date)
        .unwrap_or_default()
}

/// `YYYY-MM-DD` of a Unix time (UTC), by Howard Hinnant's days-to-civil.
fn civil_date(unix: i64) -> String {
    let z = unix.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(951_782_400), "2000-02-29");
        assert_eq!(civil_date(1_796_233_962), "2026-12-02");
    }
}
