//! `kontext eval`: the shapes world's judge run through the engine. Each case of the chosen split
//! (held-out by default) is generated or edited by the model in this process, read back by the
//! judge (`kontext_shapes::judge`) and compared with its exactly rendered answer. Prints one row
//! per task and writes a contact sheet per task (input | output | correct) plus every verdict as
//! JSON to `--out`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Args;
use image::RgbImage;
use kontext::contact_sheet::contact_sheet;
use kontext_engine::{Context, EngineRequest, References, StepControl};
use kontext_shapes::scorecard::Scorecard;
use kontext_shapes::{Split, Task, case, judge, render};
use kontext_worker::config::{ModelArgs, load_engine};
use serde_json::json;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SplitArg {
    /// Cases with held-out (shape, colour) pairs or (instruction, position) combinations.
    HeldOut,
    /// Fresh cases from the training distribution (a seed the training set did not use).
    Train,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Cases per task.
    #[arg(long, env = "KONTEXT_EVAL_CASES", default_value_t = 50)]
    pub cases: u64,
    /// Which cases.
    #[arg(long, env = "KONTEXT_EVAL_SPLIT", value_enum, default_value_t = SplitArg::HeldOut)]
    pub split: SplitArg,
    /// Tasks to run (comma-separated: text-to-image, recolour, background, move, add, remove,
    /// resize); all by default.
    #[arg(long, env = "KONTEXT_EVAL_TASKS", value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Denoising steps (default: the model's own, else 28).
    #[arg(long, env = "KONTEXT_EVAL_STEPS")]
    pub steps: Option<u32>,
    /// Seed of the case generator (the training set used seed 0 of the training split).
    #[arg(long, env = "KONTEXT_EVAL_SEED", default_value_t = 1000)]
    pub seed: u64,
    /// Contact sheets and verdicts go here.
    #[arg(
        long,
        short = 'o',
        env = "KONTEXT_EVAL_OUT",
        default_value = "kontext-eval"
    )]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
}

fn tasks(names: &[String]) -> anyhow::Result<Vec<Task>> {
    if names.is_empty() {
        return Ok(Task::ALL.to_vec());
    }
    names
        .iter()
        .map(|n| {
            Task::parse(n.trim()).with_context(|| {
                format!(
                    "--tasks: {n:?} is not one of {}",
                    Task::ALL.map(Task::name).join(", ")
                )
            })
        })
        .collect()
}

/// The engine request of one case at `size × size`.
pub fn request(c: &kontext_shapes::Case, size: u32, steps: u32, seed: u64) -> EngineRequest {
    EngineRequest {
        prompt: c.prompt.clone(),
        references: References::from_option(c.input.as_ref().map(|scene| Context::Image {
            image: render(scene, size, size),
            width: size,
            height: size,
            cache_key: None,
        })),
        width: size,
        height: size,
        steps,
        guidance: 2.5,
        seed,
        initial_latents: None,
        want_latent: false,
        caching: kontext_engine::flux::StepCaching::Off,
        loras: Vec::new(),
    }
}

pub async fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    tokio::task::spawn_blocking(move || run_blocking(&args))
        .await
        .context("the evaluation thread panicked")?
}

fn run_blocking(args: &EvalArgs) -> anyhow::Result<ExitCode> {
    let tasks = tasks(&args.tasks)?;
    if args.cases == 0 {
        bail!("--cases must be at least 1");
    }
    let split = match args.split {
        SplitArg::HeldOut => Split::HeldOut,
        SplitArg::Train => Split::Train,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating --out {}", args.out.display()))?;
    let started = Instant::now();
    let mut engine = load_engine(&args.model).context("loading the model")?;
    let info = engine.info();
    let Some((size, _)) = info.settings.native_resolution else {
        bail!(
            "--model {}: the model directory names no native resolution (kontext_model.json); \
             `kontext eval` judges the shapes world and needs the shapes model (--model shapes)",
            args.model.model
        );
    };
    let steps = args.steps.or(info.settings.default_steps).unwrap_or(28);
    eprintln!(
        "kontext eval: model {} ({size}x{size}, {steps} steps) on {}, {} cases per task, split {:?}",
        info.model, info.device, args.cases, split
    );
    let mut card = Scorecard::default();
    let mut verdicts = Vec::new();
    for task in tasks {
        let task_started = Instant::now();
        let mut frames: Vec<RgbImage> = Vec::new();
        for i in 0..args.cases {
            let c = case(args.seed, split, task, i);
            let req = request(&c, size, steps, args.seed.wrapping_add(i));
            let out = engine
                .generate(&req, &mut |_, _| StepControl::Continue)
                .with_context(|| format!("{} case {i}: {:?}", task.name(), c.prompt))?;
            let input = c.input.as_ref().map(|s| render(s, size, size));
            let v = judge(&c, &out.image, input.as_ref());
            card.add(&v);
            frames.push(input.unwrap_or_else(|| RgbImage::new(size, size)));
            frames.push(out.image);
            frames.push(render(&c.target, size, size));
            verdicts
                .push(json!({"task": task.name(), "index": i, "prompt": c.prompt, "verdict": v}));
        }
        let sheet = args.out.join(format!("{}.png", task.name()));
        contact_sheet(&frames, 3, size * 2)
            .save(&sheet)
            .with_context(|| format!("writing {}", sheet.display()))?;
        eprintln!(
            "  {}: {} cases in {:.1}s, sheet {}",
            task.name(),
            args.cases,
            task_started.elapsed().as_secs_f64(),
            sheet.display()
        );
    }
    let json_path = args.out.join("verdicts.json");
    let report = json!({
        "model": info.model, "steps": steps, "split": format!("{split:?}"), "seed": args.seed,
        "scorecard": card, "cases": verdicts,
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    println!("{}", card.table());
    println!(
        "{} cases in {:.1}s; details {}",
        card.tasks.values().map(|s| s.cases).sum::<usize>(),
        started.elapsed().as_secs_f64(),
        json_path.display()
    );
    Ok(ExitCode::SUCCESS)
}
