//! The trained `shapes` model end to end: real Redis, the S3 server, the coordinator and two
//! `e2e-worker` processes running `--model shapes` (models/shapes). Outputs are judged against
//! the exactly rendered correct image, so a model with random weights (or a pipeline that lost
//! the context image, the prompt or the carry) fails these tests:
//!
//! - a text-to-image job (the demo's caption): at least half the objects exactly right in their
//!   cells, nothing spurious, the right background;
//! - a recolour edit of an exact render (the demo's edit): the same, and the rest of the picture
//!   preserved (≥ 28 dB);
//! - a 4-turn chain (recolour, move, add, background change) with `carry: latent`, each turn
//!   editing the previous turn's output: the last frame within `CHAIN_MIN_PSNR` of the correct
//!   frame, with the right background.

mod e2e_support;

use std::time::Duration;

use e2e_support::{Fleet, FleetOptions, KEY_ALPHA, http};
use kontext_proto::model_profile::ModelProfile;
use kontext_proto::{ChainStatus, JobId, JobQueue, JobRecord, JobStatus};
use kontext_shapes::grammar::{apply, parse_caption};
use kontext_shapes::judge::{Verdict, judge};
use kontext_shapes::render::render;
use kontext_shapes::tasks::{Case, Task};
use kontext_shapes::world::{Position, Scene};
use kontext_storage::{BlobStore, ObjectKey};
use serde_json::{Value, json};

/// The demo's prompts (cli/src/commands/demo.rs).
const CAPTION: &str =
    "a red circle at the top left and a blue square at the bottom right on a white background";
const RECOLOUR: &str = "make the red circle green";
/// The chain's scene and turns (the first four of cli/storyboards/shapes.yaml).
const CHAIN_CAPTION: &str =
    "a red circle at the top left and a small blue square in the center on a white background";
const CHAIN_TURNS: [&str; 4] = [
    "make the red circle yellow",
    "move the blue square to the bottom right",
    "add a green triangle at the top right",
    "change the background to black",
];
/// The committed model (docs/models/shapes.md) is undertrained: over seeds 0..16 it gets this
/// caption fully right once and half right 12 times, this recolour fully right 5 times; the
/// test therefore asks for half the objects (`assert_accepted`), which a model with random
/// weights or a pipeline that lost the prompt or the context never reaches.
const T2I_SEED: u64 = 42;
const RECOLOUR_SEED: u64 = 0;
/// Least PSNR of the chain's last frame (black background, three shapes) against the exact
/// frame: measured 15.2 dB with the committed weights, whose shapes are often wrong; a frame that
/// lost the background change or the picture scores below 11 dB.
const CHAIN_MIN_PSNR: f64 = 14.0;
/// Least PSNR outside an edit's cells against its input (the preservation target).
const MIN_PRESERVED_PSNR: f64 = 28.0;

const SIZE: u32 = 96;

fn models_shapes() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes")
}

fn start_fleet() -> Fleet {
    let profile = ModelProfile::read(&models_shapes())
        .expect("models/shapes/kontext_model.json")
        .expect("the shapes model has a profile");
    Fleet::start_with(
        FleetOptions {
            model: "shapes",
            min_step_ms: 0,
            ..FleetOptions::default()
        },
        |config| config.limits.job.adopt_model(&profile),
    )
    .expect("fleet")
}

fn png_of(img: &image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode");
    out.into_inner()
}

async fn upload(fleet: &Fleet, img: &image::RgbImage) -> String {
    let resp = http(KEY_ALPHA)
        .post(format!("{}/v1/uploads", fleet.url))
        .header("content-type", "image/png")
        .body(png_of(img))
        .send()
        .await
        .expect("POST /v1/uploads");
    let status = resp.status();
    let v: Value = resp.json().await.expect("JSON");
    assert_eq!(status, 201, "{v}");
    v["id"].as_str().expect("upload id").to_owned()
}

async fn image_of(fleet: &Fleet, key: &ObjectKey) -> image::RgbImage {
    let store = fleet.store().await.expect("store");
    let bytes = store.get(key).await.expect("result object").bytes;
    image::load_from_memory(&bytes).expect("PNG").to_rgb8()
}

async fn run_job(fleet: &Fleet, body: Value) -> (JobRecord, image::RgbImage) {
    let v = fleet.post_accepted("/v1/jobs", body).await;
    let id: JobId = v["id"].as_str().expect("id").parse().expect("job id");
    let queue = fleet.queue().await.expect("queue");
    let job = fleet
        .wait_record(&queue, id, "terminal", |j| j.status.is_terminal())
        .await
        .expect("job finishes");
    assert_eq!(
        job.status,
        JobStatus::Succeeded,
        "{job:#?}\n{}",
        fleet.logs()
    );
    let result = job.result.clone().expect("result");
    let img = image_of(fleet, &result.key).await;
    (job, img)
}

fn edit_case(scene: &Scene, prompt: &str) -> Case {
    let (target, task, edited_cells) = apply(scene, prompt).expect("an instruction of the world");
    Case {
        task,
        prompt: prompt.to_owned(),
        input: Some(scene.clone()),
        target,
        edited_cells,
        focus: None,
    }
}

/// What the committed (undertrained) model reliably reaches: the right background, nothing
/// spurious and at least half the objects exactly right (shape, colour, size, cell). The full
/// judge (every object right) is what `kontext eval` scores; the model card has its rates.
fn assert_accepted(v: &Verdict, what: &str) {
    assert!(
        2 * v.objects_correct >= v.objects_total && v.spurious == 0 && v.background_correct,
        "{what}: the judge refuses the output: {v:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_to_image_and_a_recolour_edit_are_judged_correct() {
    let fleet = start_fleet();
    let scene = parse_caption(CAPTION).expect("a caption of the world");
    let (job, output) = run_job(
        &fleet,
        json!({"prompt": CAPTION, "seed": T2I_SEED, "steps": 28}),
    )
    .await;
    assert_eq!(
        (job.spec.width, job.spec.height),
        (SIZE, SIZE),
        "the model's native size"
    );
    let t2i = Case {
        task: Task::TextToImage,
        prompt: CAPTION.to_owned(),
        input: None,
        target: scene.clone(),
        edited_cells: Position::all().collect(),
        focus: None,
    };
    let verdict = judge(&t2i, &output, None);
    e2e_support::note(&format!(
        "shapes text-to-image: {}/{} objects, PSNR {:.1} dB",
        verdict.objects_correct, verdict.objects_total, verdict.psnr_target
    ));
    assert_accepted(&verdict, "text-to-image");

    // The edit starts from the exact render, so the judge sees only the edit's own error.
    let input = render(&scene, SIZE, SIZE);
    let id = upload(&fleet, &input).await;
    let (_, edited) = run_job(
        &fleet,
        json!({"prompt": RECOLOUR, "input_image": id, "seed": RECOLOUR_SEED, "steps": 28}),
    )
    .await;
    let case = edit_case(&scene, RECOLOUR);
    let verdict = judge(&case, &edited, Some(&input));
    e2e_support::note(&format!(
        "shapes recolour: {}/{} objects, PSNR {:.1} dB, preserved {:.1} dB",
        verdict.objects_correct,
        verdict.objects_total,
        verdict.psnr_target,
        verdict.psnr_preserved.unwrap_or(f64::NAN)
    ));
    assert_accepted(&verdict, "recolour");
    let preserved = verdict
        .psnr_preserved
        .expect("an edit has a preserved region");
    assert!(preserved >= MIN_PRESERVED_PSNR, "{verdict:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_turn_chain_ends_near_the_correct_frame() {
    let fleet = start_fleet();
    let mut scene = parse_caption(CHAIN_CAPTION).expect("a caption of the world");
    let input = render(&scene, SIZE, SIZE);
    let id = upload(&fleet, &input).await;
    let v = fleet
        .post_accepted(
            "/v1/chains",
            json!({
                "input_image": id,
                "turns": CHAIN_TURNS.map(|p| json!({"prompt": p})),
                "carry": "latent",
                "seed": 1,
                "steps": 28,
            }),
        )
        .await;
    let chain_id = v["id"].as_str().expect("id").parse().expect("chain id");
    let queue = fleet.queue().await.expect("queue");
    let chain = loop {
        let c = queue
            .get_chain(chain_id)
            .await
            .expect("get_chain")
            .expect("chain");
        if c.status != ChainStatus::Running {
            break c;
        }
        let live = &c.turns[c.current as usize - 1];
        // Wake on the live turn's next event.
        let _ = queue
            .events(live.job_id, None, Duration::from_millis(500))
            .await;
        let job = queue.get(live.job_id).await.expect("get").expect("job");
        if job.status.is_terminal() && job.status != JobStatus::Succeeded {
            panic!("turn {} failed: {job:#?}\n{}", live.turn, fleet.logs());
        }
    };
    assert_eq!(
        chain.status,
        ChainStatus::Succeeded,
        "{chain:#?}\n{}",
        fleet.logs()
    );
    let mut previous = input;
    for (turn, prompt) in chain.turns.iter().zip(CHAIN_TURNS) {
        let job = turn.job.as_ref().expect("the turn's job");
        let output = image_of(&fleet, &job.result.as_ref().expect("result").key).await;
        let case = edit_case(&scene, prompt);
        let verdict = judge(&case, &output, Some(&previous));
        e2e_support::note(&format!(
            "shapes chain turn {} ({prompt}): {}/{} objects, PSNR {:.1} dB vs the correct frame",
            turn.turn, verdict.objects_correct, verdict.objects_total, verdict.psnr_target
        ));
        scene = case.target;
        previous = output;
        if turn.turn as usize == CHAIN_TURNS.len() {
            assert!(
                verdict.psnr_target >= CHAIN_MIN_PSNR,
                "last frame {:.1} dB from the correct frame (bound {CHAIN_MIN_PSNR}): {verdict:#?}",
                verdict.psnr_target
            );
            assert!(verdict.background_correct, "{verdict:#?}");
        }
    }
}
