//! Submit throughput of the coordinator on loopback: N concurrent HTTP clients POST generate jobs
//! to an in-process coordinator (open access, local storage) for a fixed time, then the submits/s
//! and latency percentiles are printed. With `--redis-url` the jobs go to Redis (one Lua script
//! per submit), otherwise to the in-process queue.
//!
//! cargo run --release -p kontext-coordinator --example bench_submit -- --clients 32 --seconds 10 \
//!     [--redis-url redis://127.0.0.1:6379]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use kontext_coordinator::config::{Config, QueueSource};
use kontext_coordinator::{AppState, open_queue};
use kontext_storage::{AnyBlobStore, LocalStore};
use tokio::sync::Mutex;

#[derive(Parser)]
struct Args {
    /// Concurrent clients.
    #[arg(long, env = "BENCH_CLIENTS", default_value_t = 32)]
    clients: usize,
    /// Measured duration (after a 1 s warm-up).
    #[arg(long, env = "BENCH_SECONDS", default_value_t = 10)]
    seconds: u64,
    /// Queue in Redis instead of in-process (a fresh namespace is used).
    #[arg(long, env = "KONTEXT_REDIS_URL")]
    redis_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let mut config = Config::embedded(dir.path());
    config.auth = kontext_coordinator::auth::Auth::Open { max_in_flight: 0 };
    if let Some(url) = &args.redis_url {
        config.queue = QueueSource::Redis {
            url: url.clone(),
            namespace: format!("bench-{}", uuid::Uuid::new_v4()),
            wait_replicas: 0,
            max_blocking: 256,
        };
    }
    let queue = open_queue(&config).await.context("opening the queue")?;
    let store = AnyBlobStore::from(LocalStore::new(dir.path()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = AppState::new(config, queue, store, addr);
    tokio::spawn(kontext_coordinator::serve(
        listener,
        state,
        std::future::pending(),
    ));

    let url = format!("http://{addr}/v1/jobs");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let warmup_end = Instant::now() + Duration::from_secs(1);
    let end = warmup_end + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (http, url, latencies) = (http.clone(), url.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut i = 0u64;
            loop {
                let started = Instant::now();
                if started >= end {
                    break;
                }
                let body = serde_json::json!({"prompt": format!("bench {c} {i}"), "steps": 4});
                let resp = http.post(&url).json(&body).send().await?;
                anyhow::ensure!(resp.status() == 202, "submit answered {}", resp.status());
                let _ = resp.bytes().await?;
                if started >= warmup_end {
                    mine.push(started.elapsed());
                }
                i += 1;
            }
            latencies.lock().await.extend(mine);
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut all = latencies.lock().await.clone();
    all.sort();
    let pct = |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)));
    println!(
        "queue={} clients={} submits={} rate={:.0}/s p50={:?} p99={:?}",
        if args.redis_url.is_some() {
            "redis"
        } else {
            "memory"
        },
        args.clients,
        all.len(),
        all.len() as f64 / args.seconds as f64,
        pct(0.50).copied().unwrap_or_default(),
        pct(0.99).copied().unwrap_or_default(),
    );
    Ok(())
}
