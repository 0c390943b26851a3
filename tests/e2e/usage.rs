//! The usage API end to end: chats from two orgs' keys, then `/v1/usage`
//! (grouped and filtered) and `/admin/v1/usage` report exactly what each
//! org's clients were told they used, and a matrix over every usage route
//! with the other org's member and admin keys never shows a number of it.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::process::Command;

use crate::harness::{EMU_KEY, Gateway, Shape, bin, chunks, sse_data, user};

const MODELS: &str = "  - name: gpt-4o
    target: emu/gpt-4o
    price: { input_per_mtok: 2.5, output_per_mtok: 10 }
";

/// A key made by `llmgw keys create`: its id, secret, org id and project id.
struct Key {
    id: String,
    secret: String,
    org_id: String,
    project_id: Option<String>,
}

async fn create(gw: &Gateway, org: &str, project: Option<&str>, role: &str) -> Key {
    let mut cmd = Command::new(bin());
    cmd.args(["keys", "create", "--org", org, "--role", role, "--config"])
        .arg(&gw.config)
        .env("EMU_KEY", EMU_KEY);
    if let Some(p) = project {
        cmd.args(["--project", p]);
    }
    let out = cmd.output().await.expect("llmgw keys create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    let [.., about, secret] = lines.as_slice() else {
        panic!("keys create printed {stdout}")
    };
    // "created key KEY_ID for org `NAME` (ORG_ID)[, project PROJECT_ID]; …"
    let id = about.split_whitespace().nth(2).unwrap().to_owned();
    let org_id = about
        .split('(')
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .to_owned();
    let project_id = about
        .split(", project ")
        .nth(1)
        .map(|rest| rest.split(';').next().unwrap().to_owned());
    Key {
        id,
        secret: secret.trim().to_owned(),
        org_id,
        project_id,
    }
}

/// GET `path` with `key`; status and JSON.
async fn get(gw: &Gateway, key: &str, path: &str) -> (u16, Value) {
    let r = gw
        .client
        .get(gw.url(path))
        .bearer_auth(key)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")),
    )
}

/// What clients were told they used.
#[derive(Debug, Default, Clone, Copy)]
struct Used {
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
}

impl Used {
    fn add(&mut self, other: Used) {
        self.requests += other.requests;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost_usd += other.cost_usd;
    }

    /// `row` reports exactly this.
    fn check(&self, row: &Value, what: &str) {
        assert_eq!(row["requests"].as_u64(), Some(self.requests), "{what}: {row}");
        assert_eq!(
            row["input_tokens"].as_u64(),
            Some(self.input_tokens),
            "{what}: {row}"
        );
        assert_eq!(
            row["output_tokens"].as_u64(),
            Some(self.output_tokens),
            "{what}: {row}"
        );
        let cost = row["cost_usd"].as_f64().unwrap();
        assert!(
            (cost - self.cost_usd).abs() < 1e-12,
            "{what}: cost {cost} != {}",
            self.cost_usd
        );
    }
}

/// One chat (streamed or not) with `key`; the usage its answer reported.
async fn chat(gw: &Gateway, key: &str, model: &str, i: usize, stream: bool) -> Used {
    let prompt = format!("[emu:words={}] usage {i} {}", i % 5 + 2, "y".repeat(i % 11));
    let mut body = json!({"model": model, "messages": user(&prompt)});
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await.unwrap();
    let usage = if stream {
        chunks(&sse_data(&text)).last().unwrap()["usage"].clone()
    } else {
        serde_json::from_str::<Value>(&text).unwrap()["usage"].clone()
    };
    Used {
        requests: 1,
        input_tokens: usage["prompt_tokens"].as_u64().unwrap(),
        output_tokens: usage["completion_tokens"].as_u64().unwrap(),
        cost_usd: usage["cost_usd"].as_f64().unwrap(),
    }
}

/// `/v1/usage` with `key`, polled until it reports `requests` (metering is
/// asynchronous) or 15 s pass.
async fn usage_until(gw: &Gateway, key: &str, requests: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = get(gw, key, "/v1/usage").await;
        assert_eq!(status, 200, "{body}");
        if body["totals"]["requests"].as_u64() == Some(requests) || Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rows(body: &Value) -> &Vec<Value> {
    body["data"].as_array().expect("data")
}

async fn usage(shape: Shape) {
    let gw = Gateway::start_with(shape, "", MODELS).await;
    // org acme: gw.key (a member, no project), a member in project `web`, an admin.
    let acme_web = create(&gw, "acme", Some("web"), "member").await;
    let acme_admin = create(&gw, "acme", None, "admin").await;
    let beta_member = create(&gw, "beta", None, "member").await;
    let beta_admin = create(&gw, "beta", None, "admin").await;
    let platform = create(&gw, "platform", None, "platform_admin").await;
    let acme = acme_web.org_id.clone();
    let beta = beta_member.org_id.clone();
    assert_ne!(acme, beta);
    let (_, me) = get(&gw, &gw.key, "/v1/usage").await;
    assert_eq!(me["org_id"], acme.as_str(), "{me}");
    assert!(rows(&me).is_empty());

    // ---- traffic: acme by model and by key; beta a little
    let mut acme_total = Used::default();
    let mut by_model: BTreeMap<&str, Used> = BTreeMap::new();
    let mut by_key: BTreeMap<String, Used> = BTreeMap::new();
    let mut plan: Vec<(&str, &str, &str)> = Vec::new();
    for _ in 0..3 {
        plan.push((gw.key.as_str(), "gpt-4o-mini", "main"));
    }
    for _ in 0..2 {
        plan.push((gw.key.as_str(), "gpt-4o", "main"));
    }
    for _ in 0..2 {
        plan.push((acme_web.secret.as_str(), "gpt-4o-mini", "web"));
    }
    let main_key_id = {
        // gw.key's id: the one acme key that is neither web's nor the admin's.
        let (_, keys) = get(&gw, &acme_admin.secret, &format!("/admin/v1/orgs/{acme}/keys")).await;
        keys["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_owned())
            .find(|id| *id != acme_web.id && *id != acme_admin.id)
            .expect("the harness key")
    };
    for (i, (key, model, which)) in plan.iter().enumerate() {
        let used = chat(&gw, key, model, i, i % 2 == 0).await;
        acme_total.add(used);
        by_model.entry(model).or_default().add(used);
        let id = if *which == "web" {
            acme_web.id.clone()
        } else {
            main_key_id.clone()
        };
        by_key.entry(id).or_default().add(used);
    }
    let mut beta_total = Used::default();
    for i in 0..2 {
        beta_total.add(chat(&gw, &beta_member.secret, "gpt-4o-mini", 100 + i, i == 1).await);
    }
    assert!(acme_total.cost_usd > 0.0 && beta_total.cost_usd > 0.0);

    // ---- /v1/usage: the own org, exactly what its clients were told
    let all = usage_until(&gw, &gw.key, 7).await;
    acme_total.check(&all["totals"], "acme totals");
    assert_eq!(all["object"], "list");
    let b = usage_until(&gw, &beta_member.secret, 2).await;
    beta_total.check(&b["totals"], "beta totals");
    assert_eq!(b["org_id"], beta.as_str());

    let today = {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        secs - secs % 86_400
    };
    let (status, by_day) = get(&gw, &gw.key, "/v1/usage?group_by=day").await;
    assert_eq!(status, 200, "{by_day}");
    let days = rows(&by_day);
    // One UTC day (two if the test ran across midnight), summing to the totals.
    assert!(!days.is_empty() && days.len() <= 2, "{by_day}");
    assert!(
        days.iter()
            .all(|d| d["start_time"].as_u64().unwrap() + 86_400 >= today)
    );
    let sum: u64 = days.iter().map(|d| d["requests"].as_u64().unwrap()).sum();
    assert_eq!(sum, 7);
    if days.len() == 1 {
        acme_total.check(&days[0], "the one day");
        assert!(days[0]["day"].as_str().unwrap().len() == 10);
    }

    let (_, models) = get(&gw, &gw.key, "/v1/usage?group_by=model").await;
    let got: Vec<&str> = rows(&models)
        .iter()
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["gpt-4o", "gpt-4o-mini"]);
    for row in rows(&models) {
        let model = row["model"].as_str().unwrap();
        by_model[model].check(row, model);
        assert!(row.get("day").is_none() && row.get("key_id").is_none());
    }
    let (_, keys) = get(&gw, &gw.key, "/v1/usage?group_by=key,model").await;
    let mut per_key: BTreeMap<String, Used> = BTreeMap::new();
    for row in rows(&keys) {
        let u = Used {
            requests: row["requests"].as_u64().unwrap(),
            input_tokens: row["input_tokens"].as_u64().unwrap(),
            output_tokens: row["output_tokens"].as_u64().unwrap(),
            cost_usd: row["cost_usd"].as_f64().unwrap(),
        };
        per_key
            .entry(row["key_id"].as_str().unwrap().to_owned())
            .or_default()
            .add(u);
    }
    assert_eq!(per_key.len(), 2, "{keys}");
    for (id, used) in &by_key {
        let row = json!({"requests": per_key[id].requests, "input_tokens": per_key[id].input_tokens,
            "output_tokens": per_key[id].output_tokens, "cost_usd": per_key[id].cost_usd});
        used.check(&row, id);
    }
    let (_, projects) = get(&gw, &gw.key, "/v1/usage?group_by=project").await;
    let got: Vec<(Value, u64)> = rows(&projects)
        .iter()
        .map(|r| (r["project_id"].clone(), r["requests"].as_u64().unwrap()))
        .collect();
    let web = acme_web.project_id.clone().unwrap();
    assert_eq!(got, [(Value::Null, 5), (json!(web), 2)], "{projects}");

    // Filters, and a range that ends before today.
    for (query, want) in [
        ("model=gpt-4o".to_owned(), 2),
        (format!("key_id={}", acme_web.id), 2),
        (format!("project_id={web}"), 2),
        ("project_id=".to_owned(), 5),
        (format!("key_id={main_key_id}&model=gpt-4o-mini"), 3),
        ("model=nope".to_owned(), 0),
        (format!("start={}", today - 86_400), 7),
        (format!("start=2020-01-01&end={today}"), 0),
    ] {
        let (status, body) = get(&gw, &gw.key, &format!("/v1/usage?{query}&group_by=day")).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(body["totals"]["requests"].as_u64(), Some(want), "{query}: {body}");
    }
    by_model["gpt-4o"].check(
        &get(&gw, &gw.key, "/v1/usage?model=gpt-4o").await.1["totals"],
        "gpt-4o",
    );

    // ---- bad parameters are 400s naming the param; no key is 401
    for (query, param) in [
        ("group_by=provider", "group_by"),
        ("start=yesterday", "start"),
        ("end=2026-13-01", "end"),
        ("org_id=x", "org_id"),
        ("limit=3", "limit"),
    ] {
        let (status, body) = get(&gw, &gw.key, &format!("/v1/usage?{query}")).await;
        assert_eq!(
            (status, body["error"]["param"].as_str()),
            (400, Some(param)),
            "{query}: {body}"
        );
    }
    let r = gw.client.get(gw.url("/v1/usage")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // ---- /admin/v1/usage: admins of the org, platform admins of any
    let (status, body) = get(&gw, &acme_admin.secret, "/admin/v1/usage?group_by=model").await;
    assert_eq!(status, 200, "{body}");
    acme_total.check(&body["totals"], "acme admin");
    let (status, body) = get(&gw, &acme_admin.secret, &format!("/admin/v1/usage?org_id={acme}")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(
        &gw,
        &platform.secret,
        &format!("/admin/v1/usage?org_id={acme}&group_by=day"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    acme_total.check(&body["totals"], "platform on acme");
    assert_eq!(body["org_id"], acme.as_str());
    let (_, body) = get(&gw, &platform.secret, &format!("/admin/v1/usage?org_id={beta}")).await;
    beta_total.check(&body["totals"], "platform on beta");
    let (status, body) = get(&gw, &acme_admin.secret, &format!("/admin/v1/usage?org_id={beta}")).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = get(&gw, &gw.key, "/admin/v1/usage").await;
    assert_eq!(status, 403);

    // ---- the matrix: org beta's keys on every usage route never see acme
    let acme_ids: HashSet<&str> = [
        main_key_id.as_str(),
        acme_web.id.as_str(),
        acme_admin.id.as_str(),
        web.as_str(),
        acme.as_str(),
    ]
    .into_iter()
    .collect();
    let mut routes: Vec<String> = Vec::new();
    for base in [
        "/v1/usage",
        "/admin/v1/usage",
        &format!("/admin/v1/usage?org_id={acme}"),
    ] {
        let sep = if base.contains('?') { '&' } else { '?' };
        routes.push(base.to_owned());
        for filter in [
            "group_by=day,key,project,model".to_owned(),
            format!("key_id={main_key_id}&group_by=key"),
            format!("key_id={}", acme_web.id),
            format!("project_id={web}&group_by=project"),
            "project_id=".to_owned(),
            "model=gpt-4o&group_by=model".to_owned(),
            format!("start={}&end={}&group_by=day", today - 86_400, today + 86_400),
            format!("org_id={acme}"),
        ] {
            routes.push(format!("{base}{sep}{filter}"));
        }
    }
    let mut seen_ok = 0;
    for (who, key) in [("beta member", &beta_member), ("beta admin", &beta_admin)] {
        for route in &routes {
            let (status, body) = get(&gw, &key.secret, route).await;
            let text = body.to_string();
            for id in &acme_ids {
                assert!(
                    !text.contains(id),
                    "{who} {route}: {status} shows acme's {id}: {text}"
                );
            }
            match status {
                200 => {
                    seen_ok += 1;
                    assert_eq!(body["org_id"], beta.as_str(), "{who} {route}: {text}");
                    let t = &body["totals"];
                    assert!(
                        t["requests"].as_u64().unwrap() <= beta_total.requests,
                        "{who} {route}: {text}"
                    );
                    assert!(
                        t["input_tokens"].as_u64().unwrap() <= beta_total.input_tokens,
                        "{who} {route}"
                    );
                    assert!(
                        t["cost_usd"].as_f64().unwrap() <= beta_total.cost_usd + 1e-12,
                        "{who} {route}"
                    );
                    for row in rows(&body) {
                        if let Some(k) = row.get("key_id") {
                            assert_eq!(k, beta_member.id.as_str(), "{who} {route}: {text}");
                        }
                    }
                }
                400 | 403 | 404 => assert!(body["error"].is_object(), "{who} {route}: {text}"),
                other => panic!("{who} {route}: {other} {text}"),
            }
            // A member is refused the admin route whatever it names.
            if route.starts_with("/admin") && who == "beta member" {
                assert_eq!(status, 403, "{who} {route}: {text}");
            }
            // An org admin naming acme learns only "not found".
            if route.starts_with("/admin") && who == "beta admin" && route.contains(&format!("org_id={acme}"))
            {
                assert!([400, 404].contains(&status), "{who} {route}: {status} {text}");
            }
        }
    }
    assert!(seen_ok >= 10, "the matrix saw too few answers: {seen_ok}");
    let (_, own) = get(&gw, &beta_admin.secret, "/admin/v1/usage").await;
    beta_total.check(&own["totals"], "beta admin on beta");

    // ---- a policy listing endpoints without `usage` shuts /v1/usage
    let (status, body) = {
        let r = gw
            .client
            .put(gw.url(&format!("/admin/v1/keys/{}/policy", beta_member.id)))
            .bearer_auth(&beta_admin.secret)
            .json(&json!({"allowed_endpoints": ["chat"]}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = get(&gw, &beta_member.secret, "/v1/usage").await;
        if status == 403 {
            assert_eq!(body["error"]["type"], "permission_error");
            break;
        }
        assert!(Instant::now() < deadline, "still {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn usage_api_in_one_process() {
    usage(Shape::All).await;
}

#[tokio::test]
async fn usage_api_across_five_processes() {
    usage(Shape::Split).await;
}
