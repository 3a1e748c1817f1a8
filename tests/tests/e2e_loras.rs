//! LoRAs per job end to end (docs/loras.md): real Redis, the S3 server, the coordinator and one
//! `e2e-worker` process running the tiny model. A LoRA file (the committed kohya parity file)
//! goes in through `POST /v1/loras`, a job and a two-turn chain apply it and record what was
//! applied, and every way to get it wrong is refused naming the field: at upload (not
//! safetensors, no LoRA tensors), at submit (bad path, unknown key, scale), and on the worker (a
//! file whose shapes do not fit the model fails its job as invalid input; the worker lives on).

mod e2e_support;

use std::time::Duration;

use e2e_support::{DEADLINE, Fleet, FleetOptions, KEY_ALPHA, http, json_of, png};
use kontext_proto::{ChainId, ChainStatus, JobId, JobQueue};
use serde_json::{Value, json};

async fn post_lora(fleet: &Fleet, bytes: Vec<u8>) -> (u16, Value) {
    let resp = http(KEY_ALPHA)
        .post(format!("{}/v1/loras", fleet.url))
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .expect("POST /v1/loras");
    json_of(resp).await
}

async fn post_job(fleet: &Fleet, body: &Value) -> (u16, Value) {
    let resp = http(KEY_ALPHA)
        .post(format!("{}/v1/jobs", fleet.url))
        .json(body)
        .send()
        .await
        .expect("POST /v1/jobs");
    json_of(resp).await
}

async fn finished_job(fleet: &Fleet, id: &str) -> Value {
    let queue = fleet.queue().await.expect("queue");
    let job_id: JobId = id.parse().expect("uuid");
    fleet
        .wait_record(&queue, job_id, "terminal", |j| j.status.is_terminal())
        .await
        .expect("terminal");
    let resp = http(KEY_ALPHA)
        .get(format!("{}/v1/jobs/{id}", fleet.url))
        .send()
        .await
        .expect("GET job");
    let (status, job) = json_of(resp).await;
    assert_eq!(status, 200, "{job}");
    job
}

async fn image(job: &Value) -> Vec<u8> {
    let url = job["result"]["url"].as_str().expect("result url");
    reqwest::get(url)
        .await
        .expect("GET result")
        .bytes()
        .await
        .expect("bytes")
        .to_vec()
}

/// A safetensors file by hand: `(name, shape)` of F32 zeros.
fn safetensors(tensors: &[(&str, [usize; 2])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, shape) in tensors {
        let bytes = shape[0] * shape[1] * 4;
        header.insert(
            (*name).into(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let header = serde_json::to_vec(&header).expect("header");
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.resize(out.len() + offset, 0);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_goes_from_upload_to_jobs_and_chain_turns() {
    let fleet = Fleet::start(FleetOptions {
        workers: 1,
        ..FleetOptions::default()
    })
    .expect("fleet");
    let kohya = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("parity/fixtures/lora/kohya.safetensors"),
    )
    .expect("the committed kohya LoRA");
    let (status, uploaded) = post_lora(&fleet, kohya).await;
    assert_eq!(status, 201, "{uploaded}");
    let lora_id = uploaded["id"].as_str().expect("id").to_owned();
    assert!(lora_id.ends_with(".safetensors"), "{uploaded}");

    // Refused at upload, naming the field.
    for bytes in [
        png(32, 32),
        safetensors(&[("double_blocks.0.img_attn.qkv.weight", [96, 32])]),
    ] {
        let (status, v) = post_lora(&fleet, bytes).await;
        assert_eq!(
            (status, v["error"]["field"].as_str()),
            (422, Some("lora")),
            "{v}"
        );
    }

    // One job with the LoRA, one without: same seed, different images; the result records it.
    let body = |loras: Value| {
        json!({"prompt": "make it red", "width": 64, "height": 64, "steps": 3, "seed": 11,
               "loras": loras})
    };
    let (status, with) = post_job(&fleet, &body(json!([{"path": lora_id, "scale": 0.8}]))).await;
    assert_eq!(status, 202, "{with}");
    let with = finished_job(&fleet, with["id"].as_str().expect("id")).await;
    assert_eq!(with["status"], "succeeded", "{with}\n{}", fleet.logs());
    let applied = &with["result"]["loras"][0];
    assert_eq!(applied["format"], "kohya", "{with}");
    assert_eq!(applied["scale"], 0.8, "{with}");
    assert_eq!(applied["layers"], 6, "{with}");
    assert_eq!(with["loras"][0]["key"], applied["key"], "{with}");
    let mut plain = body(Value::Null);
    plain.as_object_mut().expect("object").remove("loras");
    let (_, without) = post_job(&fleet, &plain).await;
    let without = finished_job(&fleet, without["id"].as_str().expect("id")).await;
    assert_eq!(without["status"], "succeeded", "{without}");
    assert!(without["result"].get("loras").is_none(), "{without}");
    assert_ne!(
        image(&with).await,
        image(&without).await,
        "the LoRA changes the image"
    );

    // Refused at submit.
    for (loras, field) in [
        (json!([{"path": "not-a-lora"}]), "loras[0].path"),
        (
            json!([{"path": lora_id}, {"path": format!("in/alpha/{}.safetensors", "0".repeat(64))}]),
            "loras[1].path",
        ),
        (json!([{"path": lora_id, "scale": 9}]), "loras[0].scale"),
        (
            json!([{"path": lora_id}, {"path": lora_id}, {"path": lora_id}, {"path": lora_id},
                {"path": lora_id}]),
            "loras",
        ),
    ] {
        let (status, v) = post_job(&fleet, &body(loras.clone())).await;
        assert_eq!(
            (status, v["error"]["field"].as_str()),
            (422, Some(field)),
            "{loras} -> {v}"
        );
    }

    // Passes the header check, does not fit the model: the job fails as invalid input.
    let (status, misfit) = post_lora(
        &fleet,
        safetensors(&[
            ("double_blocks.0.img_attn.proj.lora_A.weight", [2, 7]),
            ("double_blocks.0.img_attn.proj.lora_B.weight", [32, 2]),
        ]),
    )
    .await;
    assert_eq!(status, 201, "{misfit}");
    let (_, failed) = post_job(
        &fleet,
        &body(json!([{"path": lora_id}, {"path": misfit["id"]}])),
    )
    .await;
    let failed = finished_job(&fleet, failed["id"].as_str().expect("id")).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["kind"], "invalid_input", "{failed}");
    let message = failed["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("loras[1]") && message.contains("lora_A"),
        "{message}"
    );

    // A chain's LoRAs apply to every turn; the worker that failed above still runs them.
    let v = fleet
        .post_accepted(
            "/v1/chains",
            json!({"prompt": "a red circle", "turns": [{"prompt": "make it blue"}],
                   "width": 64, "height": 64, "steps": 3, "seed": 5,
                   "loras": [{"path": lora_id, "scale": -0.5}]}),
        )
        .await;
    let chain: ChainId = v["id"].as_str().expect("id").parse().expect("chain id");
    let queue = fleet.queue().await.expect("queue");
    let until = std::time::Instant::now() + DEADLINE;
    let c = loop {
        let c = queue.get_chain(chain).await.expect("get").expect("chain");
        if c.status != ChainStatus::Running {
            break c;
        }
        assert!(
            std::time::Instant::now() < until,
            "chain still running\n{}",
            fleet.logs()
        );
        let live = &c.turns[c.current as usize - 1];
        let _ = queue
            .events(live.job_id, None, Duration::from_millis(200))
            .await;
    };
    assert_eq!(c.status, ChainStatus::Succeeded, "{c:#?}\n{}", fleet.logs());
    for t in &c.turns {
        let job = t.job.as_ref().expect("job");
        assert_eq!(job.spec.loras.len(), 1, "turn {}", t.turn);
        let result = job.result.as_ref().expect("result");
        assert_eq!(result.loras.len(), 1, "turn {}", t.turn);
        assert_eq!(result.loras[0].scale, -0.5, "turn {}", t.turn);
    }
}

/// LoRA-aware routing with two workers (docs/queue-protocol.md §LoRA affinity): jobs of two LoRA
/// sets, one after another; whenever a worker's engine still holds a job's set (its last job
/// used it), the job must run there. Prints the hit ratio: the share of LoRA jobs that found
/// their set already merged on the worker that ran them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lora_jobs_run_on_the_worker_that_holds_their_set() {
    let fleet = Fleet::start(FleetOptions::default()).expect("fleet");
    let kohya = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("parity/fixtures/lora/kohya.safetensors"),
    )
    .expect("the committed kohya LoRA");
    let (status, uploaded) = post_lora(&fleet, kohya).await;
    assert_eq!(status, 201, "{uploaded}");
    let lora_id = uploaded["id"].as_str().expect("id").to_owned();
    let queue = fleet.queue().await.expect("queue");

    // Two sets: the same file at two scales. None = a job without LoRAs (clears a worker's set).
    let sequence = [
        Some(0.8),
        Some(0.8),
        Some(-0.8),
        Some(-0.8),
        Some(0.8),
        Some(-0.8),
        Some(0.8),
        None,
        Some(0.8),
        Some(-0.8),
        Some(-0.8),
        Some(0.8),
    ];
    // What each worker's engine holds now (the set of its last job), by worker id.
    let mut holds: std::collections::HashMap<String, Option<String>> = Default::default();
    let (mut hits, mut lora_jobs) = (0, 0);
    for (i, scale) in sequence.iter().enumerate() {
        let set = scale.map(|s| format!("{s}"));
        let mut body = json!({"prompt": "make it red", "width": 64, "height": 64, "steps": 2,
                              "seed": i});
        if let Some(s) = scale {
            body["loras"] = json!([{"path": lora_id, "scale": s}]);
        }
        let (status, v) = post_job(&fleet, &body).await;
        assert_eq!(status, 202, "{v}");
        let id: JobId = v["id"].as_str().expect("id").parse().expect("uuid");
        let job = fleet
            .wait_record(&queue, id, "terminal", |j| j.status.is_terminal())
            .await
            .expect("terminal");
        assert_eq!(
            job.status,
            kontext_proto::JobStatus::Succeeded,
            "{job:?}\n{}",
            fleet.logs()
        );
        let worker = job.worker.clone().expect("the worker that ran it");
        if set.is_some() {
            lora_jobs += 1;
            let holder = holds
                .iter()
                .find(|(_, held)| **held == set)
                .map(|(w, _)| w.clone());
            if let Some(holder) = holder {
                assert_eq!(
                    worker, holder,
                    "job {i} (scale {scale:?}) must run on {holder}, which holds its set"
                );
            }
            if holds.get(&worker) == Some(&set) {
                hits += 1;
            }
        }
        holds.insert(worker, set);
    }
    e2e_support::note(&format!(
        "LoRA routing: {hits} of {lora_jobs} LoRA jobs ran where their set was merged ({:.0}%)",
        100.0 * hits as f64 / lora_jobs as f64
    ));
    assert!(hits > 0, "some jobs must find their set held");
}
