//! `kontext-shapes`: the shapes world's files.
//!
//! - `dataset`: the training set for `scripts/train-shapes.sh` (`kontext_shapes::dataset`);
//! - `storyboard`: a storyboard's exact frames — the input scene of a caption and the reference
//!   frame after each instruction — as PNGs, for `kontext drift --storyboard`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kontext_shapes::grammar::{apply, parse_caption};
use kontext_shapes::render;

#[derive(Parser)]
#[command(
    name = "kontext-shapes",
    about = "The shapes world: training set and storyboard frames"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the training set (cases.jsonl, targets.u8, inputs.u8, meta.json).
    Dataset {
        #[arg(long, env = "KONTEXT_SHAPES_OUT")]
        out: PathBuf,
        #[arg(long, env = "KONTEXT_SHAPES_SEED", default_value_t = 0)]
        seed: u64,
        #[arg(long, env = "KONTEXT_SHAPES_COUNT", default_value_t = 1000)]
        count: u64,
        /// Image side in pixels (a positive multiple of 16).
        #[arg(long, env = "KONTEXT_SHAPES_SIZE", default_value_t = 96)]
        size: u32,
    },
    /// Render a caption's scene as input.png, then reference-N.png after each instruction.
    Storyboard {
        #[arg(long, env = "KONTEXT_SHAPES_OUT")]
        out: PathBuf,
        /// The first frame, as a caption of the world's grammar.
        #[arg(long, env = "KONTEXT_SHAPES_CAPTION")]
        caption: String,
        /// One instruction per turn, in order.
        #[arg(long = "turn", env = "KONTEXT_SHAPES_TURNS", value_delimiter = ';')]
        turns: Vec<String>,
        #[arg(long, env = "KONTEXT_SHAPES_SIZE", default_value_t = 96)]
        size: u32,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kontext-shapes: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Dataset {
            out,
            seed,
            count,
            size,
        } => {
            if size == 0 || size % 16 != 0 {
                return Err(format!(
                    "--size must be a positive multiple of 16, got {size}"
                ));
            }
            kontext_shapes::dataset::write_training_set(&out, seed, count, size)
                .map_err(|e| e.to_string())?;
            println!("wrote {count} cases ({size}x{size}) to {}", out.display());
        }
        Command::Storyboard {
            out,
            caption,
            turns,
            size,
        } => {
            std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            let mut scene = parse_caption(&caption).map_err(|e| format!("--caption: {e}"))?;
            let save = |name: String, scene: &kontext_shapes::Scene| {
                let path = out.join(name);
                render(scene, size, size)
                    .save(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))
            };
            save("input.png".into(), &scene)?;
            for (i, turn) in turns.iter().enumerate() {
                scene = apply(&scene, turn)
                    .map_err(|e| format!("--turn {}: {e}", i + 1))?
                    .0;
                save(format!("reference-{}.png", i + 1), &scene)?;
            }
            println!(
                "wrote input.png and {} reference frames to {}",
                turns.len(),
                out.display()
            );
        }
    }
    Ok(())
}
