//! Fine-tune jobs over a real socket: a tiny job trains to done and its model serves
//! inpainting; progress streams; cancel; restart with a running and a queued job; limits.
//!
//! Jobs fine-tune the tests' tiny model (width 4) on 32×32 crops, so a step takes
//! milliseconds on any CPU.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    TINY_FINETUNE
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

/// The step stored inside a trainer checkpoint file, to check it against a job's status.
fn checkpoint_file_step(path: &std::path::Path) -> u64 {
    let tensors = tch::Tensor::read_safetensors(path).unwrap();
    let (_, state) = tensors
        .iter()
        .find(|(name, _)| name == "state_json")
        .expect("a checkpoint has its training state");
    let bytes = Vec::<u8>::try_from(state).unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["step"].as_u64().unwrap()
}

/// A job's record in the data folder's job database, read while no server runs; the row's
/// `state` is the one that counts.
async fn read_job(dir: &std::path::Path, id: &str) -> Value {
    use sqlx::Connection;
    let url = format!("sqlite:{}", dir.join("jobs.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let (status, state): (String, String) =
        sqlx::query_as("SELECT status, state FROM finetune_jobs WHERE job_id = ?")
            .bind(id)
            .fetch_one(&mut db)
            .await
            .unwrap();
    let mut v: Value = serde_json::from_str(&status).unwrap();
    v["state"] = state.into();
    v
}

/// Where the default (local) job store keeps job `id`'s files.
fn stored(dir: &std::path::Path, id: &str) -> std::path::PathBuf {
    dir.join(format!("images/finetune/jobs/{id}"))
}

/// Every file under `dir`, recursively; none when it does not exist.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn zip_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in files {
            z.start_file(*name, opts).unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}

impl TestServer {
    async fn submit(&self, form: reqwest::multipart::Form) -> reqwest::Response {
        self.client
            .post(format!("{}/api/v1/finetune", self.url))
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// Submits and expects 202; the job id.
    async fn submit_ok(&self, form: reqwest::multipart::Form) -> String {
        let r = self.submit(form).await;
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["state"], "queued");
        v["job_id"].as_str().unwrap().to_owned()
    }

    async fn job(&self, id: &str) -> Value {
        let r = self.get(&format!("/api/v1/finetune/{id}")).await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    async fn wait_job(&self, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let v = self.job(id).await;
            if ok(&v) {
                return v;
            }
            assert!(
                v["state"] != "failed" || what == "the failure",
                "{what}: the job failed: {v}"
            );
            assert!(Instant::now() < deadline, "waiting for {what}: {v}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn cancel(&self, id: &str) -> reqwest::Response {
        self.client
            .delete(format!("{}/api/v1/finetune/{id}", self.url))
            .send()
            .await
            .unwrap()
    }

    async fn models(&self) -> Vec<Value> {
        let v: Value = self.get("/api/v1/models").await.json().await.unwrap();
        v["models"].as_array().unwrap().clone()
    }

    /// The job's server-sent events, until the stream ends.
    async fn events(&self, id: &str) -> Vec<Value> {
        let mut r = self.get(&format!("/api/v1/finetune/{id}/events")).await;
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let mut text = String::new();
        let read = async {
            while let Some(chunk) = r.chunk().await.unwrap() {
                text.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        };
        tokio::time::timeout(Duration::from_secs(120), read)
            .await
            .expect("the event stream ends when the job does");
        text.split("\n\n")
            .filter(|block| block.contains("event: status"))
            .map(|block| {
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap();
                serde_json::from_str(data).unwrap()
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tiny_job_trains_to_done_and_its_model_serves_inpaint() {
    let s = start(&args(&["--batch-window-ms", "400", "--batch-max", "8"])).await;
    // Five photos and one file that is no image: skipped and counted.
    let mut files = photos(5);
    files.push(b"not an image at all".to_vec());
    let id = s
        .submit_ok(
            job_form(files)
                .text("user_id", "alice")
                .text("name", "blobs")
                .text("steps", "6"),
        )
        .await;

    let events = s.events(&id).await;
    let last = events.last().unwrap();
    assert_eq!(last["state"], "done", "{last}");
    assert!(
        events.iter().any(|e| e["state"] == "running"
            && e["step"].as_u64().unwrap() >= 1
            && e["total_steps"] == 6
            && e["loss"].as_f64().is_some()
            && e["eta_s"].as_f64().is_some()),
        "no progress event with step, loss and ETA: {events:?}"
    );

    let v = s.job(&id).await;
    assert_eq!(v["state"], "done");
    assert_eq!(
        (v["step"].as_u64(), v["total_steps"].as_u64()),
        (Some(6), Some(6))
    );
    assert!(v["loss"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["user_id"], "alice");
    assert_eq!(v["name"], "blobs");
    assert_eq!(v["base_model"], "default");
    let images = &v["images"];
    assert_eq!(images["received"], 6);
    assert_eq!(images["skipped"], 1);
    assert_eq!(
        (images["train"].as_u64(), images["holdout"].as_u64()),
        (Some(4), Some(1))
    );
    // Base against fine-tuned on the held-out photo.
    let val = &v["validation"];
    assert_eq!(val["holdout_images"], 1);
    for k in ["base", "finetuned"] {
        assert!(val[k]["mean_psnr"].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    assert_eq!(v["val_psnr"], val["finetuned"]["mean_psnr"]);

    // The job list, and the models list: the server's model plus this one.
    let list: Value = s
        .get("/api/v1/finetune?user_id=alice")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["jobs"][0]["job_id"], id.as_str());
    let models = s.models().await;
    assert_eq!(models[0]["id"], "default");
    let m = models.iter().find(|m| m["id"] == id.as_str()).unwrap();
    assert_eq!(m["base"], "default");
    assert_eq!(m["name"], "blobs");
    assert!(m["created_at"].as_str().is_some());
    assert_eq!(m["data"]["train"], 4);
    assert!(m["validation"]["finetuned"]["mean_psnr"].as_f64().is_some());

    // Inpainting with the new model: it is loaded, and the event names it.
    let (img, mask) = small_pair();
    let r = s
        .inpaint(
            form(img.clone(), mask.clone())
                .text("model", id.clone())
                .text("user_id", "alice"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let event_id = r.headers()["x-event-id"].to_str().unwrap().to_owned();
    assert_eq!(decode(&r.bytes().await.unwrap()).dimensions(), (64, 48));
    assert_eq!(
        s.state.models.loaded(),
        vec![id.parse::<uuid::Uuid>().unwrap()]
    );
    let history: Value = s
        .get("/api/v1/history?user_id=alice")
        .await
        .json()
        .await
        .unwrap();
    let events = history["events"].as_array().unwrap();
    let ev = events
        .iter()
        .find(|e| e["event_id"] == event_id.as_str())
        .unwrap();
    assert_eq!(ev["model_id"], id.as_str());
    // And the job's own events: queued, then done.
    let phases: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "finetune" && e["model_id"] == id.as_str())
        .map(|e| e["strategy"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["done", "queued"], "{history}");

    // /reconstruct takes `model` too; unknown ids are 404 JSON.
    let b64 = |b: &[u8]| {
        use base64::Engine;
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(b)
        )
    };
    let r = s
        .client
        .post(format!("{}/reconstruct", s.url))
        .json(&serde_json::json!({"original": b64(&img), "mask": b64(&mask), "model": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for bad in [uuid::Uuid::now_v7().to_string(), "../../etc/passwd".into()] {
        let r = s
            .inpaint(form(img.clone(), mask.clone()).text("model", bad.clone()))
            .await;
        assert_eq!(error_code(r).await, (404, "unknown_model".into()), "{bad}");
        let r = s
            .client
            .post(format!("{}/reconstruct", s.url))
            .json(&serde_json::json!({"original": b64(&img), "mask": b64(&mask), "model": bad}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(r).await, (404, "unknown_model".into()), "{bad}");
    }

    // Same shape, two models: a batch only ever holds one model's requests.
    let sizes = futures::future::join_all((0..4).map(|i| {
        let f = form(img.clone(), mask.clone()).text("strategy", "original");
        let f = if i % 2 == 0 {
            f.text("model", id.clone())
        } else {
            f
        };
        let s = &s;
        async move {
            let r = s.inpaint(f).await;
            assert_eq!(r.status(), 200);
            r.headers()["x-batch-size"].to_str().unwrap().to_owned()
        }
    }))
    .await;
    assert_eq!(sizes, ["2", "2", "2", "2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_keeps_jobs_and_models_resumes_the_running_job_and_cancel_keeps_its_checkpoint() {
    let a = start(&args(&[])).await;
    let dir = a.data_dir.clone();
    let done = a
        .submit_ok(
            job_form(photos(4))
                .text("user_id", "dora")
                .text("steps", "4"),
        )
        .await;
    a.wait_job(&done, "the first job", |v| v["state"] == "done")
        .await;
    // A long job, stopped with the server once it has a checkpoint; one queued behind it.
    let long = a
        .submit_ok(
            job_form(photos(4))
                .text("user_id", "dora")
                .text("steps", "1000000"),
        )
        .await;
    let queued = a
        .submit_ok(
            job_form(photos(3))
                .text("user_id", "erin")
                .text("base_model", done.clone())
                .text("steps", "3"),
        )
        .await;
    let before = a
        .wait_job(&long, "a checkpoint", |v| {
            v["checkpoint_step"].as_u64() >= Some(4)
        })
        .await;
    assert_eq!(a.job(&queued).await["state"], "queued");
    a.stop().await;
    // Kept after the stop: still running, with a stored checkpoint at the step it stopped at.
    let checkpoint = stored(dir.path(), &long).join("checkpoint.safetensors");
    let stopped = read_job(dir.path(), &long).await;
    assert_eq!(stopped["state"], "running", "{stopped}");
    let stopped_at = stopped["checkpoint_step"].as_u64().unwrap();
    assert!(stopped_at >= before["checkpoint_step"].as_u64().unwrap());
    assert_eq!(checkpoint_file_step(&checkpoint), stopped_at);
    assert_eq!(read_job(dir.path(), &queued).await["state"], "queued");

    let b = start_in(dir.clone(), &args(&[]), |_| {}).await;
    let list: Value = b.get("/api/v1/finetune").await.json().await.unwrap();
    let ids: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [done.as_str(), long.as_str(), queued.as_str()]);
    assert_eq!(b.job(&done).await["state"], "done");
    assert_eq!(
        b.job(&queued).await["state"],
        "queued",
        "a queued job stays queued"
    );
    let resumed = b
        .wait_job(&long, "the resume", |v| {
            v["resumed_from_step"].as_u64().is_some()
        })
        .await;
    assert_eq!(resumed["state"], "running");
    let from = resumed["resumed_from_step"].as_u64().unwrap();
    assert_eq!(
        from, stopped_at,
        "resumed from {from}, not from the last checkpoint"
    );
    // The interrupted job went first; the queued one is still waiting behind it.
    let waiting = b.job(&queued).await;
    assert_eq!(waiting["state"], "queued", "{waiting}");
    assert!(waiting["started_at"].is_null(), "{waiting}");
    // The finished job's model survived too.
    assert!(b.models().await.iter().any(|m| m["id"] == done.as_str()));
    let (img, mask) = small_pair();
    let r = b.inpaint(form(img, mask).text("model", done.clone())).await;
    assert_eq!(r.status(), 200);

    // Cancel the running job: it stops, and its last checkpoint stays.
    let r = b.cancel(&long).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["state"], "cancelled");
    let step = v["checkpoint_step"].as_u64().unwrap();
    assert!(step > from, "{v}");
    assert!(checkpoint.is_file(), "{} is gone", checkpoint.display());
    assert_eq!(
        checkpoint_file_step(&checkpoint),
        step,
        "the kept checkpoint is the one taken at the cancel"
    );
    assert_eq!(read_job(dir.path(), &long).await["state"], "cancelled");
    assert!(!b.models().await.iter().any(|m| m["id"] == long.as_str()));
    let r = b.cancel(&long).await;
    assert_eq!(error_code(r).await, (409, "job_finished".into()));

    // The queued job runs next, from the first job's model.
    b.wait_job(&queued, "the queued job", |v| v["state"] == "done")
        .await;
    let m = b.models().await;
    let chained = m.iter().find(|m| m["id"] == queued.as_str()).unwrap();
    assert_eq!(chained["base"], done.as_str());
    // A queued job cancels at once.
    let third = b
        .submit_ok(
            job_form(photos(3))
                .text("user_id", "erin")
                .text("steps", "1000000"),
        )
        .await;
    let fourth = b
        .submit_ok(
            job_form(photos(3))
                .text("user_id", "fred")
                .text("steps", "5"),
        )
        .await;
    let r = b.cancel(&fourth).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "cancelled");
    let r = b.cancel(&third).await;
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_limit_gets_a_4xx_json_and_the_server_keeps_serving() {
    let s = start(&args(&[
        "--finetune-max-images",
        "4",
        "--finetune-max-mb",
        "0.1",
        "--finetune-max-pixels",
        "5000",
        "--finetune-max-queued",
        "1",
    ]))
    .await;
    let code = |r| error_code(r);
    // Too many photos, as files or in a zip.
    assert_eq!(
        code(s.submit(job_form(photos(5))).await).await,
        (413, "too_many_images".into())
    );
    let entries: Vec<(String, Vec<u8>)> = photos(5)
        .into_iter()
        .enumerate()
        .map(|(i, p)| (format!("d/{i}.png"), p))
        .collect();
    let entries: Vec<(&str, Vec<u8>)> = entries
        .iter()
        .map(|(n, b)| (n.as_str(), b.clone()))
        .collect();
    let zipped = zip_of(&entries);
    assert_eq!(
        code(s.submit(job_form(vec![zipped])).await).await,
        (413, "too_many_images".into())
    );
    // Too many bytes: the body, or what a zip unpacks to (a zip bomb).
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    assert_eq!(
        code(s.submit(job_form(vec![noise])).await).await,
        (413, "body_too_large".into())
    );
    let bomb = zip_of(&[("zeros.png", vec![0u8; 2_000_000])]);
    assert!(bomb.len() < 50_000);
    assert_eq!(
        code(s.submit(job_form(vec![bomb])).await).await,
        (413, "too_much_data".into())
    );
    // Too many pixels in one photo (100×100 > 5000).
    let mut files = photos(2);
    files.push(png(picture(100, 100)));
    assert_eq!(
        code(s.submit(job_form(files)).await).await,
        (413, "image_too_large".into())
    );
    // Fewer than 2 usable photos.
    let files = vec![
        photo(0, 64, 48),
        b"junk".to_vec(),
        vec![0x89, b'P', b'N', b'G'],
    ];
    assert_eq!(
        code(s.submit(job_form(files)).await).await,
        (422, "not_enough_images".into())
    );
    // Bad fields.
    for steps in ["0", "1000001", "ten"] {
        let r = s.submit(job_form(photos(2)).text("steps", steps)).await;
        assert_eq!(code(r).await, (400, "bad_argument".into()), "{steps}");
    }
    for name in ["n".repeat(101), "bell\u{7}".into()] {
        let r = s.submit(job_form(photos(2)).text("name", name)).await;
        assert_eq!(code(r).await, (400, "bad_argument".into()));
    }
    let r = s
        .submit(job_form(photos(2)).text("base_model", "nope"))
        .await;
    assert_eq!(code(r).await, (404, "unknown_model".into()));
    let r = s
        .submit(job_form(vec![b"PK\x03\x04 but no zip".to_vec()]))
        .await;
    assert_eq!(code(r).await, (400, "bad_zip".into()));
    let r = s
        .submit(reqwest::multipart::Form::new().text("user_id", "x"))
        .await;
    assert_eq!(code(r).await, (400, "missing_field".into()));
    let r = s
        .client
        .post(format!("{}/api/v1/finetune", s.url))
        .body("{}")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (415, "unsupported_media_type".into()));
    // A zip of photos is accepted; a second job of the same user is refused while it runs.
    // Its entry names and the job name try to escape the data dir: neither names a file.
    let outside = std::env::temp_dir().join(format!("escape-{}.png", uuid::Uuid::now_v7()));
    let entries: Vec<(String, Vec<u8>)> = photos(3)
        .into_iter()
        .zip([
            "../../../../escape0.png".to_owned(),
            outside.display().to_string(),
            "sub\\..\\..\\escape2.png".to_owned(),
        ])
        .map(|(p, name)| (name, p))
        .collect();
    let entries: Vec<(&str, Vec<u8>)> = entries
        .iter()
        .map(|(n, b)| (n.as_str(), b.clone()))
        .collect();
    let id = s
        .submit_ok(
            job_form(vec![zip_of(&entries)])
                .text("user_id", "gus")
                .text("name", "../../escape-name")
                .text("steps", "1000000"),
        )
        .await;
    let v = s.job(&id).await;
    assert_eq!(v["images"]["received"], 3);
    assert_eq!(v["images"]["skipped"], 0);
    assert_eq!(v["name"], "../../escape-name");
    assert!(!outside.exists());
    let root = s.data_dir.path().parent().unwrap();
    let stray: Vec<_> = files_under(s.data_dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("escape"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    assert!(!root.join("escape0.png").exists());
    let job_dir = stored(s.data_dir.path(), &id);
    let mut photos_written: Vec<String> = ["train", "val"]
        .iter()
        .flat_map(|sub| files_under(&job_dir.join(sub)))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    photos_written.sort();
    assert_eq!(photos_written, ["0000.png", "0001.png", "0002.png"]);
    // The limit is per user: gus is at it, hank is not.
    let r = s.submit(job_form(photos(2)).text("user_id", "gus")).await;
    assert_eq!(code(r).await, (429, "too_many_jobs".into()));
    let hank = s
        .submit_ok(job_form(photos(2)).text("user_id", "hank"))
        .await;
    // Unknown jobs.
    for bad in [uuid::Uuid::now_v7().to_string(), "..%2F..%2Fetc".into()] {
        let r = s.get(&format!("/api/v1/finetune/{bad}")).await;
        assert_eq!(code(r).await, (404, "unknown_job".into()), "{bad}");
    }
    let r = s.cancel(&uuid::Uuid::now_v7().to_string()).await;
    assert_eq!(code(r).await, (404, "unknown_job".into()));
    let r = s
        .get(&format!("/api/v1/finetune/{}/events", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(code(r).await, (404, "unknown_job".into()));
    // A job that ends frees its place under the limit.
    assert_eq!(s.cancel(&id).await.status(), 200);
    let again = s
        .submit_ok(job_form(photos(2)).text("user_id", "gus"))
        .await;
    for job in [&hank, &again] {
        assert_eq!(s.cancel(job).await.status(), 200);
    }

    // Uploads are admitted before their bodies are read: stalled ones take every slot, the
    // next is refused at once, and the slots come back when those clients go away. A stalled
    // upload that arrives while a probe holds a slot is itself refused, so more are opened
    // until two hold on.
    let stall = || async {
        use tokio::io::AsyncWriteExt;
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let head = format!(
            "POST /api/v1/finetune HTTP/1.1\r\nhost: {}\r\n\
             content-type: multipart/form-data; boundary=b\r\ncontent-length: 50000\r\n\r\n\
             --b\r\ncontent-disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n\r\n",
            s.addr
        );
        c.write_all(head.as_bytes()).await.unwrap();
        c
    };
    // Admitted, a probe with a bad `steps` gets 400; refused, 503.
    let probe = || async { code(s.submit(job_form(photos(2)).text("steps", "0")).await).await };
    let mut stalled = vec![stall().await, stall().await];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = probe().await;
        if got.0 == 503 {
            assert_eq!(got.1, "overloaded");
            break;
        }
        assert_eq!(got, (400, "bad_argument".into()));
        assert!(
            Instant::now() < deadline,
            "stalled uploads never took the slots"
        );
        stalled.push(stall().await);
    }
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe().await != (400, "bad_argument".into()) {
        assert!(
            Instant::now() < deadline,
            "the stalled uploads' slots never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still serving.
    let (img, mask) = small_pair();
    assert_eq!(s.inpaint(form(img, mask)).await.status(), 200);
    assert_eq!(s.get("/healthz").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_tier_has_no_jobs_and_says_so() {
    let model_tier = start(&[]).await;
    let web = start(&["--remote-model", &model_tier.url]).await;
    let r = web.get("/api/v1/models").await;
    assert_eq!(error_code(r).await, (501, "finetune_unavailable".into()));
    let r = web.submit(job_form(photos(2))).await;
    assert_eq!(error_code(r).await, (501, "finetune_unavailable".into()));
    // The model id travels to the model tier, which knows no such model.
    let (img, mask) = small_pair();
    let r = web
        .inpaint(form(img, mask).text("model", uuid::Uuid::now_v7().to_string()))
        .await;
    assert_eq!(error_code(r).await, (404, "unknown_model".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_reports_its_error_and_a_failed_event() {
    // A VGG file that is not there: the trainer cannot start.
    let s = start(&args(&["--finetune-vgg", "/nonexistent/vgg19.safetensors"])).await;
    let id = s
        .submit_ok(
            job_form(photos(3))
                .text("user_id", "hal")
                .text("steps", "3"),
        )
        .await;
    let v = s
        .wait_job(&id, "the failure", |v| {
            v["state"] != "queued" && v["state"] != "running"
        })
        .await;
    assert_eq!(v["state"], "failed");
    assert!(v["error"].as_str().unwrap().contains("vgg19"), "{v}");
    assert!(!s.models().await.iter().any(|m| m["id"] == id.as_str()));
    // Recorded before the state changed, so it is there already.
    let history: Value = s
        .get("/api/v1/history?user_id=hal")
        .await
        .json()
        .await
        .unwrap();
    let failed = &history["events"][0];
    assert_eq!(failed["kind"], "finetune");
    assert_eq!(failed["strategy"], "failed");
    assert_eq!(failed["status"], "error");
    assert!(failed["error"].as_str().unwrap().contains("vgg19"));
}

/// A job as version 0.2 kept it: `finetune/jobs/<id>/job.json` beside its photos (and model).
fn legacy_job(data: &std::path::Path, user: &str, state: &str, steps: u64) -> String {
    let id = uuid::Uuid::now_v7();
    let dir = data.join(format!("finetune/jobs/{id}"));
    std::fs::create_dir_all(dir.join("train")).unwrap();
    std::fs::create_dir_all(dir.join("val")).unwrap();
    for (i, p) in photos(3).into_iter().enumerate() {
        std::fs::write(dir.join(format!("train/{i:04}.png")), p).unwrap();
    }
    let done = state == "done";
    if done {
        std::fs::copy(tiny_model(), dir.join("model.safetensors")).unwrap();
    }
    let status = serde_json::json!({
        "job_id": id, "state": state, "user_id": user, "name": "from 0.2",
        "base_model": "default", "created_at": "2026-12-01T10:00:00.000Z",
        "started_at": done.then_some("2026-12-01T10:00:01.000Z"),
        "finished_at": done.then_some("2026-12-01T10:00:09.000Z"),
        "step": if done { steps } else { 0 }, "total_steps": steps, "loss": null,
        "val_psnr": null, "eta_s": null,
        "images": {"received": 3, "skipped": 0, "train": 3, "holdout": 0, "bytes": 1},
        "validation": {"holdout_images": 0, "base": null, "finetuned": null},
        "checkpoint_step": null, "resumed_from_step": null, "error": null
    });
    std::fs::write(dir.join("job.json"), status.to_string()).unwrap();
    id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_an_earlier_version_kept_on_disk_are_imported_at_the_first_start() {
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let done = legacy_job(data.path(), "ida", "done", 4);
    let queued = legacy_job(data.path(), "ida", "queued", 3);
    // A folder whose submit never finished has no job.json: left alone.
    std::fs::create_dir_all(
        data.path()
            .join(format!("finetune/jobs/{}", uuid::Uuid::now_v7())),
    )
    .unwrap();

    let s = start_in(data.clone(), &args(&[]), |_| {}).await;
    let v = s.job(&done).await;
    assert_eq!(
        (v["state"].as_str(), v["name"].as_str()),
        (Some("done"), Some("from 0.2"))
    );
    assert!(s.models().await.iter().any(|m| m["id"] == done.as_str()));
    let (img, mask) = small_pair();
    let r = s.inpaint(form(img, mask).text("model", done.clone())).await;
    assert_eq!(r.status(), 200, "the imported model serves");
    s.wait_job(&queued, "the imported queued job", |v| v["state"] == "done")
        .await;
    // Moved into the store; the old folders are kept aside, not read again.
    assert!(stored(data.path(), &done)
        .join("model.safetensors")
        .is_file());
    assert!(data
        .path()
        .join(format!("finetune/imported/{done}/job.json"))
        .is_file());
    assert!(!data.path().join(format!("finetune/jobs/{done}")).exists());
    s.stop().await;
    let again = start_in(data.clone(), &args(&[]), |_| {}).await;
    let list: Value = again.get("/api/v1/finetune").await.json().await.unwrap();
    assert_eq!(
        list["jobs"].as_array().unwrap().len(),
        2,
        "imported once: {list}"
    );
}
