//! The API fuzzed from its own OpenAPI document: schemathesis (from PyPI, pinned; `cargo xtask
//! test` installs it into target/schemathesis-venv) generates positive and negative requests
//! from docs/openapi.json and runs every check against `kontext up` with an API key: no 5xx, no
//! status code or body outside the document, no schema-valid request refused, no
//! schema-violating one accepted, no wrong credentials accepted. tests/fuzz/hooks.py supplies
//! what a JSON Schema cannot say (valid image values; the cross-field rules stated in prose).
//!
//! `KONTEXT_FUZZ_SECONDS` sets the time budget of the fuzzing and stateful phases (default 100);
//! the example and coverage phases run in full first (about a minute on 2 cores).
//! `KONTEXT_FUZZ_SEED` picks the generator's seed: fixed by default, so a run is repeatable and
//! CI does not depend on luck; set another (or `random`) to explore further.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "fuzz-key-0123456789abcdef";
const DEFAULT_SEED: &str = "20261203";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ is one level below the workspace root")
        .to_path_buf()
}

/// `kontext up`, killed when dropped.
struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn healthy(addr: &str) -> bool {
    TcpStream::connect(addr)
        .and_then(|mut s| {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
            let mut reply = String::new();
            s.read_to_string(&mut reply)?;
            Ok(reply.starts_with("HTTP/1.1 200"))
        })
        .unwrap_or(false)
}

/// `POST /v1/loras` of `file` (a LoRA for the tiny model): the id that `loras[].path` values
/// of the fuzzed requests use.
fn upload_lora(addr: &str, file: &Path) -> String {
    let body = std::fs::read(file).expect("the committed LoRA fixture");
    let mut s = TcpStream::connect(addr).expect("connect");
    let head = format!(
        "POST /v1/loras HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/x-safetensors\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("write");
    s.write_all(&body).expect("write");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.1 201"), "POST /v1/loras: {reply}");
    let json = reply.split("\r\n\r\n").nth(1).expect("a body");
    let v: serde_json::Value = serde_json::from_str(json).expect("JSON");
    v["id"].as_str().expect("id").to_owned()
}

#[test]
fn the_api_keeps_to_its_openapi_document_under_fuzzing() {
    let root = workspace_root();
    let st = root.join("target/schemathesis-venv/bin/schemathesis");
    assert!(
        st.is_file(),
        "{} is missing: run `cargo xtask test`, which installs schemathesis (or `cargo xtask \
         services`)",
        st.display()
    );
    let seconds: u64 = std::env::var("KONTEXT_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let seed = std::env::var("KONTEXT_FUZZ_SEED").unwrap_or_else(|_| DEFAULT_SEED.to_owned());
    let data = tempfile::tempdir().expect("tempdir");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(data.path().join("up.log")).expect("log file");
    // The limits are the defaults the document states; the failed-authentication limit is lifted
    // (the fuzzer sends wrong keys on purpose; tests/api_guards.rs covers the limit), as is the
    // in-flight limit (jobs pile up faster than the tiny model runs them).
    let _up = Up(Command::new(env!("CARGO_BIN_EXE_kontext"))
        .args(["up", "--model", "tiny", "--listen", &addr, "--data-dir"])
        .arg(data.path().join("data"))
        .args([
            "--api-keys",
            &format!("{KEY}:fuzz"),
            "--max-in-flight",
            "0",
            "--auth-failure-burst",
            "1000000000",
            "--auth-failures-per-minute",
            "1000000000",
            "--webhook-secret",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "--allow-private-urls",
        ])
        // The fuzzer tests the API, not the renders: the worker's engine gets one thread, so
        // megapixel (multi-reference) edits of the tiny model leave the other core to the API.
        .env("RAYON_NUM_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start kontext up"));
    let until = Instant::now() + Duration::from_secs(120);
    while !healthy(&addr) {
        assert!(
            Instant::now() < until,
            "kontext up did not answer /healthz:\n{}",
            std::fs::read_to_string(data.path().join("up.log")).unwrap_or_default()
        );
        // Another process starting up: nothing to wait on but time.
        std::thread::sleep(Duration::from_millis(50));
    }
    let lora = upload_lora(
        &addr,
        &root.join("tests/parity/fixtures/lora/kohya.safetensors"),
    );
    let mut st_cmd = Command::new(&st);
    st_cmd.arg("run");
    if seed != "random" {
        st_cmd.args(["--seed", &seed]);
    }
    let run = st_cmd
        .arg(root.join("docs/openapi.json"))
        .args(["--url", &format!("http://{addr}")])
        .args(["--checks", "all"])
        .args(["-H", &format!("Authorization: Bearer {KEY}")])
        .args(["-H", &format!("x-key: {KEY}")])
        .args(["--max-time", &seconds.to_string()])
        // One worker: concurrent generation trips a CPython 3.11 AST bug inside schemathesis.
        .args(["--workers", "1"])
        .args(["--generation-codec", "utf-8"])
        .args(["--generation-database", "none"])
        // `Prefer: wait=60` may hold a request for a minute.
        .args(["--request-timeout", "70"])
        .args(["--no-color"])
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("KONTEXT_FUZZ_LORA", &lora)
        .env("PYTHONPATH", root.join("tests/fuzz"))
        .current_dir(data.path())
        .output()
        .expect("run schemathesis");
    let out = String::from_utf8_lossy(&run.stdout);
    let summary: String = out
        .lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .collect::<Vec<_>>()
        .join("\n");
    println!("{summary}");
    assert!(
        run.status.success(),
        "schemathesis found problems:\n{out}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
