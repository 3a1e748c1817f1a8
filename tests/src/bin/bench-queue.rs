//! bench-queue: complete job lifecycles (submit → claim → complete) on `RedisQueue` from N
//! concurrent clients over loopback. Prints lifecycles per second and p50/p99 latency per
//! operation. A command, not a test: numbers are reported, never asserted.
//!
//! `cargo run --release -p kontext-e2e --bin bench-queue -- --clients 32 --jobs 20000`
//! starts its own redis-server (tests/src/redis_server.rs) unless `--redis-url` is given.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use kontext_e2e::redis_server::{RedisServer, fresh_namespace};
use kontext_proto::clock::now_ms;
use kontext_proto::conformance::{result_for, submission};
use kontext_proto::redis::{RedisConfig, RedisQueue};
use kontext_proto::{JobQueue, Priority};

#[derive(Debug, Parser)]
#[command(about = "Benchmark submit → claim → complete on the Redis queue")]
struct Args {
    /// Concurrent clients; each runs whole lifecycles back to back.
    #[arg(long, env = "KONTEXT_BENCH_CLIENTS", default_value_t = 32)]
    clients: usize,
    /// Lifecycles to measure (after the warm-up).
    #[arg(long, env = "KONTEXT_BENCH_JOBS", default_value_t = 20_000)]
    jobs: usize,
    /// Unmeasured lifecycles first (connections, script cache, allocator).
    #[arg(long, env = "KONTEXT_BENCH_WARMUP", default_value_t = 1_000)]
    warmup: usize,
    /// Queue handles, each with its own multiplexed connection; clients are spread over them.
    #[arg(long, env = "KONTEXT_BENCH_CONNECTIONS", default_value_t = 1)]
    connections: usize,
    /// Use this Redis instead of starting one (it must be empty of nothing: a fresh namespace is used).
    #[arg(long, env = "KONTEXT_REDIS_URL")]
    redis_url: Option<String>,
}

/// Per-operation latencies in microseconds.
#[derive(Default)]
struct Samples {
    submit: Vec<u64>,
    claim: Vec<u64>,
    complete: Vec<u64>,
}

fn micros(d: Duration) -> u64 {
    d.as_micros().try_into().unwrap_or(u64::MAX)
}

/// One client: lifecycles until the shared counter reaches `total`.
async fn client(
    q: Arc<RedisQueue>,
    id: usize,
    next: Arc<AtomicUsize>,
    total: usize,
) -> anyhow::Result<Samples> {
    let worker = format!("bench-{id}");
    let mut s = Samples::default();
    while next.fetch_add(1, Ordering::Relaxed) < total {
        let t0 = Instant::now();
        q.submit(submission("bench", Priority::Standard, "bench"), now_ms())
            .await
            .context("submit")?;
        let t1 = Instant::now();
        // Every client submits before it claims, so a job is always there; another client may
        // have taken this one, but then another one is left for us.
        let claim = loop {
            let c = q
                .claim(&worker, Duration::from_secs(60), now_ms(), Duration::ZERO)
                .await
                .context("claim")?;
            if let Some(c) = c {
                break c;
            }
        };
        let t2 = Instant::now();
        q.complete(&claim.lease, result_for(&claim.lease), now_ms())
            .await
            .context("complete")?;
        let t3 = Instant::now();
        s.submit.push(micros(t1 - t0));
        s.claim.push(micros(t2 - t1));
        s.complete.push(micros(t3 - t2));
    }
    Ok(s)
}

async fn run(
    queues: &[Arc<RedisQueue>],
    clients: usize,
    total: usize,
) -> anyhow::Result<(Samples, Duration)> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            tokio::spawn(client(
                Arc::clone(&queues[i % queues.len()]),
                i,
                Arc::clone(&next),
                total,
            ))
        })
        .collect();
    let mut all = Samples::default();
    for t in tasks {
        let s = t.await.context("client task")??;
        all.submit.extend(s.submit);
        all.claim.extend(s.claim);
        all.complete.extend(s.complete);
    }
    Ok((all, started.elapsed()))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn report(name: &str, mut v: Vec<u64>) {
    v.sort_unstable();
    let mean = v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    println!(
        "  {name:<9} p50 {:>7.3} ms   p99 {:>7.3} ms   mean {:>7.3} ms",
        percentile(&v, 50.0) as f64 / 1e3,
        percentile(&v, 99.0) as f64 / 1e3,
        mean / 1e3
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.clients == 0 || args.jobs == 0 || args.connections == 0 {
        bail!("--clients, --jobs and --connections must be at least 1");
    }
    let own_server;
    let url = match &args.redis_url {
        Some(url) => url.clone(),
        None => {
            own_server = RedisServer::start(&[]).context("starting redis-server")?;
            own_server.url().to_owned()
        }
    };
    let ns = fresh_namespace();
    let mut queues = Vec::new();
    for _ in 0..args.connections {
        let q = RedisQueue::connect(&url, &ns, RedisConfig::default())
            .await
            .context("connecting")?;
        queues.push(Arc::new(q));
    }
    if args.warmup > 0 {
        run(&queues, args.clients, args.warmup)
            .await
            .context("warm-up")?;
    }
    let (samples, elapsed) = run(&queues, args.clients, args.jobs).await?;
    let done = samples.complete.len();
    println!(
        "bench-queue: {done} lifecycles (submit → claim → complete), {} clients, {} connection(s), {} worker threads",
        args.clients,
        args.connections,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  throughput {:.0} lifecycles/s ({:.2} s wall)",
        done as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    report("submit", samples.submit);
    report("claim", samples.claim);
    report("complete", samples.complete);
    Ok(())
}
