//! `--auth`: who may call what, over a real socket. Two users with tokens; nothing of one
//! reaches the other through any endpoint, and every refusal is JSON with a stable code.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use image::{Rgb, RgbImage};
use serde_json::Value;
use server_example::auth::tokens;

struct Users {
    alice: String,
    bob: String,
    revoked: String,
}

fn tokens_file(dir: &Path) -> (std::path::PathBuf, Users) {
    let file = dir.join("tokens");
    let users = Users {
        alice: tokens::add(&file, "alice", None, false).unwrap(),
        bob: tokens::add(&file, "bob", Some(30), false).unwrap(),
        revoked: tokens::add(&file, "carol", None, false).unwrap(),
    };
    assert_eq!(tokens::revoke(&file, "carol").unwrap(), 1);
    (file, users)
}

fn job_form(user: Option<&str>) -> reqwest::multipart::Form {
    let mut f = reqwest::multipart::Form::new().text("steps", "2");
    if let Some(u) = user {
        f = f.text("user_id", u.to_owned());
    }
    (0..4).fold(f, |f, i| {
        let img = RgbImage::from_fn(64, 48, |x, y| {
            Rgb([(x * 4) as u8, (y * 5) as u8, (i * 40) as u8])
        });
        f.part(
            "images",
            reqwest::multipart::Part::bytes(png(img)).file_name(format!("p{i}.png")),
        )
    })
}

impl TestServer {
    fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.url));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }
    async fn get_as(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        self.req(reqwest::Method::GET, path, token)
            .send()
            .await
            .unwrap()
    }
    async fn json_as(&self, path: &str, token: &str) -> Value {
        let r = self.get_as(path, Some(token)).await;
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.unwrap()
    }
    async fn inpaint_as(
        &self,
        token: Option<&str>,
        form: reqwest::multipart::Form,
    ) -> reqwest::Response {
        self.req(reqwest::Method::POST, "/api/v1/inpaint", token)
            .multipart(form)
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_nothing_of_one_user_reaches_another() {
    let dir = tempfile::tempdir().unwrap();
    let (file, t) = tokens_file(dir.path());
    let auth = format!("tokens:{}", file.display());
    let args: Vec<&str> = TINY_FINETUNE
        .iter()
        .copied()
        .chain(["--auth", &auth])
        .collect();
    let s = start(&args).await;

    // Public: health, readiness, the page. Everything else needs a token.
    for path in [
        "/healthz",
        "/readyz",
        "/",
        "/app.js",
        "/api/v1/openapi.json",
    ] {
        assert_eq!(s.get_as(path, None).await.status(), 200, "{path}");
    }
    let page = s.get_as("/", None).await;
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let protected = [
        "/api/v1/history",
        "/api/v1/finetune",
        "/api/v1/models",
        "/metrics",
        "/images/0000000000000000000000000000000000000000000000000000000000000000.png",
        "/api/v1/finetune/0190a5c0-0000-7000-8000-000000000000",
    ];
    for path in protected {
        for token in [None, Some("pct_wrong"), Some(t.revoked.as_str())] {
            let r = s.get_as(path, token).await;
            assert_eq!(r.headers()["www-authenticate"], "Bearer", "{path}");
            assert_eq!(
                error_code(r).await,
                (401, "unauthorized".into()),
                "{path} {token:?}"
            );
        }
    }
    let (img, mask) = small_pair();
    let r = s.inpaint_as(None, form(img.clone(), mask.clone())).await;
    assert_eq!(error_code(r).await, (401, "unauthorized".into()));
    // Every write too, before its body is looked at.
    let some_id = "0190a5c0-0000-7000-8000-000000000000";
    let writes = [
        (reqwest::Method::POST, "/reconstruct".to_owned()),
        (reqwest::Method::POST, "/api/v1/finetune".to_owned()),
        (
            reqwest::Method::DELETE,
            format!("/api/v1/finetune/{some_id}"),
        ),
        (reqwest::Method::DELETE, format!("/api/v1/models/{some_id}")),
        (reqwest::Method::DELETE, "/api/v1/history".to_owned()),
        (
            reqwest::Method::GET,
            format!("/api/v1/finetune/{some_id}/events"),
        ),
    ];
    for (method, path) in writes {
        for token in [None, Some("pct_wrong"), Some(t.revoked.as_str())] {
            let r = s.req(method.clone(), &path, token).send().await.unwrap();
            assert_eq!(
                error_code(r).await,
                (401, "unauthorized".into()),
                "{method} {path} {token:?}"
            );
        }
    }

    // Alice inpaints; the event is hers whatever user_id she leaves out.
    let r = s
        .inpaint_as(Some(&t.alice), form(img.clone(), mask.clone()))
        .await;
    assert_eq!(r.status(), 200);
    let alice_event = r.headers()["x-event-id"].to_str().unwrap().to_owned();
    // A forged user_id is refused, not recorded.
    let r = s
        .inpaint_as(
            Some(&t.bob),
            form(img.clone(), mask.clone()).text("user_id", "alice"),
        )
        .await;
    assert_eq!(error_code(r).await, (403, "forbidden".into()));
    let r = s
        .get_as("/api/v1/history?user_id=alice", Some(&t.bob))
        .await;
    assert_eq!(error_code(r).await, (403, "forbidden".into()));

    let mine = s.json_as("/api/v1/history", &t.alice).await;
    assert_eq!(mine["events"][0]["event_id"], alice_event.as_str());
    assert_eq!(mine["events"][0]["user_id"], "alice");
    let result_url = mine["events"][0]["result_url"].as_str().unwrap().to_owned();
    let r = s.get_as(&result_url, Some(&t.alice)).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .starts_with("private"));
    for k in ["result_url", "original_url", "mask_url"] {
        let url = mine["events"][0][k].as_str().unwrap();
        let r = s.get_as(url, Some(&t.bob)).await;
        assert_eq!(
            error_code(r).await,
            (404, "not_found".into()),
            "bob gets alice's {k}"
        );
        assert_eq!(s.get_as(url, Some(&t.alice)).await.status(), 200, "{k}");
    }
    let bobs = s.json_as("/api/v1/history", &t.bob).await;
    assert!(bobs["events"].as_array().unwrap().is_empty(), "{bobs}");

    // Alice's fine-tune job: Bob neither lists, reads, follows, cancels nor uses it, and
    // its id answers him exactly as an id that does not exist.
    let r = s
        .req(reqwest::Method::POST, "/api/v1/finetune", Some(&t.alice))
        .multipart(job_form(None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job = r.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = s
        .req(reqwest::Method::POST, "/api/v1/finetune", Some(&t.bob))
        .multipart(job_form(Some("alice")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (403, "forbidden".into()));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let v = s
            .json_as(&format!("/api/v1/finetune/{job}"), &t.alice)
            .await;
        if v["state"] == "done" {
            break;
        }
        assert!(v["state"] != "failed", "{v}");
        assert!(std::time::Instant::now() < deadline, "job not done: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed = s.json_as("/api/v1/finetune", &t.alice).await;
    assert_eq!(listed["jobs"][0]["job_id"], job.as_str());
    assert!(s.json_as("/api/v1/finetune", &t.bob).await["jobs"]
        .as_array()
        .unwrap()
        .is_empty());
    let models = |v: Value| -> Vec<String> {
        v["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        models(s.json_as("/api/v1/models", &t.alice).await),
        ["default", job.as_str()]
    );
    assert_eq!(
        models(s.json_as("/api/v1/models", &t.bob).await),
        ["default"]
    );

    let missing = "0190a5c0-0000-7000-8000-000000000000";
    for id in [job.as_str(), missing] {
        for path in [
            format!("/api/v1/finetune/{id}"),
            format!("/api/v1/finetune/{id}/events"),
        ] {
            let r = s.get_as(&path, Some(&t.bob)).await;
            assert_eq!(error_code(r).await, (404, "unknown_job".into()), "{path}");
        }
        let r = s
            .req(
                reqwest::Method::DELETE,
                &format!("/api/v1/finetune/{id}"),
                Some(&t.bob),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(r).await, (404, "unknown_job".into()));
        let r = s
            .inpaint_as(
                Some(&t.bob),
                form(img.clone(), mask.clone()).text("model", id.to_owned()),
            )
            .await;
        assert_eq!(error_code(r).await, (404, "unknown_model".into()), "{id}");
    }
    let r = s
        .inpaint_as(
            Some(&t.alice),
            form(img.clone(), mask.clone()).text("model", job.clone()),
        )
        .await;
    assert_eq!(r.status(), 200, "alice uses her own model");

    // Alice deletes her model, then her history and images; Bob's stay.
    let delete =
        |path: String, token: String| s.req(reqwest::Method::DELETE, &path, Some(&token)).send();
    let r = delete(format!("/api/v1/models/{job}"), t.bob.clone())
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (404, "unknown_job".into()),
        "not bob's to delete"
    );
    let r = delete(format!("/api/v1/models/{job}"), t.alice.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        models(s.json_as("/api/v1/models", &t.alice).await),
        ["default"]
    );
    let r = s
        .inpaint_as(
            Some(&t.alice),
            form(img.clone(), mask.clone()).text("model", job.clone()),
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (404, "unknown_model".into()),
        "deleted"
    );

    let r = s
        .inpaint_as(Some(&t.bob), form(img.clone(), mask.clone()))
        .await;
    assert_eq!(r.status(), 200, "bob's own inpaint, of the same photo");
    let alice_result = s.json_as("/api/v1/history", &t.alice).await["events"][0]["result_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = delete("/api/v1/history".into(), t.alice.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["events_deleted"].as_u64().unwrap() >= 2, "{v}");
    assert!(s.json_as("/api/v1/history", &t.alice).await["events"]
        .as_array()
        .unwrap()
        .is_empty());
    let bobs = s.json_as("/api/v1/history", &t.bob).await;
    assert_eq!(bobs["events"].as_array().unwrap().len(), 1, "{bobs}");
    let r = s.get_as(&alice_result, Some(&t.alice)).await;
    assert_eq!(error_code(r).await, (404, "not_found".into()));
    // The photo bob inpainted too is his as well, so it is still there for him.
    let bob_original = bobs["events"][0]["original_url"].as_str().unwrap();
    assert_eq!(s.get_as(bob_original, Some(&t.bob)).await.status(), 200);

    // A token made while the server runs works at once, and a revoked one stops at once.
    let dave = tokens::add(&file, "dave", None, false).unwrap();
    assert_eq!(s.get_as("/api/v1/history", Some(&dave)).await.status(), 200);
    tokens::revoke(&file, "dave").unwrap();
    let r = s.get_as("/api/v1/history", Some(&dave)).await;
    assert_eq!(error_code(r).await, (401, "unauthorized".into()));
    assert_eq!(s.get_as("/metrics", Some(&t.bob)).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_trips_per_user_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (file, t) = tokens_file(dir.path());
    let auth = format!("tokens:{}", file.display());
    // 60 a minute: a burst of 60, then one a second.
    let s = start(&["--auth", &auth, "--rate-limit", "60"]).await;
    for _ in 0..60 {
        assert_eq!(
            s.get_as("/api/v1/models", Some(&t.alice)).await.status(),
            200
        );
    }
    let r = s.get_as("/api/v1/models", Some(&t.alice)).await;
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(error_code(r).await, (429, "rate_limited".into()));
    assert_eq!(
        s.get_as("/api/v1/models", Some(&t.bob)).await.status(),
        200,
        "bob's own bucket"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        s.get_as("/api/v1/models", Some(&t.alice)).await.status(),
        200,
        "refilled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_is_believed_only_from_a_trusted_proxy() {
    let trusted = start(&[
        "--auth",
        "header:X-Auth-Request-User",
        "--trusted-proxy",
        "127.0.0.0/8",
    ])
    .await;
    let r = trusted
        .client
        .get(format!("{}/api/v1/history", trusted.url))
        .header("x-auth-request-user", "erin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = trusted.get("/api/v1/history").await;
    assert_eq!(
        error_code(r).await,
        (401, "unauthorized".into()),
        "no header"
    );

    let untrusted = start(&[
        "--auth",
        "header:X-Auth-Request-User",
        "--trusted-proxy",
        "10.0.0.0/8",
    ])
    .await;
    let r = untrusted
        .client
        .get(format!("{}/api/v1/history", untrusted.url))
        .header("x-auth-request-user", "erin")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (401, "unauthorized".into()),
        "not from the proxy"
    );
}

#[test]
fn the_binary_refuses_auth_none_on_a_public_address_and_manages_tokens() {
    let bin = env!("CARGO_BIN_EXE_server-example");
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin)
        .args(["--bind", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--auth none") && err.contains("--insecure-public"),
        "{err}"
    );
    assert!(
        !dir.path().join("history.db").exists(),
        "nothing opened before the refusal"
    );

    let file = dir.path().join("tokens");
    let add = std::process::Command::new(bin)
        .args(["token", "add", "frank", "--expires", "7", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let stdout = String::from_utf8(add.stdout).unwrap();
    let token = stdout.lines().last().unwrap();
    assert!(token.starts_with(tokens::TOKEN_PREFIX), "{stdout}");
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(!stored.contains(token), "only the hash is stored");
    let list = std::process::Command::new(bin)
        .args(["token", "list", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    let listed = String::from_utf8(list.stdout).unwrap();
    assert!(
        listed.starts_with("frank\tcreated ") && !listed.contains(token),
        "{listed}"
    );
    let revoke = std::process::Command::new(bin)
        .args(["token", "revoke", "frank", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(revoke.status.success());
    assert!(tokens::read(&file).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_signs_in_with_a_cookie_and_cross_site_writes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (file, t) = tokens_file(dir.path());
    let auth = format!("tokens:{}", file.display());
    let s = start(&["--auth", &auth]).await;
    let origin = s.url.clone();
    let status = |v: Value| (v["auth"].clone(), v["user"].clone());

    let anonymous: Value = s.get("/api/v1/session").await.json().await.unwrap();
    assert_eq!(status(anonymous), ("tokens".into(), Value::Null));
    let sign_in = |token: &str, origin: &str| {
        s.client
            .post(format!("{}/api/v1/session", s.url))
            .header("origin", origin.to_owned())
            .json(&serde_json::json!({ "token": token }))
            .send()
    };
    let r = sign_in("pct_wrong", &origin).await.unwrap();
    assert_eq!(error_code(r).await, (401, "unauthorized".into()));
    let r = sign_in(&t.alice, "http://evil.example").await.unwrap();
    assert_eq!(error_code(r).await, (403, "forbidden".into()), "login CSRF");

    let r = sign_in(&t.alice, &origin).await.unwrap();
    assert_eq!(r.status(), 200);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=604800"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP on loopback: {set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    assert!(
        !cookie.contains(&t.alice),
        "the cookie does not carry the token"
    );
    let with_cookie = |method: reqwest::Method, path: &str| {
        s.client
            .request(method, format!("{}{path}", s.url))
            .header("cookie", cookie.clone())
    };

    let me: Value = with_cookie(reqwest::Method::GET, "/api/v1/session")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status(me), ("tokens".into(), "alice".into()));
    let r = with_cookie(reqwest::Method::GET, "/api/v1/history")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A write with the cookie needs this server's Origin.
    let (img, mask) = small_pair();
    for bad in [Some("http://evil.example"), None] {
        let mut req = with_cookie(reqwest::Method::POST, "/api/v1/inpaint")
            .multipart(form(img.clone(), mask.clone()));
        if let Some(o) = bad {
            req = req.header("origin", o);
        }
        let r = req.send().await.unwrap();
        assert_eq!(
            error_code(r).await,
            (403, "forbidden".into()),
            "origin {bad:?}"
        );
    }
    let r = with_cookie(reqwest::Method::POST, "/api/v1/inpaint")
        .header("origin", origin.clone())
        .multipart(form(img.clone(), mask.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = with_cookie(reqwest::Method::GET, "/api/v1/history")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["events"][0]["user_id"], "alice");

    // An altered cookie signs no one in; neither does one whose token was revoked.
    let altered = format!("{}x", cookie);
    let r = s
        .client
        .get(format!("{}/api/v1/history", s.url))
        .header("cookie", altered)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (401, "unauthorized".into()));
    tokens::revoke(&file, "alice").unwrap();
    let r = with_cookie(reqwest::Method::GET, "/api/v1/history")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (401, "unauthorized".into()));

    // Outside loopback the cookie is Secure; sign-out clears it.
    let r = s
        .client
        .post(format!("{}/api/v1/session", s.url))
        .header("host", "photos.example.com")
        .header("origin", "https://photos.example.com")
        .json(&serde_json::json!({ "token": t.bob }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("; Secure"));
    let r = s
        .client
        .delete(format!("{}/api/v1/session", s.url))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
}
