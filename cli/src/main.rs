//! `kontext`: parse the command line, set up logging, dispatch to `commands`.

mod commands;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kontext",
    version,
    about = "Kontext Fleet: FLUX.1 Kontext generation and editing — run the service (`up`, `demo`) or talk to one"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a coordinator and one worker in this process (embedded defaults: in-process queue,
    /// local directory storage, the tiny model on CPU).
    Up(Box<commands::up::UpArgs>),
    /// The quickstart: start `kontext up` on a free loopback port, generate an image, edit it,
    /// write both PNGs, stop.
    Demo(commands::demo::DemoArgs),
    /// Submit a text-to-image job, follow it, fetch the image.
    Generate(commands::jobs::GenerateArgs),
    /// Submit an edit of an image (a file is uploaded first), follow it, fetch the result.
    Edit(commands::jobs::EditArgs),
    /// Show a job.
    Status(commands::jobs::StatusArgs),
    /// Follow a job until it ends, with a progress bar.
    Wait(commands::jobs::WaitArgs),
    /// Download a finished job's image.
    Fetch(commands::jobs::FetchArgs),
    /// Cancel a job.
    Cancel(commands::jobs::StatusArgs),
    /// Run a storyboard (YAML: an input image or a first prompt, then turns) as one chain; write
    /// the frames, a contact sheet and a JSON manifest.
    Storyboard(commands::storyboard::StoryboardArgs),
    /// PSNR and SSIM between consecutive frames of a chain, and against its first frame.
    Drift(commands::storyboard::DriftArgs),
    /// Judge the shapes model on held-out cases of its world: accuracy and PSNR per task,
    /// contact sheets (input | output | correct).
    Eval(commands::eval::EvalArgs),
    /// Step caching side by side on the shapes model: wall time, full evaluations, judge
    /// accuracy and PSNR against `acceleration: none`, per level.
    Speed(commands::speed::SpeedArgs),
    /// Engine time (GPU-seconds), images and steps per tenant per day (admin key).
    Usage(commands::operators::UsageArgs),
    /// The live workers: device, model, counts, what each runs now (admin key).
    Workers(commands::operators::WorkersArgs),
    /// Admin actions, newest first: when, who (the admin key's digest prefix), what (admin key).
    Audit(commands::operators::AuditArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let logs = match &cli.command {
        Command::Up(a) => a.serve.logs.clone(),
        _ => kontext_telemetry::LogArgs::default(),
    };
    let default_filter = match cli.command {
        Command::Up(_) => "info",
        // Client commands and the demo print their own lines; logs only when asked (RUST_LOG).
        _ => "warn",
    };
    let service = kontext_telemetry::Service {
        name: "kontext",
        instance: None,
    };
    let telemetry = match kontext_telemetry::init(
        &service,
        &logs,
        default_filter,
        kontext_telemetry::LogStream::Stderr,
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => commands::up::run(*args).await,
            Command::Demo(args) => commands::demo::run(args).await,
            Command::Generate(args) => commands::jobs::generate(args).await,
            Command::Edit(args) => commands::jobs::edit(args).await,
            Command::Status(args) => commands::jobs::status(args).await,
            Command::Usage(args) => commands::operators::usage(args).await,
            Command::Workers(args) => commands::operators::workers(args).await,
            Command::Audit(args) => commands::operators::audit(args).await,
            Command::Wait(args) => commands::jobs::wait(args).await,
            Command::Fetch(args) => commands::jobs::fetch(args).await,
            Command::Cancel(args) => commands::jobs::cancel(args).await,
            Command::Storyboard(args) => commands::storyboard::storyboard(args).await,
            Command::Drift(args) => commands::storyboard::drift_command(args).await,
            Command::Eval(args) => commands::eval::run(args).await,
            Command::Speed(args) => commands::speed::run(args).await,
        }
    });
    // Outside the runtime: shutdown blocks until the last spans are sent.
    telemetry.shutdown();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
