use std::collections::HashMap;

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
    assert_eq!(t.price.unwrap().input_per_mtok, 0.0);
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
    assert_eq!(ids, ["gpt-4o-mini", "team/fast"]);
}
