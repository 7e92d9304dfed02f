//! Model-tier replicas that share their state, through the processes an operator runs: two
//! `server-example` processes on one MariaDB database (jobs and history) and one S3 bucket
//! (moto's server: images, photos, checkpoints, models). A job submitted to one is every
//! replica's; killing the replica that trains it loses only the steps since its last
//! checkpoint; a web tier in front of both keeps answering, and records every request.
#![cfg(all(feature = "mysql", feature = "s3"))]

mod common;
#[path = "../../history-sink/tests/common/mod.rs"]
mod services;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::process::Server;
use common::{job_form, photos, TINY_FINETUNE};
use reqwest::Method;
use serde_json::Value;
use server_example::auth::tokens;
use services::{create_bucket, moto_endpoint, skip_services, Moto, TestDb};

/// Serialises the tests of this file: each runs three or four servers on two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A lease short enough for a test to wait out.
const LEASE_SECS: &str = "3";

/// The services two replicas share, and how to start one.
struct Shared {
    db: TestDb,
    _moto: Moto,
    bucket: String,
    endpoint: String,
    dirs: tempfile::TempDir,
}

impl Shared {
    async fn new() -> Self {
        let (endpoint, moto) = moto_endpoint().await;
        let bucket = format!("replicas-{:08x}", rand::random::<u32>());
        create_bucket(&endpoint, &bucket).await;
        Self {
            db: TestDb::new().await,
            _moto: moto,
            bucket,
            endpoint,
            dirs: tempfile::tempdir().unwrap(),
        }
    }

    fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ]
    }

    /// A model-tier replica named `name` (its data folder), on the shared database and
    /// bucket, plus `extra` flags.
    async fn replica(&self, name: &str, extra: &[&str]) -> Server {
        let history = self.db.url();
        let images = format!("s3://{}/images", self.bucket);
        let mut args: Vec<&str> = TINY_FINETUNE.to_vec();
        args.extend([
            "--history",
            &history,
            "--images",
            &images,
            "--job-lease-secs",
            LEASE_SECS,
        ]);
        args.extend(extra);
        Server::start_with_env(&self.dirs.path().join(name), &args, &self.env()).await
    }

    /// An object of the bucket, read with a client of the test's own.
    async fn object(&self, key: &str) -> Option<bytes::Bytes> {
        use object_store::ObjectStore;
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap();
        match s3.get(&object_store::path::Path::from(key)).await {
            Ok(r) => Some(r.bytes().await.unwrap()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("GET {key}: {e}"),
        }
    }

    /// The stored model of job `id`, checked to be a safetensors file with a model in it.
    async fn stored_model(&self, id: &str) -> bytes::Bytes {
        let key = format!("images/finetune/jobs/{id}/model.safetensors");
        let bytes = self
            .object(&key)
            .await
            .unwrap_or_else(|| panic!("{key} is not in the bucket"));
        let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let meta: Value = serde_json::from_slice(&bytes[8..8 + header]).unwrap();
        assert!(
            meta.as_object()
                .unwrap()
                .keys()
                .any(|k| k.contains("weight")),
            "{key} holds no weights"
        );
        bytes
    }
}

/// What a test does with a replica's API.
trait Api {
    fn base(&self) -> &str;
    fn http(&self) -> &reqwest::Client;

    /// A request to `path`, signed in with the API token `token` when one is given.
    fn call(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let r = self
            .http()
            .request(method, format!("{}{path}", self.base()));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn submit(&self, form: reqwest::multipart::Form, token: Option<&str>) -> String {
        let r = self.call(Method::POST, "/api/v1/finetune", token);
        let r = r.multipart(form).send().await.unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        let v: Value = r.json().await.unwrap();
        v["job_id"].as_str().unwrap().to_owned()
    }

    async fn job_as(&self, id: &str, token: Option<&str>) -> Value {
        let r = self.call(Method::GET, &format!("/api/v1/finetune/{id}"), token);
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    async fn job(&self, id: &str) -> Value {
        self.job_as(id, None).await
    }

    async fn wait_job_as(
        &self,
        id: &str,
        token: Option<&str>,
        what: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let v = self.job_as(id, token).await;
            if ok(&v) {
                return v;
            }
            assert!(v["state"] != "failed", "{what}: the job failed: {v}");
            assert!(Instant::now() < deadline, "waiting for {what}: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_job(&self, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        self.wait_job_as(id, None, what, ok).await
    }

    async fn job_ids(&self, token: Option<&str>) -> Vec<String> {
        let r = self.call(Method::GET, "/api/v1/finetune", token);
        let v: Value = r.send().await.unwrap().json().await.unwrap();
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["job_id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// An inpaint with model `model`: its status.
    async fn inpaint_with(&self, model: &str) -> u16 {
        let (img, mask) = common::small_pair();
        let form = common::form(img, mask).text("model", model.to_owned());
        let r = self.call(Method::POST, "/api/v1/inpaint", None);
        let r = r.multipart(form).send().await.unwrap();
        let status = r.status().as_u16();
        assert!(
            status == 200 || status == 404,
            "{status}: {}",
            r.text().await.unwrap()
        );
        status
    }
}

impl Api for Server {
    fn base(&self) -> &str {
        &self.url
    }
    fn http(&self) -> &reqwest::Client {
        &self.client
    }
}

/// A job's server-sent events on `server`, until the stream ends.
async fn events(server: &Server, id: &str) -> Vec<Value> {
    let mut r = server
        .client
        .get(format!("{}/api/v1/finetune/{id}/events", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = r.chunk().await.unwrap() {
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    };
    tokio::time::timeout(Duration::from_secs(180), read)
        .await
        .expect("the event stream ends when the job does");
    text.split("\n\n")
        .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn counter(metrics: &str, name: &str) -> u64 {
    common::metric(metrics, name) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_submitted_to_one_replica_is_every_replicas() {
    if skip_services("a_job_submitted_to_one_replica_is_every_replicas") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let shared = Shared::new().await;
    let a = shared.replica("a", &[]).await;
    let b = shared.replica("b", &[]).await;

    let id = a
        .submit(
            job_form(photos(4))
                .text("user_id", "dora")
                .text("steps", "8"),
            None,
        )
        .await;
    assert!(b.job_ids(None).await.contains(&id), "B lists A's job");
    // B streams the job's progress wherever it runs.
    let streamed = events(&b, &id).await;
    assert_eq!(streamed.last().unwrap()["state"], "done", "{streamed:?}");
    let done = b.job(&id).await;
    assert_eq!(done, a.job(&id).await, "both answer from the one record");
    assert_eq!(done["step"], 8);

    // Trained by exactly one replica, once: the steps of both add up to the job's.
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    let steps = (
        counter(&ma, "finetune_steps_total"),
        counter(&mb, "finetune_steps_total"),
    );
    assert_eq!(steps.0 + steps.1, 8, "steps trained by A and B: {steps:?}");
    assert!(steps.0 == 0 || steps.1 == 0, "{steps:?}");
    let claims = counter(&ma, "finetune_claims_total") + counter(&mb, "finetune_claims_total");
    assert_eq!(claims, 1);
    let trainer = if steps.0 > 0 { &a } else { &b };
    assert_eq!(
        done["replica"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap(),
        trainer.child_id().to_string(),
        "{done}"
    );

    // The model is in the bucket, and both replicas serve it.
    shared.stored_model(&id).await;
    assert_eq!(a.inpaint_with(&id).await, 200);
    assert_eq!(b.inpaint_with(&id).await, 200);
    assert_eq!(b.inpaint_with(&uuid::Uuid::now_v7().to_string()).await, 404);

    // Deleted through one replica, it is gone from the other and from the bucket.
    let r = b.call(Method::DELETE, &format!("/api/v1/models/{id}"), None);
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(
        a.inpaint_with(&id).await,
        404,
        "A's cached copy is not served"
    );
    assert!(shared
        .object(&format!("images/finetune/jobs/{id}/model.safetensors"))
        .await
        .is_none());

    // A running job is cancelled through the replica that does not train it.
    let long = a
        .submit(
            job_form(photos(4))
                .text("user_id", "dora")
                .text("steps", "1000000"),
            None,
        )
        .await;
    let running = a
        .wait_job(&long, "a checkpoint", |v| {
            v["checkpoint_step"].as_u64() >= Some(2)
        })
        .await;
    let pid: u32 = running["replica"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let other = if pid == a.child_id() { &b } else { &a };
    let r = other.call(Method::DELETE, &format!("/api/v1/finetune/{long}"), None);
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 200, "cancelled within the wait");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["state"], "cancelled", "{v}");
    let kept = v["checkpoint_step"].as_u64().unwrap();
    assert!(kept >= running["checkpoint_step"].as_u64().unwrap());
    let stored = shared
        .object(&format!(
            "images/finetune/jobs/{long}/checkpoint.safetensors"
        ))
        .await
        .expect("the cancelled job's checkpoint is kept");
    let header = u64::from_le_bytes(stored[..8].try_into().unwrap()) as usize;
    let meta: Value = serde_json::from_slice(&stored[8..8 + header]).unwrap();
    assert!(meta.get("state_json").is_some(), "a trainer checkpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_replica_that_trains_a_job_resumes_it_on_the_other() {
    if skip_services("killing_the_replica_that_trains_a_job_resumes_it_on_the_other") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let shared = Shared::new().await;
    // A checkpoint every 2 steps (TINY_FINETUNE), each stored in the bucket.
    let mut a = shared.replica("a", &[]).await;
    let mut b = shared.replica("b", &[]).await;
    let total = 2000;
    let id = a
        .submit(
            job_form(photos(4))
                .text("user_id", "erin")
                .text("steps", total.to_string()),
            None,
        )
        .await;
    let before = a
        .wait_job(&id, "a stored checkpoint", |v| {
            v["checkpoint_step"].as_u64() >= Some(10)
        })
        .await;
    let holder = before["replica"].as_str().unwrap().to_owned();
    let pid = holder.rsplit(':').next().unwrap().parse::<u32>().unwrap();
    let (killed, survivor) = if pid == a.child_id() {
        (&mut a, &mut b)
    } else {
        assert_eq!(pid, b.child_id(), "{holder} is neither replica");
        (&mut b, &mut a)
    };
    killed.kill();
    let killed_at = Instant::now();
    let at_kill = survivor.job(&id).await;
    assert_ne!(
        at_kill["state"], "done",
        "the job ended before the kill: {at_kill}"
    );
    let checkpoint = at_kill["checkpoint_step"].as_u64().unwrap();
    let step = at_kill["step"].as_u64().unwrap();

    // After the lease, the survivor resumes from the stored checkpoint, not from scratch.
    let resumed = survivor
        .wait_job(&id, "the resume", |v| {
            v["replica"].as_str() != Some(holder.as_str())
        })
        .await;
    let takeover = killed_at.elapsed();
    let from = resumed["resumed_from_step"].as_u64().unwrap();
    eprintln!(
        "replica killed at step {step} (checkpoint {checkpoint}); resumed from {from} after {takeover:?}"
    );
    // A checkpoint is stored before the status that names it is written, so the kill may
    // fall between the two: then the job resumes one checkpoint (2 steps) further on.
    assert!(
        from >= checkpoint && from <= step + 2 && from > 0,
        "resumed from {from}; the checkpoint was at {checkpoint}, the job at {step}"
    );
    let done = survivor
        .wait_job(&id, "the end", |v| v["state"] == "done")
        .await;
    assert_eq!(done["step"], total);
    assert_eq!(done["resumed_from_step"], from);
    let trained = counter(&survivor.metrics().await, "finetune_steps_total");
    assert_eq!(
        trained,
        total - from,
        "the survivor trained only the steps after the checkpoint"
    );
    shared.stored_model(&id).await;
    assert_eq!(survivor.inpaint_with(&id).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_web_tier_over_two_replicas_records_every_request_when_one_dies() {
    if skip_services("a_web_tier_over_two_replicas_records_every_request_when_one_dies") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let shared = Shared::new().await;
    let mut a = shared.replica("a", &[]).await;
    let b = shared.replica("b", &[]).await;
    let tiers = format!("{},{}", a.url, b.url);
    let history = shared.db.url();
    let images = format!("s3://{}/images", shared.bucket);
    let web = Server::start_with_env(
        &shared.dirs.path().join("web"),
        &[
            "--remote-model",
            &tiers,
            "--history",
            &history,
            "--images",
            &images,
        ],
        &shared.env(),
    )
    .await;
    let mut accepted = HashSet::new();
    for i in 0..30 {
        if i == 10 {
            a.kill();
        }
        let (id, _) = web.inpaint("walt").await;
        accepted.insert(id);
    }
    assert_eq!(accepted.len(), 30);
    // Every accepted request has its row, once.
    let rows = shared
        .db
        .wait_count(
            "SELECT COUNT(*) FROM history_events WHERE user_id = 'walt'",
            30,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(rows, 30);
    let mut conn = <sqlx::MySqlConnection as sqlx::Connection>::connect(&shared.db.url())
        .await
        .unwrap();
    let ids: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT event_id FROM history_events WHERE user_id = 'walt'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let stored: HashSet<uuid::Uuid> = ids
        .iter()
        .map(|b| uuid::Uuid::from_slice(b).unwrap())
        .collect();
    assert_eq!(stored, accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_and_ownership_hold_across_replicas() {
    if skip_services("sessions_and_ownership_hold_across_replicas") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let shared = Shared::new().await;
    let token_file = shared.dirs.path().join("tokens");
    let key = shared.dirs.path().join("session.key");
    let alice = tokens::add(&token_file, "alice", None, false).unwrap();
    let bob = tokens::add(&token_file, "bob", None, false).unwrap();
    let auth = format!("tokens:{}", token_file.display());
    let key_arg = key.display().to_string();
    let flags = [
        "--auth",
        auth.as_str(),
        "--session-key-file",
        key_arg.as_str(),
    ];
    let a = shared.replica("a", &flags).await;
    let b = shared.replica("b", &flags).await;

    // A cookie signed by A is accepted by B.
    let r = a.call(Method::POST, "/api/v1/session", None);
    let r = r.json(&serde_json::json!({ "token": alice })).send().await;
    let r = r.unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let me = b
        .call(Method::GET, "/api/v1/session", None)
        .header("cookie", &cookie);
    let me: Value = me.send().await.unwrap().json().await.unwrap();
    assert_eq!(me["user"], "alice", "{me}");

    // Alice's job, submitted through A, is hers on both replicas and no one else's.
    let id = a
        .submit(job_form(photos(3)).text("steps", "3"), Some(&alice))
        .await;
    let job = format!("/api/v1/finetune/{id}");
    for (name, s) in [("A", &a), ("B", &b)] {
        let status = |method: Method, token: &str| {
            let r = s.call(method, &job, Some(token)).send();
            async move { r.await.unwrap().status() }
        };
        assert_eq!(status(Method::GET, &alice).await, 200, "alice on {name}");
        assert_eq!(status(Method::GET, &bob).await, 404, "bob on {name}");
        assert_eq!(
            status(Method::DELETE, &bob).await,
            404,
            "bob cancelling on {name}"
        );
        assert!(
            s.job_ids(Some(&bob)).await.is_empty(),
            "bob's list on {name}"
        );
    }
    // Nor can Bob fine-tune from her model, through either replica, once it exists.
    b.wait_job_as(&id, Some(&alice), "alice's job", |v| v["state"] == "done")
        .await;
    for s in [&a, &b] {
        let r = s.call(Method::POST, "/api/v1/finetune", Some(&bob));
        let form = job_form(photos(3)).text("base_model", id.clone());
        let r = r.multipart(form).send().await.unwrap();
        assert_eq!(r.status(), 404, "{}", r.text().await.unwrap());
    }
    // Her cookie from A reads it on B.
    let r = b.call(Method::GET, &job, None).header("cookie", &cookie);
    assert_eq!(r.send().await.unwrap().status(), 200);
}
