//! The deploy files, checked by the binaries' own configuration parsers: every `KONTEXT_*` and
//! `AWS_*` value in `deploy/compose.yaml` and `deploy/k8s/*.yaml` is read by the clap definitions
//! of the binary it is given to and then validated as that binary validates it at start
//! (`Config::from_args` for the coordinator; settings and storage for the worker), so a short API
//! key, a bad duration or a misspelt variable fails here instead of at `docker compose up`. The
//! KEDA scaler's streams and consumer group must be the queue's.
//!
//! Values reach clap through the process environment, exactly as in a container. This test
//! binary holds this one test, so nothing else reads the environment while it changes.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use clap::{CommandFactory, Parser};
use kontext_proto::Priority;
use kontext_proto::keys::KeySpace;
use serde::Deserialize;
use serde_yaml_ng::Value;

type Env = BTreeMap<String, String>;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel)
}

fn yaml_documents(rel: &str) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(deploy(rel)).with_context(|| format!("reading {rel}"))?;
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let mut v = Value::deserialize(doc).with_context(|| format!("{rel}: not YAML"))?;
        v.apply_merge()
            .with_context(|| format!("{rel}: merge keys"))?;
        docs.push(v);
    }
    Ok(docs)
}

fn string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The worker's flags (the binary's `serve` subcommand).
#[derive(Parser)]
struct WorkerServe {
    #[command(flatten)]
    serve: kontext_worker::config::ServeArgs,
}

#[derive(Clone, Copy, Debug)]
enum Binary {
    Coordinator,
    Worker,
}

impl Binary {
    fn of(command: &str) -> Option<Self> {
        match command {
            "kontext-coordinator" => Some(Self::Coordinator),
            "kontext-worker" => Some(Self::Worker),
            _ => None,
        }
    }

    /// Every environment variable a flag of this binary reads.
    fn env_names(self) -> Vec<String> {
        let cmd = match self {
            Self::Coordinator => kontext_coordinator::config::Cli::command(),
            Self::Worker => WorkerServe::command(),
        };
        cmd.get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect()
    }

    /// Parses and validates `env` as this binary does at start.
    fn check(self, env: &Env) -> Result<()> {
        match self {
            Self::Coordinator => {
                let cli = with_env(env, || {
                    kontext_coordinator::config::Cli::try_parse_from(["kontext-coordinator"])
                })
                .context("kontext-coordinator flags")?;
                kontext_coordinator::config::Config::from_args(cli.serve)
                    .context("kontext-coordinator configuration")?;
            }
            Self::Worker => {
                let w = with_env(env, || WorkerServe::try_parse_from(["kontext-worker"]))
                    .context("kontext-worker serve flags")?;
                w.serve
                    .consumer
                    .settings()
                    .context("kontext-worker settings")?;
                w.serve
                    .storage
                    .into_config()
                    .context("kontext-worker storage")?;
            }
        }
        Ok(())
    }
}

/// Runs `f` with exactly `env` as the KONTEXT_/AWS_ variables of the process.
fn with_env<T>(env: &Env, f: impl FnOnce() -> T) -> T {
    let ours = |k: &str| k.starts_with("KONTEXT_") || k.starts_with("AWS_");
    for (k, _) in std::env::vars().filter(|(k, _)| ours(k)) {
        // SAFETY: this test binary runs one test on one thread (see the module docs).
        unsafe { std::env::remove_var(k) };
    }
    for (k, v) in env {
        // SAFETY: as above.
        unsafe { std::env::set_var(k, v) };
    }
    let out = f();
    for k in env.keys() {
        // SAFETY: as above.
        unsafe { std::env::remove_var(k) };
    }
    out
}

/// Every variable must be one a flag of `binary` reads (a misspelt or misplaced one is an error).
fn check_service(what: &str, binary: Binary, env: &Env, extra_allowed: &[&str]) -> Result<()> {
    let known = binary.env_names();
    for k in env.keys() {
        ensure!(
            known.contains(k) || extra_allowed.contains(&k.as_str()),
            "{what}: {k} is read by no flag of {binary:?}"
        );
    }
    binary.check(env).with_context(|| what.to_owned())
}

fn compose() -> Result<usize> {
    let docs = yaml_documents("compose.yaml")?;
    let services = docs[0]["services"]
        .as_mapping()
        .context("compose.yaml: services")?;
    let mut checked = 0;
    for (name, svc) in services {
        let name = string(name).unwrap_or_default();
        let Some(binary) = svc["entrypoint"][0].as_str().and_then(Binary::of) else {
            continue;
        };
        let env: Env = svc["environment"]
            .as_mapping()
            .with_context(|| format!("compose service {name}: environment"))?
            .iter()
            .filter_map(|(k, v)| Some((string(k)?, string(v)?)))
            .collect();
        check_service(&format!("compose service {name}"), binary, &env, &[])?;
        checked += 1;
    }
    Ok(checked)
}

fn k8s() -> Result<usize> {
    let secret: Env = yaml_documents("k8s/secret.example.yaml")?[0]["stringData"]
        .as_mapping()
        .context("secret.example.yaml: stringData")?
        .iter()
        .filter_map(|(k, v)| Some((string(k)?, string(v)?)))
        .collect();
    let keda = &yaml_documents("k8s/keda-scaledobject.yaml")?[0];
    ensure!(keda["kind"].as_str() == Some("ScaledObject"), "KEDA kind");
    let mut checked = 0;
    for file in ["k8s/coordinator.yaml", "k8s/worker.yaml"] {
        for doc in yaml_documents(file)? {
            if doc["kind"].as_str() != Some("Deployment") {
                continue;
            }
            for c in doc["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .with_context(|| format!("{file}: containers"))?
            {
                let Some(binary) = c["command"][0].as_str().and_then(Binary::of) else {
                    continue;
                };
                let mut env = Env::new();
                let from_secret = c["envFrom"].as_sequence().is_some_and(|s| {
                    s.iter()
                        .any(|e| e["secretRef"]["name"].as_str() == Some("kontext"))
                });
                // The shared Secret also holds the other binary's variables and KEDA's address.
                let mut shared: Vec<&str> = Vec::new();
                if from_secret {
                    for (k, v) in &secret {
                        if binary.env_names().contains(k) {
                            env.insert(k.clone(), v.clone());
                        } else {
                            shared.push(k);
                        }
                    }
                }
                for e in c["env"].as_sequence().into_iter().flatten() {
                    let Some(name) = e["name"].as_str() else {
                        continue;
                    };
                    // valueFrom (e.g. the pod name) has no literal value to check.
                    if let Some(v) = string(&e["value"]) {
                        env.insert(name.to_owned(), v);
                    }
                }
                check_service(file, binary, &env, &[])?;
                for k in shared {
                    let read_elsewhere = Binary::Coordinator.env_names().contains(&k.to_string())
                        || Binary::Worker.env_names().contains(&k.to_string())
                        || keda_reads(keda, k);
                    ensure!(
                        read_elsewhere,
                        "secret.example.yaml: {k} is read by nothing"
                    );
                }
                checked += 1;
            }
        }
    }
    Ok(checked)
}

fn keda_reads(keda: &Value, var: &str) -> bool {
    keda["spec"]["triggers"].as_sequence().is_some_and(|t| {
        t.iter()
            .any(|t| t["metadata"]["addressFromEnv"].as_str() == Some(var))
    })
}

/// The scaler's streams are the queue's class streams of the default namespace, group
/// `workers`, one trigger per priority class.
fn keda_matches_the_queue() -> Result<()> {
    let keda = &yaml_documents("k8s/keda-scaledobject.yaml")?[0];
    let keys = KeySpace::new("kx")?;
    let triggers = keda["spec"]["triggers"]
        .as_sequence()
        .context("KEDA triggers")?;
    let mut streams: Vec<String> = triggers
        .iter()
        .map(|t| {
            ensure!(
                t["metadata"]["consumerGroup"].as_str() == Some(kontext_proto::keys::WORKER_GROUP),
                "KEDA consumerGroup {:?} is not the queue's group",
                t["metadata"]["consumerGroup"]
            );
            t["metadata"]["stream"]
                .as_str()
                .map(str::to_owned)
                .context("KEDA trigger without a stream")
        })
        .collect::<Result<_>>()?;
    streams.sort();
    let mut want: Vec<String> = Priority::ORDER
        .iter()
        .map(|&p| keys.class_stream(p))
        .collect();
    want.sort();
    ensure!(
        streams == want,
        "KEDA streams {streams:?}, the queue's {want:?}"
    );
    Ok(())
}

#[test]
fn deploy_files_parse_with_the_binaries_own_configuration() -> Result<()> {
    let compose = compose()?;
    assert_eq!(compose, 2, "the coordinator and the worker of compose.yaml");
    let k8s = k8s()?;
    assert_eq!(k8s, 2, "the coordinator and the worker Deployments");
    keda_matches_the_queue()?;
    // And the checks can fail: a short API key is refused like at start.
    let mut env = Env::new();
    env.insert("KONTEXT_LISTEN".into(), "0.0.0.0:8080".into());
    env.insert("KONTEXT_PUBLIC_URL".into(), "http://kontext:8080".into());
    env.insert("KONTEXT_API_KEYS".into(), "short:dev".into());
    let e = Binary::Coordinator.check(&env).expect_err("a short key");
    assert!(format!("{e:#}").contains("16"), "{e:#}");
    let mut env = Env::new();
    env.insert("KONTEXT_LEASE_TTL".into(), "soon".into());
    env.insert("KONTEXT_REDIS_URL".into(), "redis://r:6379".into());
    assert!(Binary::Worker.check(&env).is_err(), "a bad duration");
    let e = check_service("x", Binary::Worker, &env_of(&[("KONTEXT_LISTN", "1")]), &[])
        .expect_err("a misspelt variable");
    assert!(e.to_string().contains("KONTEXT_LISTN"), "{e}");
    Ok(())
}

fn env_of(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
