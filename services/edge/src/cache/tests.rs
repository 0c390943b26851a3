use std::collections::HashMap;

use futures_util::StreamExt as _;

use super::*;

fn directive(v: &str) -> Directive {
    let mut h = HeaderMap::new();
    h.insert(http::header::CACHE_CONTROL, v.parse().unwrap());
    Directive::from_headers(&h)
}

fn config() -> CacheConfig {
    CacheConfig {
        max_bytes: 1 << 20,
        max_entry_bytes: 64 << 10,
        default_ttl: Duration::from_secs(300),
        max_ttl: Duration::from_secs(3600),
    }
}

fn principal(org: &str, policy_ttl: Option<u32>) -> pb::Principal {
    pb::Principal {
        org_id: org.to_owned(),
        policies: vec![pb::Policy {
            scope: "key".to_owned(),
            cache_ttl_secs: policy_ttl,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn request(text: &str) -> pb::ChatRequest {
    pb::ChatRequest {
        model: "gpt-4o-mini".to_owned(),
        messages: vec![pb::Message {
            role: pb::Role::User as i32,
            content: Some(pb::Content {
                value: Some(pb::content::Value::Text(text.to_owned())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn lookup(plan: Option<Plan>) -> Lookup {
    match plan {
        Some(Plan::Use(l)) => l,
        Some(Plan::Bypass) => panic!("bypass"),
        None => panic!("not involved"),
    }
}

fn answer(text: &str) -> pb::ChatResponse {
    pb::ChatResponse {
        id: "chatcmpl-1".to_owned(),
        created: 7,
        model: "gpt-4o-mini".to_owned(),
        choices: vec![pb::Choice {
            index: 0,
            message: Some(pb::Message {
                role: pb::Role::Assistant as i32,
                content: Some(pb::Content {
                    value: Some(pb::content::Value::Text(text.to_owned())),
                }),
                tool_calls: vec![pb::ToolCall {
                    id: "call_1".to_owned(),
                    r#type: "function".to_owned(),
                    function: Some(pb::FunctionCall {
                        name: "f".to_owned(),
                        arguments: "{\"a\":1}".to_owned(),
                    }),
                }],
                ..Default::default()
            }),
            finish_reason: pb::FinishReason::Stop as i32,
            ..Default::default()
        }],
        usage: Some(pb::Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
            total_tokens: 7,
            cost_usd: Some(0.5),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn cache_control_directives_are_read() {
    assert_eq!(
        directive("max-age=60"),
        Directive {
            max_age: Some(60),
            ..Default::default()
        }
    );
    let d = directive("No-Cache, max-age=\"5\", private");
    assert!(d.no_cache && !d.no_store && d.max_age == Some(5));
    assert!(directive("no-store").no_store);
    assert!(directive("max-age=soon").is_empty());
    assert!(Directive::from_headers(&HeaderMap::new()).is_empty());
}

#[test]
fn only_an_opt_in_involves_the_cache() {
    let cache = Cache::new(&config(), None).unwrap();
    let meta = pb::RoutingMetadata::default();
    let req = request("hi");
    let plan = |p: &pb::Principal, ttl: Option<u32>, d: &str| cache.plan(p, &meta, ttl, directive(d), &req);
    let none = principal("o", None);
    assert!(plan(&none, None, "").is_none(), "nothing asked");
    assert!(matches!(plan(&none, None, "no-cache"), Some(Plan::Bypass)));
    assert!(matches!(
        plan(&principal("o", Some(60)), None, "no-store"),
        Some(Plan::Bypass)
    ));
    assert!(matches!(plan(&none, None, "max-age=0"), Some(Plan::Bypass)));

    let l = lookup(plan(&none, None, "max-age=60"));
    assert_eq!(
        (l.read, l.write),
        (Some(Duration::from_secs(60)), Some(Duration::from_secs(60)))
    );
    // A policy's 0 is the default TTL; the config's TTL when no policy.
    let l = lookup(plan(&principal("o", Some(0)), None, ""));
    assert_eq!(l.write, Some(Duration::from_secs(300)));
    let l = lookup(plan(&none, Some(30), ""));
    assert_eq!(l.write, Some(Duration::from_secs(30)));
    // Capped by max_ttl; no-cache writes without reading.
    let l = lookup(plan(&none, None, "max-age=999999, no-cache"));
    assert_eq!((l.read, l.write), (None, Some(Duration::from_secs(3600))));

    let off = Cache::new(
        &CacheConfig {
            max_bytes: 0,
            ..config()
        },
        None,
    )
    .unwrap();
    assert!(matches!(
        off.plan(&none, &meta, None, directive("max-age=60"), &req),
        Some(Plan::Bypass)
    ));
}

#[test]
fn the_key_is_the_org_and_what_changes_the_answer() {
    let cache = Cache::new(&config(), None).unwrap();
    let meta = pb::RoutingMetadata::default();
    let k = |org: &str, req: &pb::ChatRequest| {
        lookup(cache.plan(&principal(org, Some(0)), &meta, None, Directive::default(), req)).key
    };
    let base = request("hi");
    let mut same = base.clone();
    same.stream = true;
    same.user = Some("u1".to_owned());
    same.metadata = HashMap::from([("a".to_owned(), "b".to_owned())]);
    same.stream_options = Some(pb::StreamOptions {
        include_usage: Some(true),
    });
    assert_eq!(
        k("a", &base),
        k("a", &same),
        "stream, user, metadata do not count"
    );
    assert_ne!(k("a", &base), k("b", &base), "orgs never share");
    let mut hotter = base.clone();
    hotter.temperature = Some(0.9);
    assert_ne!(k("a", &base), k("a", &hotter));
    assert_ne!(k("a", &base), k("a", &request("hello")));
    let mut other_model = base.clone();
    other_model.model = "gpt-4o".to_owned();
    assert_ne!(k("a", &base), k("a", &other_model));
    let variant = pb::RoutingMetadata {
        config: Some("c".to_owned()),
        variant: Some("v".to_owned()),
        ..Default::default()
    };
    let kv = lookup(cache.plan(
        &principal("a", Some(0)),
        &variant,
        None,
        Directive::default(),
        &base,
    ))
    .key;
    assert_ne!(k("a", &base), kv, "config and variant count");
}

#[tokio::test]
async fn stored_answers_are_served_until_they_expire() {
    let cache = Arc::new(Cache::new(&config(), None).unwrap());
    let meta = pb::RoutingMetadata::default();
    let req = request("hi");
    let p = principal("o", None);
    let l = lookup(cache.plan(&p, &meta, None, directive("max-age=1"), &req));
    assert!(cache.get(&l).await.is_none());
    cache.put(&l, &answer("hello"));
    let hit = cache.get(&l).await.expect("a hit");
    assert_eq!(hit.response.choices.len(), 1);
    assert_eq!(hit.response.usage.unwrap().cost_usd, None, "cost is not kept");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(cache.get(&l).await.is_none(), "expired");
}

#[tokio::test]
async fn a_replayed_stream_assembles_into_the_same_answer() {
    let resp = answer("hello world");
    let meta = pb::RoutingMetadata {
        cache: Some("hit".to_owned()),
        ..Default::default()
    };
    let chunks: Vec<_> = replay(resp.clone(), &meta, true).collect().await;
    let chunks: Vec<pb::ChatChunk> = chunks.into_iter().map(Result::unwrap).collect();
    assert_eq!(chunks.len(), 3, "content, finish, usage");
    assert!(chunks[1].metadata.is_some() && chunks[2].usage.is_some());
    let mut a = Assembly::default();
    for c in &chunks {
        a.add(c);
    }
    assert!(!a.unstorable);
    assert_eq!(a.resp.choices, resp.choices);
    assert_eq!(a.resp.usage, resp.usage);
    let without: Vec<_> = replay(resp, &meta, false).collect().await;
    assert_eq!(without.len(), 2);
}

#[tokio::test]
async fn only_a_stream_that_ended_cleanly_is_stored() {
    let cache = Arc::new(Cache::new(&config(), None).unwrap());
    let meta = pb::RoutingMetadata::default();
    let p = principal("o", Some(60));
    let good: Vec<pb::ChatChunk> = replay(answer("streamed"), &pb::RoutingMetadata::default(), false)
        .map(Result::unwrap)
        .collect()
        .await;
    let chunks = |fail: bool| -> ChunkStream {
        let mut v: Vec<Result<pb::ChatChunk, GwError>> = good.iter().cloned().map(Ok).collect();
        if fail {
            v.insert(1, Err(GwError::internal("broken")));
        }
        Box::pin(futures_util::stream::iter(v))
    };
    let l = lookup(cache.plan(&p, &meta, None, Directive::default(), &request("a")));
    let s = store_when_done(chunks(true), cache.clone(), l, meta.clone());
    let _: Vec<_> = s.collect().await;
    let l = lookup(cache.plan(&p, &meta, None, Directive::default(), &request("a")));
    assert!(cache.get(&l).await.is_none(), "a failed stream is not stored");

    let s = store_when_done(chunks(false), cache.clone(), l, meta.clone());
    let _: Vec<_> = s.collect().await;
    let l = lookup(cache.plan(&p, &meta, None, Directive::default(), &request("a")));
    let hit = cache.get(&l).await.expect("stored once complete");
    assert_eq!(hit.response.choices, answer("streamed").choices);
}
