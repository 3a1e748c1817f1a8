//! Storyboards (`kontext storyboard FILE.yaml`): a YAML file with an input image or a first
//! prompt and a list of turns becomes one chain on the coordinator; the run follows it turn by
//! turn and writes every frame, a contact sheet and a JSON manifest (prompts, seeds, object keys,
//! timings).
//!
//! ```yaml
//! prompt: a red fox in a snowy forest   # or: input: photo.png (relative to this file)
//! seed: 42                              # chain seed; turn seeds derive from it
//! carry: latent                         # image (default) | latent
//! on_failure: stop                      # stop (default) | continue
//! width: 256                            # text-to-image size (optional)
//! height: 256
//! steps: 8
//! turns:
//!   - the fox looks up
//!   - prompt: night falls
//!     seed: 7
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kontext_coordinator::http::chain_views::ChainView;
use kontext_coordinator::http::views::JobView;
use kontext_proto::validate_chain::{ChainRequest, TurnRequest};
use kontext_proto::{ChainStatus, JobStatus, TurnState};
use serde::{Deserialize, Serialize};

use crate::client::{Client, ClientError, Progress};
use crate::contact_sheet::contact_sheet;

/// How often the chain is polled while a turn waits for the one before it.
const POLL: Duration = Duration::from_millis(200);

/// One turn in the file: a bare prompt, or a prompt with its own settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TurnEntry {
    Prompt(String),
    Full(TurnFields),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TurnFields {
    pub prompt: String,
    pub seed: Option<u64>,
    pub guidance: Option<f32>,
    pub steps: Option<u32>,
}

impl From<&TurnEntry> for TurnRequest {
    fn from(t: &TurnEntry) -> Self {
        match t {
            TurnEntry::Prompt(p) => Self {
                prompt: p.clone(),
                ..Self::default()
            },
            TurnEntry::Full(f) => Self {
                prompt: f.prompt.clone(),
                seed: f.seed,
                guidance: f.guidance,
                steps: f.steps,
            },
        }
    }
}

/// A storyboard file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Storyboard {
    /// Image file turn 1 edits, relative to the storyboard file.
    pub input: Option<PathBuf>,
    /// Text-to-image first turn (without `input`).
    pub prompt: Option<String>,
    pub turns: Vec<TurnEntry>,
    pub carry: Option<String>,
    pub on_failure: Option<String>,
    pub seed: Option<u64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub aspect_ratio: Option<String>,
    pub resize: Option<String>,
    pub steps: Option<u32>,
    pub guidance: Option<f32>,
    pub priority: Option<String>,
    /// Step caching of every turn: `none`, `regular` or `high`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceleration: Option<String>,
    /// The exact frame each turn should produce, relative to this file (one per turn, the
    /// text-to-image turn included): `kontext drift --storyboard` compares against them.
    pub references: Option<Vec<PathBuf>>,
}

/// A storyboard's exact frames, for `kontext drift --storyboard`.
#[derive(Debug, Clone)]
pub struct ReferenceFrames {
    /// The input image; `None` when the chain starts from text.
    pub input: Option<image::RgbImage>,
    /// One per chain turn.
    pub frames: Vec<image::RgbImage>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoryboardError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a storyboard: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: input: {message}")]
    Input { path: PathBuf, message: String },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{what}: {source}")]
    Write {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("frame of turn {turn}: {message}")]
    Frame { turn: u32, message: String },
}

impl Storyboard {
    /// Parses a storyboard; errors name the line and column.
    pub fn parse(text: &str, path: &Path) -> Result<Self, StoryboardError> {
        let board: Self = serde_yaml_ng::from_str(text).map_err(|e| StoryboardError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if board.turns.is_empty() {
            return Err(StoryboardError::Parse {
                path: path.to_owned(),
                message: "turns: at least one turn is needed".into(),
            });
        }
        Ok(board)
    }

    pub fn load(path: &Path) -> Result<Self, StoryboardError> {
        let text = std::fs::read_to_string(path).map_err(|source| StoryboardError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Chain turns this storyboard creates: the text-to-image `prompt` is a turn of its own.
    pub fn turn_count(&self) -> usize {
        self.turns.len() + usize::from(self.prompt.is_some())
    }

    /// Loads the input image and the reference frames (paths relative to `base_dir`).
    pub fn reference_frames(
        &self,
        path: &Path,
        base_dir: &Path,
    ) -> Result<ReferenceFrames, StoryboardError> {
        let Some(refs) = &self.references else {
            return Err(StoryboardError::Parse {
                path: path.to_owned(),
                message: "references: the storyboard gives no reference frames".into(),
            });
        };
        if refs.len() != self.turn_count() {
            return Err(StoryboardError::Parse {
                path: path.to_owned(),
                message: format!(
                    "references: {} frames for {} turns (one per turn, the text-to-image turn included)",
                    refs.len(),
                    self.turn_count()
                ),
            });
        }
        let load = |rel: &Path, turn: u32| {
            let file = base_dir.join(rel);
            let bytes = std::fs::read(&file).map_err(|source| StoryboardError::Read {
                path: file.clone(),
                source,
            })?;
            decode(&bytes, turn)
        };
        let input = self.input.as_deref().map(|p| load(p, 0)).transpose()?;
        let frames = refs
            .iter()
            .zip(1u32..)
            .map(|(p, turn)| load(p, turn))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ReferenceFrames { input, frames })
    }

    /// The chain request, with `input_image` the id of the uploaded input (if any).
    pub fn request(&self, input_image: Option<String>) -> ChainRequest {
        ChainRequest {
            input_image,
            prompt: self.prompt.clone(),
            turns: self.turns.iter().map(Into::into).collect(),
            carry: self.carry.clone(),
            on_failure: self.on_failure.clone(),
            seed: self.seed,
            width: self.width,
            height: self.height,
            aspect_ratio: self.aspect_ratio.clone(),
            resize: self.resize.clone(),
            steps: self.steps,
            guidance: self.guidance,
            priority: self.priority.clone(),
            webhook_url: None,
            acceleration: self.acceleration.clone(),
            loras: None,
        }
    }
}

/// One turn in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TurnRecord {
    pub turn: u32,
    pub prompt: String,
    pub seed: u64,
    pub steps: u32,
    pub guidance: f32,
    pub state: TurnState,
    pub job_id: String,
    pub input_key: Option<String>,
    pub input_latent_key: Option<String>,
    pub result_key: Option<String>,
    pub result_latent_key: Option<String>,
    /// The frame, relative to the output directory.
    pub file: Option<String>,
    pub attempts: u32,
    /// From the turn's creation to its start.
    pub queued_ms: Option<u64>,
    /// From its start to its end (engine, upload and commit).
    pub run_ms: Option<u64>,
    pub error: Option<String>,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub chain_id: String,
    pub coordinator: String,
    pub status: ChainStatus,
    pub carry: String,
    pub on_failure: String,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub input_file: Option<String>,
    pub input_key: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
    /// Wall time of the whole run, submit to last frame written.
    pub wall_ms: u64,
    pub contact_sheet: String,
    pub turns: Vec<TurnRecord>,
}

/// What a run reports as it goes (for progress bars).
#[derive(Debug)]
pub enum RunEvent<'a> {
    Created {
        chain_id: &'a str,
        turns: usize,
    },
    /// Turn `turn` exists and is being followed.
    TurnStarted {
        turn: u32,
        prompt: &'a str,
    },
    Progress {
        turn: u32,
        progress: &'a Progress,
    },
    TurnEnded {
        turn: u32,
        state: TurnState,
        file: Option<&'a Path>,
    },
}

/// Where and how a run writes its outputs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub out_dir: PathBuf,
    pub columns: usize,
    pub cell: u32,
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), StoryboardError> {
    std::fs::write(path, bytes).map_err(|source| StoryboardError::Write {
        what: path.display().to_string(),
        source,
    })
}

/// `2026-11-26T13:00:00.123Z` → ms since the epoch (the coordinator's own format).
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 24 || b[10] != b'T' || b[23] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    // Howard Hinnant's days_from_civil, for dates after 1970.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms)
}

fn span(from: Option<&str>, to: Option<&str>) -> Option<u64> {
    let (a, b) = (parse_rfc3339_ms(from?)?, parse_rfc3339_ms(to?)?);
    b.checked_sub(a)
}

fn content_type(path: &Path) -> Result<&'static str, StoryboardError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("png") => Ok("image/png"),
        Some("jpg" | "jpeg") => Ok("image/jpeg"),
        Some("webp") => Ok("image/webp"),
        _ => Err(StoryboardError::Input {
            path: path.to_owned(),
            message: "must be a .png, .jpg/.jpeg or .webp file".into(),
        }),
    }
}

fn decode(bytes: &[u8], turn: u32) -> Result<image::RgbImage, StoryboardError> {
    image::load_from_memory(bytes)
        .map(|i| i.to_rgb8())
        .map_err(|e| StoryboardError::Frame {
            turn,
            message: e.to_string(),
        })
}

/// Waits until turn `turn` (1-based) has a job, or the chain ended without it.
async fn wait_for_turn(client: &Client, id: &str, turn: u32) -> Result<ChainView, ClientError> {
    loop {
        let chain = client.chain(id).await?;
        let state = chain.turns.get(turn as usize - 1).map(|t| t.state);
        if state != Some(TurnState::Pending) {
            return Ok(chain);
        }
        tokio::time::sleep(POLL).await;
    }
}

fn turn_record(
    view: &ChainView,
    turn: u32,
    job: Option<&JobView>,
    file: Option<String>,
) -> TurnRecord {
    let t = &view.turns[turn as usize - 1];
    let job = job.or(t.job.as_ref());
    TurnRecord {
        turn,
        prompt: t.prompt.clone(),
        seed: t.seed,
        steps: t.steps,
        guidance: t.guidance,
        state: t.state,
        job_id: t.job_id.clone(),
        input_key: t.input_key.clone(),
        input_latent_key: t.input_latent_key.clone(),
        result_key: t.result_key.clone(),
        result_latent_key: t.result_latent_key.clone(),
        file,
        attempts: job.map_or(0, |j| j.attempts),
        queued_ms: job.and_then(|j| span(Some(&j.created_at), j.started_at.as_deref())),
        run_ms: job.and_then(|j| span(j.started_at.as_deref(), j.finished_at.as_deref())),
        error: job
            .and_then(|j| j.error.as_ref())
            .map(|e| format!("{}: {}", e.kind, e.message)),
    }
}

/// Runs `board` (its paths relative to `base_dir`) on the coordinator behind `client`.
pub async fn run(
    client: &Client,
    board: &Storyboard,
    base_dir: &Path,
    opts: &RunOptions,
    mut on_event: impl FnMut(RunEvent<'_>),
) -> Result<Manifest, StoryboardError> {
    let started = Instant::now();
    std::fs::create_dir_all(&opts.out_dir).map_err(|source| StoryboardError::Write {
        what: opts.out_dir.display().to_string(),
        source,
    })?;
    let mut frames = Vec::new();
    let (input_id, input_file) = match &board.input {
        Some(rel) => {
            let path = base_dir.join(rel);
            let bytes = std::fs::read(&path).map_err(|source| StoryboardError::Read {
                path: path.clone(),
                source,
            })?;
            let ct = content_type(&path)?;
            frames.push(decode(&bytes, 0)?);
            let name = format!("frame-00-input.{}", ct.trim_start_matches("image/"));
            write(&opts.out_dir.join(&name), &bytes)?;
            let up = client.upload(bytes, ct).await?;
            (Some(up.id), Some(name))
        }
        None => (None, None),
    };
    let accepted = client.create_chain(&board.request(input_id)).await?;
    let id = accepted.id.clone();
    on_event(RunEvent::Created {
        chain_id: &id,
        turns: accepted.job_ids.len(),
    });
    let mut records = Vec::new();
    for (i, job_id) in accepted.job_ids.iter().enumerate() {
        let turn = i as u32 + 1;
        let view = wait_for_turn(client, &id, turn).await?;
        let t = &view.turns[i];
        if t.state == TurnState::Skipped {
            on_event(RunEvent::TurnEnded {
                turn,
                state: t.state,
                file: None,
            });
            records.push(turn_record(&view, turn, None, None));
            continue;
        }
        on_event(RunEvent::TurnStarted {
            turn,
            prompt: &t.prompt,
        });
        let job = client
            .follow(job_id, |p| {
                on_event(RunEvent::Progress { turn, progress: p })
            })
            .await?;
        let view = client.chain(&id).await?;
        let state = view.turns[i].state;
        let file = if state == TurnState::Job(JobStatus::Succeeded) {
            let bytes = client.result(job_id).await?;
            frames.push(decode(&bytes, turn)?);
            let name = format!("frame-{turn:02}.png");
            write(&opts.out_dir.join(&name), &bytes)?;
            Some(name)
        } else {
            None
        };
        let path = file.as_ref().map(|f| opts.out_dir.join(f));
        on_event(RunEvent::TurnEnded {
            turn,
            state,
            file: path.as_deref(),
        });
        records.push(turn_record(&view, turn, Some(&job), file));
    }
    let view = client.chain(&id).await?;
    let sheet_name = "contact-sheet.png".to_owned();
    let sheet = contact_sheet(&frames, opts.columns, opts.cell);
    sheet
        .save(opts.out_dir.join(&sheet_name))
        .map_err(|e| StoryboardError::Write {
            what: sheet_name.clone(),
            source: std::io::Error::other(e),
        })?;
    let manifest = Manifest {
        chain_id: id,
        coordinator: client.base_url().to_owned(),
        status: view.status,
        carry: view.carry.clone(),
        on_failure: view.on_failure.clone(),
        seed: view.seed,
        width: view.width,
        height: view.height,
        input_file,
        input_key: view.input_image.clone(),
        created_at: view.created_at.clone(),
        finished_at: view.finished_at.clone(),
        wall_ms: started.elapsed().as_millis() as u64,
        contact_sheet: sheet_name,
        turns: records,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| StoryboardError::Write {
        what: "manifest.json".into(),
        source: std::io::Error::other(e),
    })?;
    write(&opts.out_dir.join("manifest.json"), &json)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_short_and_long_turns() {
        let text = "prompt: a fox\nseed: 4\ncarry: latent\nturns:\n  - it snows\n  - prompt: night\n    seed: 7\n    steps: 3\n";
        let b = Storyboard::parse(text, Path::new("s.yaml")).expect("valid");
        assert_eq!(
            (b.prompt.as_deref(), b.seed, b.carry.as_deref()),
            (Some("a fox"), Some(4), Some("latent"))
        );
        let req = b.request(None);
        assert_eq!(req.turns.len(), 2);
        assert_eq!(
            (req.turns[0].prompt.as_str(), req.turns[0].seed),
            ("it snows", None)
        );
        assert_eq!(
            (
                req.turns[1].prompt.as_str(),
                req.turns[1].seed,
                req.turns[1].steps
            ),
            ("night", Some(7), Some(3))
        );
    }

    #[test]
    fn errors_name_the_problem_and_place() {
        let e =
            Storyboard::parse("prompt: x\nturns: []\n", Path::new("s.yaml")).expect_err("no turns");
        assert!(e.to_string().contains("at least one turn"), "{e}");
        let e = Storyboard::parse("prompt: x\nsteeps: 3\nturns: [a]\n", Path::new("s.yaml"))
            .expect_err("typo");
        let msg = e.to_string();
        assert!(msg.contains("steeps") && msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn timestamps_parse_back() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T00:00:00.000Z"),
            Some(951_782_400_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-26T13:00:00.123Z"),
            Some(1_795_698_000_123)
        );
        assert_eq!(parse_rfc3339_ms("2026-11-26 13:00:00"), None);
        assert_eq!(
            span(
                Some("2026-11-26T13:00:00.123Z"),
                Some("2026-11-26T13:00:01.000Z")
            ),
            Some(877)
        );
    }
}
