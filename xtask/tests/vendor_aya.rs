//! `vendor/aya` must be exactly the published aya 0.14.0 with
//! `vendor/aya.patch` applied (vendor/aya/PATCHES.md): this test re-derives
//! that tree from the crate file crates.io serves and compares it with the
//! vendored one, byte for byte. Only the registry's own bookkeeping
//! (`.cargo_vcs_info.json`, `.cargo-ok`) and our `PATCHES.md` are left out of
//! the comparison. An edit to the vendored tree that is not in the patch (or a
//! patch edit not made in the tree) fails here; to change the patch, follow
//! PATCHES.md.
//!
//! The crate comes from cargo's download cache; when it is not there (the
//! workspace never downloads it: `[patch.crates-io]` replaces it), `cargo
//! fetch` brings it. Needs `tar` and `git` (for `git apply`), as the project
//! does anyway; a missing one fails the test.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

const CRATE: &str = "aya-0.14.0";
/// The checksum crates.io's index gives for aya 0.14.0 (cargo checks a
/// download against it; this checks the cached file was not changed since).
const CRATE_SHA256: &str = "66e644424fada9fff4fdc63848db1732fb69b626e8328202ef55c03df1f4d939";
/// The registry's bookkeeping files, not part of the crate's source.
const REGISTRY_ONLY: &[&str] = &[".cargo_vcs_info.json", ".cargo-ok"];
/// Ours, beside the derived tree.
const VENDOR_ONLY: &[&str] = &["PATCHES.md"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace root")
        .to_path_buf()
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME or CARGO_HOME is set"))
                .join(".cargo")
        })
}

fn cached_crate() -> Option<PathBuf> {
    let cache = cargo_home().join("registry/cache");
    std::fs::read_dir(&cache)
        .ok()?
        .filter_map(Result::ok)
        .map(|index| index.path().join(format!("{CRATE}.crate")))
        .find(|p| p.is_file())
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A fresh scratch directory outside the repository (so that `git apply`
/// patches plain files and does not look for a work tree).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("daxrace-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// The published crate file, downloaded by cargo if it is not cached yet.
fn published_crate() -> PathBuf {
    if let Some(p) = cached_crate() {
        return p;
    }
    let dir = scratch("aya-fetch");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/lib.rs"), "").unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"aya-fetch\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
         [dependencies]\naya = { version = \"=0.14.0\", default-features = false }\n\n\
         [workspace]\n",
    )
    .unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo).arg("fetch").current_dir(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    cached_crate().expect("cargo fetch put aya 0.14.0 in the registry cache")
}

/// Every regular file under `root`, by path relative to it.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                assert!(meta.is_file(), "{rel}: neither a file nor a directory");
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn vendored_aya_is_the_published_crate_with_the_patch() {
    let root = repo_root();
    let crate_file = published_crate();
    let sum = run(Command::new("sha256sum").arg(&crate_file));
    let sum = String::from_utf8_lossy(&sum.stdout);
    assert_eq!(
        sum.split_whitespace().next(),
        Some(CRATE_SHA256),
        "{} is not the aya 0.14.0 crates.io publishes",
        crate_file.display()
    );

    let work = scratch("aya-derive");
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&crate_file)
        .arg("-C")
        .arg(&work));
    let derived = work.join(CRATE);
    run(Command::new("git")
        .args(["apply", "--whitespace=nowarn"])
        .arg(root.join("vendor/aya.patch"))
        .current_dir(&derived));

    let mut want = files(&derived);
    let _ = std::fs::remove_dir_all(&work);
    want.retain(|path, _| !REGISTRY_ONLY.contains(&path.as_str()));
    let mut have = files(&root.join("vendor/aya"));
    for ours in VENDOR_ONLY {
        assert!(have.remove(*ours).is_some(), "vendor/aya/{ours} is missing");
    }

    let mut wrong = Vec::new();
    for (path, bytes) in &want {
        match have.get(path) {
            None => wrong.push(format!("missing from vendor/aya: {path}")),
            Some(b) if b != bytes => {
                wrong.push(format!("differs from published + patch: vendor/aya/{path}"))
            }
            Some(_) => {}
        }
    }
    for path in have.keys().filter(|p| !want.contains_key(*p)) {
        wrong.push(format!("not in published + patch: vendor/aya/{path}"));
    }
    assert!(
        wrong.is_empty(),
        "vendor/aya is not aya 0.14.0 + vendor/aya.patch (see vendor/aya/PATCHES.md \
         to re-derive it or to regenerate the patch):\n  {}",
        wrong.join("\n  ")
    );
}
