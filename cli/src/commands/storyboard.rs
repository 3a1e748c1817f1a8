//! `kontext storyboard FILE.yaml`: run a storyboard as one chain and write its frames, a contact
//! sheet and a manifest; `kontext drift CHAIN_ID`: PSNR and SSIM between a chain's frames.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use kontext::drift::{drift, reference_drift};
use kontext::progress::JobBar;
use kontext::storyboard::{RunEvent, RunOptions, Storyboard, run};
use kontext_proto::{ChainStatus, JobStatus, TurnState};

use super::jobs::ServerArgs;

#[derive(Debug, Args)]
pub struct StoryboardArgs {
    /// The storyboard (YAML): `input:` an image file or `prompt:` a first prompt, then `turns:`.
    pub file: PathBuf,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Output directory (default: storyboard-<chain id> beside the current directory).
    #[arg(long, short = 'o', env = "KONTEXT_STORYBOARD_OUT")]
    pub out: Option<PathBuf>,
    /// Columns of the contact sheet.
    #[arg(long, env = "KONTEXT_CONTACT_COLUMNS", default_value_t = 5)]
    pub columns: usize,
    /// Largest side of a contact-sheet cell, in pixels (frames are never scaled up).
    #[arg(long, env = "KONTEXT_CONTACT_CELL", default_value_t = 256)]
    pub cell: u32,
    /// `image` or `latent`: overrides the file's `carry` (to compare the two on one storyboard).
    #[arg(long, env = "KONTEXT_STORYBOARD_CARRY")]
    pub carry: Option<String>,
}

pub async fn storyboard(args: StoryboardArgs) -> anyhow::Result<ExitCode> {
    let mut board = Storyboard::load(&args.file)?;
    if let Some(carry) = &args.carry {
        board.carry = Some(carry.clone());
    }
    let client = args.server.client()?;
    let base = args
        .file
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = args
            .file
            .file_stem()
            .map_or("storyboard".into(), |s| s.to_string_lossy());
        PathBuf::from(format!("{stem}-frames"))
    });
    let opts = RunOptions {
        out_dir: out.clone(),
        columns: args.columns,
        cell: args.cell,
    };
    let mut total = 0;
    let mut bar: Option<JobBar> = None;
    let manifest = run(&client, &board, &base, &opts, |event| match event {
        RunEvent::Created { chain_id, turns } => {
            total = turns;
            eprintln!("chain {chain_id}: {turns} turns");
        }
        RunEvent::TurnStarted { turn, prompt } => {
            eprintln!("turn {turn}/{total}: {prompt}");
            bar = Some(JobBar::new(&format!("turn {turn}")));
        }
        RunEvent::Progress { progress, .. } => {
            if let Some(b) = bar.as_mut() {
                b.update(progress);
            }
        }
        RunEvent::TurnEnded { turn, state, file } => {
            let state = format!("{state:?}").to_lowercase();
            match bar.take() {
                Some(b) => b.finish(&state),
                None => eprintln!("turn {turn}/{total}: {state}"),
            }
            if let Some(f) = file {
                eprintln!("  → {}", f.display());
            }
        }
    })
    .await
    .with_context(|| format!("running {}", args.file.display()))?;
    for t in &manifest.turns {
        println!(
            "turn {:>2} {:<9} seed {:<17} queued {:>6} ms  run {:>6} ms  {}",
            t.turn,
            format!("{:?}", t.state).to_lowercase(),
            t.seed,
            t.queued_ms.map_or("-".into(), |v| v.to_string()),
            t.run_ms.map_or("-".into(), |v| v.to_string()),
            t.file.as_deref().unwrap_or("-"),
        );
    }
    println!(
        "chain {} {:?} in {} ms; frames, {} and manifest.json in {}",
        manifest.chain_id,
        manifest.status,
        manifest.wall_ms,
        manifest.contact_sheet,
        out.display()
    );
    Ok(if manifest.status == ChainStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(Debug, Args)]
pub struct DriftArgs {
    /// The chain to measure.
    pub chain_id: String,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print JSON lines instead of a table.
    #[arg(long, env = "KONTEXT_DRIFT_JSON")]
    pub json: bool,
    /// The storyboard the chain was run from, with `references:` (the exact frame of each turn):
    /// each frame is then measured against its reference, and against the previous frame outside
    /// the region the turn's instruction changes.
    #[arg(long, env = "KONTEXT_DRIFT_STORYBOARD")]
    pub storyboard: Option<PathBuf>,
}

fn db(v: f64) -> String {
    if v.is_infinite() {
        "inf".into()
    } else {
        format!("{v:.2}")
    }
}

pub async fn drift_command(args: DriftArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let chain = client.chain(&args.chain_id).await?;
    let mut turns = Vec::new();
    let mut frames = Vec::new();
    for t in chain
        .turns
        .iter()
        .filter(|t| t.state == TurnState::Job(JobStatus::Succeeded))
    {
        let bytes = client.result(&t.job_id).await?;
        let img = image::load_from_memory(&bytes)
            .with_context(|| format!("decoding the frame of turn {}", t.turn))?
            .to_rgb8();
        turns.push(t.turn);
        frames.push(img);
    }
    if let Some(path) = &args.storyboard {
        return reference_table(&args, path, &chain, &turns, &frames);
    }
    anyhow::ensure!(
        frames.len() >= 2,
        "chain {} has {} succeeded turn(s); drift needs two frames",
        chain.id,
        frames.len()
    );
    let d = drift(&frames)?;
    if !args.json {
        println!(
            "chain {} carry {}: PSNR (dB, RGB) and SSIM (luminance, 11x11 Gaussian window, sigma 1.5)",
            chain.id, chain.carry
        );
        println!(
            "{:>4}  {:>10} {:>10}  {:>10} {:>10}",
            "turn", "PSNR prev", "SSIM prev", "PSNR first", "SSIM first"
        );
    }
    for (turn, m) in turns.iter().skip(1).zip(&d) {
        if args.json {
            println!(
                "{}",
                serde_json::json!({"chain_id": chain.id, "carry": chain.carry, "turn": turn,
                    "psnr_prev": m.psnr_prev, "ssim_prev": m.ssim_prev,
                    "psnr_first": m.psnr_first, "ssim_first": m.ssim_first})
            );
        } else {
            println!(
                "{turn:>4}  {:>10} {:>10.4}  {:>10} {:>10.4}",
                db(m.psnr_prev),
                m.ssim_prev,
                db(m.psnr_first),
                m.ssim_first
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kontext drift --storyboard`: every frame against the storyboard's reference frames.
fn reference_table(
    args: &DriftArgs,
    path: &std::path::Path,
    chain: &kontext_coordinator::http::chain_views::ChainView,
    turns: &[u32],
    frames: &[image::RgbImage],
) -> anyhow::Result<ExitCode> {
    let board = Storyboard::load(path)?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let refs = board.reference_frames(path, base)?;
    anyhow::ensure!(
        turns.iter().zip(1u32..).all(|(&t, i)| t == i),
        "chain {} has failed or missing turns ({} of {} succeeded); reference drift needs turns 1..=N in order",
        chain.id,
        turns.len(),
        refs.frames.len()
    );
    let start = refs.input.as_ref().unwrap_or(&refs.frames[0]);
    let mut rows = reference_drift(start, &refs.frames, frames)?;
    if refs.input.is_none() {
        // A text-to-image first turn has no previous frame to preserve.
        if let Some(first) = rows.first_mut() {
            first.psnr_preserved = None;
        }
    }
    if !args.json {
        println!(
            "chain {} carry {}: PSNR (dB, RGB) against the reference frame, and against the previous frame outside the region the turn changes",
            chain.id, chain.carry
        );
        println!(
            "{:>4}  {:>13} {:>14} {:>8}",
            "turn", "PSNR ref", "PSNR preserved", "edited"
        );
    }
    for (turn, m) in turns.iter().zip(&rows) {
        if args.json {
            println!(
                "{}",
                serde_json::json!({"chain_id": chain.id, "carry": chain.carry, "turn": turn,
                    "psnr_reference": m.psnr_reference, "psnr_preserved": m.psnr_preserved,
                    "edited_share": m.edited_share})
            );
        } else {
            println!(
                "{turn:>4}  {:>13} {:>14} {:>7.1}%",
                db(m.psnr_reference),
                m.psnr_preserved.map_or_else(|| "-".into(), db),
                100.0 * m.edited_share
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
