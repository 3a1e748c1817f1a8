//! Project commands, run as `cargo xtask <command>` (alias in .cargo/config.toml).
//!
//! `test` is the one command CI runs: it installs what the tests need on a fresh Debian machine
//! (redis-server from apt; promtool from apt's prometheus package, for the alerting-rule tests;
//! Debian's chromium-headless-shell, for the operator console's browser tests;
//! schemathesis and gguf from PyPI into target/schemathesis-venv, with python3 from apt when missing; the
//! S3 server is embedded in the test crate), checks formatting, then
//! runs the whole test suite. The tests themselves start Redis and the S3 server on free loopback
//! ports in temporary directories and stop them when the test process exits.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test      install missing test tools (redis-server, promtool, chromium-headless-shell, schemathesis, gguf),
            check formatting, lints
            (clippy) and docs (rustdoc) with warnings denied, run every test
  services  only install the test services
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("services") => ensure_redis_server()
            .and_then(|_| ensure_promtool())
            .and_then(|_| ensure_chromium())
            .and_then(|_| ensure_schemathesis()),
        _ => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root; this is a bug")
        .to_path_buf()
}

fn test(extra: &[String]) -> Result<()> {
    let root = workspace_root();
    report_disk_space(&root);
    ensure_redis_server()?;
    ensure_promtool()?;
    ensure_chromium()?;
    ensure_schemathesis()?;
    step("formatting");
    if cargo_has("fmt") {
        run(Command::new(cargo())
            .args(["fmt", "--all", "--check"])
            .current_dir(&root))
        .context("`cargo fmt --all --check` found unformatted code: run `cargo fmt --all`")?;
    } else {
        eprintln!(
            "xtask: rustfmt is not installed (rustup component add rustfmt); formatting NOT checked"
        );
    }
    // Lints and docs share the test build's dependency artifacts (same profile), so they cost
    // little beyond the test build itself.
    step("lints (clippy, warnings denied)");
    if cargo_has("clippy") {
        run(Command::new(cargo())
            .args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ])
            .env("CARGO_INCREMENTAL", incremental())
            .current_dir(&root))
        .map_err(|e| with_disk_hint(e, &root))
        .context("clippy found warnings: fix them (cargo clippy --workspace --all-targets)")?;
    } else {
        eprintln!(
            "xtask: clippy is not installed (rustup component add clippy); lints NOT checked"
        );
    }
    step("docs (rustdoc, warnings denied)");
    run(Command::new(cargo())
        .args(["doc", "--workspace", "--no-deps", "--locked"])
        .env("RUSTDOCFLAGS", "-D warnings")
        .env("CARGO_INCREMENTAL", incremental())
        .current_dir(&root))
    .context("rustdoc found warnings: fix them (cargo doc --workspace --no-deps)")?;
    step("tests");
    let mut cmd = Command::new(cargo());
    cmd.args(["test", "--workspace", "--locked"])
        .args(extra)
        .current_dir(&root);
    cmd.env("CARGO_INCREMENTAL", incremental());
    run(&mut cmd)
        .map_err(|e| with_disk_hint(e, &root))
        .context("tests failed")?;
    step("all green");
    Ok(())
}

/// What a fresh clone's `cargo xtask test` leaves in target/ (measured: 5.2 GiB of build
/// artifacts, the Python venv and test data), with headroom for the linker's temporary files.
const DISK_NEEDED_GIB: f64 = 7.0;

/// Free bytes on the filesystem holding `dir`, read from POSIX `df -Pk` (std has no statvfs).
fn free_bytes(dir: &Path) -> Option<u64> {
    let out = Command::new("df").arg("-Pk").arg(dir).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Second line: filesystem, 1024-blocks, used, available, capacity, mount point.
    let available_kib: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(available_kib * 1024)
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Says up front when the build is likely to run out of disk, since rustc's "No space left on
/// device" comes late and in the middle of unrelated output.
fn report_disk_space(root: &Path) {
    let Some(free) = free_bytes(root) else { return };
    if gib(free) < DISK_NEEDED_GIB {
        eprintln!(
            "xtask: WARNING: only {:.1} GiB free on the disk of {}; the test build needs about \
             {DISK_NEEDED_GIB} GiB. Free space, or set CARGO_TARGET_DIR to a directory on a \
             larger disk.",
            gib(free),
            root.display()
        );
    } else {
        eprintln!(
            "xtask: {:.1} GiB free on the disk of {}",
            gib(free),
            root.display()
        );
    }
}

/// Adds "the disk is full" to a failed build's error when that is what happened.
fn with_disk_hint(e: anyhow::Error, root: &Path) -> anyhow::Error {
    match free_bytes(root) {
        Some(free) if free < (256 << 20) => e.context(format!(
            "the disk of {} is full ({} MiB free): the test build needs about \
             {DISK_NEEDED_GIB} GiB; free space or set CARGO_TARGET_DIR to a larger disk",
            root.display(),
            free >> 20
        )),
        _ => e,
    }
}

/// A one-shot build gains nothing from incremental caches, which would add several GB to the
/// target directory; a caller who wants them sets CARGO_INCREMENTAL themselves.
fn incremental() -> String {
    std::env::var("CARGO_INCREMENTAL").unwrap_or_else(|_| "0".into())
}

/// The API fuzzer of cli/tests/api_fuzz.rs, pinned.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";
/// llama.cpp's GGUF reader, which cross-checks our GGUF writer (engine/tests/gguf_checkpoints.rs).
const GGUF: &str = "gguf==0.19.0";

/// `apt-get install` of `packages` (with sudo unless root).
fn apt_install(packages: &[&str]) -> Result<()> {
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| {
        let mut all: Vec<&str> = sudo.to_vec();
        all.push("apt-get");
        all.extend_from_slice(args);
        let mut c = Command::new(all[0]);
        c.args(&all[1..]).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(&mut apt(&["update", "-q"]))?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    run(&mut apt(&args))
}

/// `promtool` (tests/tests/deploy_monitoring.rs runs it on deploy/prometheus), from Debian's
/// `prometheus` package when it is missing; only the package's files are used, no server runs.
fn ensure_promtool() -> Result<()> {
    if find_on_path("promtool").is_some() {
        return Ok(());
    }
    step("installing promtool (apt: prometheus)");
    apt_install(&["prometheus"])?;
    find_on_path("promtool")
        .map(|_| ())
        .context("promtool is still missing after apt-get install prometheus")
}

/// A headless Chromium for cli/tests/console.rs (it finds `chromium-headless-shell` or
/// `chromium` on PATH, or `$KONTEXT_CHROMIUM`): Debian's `chromium-headless-shell` when none is
/// there.
fn ensure_chromium() -> Result<()> {
    if std::env::var_os("KONTEXT_CHROMIUM").is_some()
        || find_on_path("chromium-headless-shell").is_some()
        || find_on_path("chromium").is_some()
    {
        return Ok(());
    }
    step("installing chromium-headless-shell (apt)");
    apt_install(&["chromium-headless-shell"])?;
    find_on_path("chromium-headless-shell")
        .map(|_| ())
        .context("chromium-headless-shell is still missing after apt-get install")
}

/// Path of a usable `redis-server`, installing Debian's package when it is missing.
fn ensure_redis_server() -> Result<PathBuf> {
    if let Some(p) = find_on_path("redis-server") {
        return Ok(p);
    }
    step("installing redis-server (apt)");
    apt_install(&["redis-server"])?;
    find_on_path("redis-server")
        .or_else(|| Some(PathBuf::from("/usr/bin/redis-server")).filter(|p| p.exists()))
        .context("redis-server is still missing after apt-get install redis-server")
}

/// The suite's Python tools (schemathesis, gguf) in target/schemathesis-venv at their pinned
/// versions (python3 and its venv module from apt when missing).
fn ensure_schemathesis() -> Result<()> {
    let venv = workspace_root().join("target/schemathesis-venv");
    let pip = venv.join("bin/pip");
    let has = |pin: &str| {
        let (name, version) = pin.split_once("==").unwrap_or((pin, ""));
        Command::new(&pip)
            .args(["show", name])
            .output()
            .is_ok_and(|o| {
                o.status.success()
                    && String::from_utf8_lossy(&o.stdout).contains(&format!("Version: {version}"))
            })
    };
    if has(SCHEMATHESIS) && has(GGUF) {
        return Ok(());
    }
    step(&format!(
        "installing {SCHEMATHESIS} and {GGUF} (PyPI) into {}",
        venv.display()
    ));
    let has_venv = |python: &Path| {
        Command::new(python)
            .args(["-c", "import venv, ensurepip"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let python = match find_on_path("python3").filter(|p| has_venv(p)) {
        Some(p) => p,
        None => {
            apt_install(&["python3", "python3-venv"])?;
            find_on_path("python3")
                .filter(|p| has_venv(p))
                .context("python3 with its venv module is still missing after apt-get install")?
        }
    };
    if !pip.is_file() {
        run(Command::new(&python).arg("-m").arg("venv").arg(&venv))?;
    }
    run(Command::new(&pip).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        SCHEMATHESIS,
        GGUF,
    ]))
    .context("pip install schemathesis gguf")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn find_on_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn cargo_has(sub: &str) -> bool {
    Command::new(cargo())
        .args([sub, "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn step(what: &str) {
    eprintln!("\n== xtask: {what}");
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} exited with {status}", cmd.get_program());
    }
    Ok(())
}
