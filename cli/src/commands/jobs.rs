//! The client commands: `generate`, `edit`, `status`, `wait`, `fetch`, `cancel` against a
//! coordinator URL, with progress bars while a job runs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use kontext::client::{Client, is_terminal};
use kontext::progress::JobBar;
use kontext_coordinator::http::views::JobView;
use kontext_proto::JobStatus;
use kontext_proto::validate::JobRequest;

/// Which coordinator, as whom.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Coordinator URL.
    #[arg(long, env = "KONTEXT_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key, sent as `Authorization: Bearer <key>` (not needed by an open `kontext up`).
    #[arg(long, env = "KONTEXT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl ServerArgs {
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.url, self.api_key.as_deref())?)
    }
}

/// Fields of a job (all optional: the server has defaults and reports what it chose).
#[derive(Debug, Clone, Args)]
pub struct JobOptions {
    /// Output width in pixels (a multiple of 16); with --height.
    #[arg(long, env = "KONTEXT_WIDTH")]
    pub width: Option<u32>,
    /// Output height in pixels (a multiple of 16); with --width.
    #[arg(long, env = "KONTEXT_HEIGHT")]
    pub height: Option<u32>,
    /// Output aspect ratio "w:h" (about one megapixel), instead of --width/--height.
    #[arg(long, env = "KONTEXT_ASPECT_RATIO")]
    pub aspect_ratio: Option<String>,
    /// Denoising steps (server default 28).
    #[arg(long, env = "KONTEXT_STEPS")]
    pub steps: Option<u32>,
    /// Guidance (server default 2.5).
    #[arg(long, env = "KONTEXT_GUIDANCE")]
    pub guidance: Option<f32>,
    /// Seed; the server picks one and reports it when absent.
    #[arg(long, env = "KONTEXT_SEED")]
    pub seed: Option<u64>,
    /// png or jpeg.
    #[arg(long = "format", env = "KONTEXT_OUTPUT_FORMAT")]
    pub output_format: Option<String>,
    /// high, standard or bulk.
    #[arg(long, env = "KONTEXT_PRIORITY")]
    pub priority: Option<String>,
    /// Step caching: none (default), regular or high (fewer transformer evaluations).
    #[arg(long, env = "KONTEXT_ACCELERATION")]
    pub acceleration: Option<String>,
    /// Makes a repeated submit return the original job.
    #[arg(long, env = "KONTEXT_IDEMPOTENCY_KEY")]
    pub idempotency_key: Option<String>,
    /// Where to write the image (default: <job id>.<format> in the current directory).
    #[arg(long, short = 'o', env = "KONTEXT_OUT")]
    pub out: Option<PathBuf>,
    /// Print the job id and return without waiting.
    #[arg(long, env = "KONTEXT_NO_WAIT")]
    pub no_wait: bool,
}

impl JobOptions {
    fn submit(
        &self,
        prompt: String,
        input_image: Option<String>,
        resize: Option<String>,
    ) -> JobRequest {
        JobRequest {
            prompt,
            input_image,
            width: self.width,
            height: self.height,
            aspect_ratio: self.aspect_ratio.clone(),
            resize,
            steps: self.steps,
            guidance: self.guidance,
            seed: self.seed,
            output_format: self.output_format.clone(),
            priority: self.priority.clone(),
            acceleration: self.acceleration.clone(),
            webhook_url: None,
            input_images: None,
            reference_positions: None,
            loras: None,
        }
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// What to generate.
    pub prompt: String,
    #[command(flatten)]
    pub job: JobOptions,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The image to edit: a file (uploaded first), an upload id, an object key or an http(s) URL.
    pub image: String,
    /// The edit instruction.
    pub prompt: String,
    /// How the input is sized: snap (Kontext's preferred resolutions) or keep (its own aspect).
    #[arg(long, env = "KONTEXT_RESIZE")]
    pub resize: Option<String>,
    /// More reference images (up to 3, repeat the flag), given like IMAGE: a multi-reference
    /// edit ("put the hat from the second image on the cat").
    #[arg(long = "reference", env = "KONTEXT_REFERENCES", value_delimiter = ',')]
    pub references: Vec<String>,
    /// How several references are placed: offset (default) or index.
    #[arg(long, env = "KONTEXT_REFERENCE_POSITIONS")]
    pub reference_positions: Option<String>,
    #[command(flatten)]
    pub job: JobOptions,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Job id.
    pub id: String,
    /// Print the whole job as JSON.
    #[arg(long, env = "KONTEXT_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Job id.
    pub id: String,
    /// Also download the image here once the job succeeded.
    #[arg(long, short = 'o', env = "KONTEXT_OUT")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Job id.
    pub id: String,
    /// Where to write the image (default: <job id>.<format>).
    #[arg(long, short = 'o', env = "KONTEXT_OUT")]
    pub out: Option<PathBuf>,
}

fn status_word(job: &JobView) -> &'static str {
    job.status.as_str()
}

/// One line about a job.
pub fn describe(job: &JobView) -> String {
    let mut line = format!(
        "job {} {}: {} {}x{}, {} steps, seed {}",
        job.id,
        status_word(job),
        match job.kind {
            kontext_proto::JobKind::Generate => "generate",
            kontext_proto::JobKind::Edit => "edit",
        },
        job.width,
        job.height,
        job.steps,
        job.seed
    );
    if job.status == JobStatus::Running {
        line.push_str(&format!(", {:.0}% done", job.progress * 100.0));
    }
    if let Some(e) = &job.error {
        line.push_str(&format!(" — {}: {}", e.kind, e.message));
    }
    line
}

/// Follows job `id` with a progress bar labelled `label` until it ends; downloads the image to
/// `out` (or `<id>.<format>`) when it succeeded and `download` is set. Returns the final job and
/// where the image went.
pub async fn follow_and_fetch(
    client: &Client,
    id: &str,
    label: &str,
    out: Option<&Path>,
    download: bool,
) -> anyhow::Result<(JobView, Option<PathBuf>)> {
    let mut bar = JobBar::new(label);
    let followed = client.follow(id, |p| bar.update(p)).await;
    let job = match followed {
        Ok(job) => job,
        Err(e) => {
            bar.finish("error");
            return Err(e).context("following the job");
        }
    };
    bar.finish(status_word(&job));
    if job.status != JobStatus::Succeeded || !download {
        return Ok((job, None));
    }
    let path = match out {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(format!("{}.{}", job.id, job.output_format)),
    };
    let bytes = client.result(id).await.context("downloading the result")?;
    write_file(&path, &bytes)?;
    Ok((job, Some(path)))
}

pub fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn report(job: &JobView, path: Option<&Path>, started: Instant) -> ExitCode {
    let secs = started.elapsed().as_secs_f64();
    match (job.status, path) {
        (JobStatus::Succeeded, Some(p)) => {
            println!("{} in {secs:.1}s → {}", describe(job), p.display());
            ExitCode::SUCCESS
        }
        (JobStatus::Succeeded, None) => {
            println!("{} in {secs:.1}s", describe(job));
            ExitCode::SUCCESS
        }
        _ => {
            println!("{}", describe(job));
            ExitCode::FAILURE
        }
    }
}

async fn submit_and_follow(
    client: &Client,
    label: &str,
    submit: JobRequest,
    opts: &JobOptions,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let accepted = client
        .submit(&submit, opts.idempotency_key.as_deref())
        .await
        .context("submitting the job")?;
    if opts.no_wait {
        println!("{}", accepted.id);
        return Ok(ExitCode::SUCCESS);
    }
    let (job, path) =
        follow_and_fetch(client, &accepted.id, label, opts.out.as_deref(), true).await?;
    Ok(report(&job, path.as_deref(), started))
}

pub async fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let submit = args.job.submit(args.prompt.clone(), None, None);
    submit_and_follow(&client, "generate", submit, &args.job).await
}

/// Content type of an image file, from its first bytes.
fn sniff_content_type(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        "image/jpeg"
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "image/webp"
    } else {
        "application/octet-stream"
    }
}

pub async fn edit(args: EditArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let input = image_value(&client, &args.image).await?;
    let mut submit = args
        .job
        .submit(args.prompt.clone(), Some(input), args.resize.clone());
    if !args.references.is_empty() {
        let mut all = vec![submit.input_image.take().unwrap_or_default()];
        for reference in &args.references {
            all.push(
                image_value(&client, reference)
                    .await
                    .context("--reference")?,
            );
        }
        submit.input_images = Some(all);
    }
    submit.reference_positions = args.reference_positions.clone();
    submit_and_follow(&client, "edit", submit, &args.job).await
}

/// An image argument as the API takes it: a file is uploaded first (its upload id); an upload
/// id, object key or URL is passed on for the server to resolve.
async fn image_value(client: &Client, image: &str) -> anyhow::Result<String> {
    let path = Path::new(image);
    if path.is_file() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let content_type = sniff_content_type(&bytes);
        let upload = client
            .upload(bytes, content_type)
            .await
            .with_context(|| format!("uploading {}", path.display()))?;
        Ok(upload.id)
    } else if image.contains('/') || image.contains('.') {
        Ok(image.to_owned())
    } else {
        bail!("{image}: no such file (nor an upload id, object key or URL)");
    }
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let job = args.server.client()?.job(&args.id).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    } else {
        println!("{}", describe(&job));
        if let Some(r) = &job.result {
            println!(
                "result {} ({}x{} {}): {}",
                r.key, r.width, r.height, r.format, r.url
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn wait(args: WaitArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let client = args.server.client()?;
    let download = args.out.is_some();
    let (job, path) =
        follow_and_fetch(&client, &args.id, "job", args.out.as_deref(), download).await?;
    Ok(report(&job, path.as_deref(), started))
}

pub async fn fetch(args: FetchArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let job = client.job(&args.id).await?;
    if job.status != JobStatus::Succeeded {
        bail!("{}: there is no image to fetch", describe(&job));
    }
    let path = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("{}.{}", job.id, job.output_format)));
    let bytes = client.result(&args.id).await?;
    write_file(&path, &bytes)?;
    println!("{} → {}", describe(&job), path.display());
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let reply = client.cancel(&args.id).await?;
    println!("job {}: {:?}", reply.id, reply.status);
    let job = client.job(&args.id).await?;
    if !is_terminal(&job) {
        println!("{}", describe(&job));
    }
    Ok(ExitCode::SUCCESS)
}
