//! bench-fleet: what the fleet adds on top of the engine, measured end to end on loopback.
//!
//! Starts its own redis-server and S3 server (tests/src/{redis_server,s3_server}.rs), the
//! coordinator (HTTP, Redis queue, S3 storage) and one worker with the tiny model, all in this
//! process except Redis. Then:
//!
//! 1. **Per-job overhead**: `--jobs` jobs one after another, each timed from the client's
//!    `POST /v1/jobs` until it has the job's final view from the SSE stream and the result bytes
//!    from the presigned S3 URL. Overhead = that time − the engine's time for the job (measured by
//!    the worker around its engine call). Reports p50/p99 and the worker's stage breakdown, plus
//!    two stages outside the worker: **pickup** (the job's `created_at` → its `started_at`, i.e.
//!    submit → claim, both written by the queue scripts with the callers' clocks) and
//!    **notification** (the job's `finished_at`, written by the commit, → the moment the client
//!    has the final view from the event stream). Both use the shared wall clock of this process
//!    in whole milliseconds, so each carries up to 1 ms of rounding.
//! 2. **Submit throughput**: with the worker stopped, `--clients` concurrent HTTP clients submit
//!    `--submits` jobs; reports submits/s and the submit latency p50/p99.
//!
//! A command, not a test: it prints numbers and asserts nothing about them.
//! `cargo run --release -p kontext-e2e --bin bench-fleet`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use kontext::client::Client;
use kontext_coordinator::auth::Auth;
use kontext_coordinator::config::{Config, QueueSource};
use kontext_e2e::redis_server::{RedisServer, fresh_namespace};
use kontext_e2e::s3_server::{S3Server, unique_bucket_name};
use kontext_proto::redis::{RedisConfig, RedisQueue};
use kontext_proto::validate::JobRequest;
use kontext_proto::{JobId, JobQueue, JobStatus};
use kontext_storage::{AnyBlobStore, StorageConfig};
use kontext_worker::config::ModelArgs;
use kontext_worker::metrics::{Stage, WorkerStatus};
use kontext_worker::service::spawn_worker;
use kontext_worker::settings::WorkerSettings;

#[derive(Debug, Parser)]
#[command(about = "Per-job overhead over engine time, and submit throughput, of the whole fleet")]
struct Args {
    /// Sequential jobs measured for the overhead (after --warmup unmeasured ones).
    #[arg(long, env = "KONTEXT_BENCH_JOBS", default_value_t = 100)]
    jobs: usize,
    #[arg(long, env = "KONTEXT_BENCH_WARMUP", default_value_t = 5)]
    warmup: usize,
    /// Width and height of each job (the tiny model; small keeps the engine share small too).
    #[arg(long, env = "KONTEXT_BENCH_SIZE", default_value_t = 64)]
    size: u32,
    /// Denoising steps per job.
    #[arg(long, env = "KONTEXT_BENCH_STEPS", default_value_t = 4)]
    steps: u32,
    /// Submits measured for throughput.
    #[arg(long, env = "KONTEXT_BENCH_SUBMITS", default_value_t = 10_000)]
    submits: usize,
    /// Concurrent submitting clients.
    #[arg(long, env = "KONTEXT_BENCH_CLIENTS", default_value_t = 64)]
    clients: usize,
}

/// Wall clock in milliseconds (fractional), comparable with the queue's `Millis`.
fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(name: &str, values_ms: &mut [f64]) {
    values_ms.sort_by(f64::total_cmp);
    let mean = values_ms.iter().sum::<f64>() / values_ms.len().max(1) as f64;
    println!(
        "  {name:<32} p50 {:>8.2} ms   p99 {:>8.2} ms   mean {:>8.2} ms",
        percentile(values_ms, 50.0),
        percentile(values_ms, 99.0),
        mean
    );
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The subscriber the binaries install (spans get trace ids, as in production; no export).
    let _telemetry = kontext_telemetry::init_plain("bench-fleet", "warn")?;
    let redis = RedisServer::start(&[]).context("starting redis-server")?;
    let s3 = S3Server::start().context("starting the S3 server")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args, redis.url().to_owned(), &s3))
}

async fn run(args: Args, redis_url: String, s3: &S3Server) -> anyhow::Result<()> {
    let namespace = fresh_namespace();
    let bucket = unique_bucket_name();
    let mut s3_config = s3.config(&bucket);
    s3_config.create_bucket_if_missing = true;

    let dir = tempfile::tempdir()?;
    let mut config = Config::embedded(dir.path());
    config.queue = QueueSource::Redis {
        url: redis_url.clone(),
        namespace: namespace.clone(),
        wait_replicas: 0,
        max_blocking: 256,
    };
    config.storage = StorageConfig::S3(s3_config.clone());
    config.auth = Auth::Open { max_in_flight: 0 };
    config.limits.job.min_side = 16;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let coordinator = tokio::spawn(kontext_coordinator::run(listener, config, async move {
        let _ = http_stopped.await;
    }));

    // The worker: its own queue connection and store client, like a separate process.
    let queue = RedisQueue::connect(&redis_url, &namespace, RedisConfig::default()).await?;
    // The bench's own connection, to read each job's record after it is done.
    let records = RedisQueue::connect(&redis_url, &namespace, RedisConfig::default()).await?;
    let store = AnyBlobStore::open(StorageConfig::S3(s3_config)).await?;
    let mut settings = WorkerSettings::new("bench-worker");
    settings.claim_wait = Duration::from_millis(500);
    let status = Arc::new(WorkerStatus::new(settings.worker_id.clone()));
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = spawn_worker(
        Arc::new(queue),
        Arc::new(store),
        || kontext_worker::config::load_engine(&ModelArgs::default()),
        settings,
        Arc::clone(&status),
        async move {
            let _ = worker_stopped.await;
        },
    )
    .await?;
    let ready_by = Instant::now() + Duration::from_secs(300);
    while !status.is_ready() {
        if Instant::now() > ready_by || worker.is_finished() {
            bail!("the worker did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // 1. Per-job overhead.
    let client = Client::new(&url, None)?;
    let job = JobRequest {
        prompt: "a small lighthouse".into(),
        width: Some(args.size),
        height: Some(args.size),
        steps: Some(args.steps),
        ..JobRequest::default()
    };
    let http = reqwest::Client::new();
    let (mut total, mut engine_ms, mut overhead) = (Vec::new(), Vec::new(), Vec::new());
    let mut stages: Vec<(Stage, Vec<f64>)> = Stage::ALL.iter().map(|s| (*s, Vec::new())).collect();
    let (mut post_ms, mut pickup_ms, mut notify_ms, mut result_get_ms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut rest_ms = Vec::new();
    for i in 0..args.warmup + args.jobs {
        let before: Vec<Duration> = Stage::ALL
            .iter()
            .map(|s| status.metrics.stage_total(*s))
            .collect();
        let t0 = Instant::now();
        let accepted = client.submit(&job, None).await?;
        let t_submit = t0.elapsed();
        let view = client.follow(&accepted.id, |_| {}).await?;
        let seen_at = wall_ms();
        let t_seen = t0.elapsed();
        if view.status != JobStatus::Succeeded {
            bail!("job {} ended {:?}: {:?}", view.id, view.status, view.error);
        }
        let result_url = &view.result.as_ref().context("result")?.url;
        let bytes = http
            .get(result_url)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        let elapsed = t0.elapsed();
        if bytes.len() < 8 {
            bail!("result of {} is {} bytes", view.id, bytes.len());
        }
        if i < args.warmup {
            continue;
        }
        let id: JobId = view.id.parse()?;
        let record = records.get(id).await?.context("the job's record")?;
        let started_at = record.started_at.context("started_at")?;
        let finished_at = record.finished_at.context("finished_at")?;
        pickup_ms.push(started_at.saturating_sub(record.created_at) as f64);
        notify_ms.push(seen_at - finished_at as f64);
        let after: Vec<Duration> = Stage::ALL
            .iter()
            .map(|s| status.metrics.stage_total(*s))
            .collect();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut worker_stages_ms = 0.0;
        for ((stage, v), (b, a)) in stages.iter_mut().zip(before.iter().zip(&after)) {
            let d = ms(a.saturating_sub(*b));
            if *stage != Stage::Engine {
                worker_stages_ms += d;
            }
            v.push(d);
        }
        let engine = after[1].saturating_sub(before[1]);
        let job_overhead = ms(elapsed.saturating_sub(engine));
        total.push(ms(elapsed));
        engine_ms.push(ms(engine));
        overhead.push(job_overhead);
        post_ms.push(ms(t_submit));
        result_get_ms.push(ms(elapsed.saturating_sub(t_seen)));
        let named = ms(t_submit)
            + pickup_ms.last().copied().unwrap_or(0.0)
            + notify_ms.last().copied().unwrap_or(0.0)
            + ms(elapsed.saturating_sub(t_seen))
            + worker_stages_ms;
        rest_ms.push(job_overhead - named);
    }
    println!(
        "per-job overhead: {} sequential {}x{} jobs, {} steps, tiny model on CPU; Redis + S3 (s3s-fs) + HTTP on loopback",
        args.jobs, args.size, args.size, args.steps
    );
    summary("client total", &mut total);
    summary("engine (worker-measured)", &mut engine_ms);
    summary("overhead = total - engine", &mut overhead);
    summary("  of which POST /v1/jobs", &mut post_ms);
    summary("  pickup (submit -> claim)", &mut pickup_ms);
    summary("  notification (commit -> SSE)", &mut notify_ms);
    summary("  GET result (S3)", &mut result_get_ms);
    for (stage, v) in &mut stages {
        if *stage != Stage::Engine {
            summary(&format!("  worker {}", stage.as_str()), v);
        }
    }
    // Negative when stages overlap: `created_at` is written inside the POST, and the record's
    // times are whole milliseconds.
    summary("  rest (not in a stage above)", &mut rest_ms);

    // 2. Submit throughput, with the worker stopped so only the coordinator and Redis work.
    let _ = stop_worker.send(());
    worker.join().await?;
    let warm = args.clients * 10;
    submit_load(&url, &job, warm, args.clients).await?;
    let started = Instant::now();
    let mut latencies = submit_load(&url, &job, args.submits, args.clients).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "submit throughput: {} submits from {} concurrent HTTP clients in {secs:.2} s = {:.0} submits/s",
        args.submits,
        args.clients,
        args.submits as f64 / secs
    );
    summary("submit latency", &mut latencies);

    let _ = stop_http.send(());
    coordinator.await??;
    Ok(())
}

/// `total` submits spread over `clients` tasks; returns each submit's latency in ms.
async fn submit_load(
    url: &str,
    job: &JobRequest,
    total: usize,
    clients: usize,
) -> anyhow::Result<Vec<f64>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = Client::new(url, None)?;
        let (job, next) = (job.clone(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t = Instant::now();
                client.submit(&job, None).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}
