use std::collections::HashMap;

use pb::attempt_report::Event;

use super::*;

fn config() -> Config {
    let text = r#"
providers:
  - name: emu
    type: openai
    base_url: http://127.0.0.1:1/v1
    timeout: 2s
    default_model: gpt-4o-mini
  - name: backup
    type: openai
    base_url: http://127.0.0.1:2/v1
models:
  - name: gpt-4o-mini
    target: emu/gpt-4o-mini
    price: { input_per_mtok: 0.15, output_per_mtok: 0.60 }
  - name: team/fast
    target: backup/llama-3
"#;
    Config::parse(text, "t.yaml", &HashMap::new()).unwrap()
}

async fn route(model: &str) -> Result<pb::RoutePlan, GwError> {
    service(&config())
        .route(pb::RouteRequest {
            model: model.into(),
            ..Default::default()
        })
        .await
}

#[tokio::test]
async fn platform_model_by_name() {
    let plan = route("gpt-4o-mini").await.unwrap();
    let t = &plan.targets[0];
    assert_eq!(
        (t.provider.as_str(), t.model.as_str(), t.timeout_ms),
        ("emu", "gpt-4o-mini", 2000)
    );
    assert_eq!(t.price.unwrap().output_per_mtok, 0.60);
    assert_eq!(plan.requested_provider, None);
    // A platform name with a slash is a platform model, not provider/model.
    assert_eq!(route("team/fast").await.unwrap().targets[0].model, "llama-3");
}

#[tokio::test]
async fn slug_and_provider_addressing() {
    let t = route("@backup/gpt-4o-mini").await.unwrap().targets.remove(0);
    assert_eq!((t.provider.as_str(), t.model.as_str()), ("backup", "gpt-4o-mini"));
    assert_eq!(
        t.price.unwrap().input_per_mtok,
        0.15,
        "not a platform target: the built-in catalog's price"
    );
    assert_eq!(t.context_window, 128_000);
    let t = route("@backup/llama-3").await.unwrap().targets.remove(0);
    assert_eq!(
        (t.price.unwrap().input_per_mtok, t.context_window),
        (0.0, 0),
        "unknown model"
    );
    let t = route("emu/gpt-4o-mini").await.unwrap().targets.remove(0);
    assert_eq!(
        t.price.unwrap().input_per_mtok,
        0.15,
        "direct address keeps the platform price"
    );
    // by type: the first provider of that type
    let t = route("openai/o3").await.unwrap().targets.remove(0);
    assert_eq!((t.provider.as_str(), t.model.as_str()), ("emu", "o3"));
}

#[tokio::test]
async fn slug_alone_uses_the_default_model() {
    let t = route("@emu").await.unwrap().targets.remove(0);
    assert_eq!((t.provider.as_str(), t.model.as_str()), ("emu", "gpt-4o-mini"));
    assert_eq!(t.price.unwrap().input_per_mtok, 0.15);
    let e = route("@backup").await.unwrap_err();
    assert_eq!((e.code(), e.param()), (ErrorCode::ModelNotFound, Some("model")));
    assert!(e.message().contains("default_model"), "{e:?}");
}

#[tokio::test]
async fn unknown_models_are_404_naming_model() {
    for m in ["nope", "@nope/x", "@nope", "anthropic/claude", "/x"] {
        let e = route(m).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::ModelNotFound, "{m}");
        assert_eq!(e.param(), Some("model"));
        assert_eq!(e.http_status(), 404);
    }
}

#[tokio::test]
async fn list_models_in_config_order() {
    let list = service(&config())
        .list_models(pb::ModelsRequest::default())
        .await
        .unwrap();
    let ids: Vec<_> = list.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids[..2], ["gpt-4o-mini", "team/fast"]);
    assert!(
        ids.contains(&"gpt-4o"),
        "built-in, offered by openai-type providers"
    );
    assert!(!ids.contains(&"claude-sonnet-4-5"), "no anthropic provider");
    assert_eq!(
        ids.iter().filter(|id| **id == "gpt-4o-mini").count(),
        1,
        "listed once"
    );
}

// ---- pools, strategies, health, configs -------------------------------------

const POOLS: &str = r#"
providers:
  - { name: a, type: openai, base_url: "http://127.0.0.1:1/v1" }
  - { name: b, type: openai, base_url: "http://127.0.0.1:2/v1" }
  - { name: c, type: openai, base_url: "http://127.0.0.1:3/v1" }
  - { name: claude, type: anthropic, base_url: "http://127.0.0.1:4/v1" }
models:
  - name: weighted
    aliases: [w]
    targets:
      - { target: a/m, weight: 1 }
      - { target: b/m, weight: 3 }
  - name: cheap
    strategy: cheapest
    targets:
      - { target: a/m, price: { input_per_mtok: 3, output_per_mtok: 3 } }
      - { target: b/m, price: { input_per_mtok: 1, output_per_mtok: 1 } }
      - { target: c/m, price: { input_per_mtok: 2, output_per_mtok: 2 } }
  - name: fast
    strategy: latency
    targets: [{ target: a/m }, { target: b/m }, { target: c/m }]
  - name: idle
    strategy: least-busy
    targets: [{ target: a/m }, { target: b/m }]
  - name: ordered
    strategy: priority
    targets: [{ target: a/m }, { target: b/m }, { target: c/m }]
  - name: single-shot
    fallback: false
    targets: [{ target: a/m }, { target: b/m }]
  - name: mixed
    strategy: priority
    targets:
      - { target: a/plain, capabilities: [streaming] }
      - { target: b/seeing, capabilities: [streaming, vision, tools], context_window: 1000 }
  - name: text-only
    target: a/t
    capabilities: [streaming]
routing:
  seed: 7
  latency_explore: 0
  ejection: { consecutive_failures: 3, base_time: 200ms, max_time: 1s }
  configs:
    - name: ab
      variants:
        - { name: control, weight: 80, model: cheap }
        - { name: candidate, weight: 20, model: weighted, params: { temperature: 0.1 }, system: "Be brief." }
    - name: sticky
      sticky: user
      variants:
        - { name: x, weight: 1, model: cheap }
        - { name: y, weight: 1, model: ordered }
    - name: targeted
      variants:
        - { name: vip, when: { users: [alice], headers: { x-tier: gold } }, model: ordered }
        - { name: canary, rollout: 10, model: fast }
        - { name: rest, model: cheap }
    - name: targeted
      version: 2
      variants:
        - { name: all, model: weighted }
"#;

fn pools() -> Router {
    service(&Config::parse(POOLS, "t.yaml", &HashMap::new()).unwrap())
}

fn req(model: &str) -> pb::RouteRequest {
    pb::RouteRequest {
        model: model.into(),
        ..Default::default()
    }
}

fn first(plan: &pb::RoutePlan) -> &str {
    &plan.targets[0].provider
}

fn report(router: &Router, t: &pb::Target, event: Event, latency_ms: f64) {
    router.report(pb::AttemptReport {
        provider: t.provider.clone(),
        model: t.model.clone(),
        key: t.key,
        event: event as i32,
        latency_ms,
    });
}

/// Routes `n` times, each try reported finished at once; counts the first
/// target's provider.
async fn shares(router: &Router, r: &pb::RouteRequest, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let plan = router.route(r.clone()).await.unwrap();
        report(router, &plan.targets[0], Event::Finished, 0.0);
        *counts.entry(first(&plan).to_owned()).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn weighted_pool_splits_by_weight_and_lists_every_target_for_fallback() {
    let r = pools();
    let counts = shares(&r, &req("w"), 4000).await;
    let b = counts["b"] as f64 / 4000.0;
    assert!((b - 0.75).abs() < 0.04, "{counts:?}");
    let plan = r.route(req("weighted")).await.unwrap();
    assert_eq!(plan.targets.len(), 2);
    assert_eq!(plan.strategy.as_deref(), Some("weighted"));
    assert_ne!(plan.targets[0].provider, plan.targets[1].provider);
    let plan = r.route(req("single-shot")).await.unwrap();
    assert_eq!(plan.targets.len(), 1, "fallback: false");
}

#[tokio::test]
async fn cheapest_latency_least_busy_and_priority_pick_their_best() {
    let r = pools();
    let plan = r.route(req("cheap")).await.unwrap();
    let order: Vec<_> = plan.targets.iter().map(|t| t.provider.as_str()).collect();
    assert_eq!(order, ["b", "c", "a"]);
    report(&r, &plan.targets[0], Event::Abandoned, 0.0);

    // latency: unmeasured targets are tried first, then the fastest wins.
    for (provider, ms) in [("a", 40.0), ("b", 5.0), ("c", 80.0)] {
        let t = pb::Target {
            provider: provider.into(),
            model: "m".into(),
            ..r.route(req(&format!("@{provider}/m")))
                .await
                .unwrap()
                .targets
                .remove(0)
        };
        report(&r, &t, Event::Succeeded, ms);
        report(&r, &t, Event::Finished, 0.0);
    }
    assert_eq!(shares(&r, &req("fast"), 50).await["b"], 50);

    // least-busy: b has two in flight, so a is chosen while that lasts.
    let busy = r.route(req("@b/m")).await.unwrap().targets.remove(0);
    report(&r, &busy, Event::Started, 0.0);
    let plan = r.route(req("idle")).await.unwrap();
    assert_eq!(first(&plan), "a");
    // a now has one in flight (the router counted it), b two: still a.
    assert_eq!(first(&r.route(req("idle")).await.unwrap()), "a");
    // a: two; b: two → either; then b's end makes b the one.
    for _ in 0..2 {
        report(&r, &busy, Event::Finished, 0.0);
    }
    let plan = r.route(req("idle")).await.unwrap();
    assert_eq!(first(&plan), "b");

    assert_eq!(shares(&r, &req("ordered"), 20).await["a"], 20);
}

#[tokio::test]
async fn ejection_moves_a_failing_target_last_until_it_recovers() {
    let r = pools();
    let a = r.route(req("ordered")).await.unwrap().targets.remove(0);
    assert_eq!(a.provider, "a");
    report(&r, &a, Event::Failed, 1.0);
    for _ in 0..2 {
        report(&r, &a, Event::Started, 0.0);
        report(&r, &a, Event::Failed, 1.0);
    }
    let plan = r.route(req("ordered")).await.unwrap();
    let order: Vec<_> = plan.targets.iter().map(|t| t.provider.as_str()).collect();
    assert_eq!(order, ["b", "c", "a"], "ejected: last resort");
    report(&r, &plan.targets[0], Event::Abandoned, 0.0);
    // Abandoned tries (the caller's fault) never eject.
    for _ in 0..5 {
        let t = r.route(req("@c/m")).await.unwrap().targets.remove(0);
        report(&r, &t, Event::Abandoned, 0.0);
    }
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    let plan = r.route(req("ordered")).await.unwrap();
    assert_eq!(first(&plan), "a", "back after base_time");
}

#[tokio::test]
async fn capabilities_filter_targets_or_name_the_param() {
    let r = pools();
    let vision = pb::RouteRequest {
        needed: Some(pb::Capabilities {
            vision: true,
            ..Default::default()
        }),
        ..req("mixed")
    };
    let plan = r.route(vision).await.unwrap();
    assert_eq!(plan.targets.len(), 1);
    assert_eq!((first(&plan), plan.targets[0].context_window), ("b", 1000));
    let tools = pb::RouteRequest {
        needed: Some(pb::Capabilities {
            tools: true,
            ..Default::default()
        }),
        ..req("text-only")
    };
    let e = r.route(tools).await.unwrap_err();
    assert_eq!((e.http_status(), e.param()), (400, Some("tools")), "{e:?}");
    let embed = pb::RouteRequest {
        needed: Some(pb::Capabilities {
            embeddings: true,
            ..Default::default()
        }),
        ..req("gpt-4o")
    };
    let e = r.route(embed).await.unwrap_err();
    assert_eq!((e.http_status(), e.param()), (400, Some("model")), "{e:?}");
    assert!(e.message().contains("embeddings"), "{e:?}");
    let e = r.route(req("text-embedding-3-small")).await.unwrap_err();
    assert!(e.message().contains("embedding model"), "{e:?}");
}

#[tokio::test]
async fn a_builtin_name_reaches_every_provider_offering_it() {
    let r = pools();
    let plan = r.route(req("gpt-4o")).await.unwrap();
    let mut providers: Vec<_> = plan.targets.iter().map(|t| t.provider.as_str()).collect();
    providers.sort_unstable();
    assert_eq!(providers, ["a", "b", "c"]);
    assert_eq!(plan.strategy.as_deref(), Some("cheapest"));
    assert_eq!(plan.targets[0].price.unwrap().input_per_mtok, 2.5);
    let plan = r.route(req("claude-sonnet-4-5")).await.unwrap();
    assert_eq!(first(&plan), "claude");
    assert!(plan.targets[0].model.starts_with("claude-sonnet-4-5"));
}

#[tokio::test]
async fn configs_split_by_weight_stick_target_and_pin_versions() {
    let r = pools();
    let with = |config: &str, user: Option<&str>| pb::RouteRequest {
        config: Some(config.into()),
        user: user.map(Into::into),
        ..req("ignored")
    };
    let mut candidate = 0;
    for _ in 0..2000 {
        let plan = r.route(with("ab", None)).await.unwrap();
        assert_eq!(plan.config.as_deref(), Some("ab"));
        assert_eq!(plan.config_version, Some(1));
        if plan.variant.as_deref() == Some("candidate") {
            candidate += 1;
            assert_eq!(plan.params.as_ref().and_then(|p| p.temperature), Some(0.1));
            assert_eq!(plan.system.as_deref(), Some("Be brief."));
            assert_eq!(plan.requested_model, "ignored");
        } else {
            assert_eq!(first(&plan), "b", "control: cheap");
            assert!(plan.params.is_none() && plan.system.is_none());
        }
    }
    assert!((candidate as f64 / 2000.0 - 0.2).abs() < 0.03, "{candidate}");

    // sticky per user: the same user, the same variant, every time.
    for user in ["u1", "u2", "u3", "u4"] {
        let v = r.route(with("sticky", Some(user))).await.unwrap().variant;
        for _ in 0..20 {
            assert_eq!(r.route(with("sticky", Some(user))).await.unwrap().variant, v);
        }
    }

    // targeting: every condition must hold.
    let mut vip = with("targeted@1", Some("alice"));
    vip.headers.insert("x-tier".into(), "gold".into());
    assert_eq!(
        r.route(vip.clone()).await.unwrap().variant.as_deref(),
        Some("vip")
    );
    vip.headers.insert("x-tier".into(), "silver".into());
    assert_ne!(r.route(vip).await.unwrap().variant.as_deref(), Some("vip"));
    // rollout: about 10% of users, each always the same.
    let canary = (0..1000)
        .filter(|i| {
            let user = format!("user-{i}");
            futures_executor(r.route(with("targeted@1", Some(&user))))
                .unwrap()
                .variant
                .as_deref()
                == Some("canary")
        })
        .count();
    assert!((60..140).contains(&canary), "{canary}");
    // latest version unless pinned
    let plan = r.route(with("targeted", Some("alice"))).await.unwrap();
    assert_eq!(
        (plan.config_version, plan.variant.as_deref()),
        (Some(2), Some("all"))
    );

    // a key's default config, and errors naming the header
    let keyed = pb::RouteRequest {
        principal: Some(pb::Principal {
            routing_config: Some("targeted@2".into()),
            ..Default::default()
        }),
        ..req("x")
    };
    assert_eq!(r.route(keyed).await.unwrap().variant.as_deref(), Some("all"));
    for bad in ["nope", "ab@9", "ab@x"] {
        let e = r.route(with(bad, None)).await.unwrap_err();
        assert_eq!(
            (e.http_status(), e.param()),
            (400, Some("x-llmgw-config")),
            "{bad}"
        );
    }
}

/// Runs a router future to completion on the current thread (the router
/// never waits on I/O).
fn futures_executor<F: std::future::Future>(f: F) -> F::Output {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

#[tokio::test]
async fn byok_credentials_are_the_orgs_alone() {
    let r = service(&config());
    let acme = pb::Principal {
        org_id: "org_acme".into(),
        providers: vec![pb::OrgProvider {
            id: "cred_1".into(),
            name: "mycred".into(),
            r#type: "openai".into(),
            default_model: Some("gpt-4o".into()),
        }],
        ..Default::default()
    };
    let ask = |model: &str, principal: &pb::Principal| pb::RouteRequest {
        model: model.into(),
        principal: Some(principal.clone()),
        ..Default::default()
    };
    for (model, upstream) in [
        ("@mycred/gpt-4o-mini", "gpt-4o-mini"),
        ("@mycred", "gpt-4o"),
        ("openai/gpt-4o-mini", "gpt-4o-mini"),
    ] {
        let plan = r.route(ask(model, &acme)).await.unwrap();
        let t = &plan.targets[0];
        assert_eq!(plan.targets.len(), 1, "{model}");
        assert_eq!(
            (
                t.provider.as_str(),
                t.model.as_str(),
                t.credential_id.as_deref(),
                t.byok
            ),
            ("mycred", upstream, Some("cred_1"), true),
            "{model}"
        );
        assert_eq!(t.key, UNTRACKED);
        assert!(t.price.unwrap().input_per_mtok > 0.0, "priced from the catalog");
    }
    // Platform models and configured slugs stay the platform's.
    for model in ["gpt-4o-mini", "@emu/gpt-4o-mini", "backup/x"] {
        let t = r.route(ask(model, &acme)).await.unwrap().targets.remove(0);
        assert!(!t.byok && t.credential_id.is_none(), "{model}");
    }
    // Another org never reaches it: `@mycred` names nothing, `openai/` is
    // the configured provider.
    let beta = pb::Principal {
        org_id: "org_beta".into(),
        ..Default::default()
    };
    let e = r.route(ask("@mycred/gpt-4o-mini", &beta)).await.unwrap_err();
    assert_eq!(e.http_status(), 404);
    let t = r
        .route(ask("openai/gpt-4o-mini", &beta))
        .await
        .unwrap()
        .targets
        .remove(0);
    assert_eq!((t.provider.as_str(), t.byok), ("emu", false));
    // Policies apply to BYOK targets by name and type.
    let denied = pb::Principal {
        policies: vec![pb::Policy {
            scope: "org".into(),
            denied_providers: vec!["mycred".into()],
            ..Default::default()
        }],
        ..acme.clone()
    };
    let e = r.route(ask("@mycred/gpt-4o-mini", &denied)).await.unwrap_err();
    assert_eq!(e.http_status(), 403);
    // Capabilities too: an embedding model does not chat.
    let e = r
        .route(ask("@mycred/text-embedding-3-small", &acme))
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), 400);
}
