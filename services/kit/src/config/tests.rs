use super::*;

const SMALLEST: &str = r#"
data_dir: ./data                       # SQLite store and anything else on disk
edge:
  http_addr: 127.0.0.1:8080            # OpenAI REST, Anthropic REST, gRPC-Web
  grpc_addr: 127.0.0.1:8081            # public gRPC
providers:
  - name: openai                       # also the slug: @openai/<model>
    type: openai
    base_url: https://api.openai.com/v1   # optional; each type has its default
    api_key: ${OPENAI_API_KEY}
models:
  - name: gpt-4o-mini                  # a platform model, used by name
    target: openai/gpt-4o-mini
    price: { input_per_mtok: 0.15, output_per_mtok: 0.60 }
"#;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn smallest_config_works_as_written() {
    let c = Config::parse(SMALLEST, "gateway.yaml", &env(&[("OPENAI_API_KEY", "sk-test")])).unwrap();
    assert_eq!(c.providers.len(), 1);
    assert_eq!(
        c.providers[0].api_key.as_ref().map(Secret::expose),
        Some("sk-test")
    );
    let t = &c.models[0].targets[0];
    assert_eq!(t.provider, "openai");
    assert_eq!(t.upstream_model, "gpt-4o-mini");
    assert!((t.price.unwrap().output_per_mtok - 0.60).abs() < 1e-12);
    assert_eq!(c.edge.grpc_addr.port(), 8081);
}

#[test]
fn unset_key_disables_the_provider_and_its_models() {
    let c = Config::parse(SMALLEST, "gateway.yaml", &env(&[])).unwrap();
    assert!(c.providers.is_empty());
    assert!(c.models.is_empty());
    assert_eq!(c.disabled_providers[0].name, "openai");
    assert!(c.disabled_providers[0].reason.contains("OPENAI_API_KEY"));
}

#[test]
fn unknown_key_names_file_key_and_nearest() {
    let text = SMALLEST.replace("    base_url:", "    bse_url:");
    let e = Config::parse(&text, "gateway.yaml", &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("gateway.yaml: "), "{e}");
    assert!(e.contains("providers[0].bse_url"), "{e}");
    assert!(e.contains("did you mean `base_url`"), "{e}");

    let e = Config::parse("edge:\n  http_adr: 127.0.0.1:1\n", "g.yaml", &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("edge.http_adr") && e.contains("`http_addr`"), "{e}");

    let e = Config::parse("modles: []\n", "g.yaml", &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`modles`") && e.contains("`models`"), "{e}");
}

#[test]
fn unknown_provider_type_suggests() {
    let text = SMALLEST.replace("type: openai", "type: opnai");
    let e = Config::parse(&text, "g.yaml", &env(&[])).unwrap_err().to_string();
    assert!(e.contains("opnai") && e.contains("`openai`"), "{e}");
}

#[test]
fn model_target_must_name_a_provider() {
    let text = SMALLEST.replace("target: openai/gpt-4o-mini", "target: opena/gpt-4o-mini");
    let e = Config::parse(&text, "g.yaml", &env(&[("OPENAI_API_KEY", "k")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("models[0].target") && e.contains("`openai`"), "{e}");
    let text = SMALLEST.replace("target: openai/gpt-4o-mini", "target: gpt-4o-mini");
    assert!(Config::parse(&text, "g.yaml", &env(&[("OPENAI_API_KEY", "k")])).is_err());
}

#[test]
fn defaults_and_expansion() {
    let c = Config::parse("data_dir: ${DIR:-/tmp/x}/d\n", "g.yaml", &env(&[])).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/tmp/x/d"));
    assert_eq!(c.edge.http_addr.port(), 8080);
    let e = Config::parse("data_dir: ${NOPE}\n", "g.yaml", &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("NOPE") && e.contains("data_dir"), "{e}");
    let c = Config::parse("", "g.yaml", &env(&[])).unwrap();
    assert!(c.providers.is_empty());
}

#[test]
fn database_section_is_postgres_and_its_url_a_secret() {
    let c = Config::parse("{}", "g.yaml", &env(&[])).unwrap();
    assert!(c.database.is_none(), "absent: SQLite under data_dir");

    let text = "database:\n  url: postgres://gw:${PG_PASS}@db.internal:5433/llmgw\n";
    let c = Config::parse(text, "g.yaml", &env(&[("PG_PASS", "s3cr3t")])).unwrap();
    let db = c.database.as_ref().unwrap();
    assert_eq!(db.url.expose(), "postgres://gw:s3cr3t@db.internal:5433/llmgw");
    assert_eq!(db.max_connections, 16);
    assert_eq!(db.redacted_url(), "postgres://gw:***@db.internal:5433/llmgw");
    assert!(!format!("{c:?}").contains("s3cr3t"));

    let text = "database: { url: 'postgresql://gw@h/db?password=s3cr3t', max_connections: 4 }\n";
    let c = Config::parse(text, "g.yaml", &env(&[])).unwrap();
    let db = c.database.unwrap();
    assert_eq!(db.max_connections, 4);
    assert_eq!(db.redacted_url(), "postgresql://gw@h/db");

    for (text, want) in [
        (
            "database: { url: 'mysql://gw:s3cr3t@h/db' }",
            "must be a postgres:// URL",
        ),
        (
            "database: { url: 'postgres://gw:s3cr3t@h/db', max_connections: 0 }",
            "above 0",
        ),
        (
            "database: { url: 'postgres://gw:s3cr3t@h/db', max_conections: 4 }",
            "did you mean `max_connections`",
        ),
        ("database: { url: '${PG_URL}' }", "`database.url` uses ${PG_URL}"),
    ] {
        let e = Config::parse(text, "g.yaml", &env(&[])).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
    }
}

#[test]
fn provider_timeout_and_type_errors() {
    let text = SMALLEST.replace("    type: openai", "    type: openai\n    timeout: 250ms");
    let c = Config::parse(&text, "g.yaml", &env(&[("OPENAI_API_KEY", "k")])).unwrap();
    assert_eq!(c.providers[0].timeout, Duration::from_millis(250));
    let e = Config::parse("edge:\n  http_addr: 42\n", "g.yaml", &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("edge.http_addr"), "{e}");
}

#[test]
fn shipped_example_config_is_valid() {
    let text = include_str!("../../../../deploy/gateway.yaml");
    let none = Config::parse(text, "deploy/gateway.yaml", &env(&[])).unwrap();
    assert!(none.providers.is_empty(), "no key set, no provider");
    assert!(none.models.is_empty());
    let some = Config::parse(
        text,
        "deploy/gateway.yaml",
        &env(&[
            ("OPENAI_API_KEY", "sk-x"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
            ("GROQ_API_KEY", "g"),
        ]),
    )
    .unwrap();
    let names: Vec<_> = some.providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["openai", "groq"]);
    assert_eq!(some.providers[0].base_url, "http://127.0.0.1:9/v1");
    assert!(some.models.iter().any(|m| m.name == "gpt-4o-mini"));
    assert!(
        some.models
            .iter()
            .flat_map(|m| &m.targets)
            .all(|t| t.provider == "openai" || t.provider == "groq")
    );
}

fn provider(yaml: &str) -> Result<Config, ConfigError> {
    Config::parse(&format!("providers:\n{yaml}"), "p.yaml", &env(&[]))
}

#[test]
fn every_provider_type_and_its_requirements() {
    // Named hosts are rows of data with their default base URL.
    let c = provider("  - { name: g, type: groq, api_key: k }\n").unwrap();
    assert_eq!(c.providers[0].base_url, "https://api.groq.com/openai/v1");
    assert!(matches!(c.providers[0].kind, ProviderKind::Compatible(h) if h.type_name == "groq"));
    let e = provider("  - { name: l, type: openai-compatible, api_key: k }\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`l`") && e.contains("base_url"), "{e}");

    // google with project and location is Vertex AI; its URL comes from the location.
    let c =
        provider("  - { name: v, type: google, project_id: p, location: europe-west4, credentials: '{}' }\n")
            .unwrap();
    assert_eq!(c.providers[0].kind, ProviderKind::VertexAi);
    assert_eq!(
        c.providers[0].base_url,
        "https://europe-west4-aiplatform.googleapis.com/v1"
    );
    let e = provider("  - { name: v, type: vertex-ai, location: us-central1, credentials: '{}' }\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`v`") && e.contains("project_id"), "{e}");

    let c = provider(
        "  - { name: aws, type: bedrock, region: eu-west-1, access_key_id: a, secret_access_key: s }\n",
    )
    .unwrap();
    assert_eq!(
        c.providers[0].base_url,
        "https://bedrock-runtime.eu-west-1.amazonaws.com"
    );
    let e = provider("  - { name: aws, type: bedrock, access_key_id: a, secret_access_key: s }\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`aws`") && e.contains("region"), "{e}");

    let e = provider("  - { name: az, type: azure-openai, base_url: 'https://x.openai.azure.com' }\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`az`") && e.contains("azure_ad_token"), "{e}");
    let c = provider("  - { name: an, type: anthropic, api_key: k }\n").unwrap();
    assert_eq!(c.providers[0].default_max_tokens, 4096);
    assert_eq!(c.providers[0].base_url, "https://api.anthropic.com/v1");

    let e = provider("  - { name: x, type: antropic }\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`anthropic`"), "{e}");
}

#[test]
fn pools_and_routing_configs_are_read_and_checked() {
    let base = r#"
providers:
  - { name: a, type: openai, base_url: "http://127.0.0.1:1/v1" }
  - { name: off, type: openai, api_key: "${UNSET_KEY}" }
models:
  - name: pool
    aliases: [p]
    strategy: least-busy
    fallback: false
    price: { input_per_mtok: 1, output_per_mtok: 2 }
    targets:
      - { target: a/x, weight: 2, context_window: 8000, capabilities: [tools, streaming] }
      - { target: off/y }
      - { target: a/z, price: { input_per_mtok: 3, output_per_mtok: 4 } }
routing:
  ejection: { consecutive_failures: 2, base_time: 5s }
  configs:
    - name: c
      version: 3
      sticky: user
      variants:
        - { name: t, when: { users: [u], headers: { x-h: v } } }
        - { name: r, rollout: 12.5, model: p }
        - { name: w, weight: 4, params: { temperature: 0.5, seed: 9 }, system: hi }
"#;
    let c = Config::parse(base, "g.yaml", &env(&[])).unwrap();
    let m = &c.models[0];
    assert_eq!(
        (m.strategy, m.fallback, m.aliases.as_slice()),
        (Strategy::LeastBusy, false, &["p".to_owned()][..])
    );
    assert_eq!(m.targets.len(), 2, "the disabled provider's target drops out");
    assert_eq!(
        (m.targets[0].weight, m.targets[0].context_window),
        (2, Some(8000))
    );
    assert!(m.targets[0].capabilities.is_some_and(|c| c.tools && !c.vision));
    assert_eq!(
        m.targets[0].price.unwrap().output_per_mtok,
        2.0,
        "the model's price by default"
    );
    assert_eq!(
        m.targets[1].price.unwrap().output_per_mtok,
        4.0,
        "the target's own"
    );
    assert_eq!(c.routing.ejection.consecutive_failures, 2);
    assert_eq!(
        c.routing.ejection.max_time,
        std::time::Duration::from_secs(300),
        "default kept"
    );
    let rc = &c.routing.configs[0];
    assert_eq!((rc.name.as_str(), rc.version, rc.sticky), ("c", 3, Sticky::User));
    assert!(matches!(&rc.variants[0].choice, Choice::When(w) if w.users == ["u"]));
    assert!(matches!(rc.variants[1].choice, Choice::Rollout(r) if r == 12.5));
    assert!(matches!(rc.variants[2].choice, Choice::Weight(4)));
    assert_eq!(rc.variants[2].params.seed, Some(9));

    for (from, to, want) in [
        ("strategy: least-busy", "strategy: fastest", "unknown value"),
        ("weight: 2,", "weight: 0,", "weight` must be above 0"),
        ("rollout: 12.5", "rollout: 120", "percentage"),
        (
            "rollout: 12.5",
            "rollout: 5, weight: 1",
            "one of `when`, `rollout` or `weight`",
        ),
        (
            "temperature: 0.5",
            "temprature: 0.5",
            "did you mean `temperature`",
        ),
        ("aliases: [p]", "aliases: [pool]", "defined twice"),
        (
            "consecutive_failures: 2",
            "consecutive_failures: 0",
            "routing.ejection",
        ),
        ("name: c\n", "name: c@1\n", "without `@`"),
    ] {
        let text = base.replace(from, to);
        assert_ne!(text, base, "{from}");
        let e = Config::parse(&text, "g.yaml", &env(&[])).unwrap_err().to_string();
        assert!(e.contains(want), "{from} -> {to}: {e}");
    }
    let both = base.replace("    targets:\n", "    target: a/x\n    targets:\n");
    let e = Config::parse(&both, "g.yaml", &env(&[])).unwrap_err().to_string();
    assert!(e.contains("both `target` and `targets`"), "{e}");
}

#[test]
fn metering_retention_defaults_to_90_days_and_0_keeps_forever() {
    let c = Config::parse(SMALLEST, "gateway.yaml", &env(&[])).unwrap();
    assert_eq!(c.metering.retention, Duration::from_secs(90 * 86_400));
    for (text, want) in [("30d", 30 * 86_400), ("0", 0), ("12h", 12 * 3600)] {
        let yaml = format!("{SMALLEST}metering:\n  retention: {text}\n");
        let c = Config::parse(&yaml, "gateway.yaml", &env(&[])).unwrap();
        assert_eq!(c.metering.retention, Duration::from_secs(want), "{text}");
    }
    let yaml = format!("{SMALLEST}metering:\n  retention: forever\n");
    assert!(Config::parse(&yaml, "gateway.yaml", &env(&[])).is_err());
}

#[test]
fn byok_settings_and_the_previous_master_key() {
    let c = Config::parse(
        "byok:\n  allowed_base_urls: [http://proxy.internal/v1]\n",
        "g.yaml",
        &env(&[("LLMGW_MASTER_KEY", "a"), ("LLMGW_MASTER_KEY_PREVIOUS", "b")]),
    )
    .unwrap();
    assert_eq!(c.byok.allowed_base_urls, ["http://proxy.internal/v1"]);
    assert_eq!(c.master_key_previous.as_ref().map(Secret::expose), Some("b"));
    let e = Config::parse("byok:\n  allowed_urls: []\n", "g.yaml", &env(&[])).unwrap_err();
    assert!(e.message.contains("allowed_urls"), "{e}");
    assert!(
        Config::parse("{}", "g.yaml", &env(&[]))
            .unwrap()
            .byok
            .allowed_base_urls
            .is_empty()
    );
}

#[test]
fn a_region_or_location_is_a_host_label() {
    let text = "providers:\n  - name: b\n    type: bedrock\n    region: evil.example/#\n    access_key_id: a\n    secret_access_key: s\n";
    let e = Config::parse(text, "g.yaml", &env(&[])).unwrap_err();
    assert!(
        e.message.contains("`region` must be letters, digits and `-`"),
        "{e}"
    );
    // The shared validation, as BYOK uses it: a spec in, a provider out.
    let spec = ProviderSpec {
        name: "v".into(),
        kind: "google".into(),
        project_id: Some("p".into()),
        location: Some("europe-west4".into()),
        credentials: Some("{}".into()),
        ..ProviderSpec::default()
    };
    let p = provider_config(spec, ProviderKind::Google, "credential").unwrap();
    assert_eq!(p.kind, ProviderKind::VertexAi);
    assert_eq!(p.base_url, "https://europe-west4-aiplatform.googleapis.com/v1");
}

#[test]
fn telemetry_is_off_by_default_and_the_env_var_turns_it_on() {
    let c = Config::parse(SMALLEST, "gateway.yaml", &env(&[])).unwrap();
    assert_eq!(c.telemetry, TelemetryConfig::default());
    assert_eq!(c.telemetry.otlp_endpoint, None);
    assert!((c.telemetry.sample_ratio - 1.0).abs() < f64::EPSILON);

    let from_env = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]);
    let c = Config::parse(SMALLEST, "gateway.yaml", &from_env).unwrap();
    assert_eq!(
        c.telemetry.otlp_endpoint.as_deref(),
        Some("http://collector:4317")
    );

    // The file wins over the environment.
    let yaml =
        format!("{SMALLEST}telemetry:\n  otlp_endpoint: http://127.0.0.1:4317\n  sample_ratio: 0.25\n");
    let c = Config::parse(&yaml, "gateway.yaml", &from_env).unwrap();
    assert_eq!(
        c.telemetry.otlp_endpoint.as_deref(),
        Some("http://127.0.0.1:4317")
    );
    assert!((c.telemetry.sample_ratio - 0.25).abs() < f64::EPSILON);

    // `${VAR}` expansion works here as anywhere.
    let yaml = format!("{SMALLEST}telemetry:\n  otlp_endpoint: ${{OTEL_AT}}\n");
    let c = Config::parse(&yaml, "gateway.yaml", &env(&[("OTEL_AT", "http://otel:4317")])).unwrap();
    assert_eq!(c.telemetry.otlp_endpoint.as_deref(), Some("http://otel:4317"));
}

#[test]
fn telemetry_errors_name_the_key() {
    let bad = |section: &str, vars: &[(&str, &str)]| {
        let yaml = format!("{SMALLEST}{section}");
        Config::parse(&yaml, "gateway.yaml", &env(vars))
            .unwrap_err()
            .to_string()
    };
    let e = bad("telemetry:\n  sample_ratio: 1.5\n", &[]);
    assert!(e.contains("telemetry.sample_ratio"), "{e}");
    let e = bad("telemetry:\n  sample_ratio: -0.1\n", &[]);
    assert!(e.contains("telemetry.sample_ratio"), "{e}");
    let e = bad("telemetry:\n  otlp_endpoint: collector:4317\n", &[]);
    assert!(e.contains("telemetry.otlp_endpoint"), "{e}");
    let e = bad("telemetry:\n  otlp_endpoint: https://collector:4317\n", &[]);
    assert!(e.contains("telemetry.otlp_endpoint"), "{e}");
    let e = bad("", &[("OTEL_EXPORTER_OTLP_ENDPOINT", "grpc://x:4317")]);
    assert!(e.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{e}");
    let e = bad("telemetry:\n  otlp_endpoint: http://\n", &[]);
    assert!(e.contains("telemetry.otlp_endpoint"), "{e}");
    let e = bad("telemetry:\n  endpoint: http://x:4317\n", &[]);
    assert!(e.contains("telemetry.endpoint"), "{e}");
}

#[test]
fn service_addresses_are_ips_or_dns_names() {
    let parse = |addr: &str| {
        Config::parse(
            &format!("services:\n  router: {{addr: \"{addr}\"}}\n"),
            "g.yaml",
            &env(&[]),
        )
    };
    for good in [
        "10.0.0.5:50062",
        "[::1]:50062",
        "llmgw-router.llmgw.svc.cluster.local:50062",
        "router:1",
    ] {
        assert_eq!(parse(good).unwrap().services.router.addr, good);
    }
    for bad in [
        "router",
        "http://router:50062",
        "router:99999",
        ":50062",
        "a b:1",
        "router:50062/x",
        "-x:1",
    ] {
        let e = parse(bad).unwrap_err().to_string();
        assert!(e.contains("services.router.addr"), "{bad}: {e}");
    }
}

#[test]
fn consul_discovery_and_shutdown_settings() {
    let c = Config::parse("", "g.yaml", &env(&[])).unwrap();
    assert_eq!(c.services.discovery, Discovery::Static);
    assert_eq!(c.services.consul.addr, "http://127.0.0.1:8500");
    assert_eq!(c.services.consul.advertise_host, None);
    assert_eq!(c.shutdown.drain, Duration::from_secs(30));

    let text = r#"
services:
  discovery: consul
  consul:
    addr: http://10.0.0.2:8500
    advertise_host: ${POD_IP}
    check_interval: 1s
    deregister_critical_after: 2m
shutdown:
  drain: 5s
  deregister_wait: 250ms
"#;
    let c = Config::parse(text, "g.yaml", &env(&[("POD_IP", "10.0.0.5")])).unwrap();
    assert_eq!(c.services.discovery, Discovery::Consul);
    assert_eq!(c.services.consul.addr, "http://10.0.0.2:8500");
    assert_eq!(c.services.consul.advertise_host.as_deref(), Some("10.0.0.5"));
    assert_eq!(c.services.consul.check_interval, Duration::from_secs(1));
    assert_eq!(
        c.services.consul.deregister_critical_after,
        Duration::from_secs(120)
    );
    assert_eq!(c.shutdown.drain, Duration::from_secs(5));
    assert_eq!(c.shutdown.deregister_wait, Duration::from_millis(250));

    let error = |yaml: &str| Config::parse(yaml, "g.yaml", &env(&[])).unwrap_err().to_string();
    for (yaml, names) in [
        ("services:\n  discovery: zookeeper\n", "services.discovery"),
        (
            "services:\n  consul:\n    addr: 127.0.0.1:8500\n",
            "services.consul.addr",
        ),
        (
            "services:\n  consul:\n    check_interval: 100ms\n",
            "services.consul.check_interval",
        ),
        ("shutdown:\n  drian: 1s\n", "shutdown.drian"),
    ] {
        let e = error(yaml);
        assert!(e.contains(names), "{e}");
    }
    assert!(error("shutdown:\n  drian: 1s\n").contains("`drain`"));
}

#[test]
fn cache_settings_defaults_and_errors_name_the_key() {
    let c = Config::parse("", "g.yaml", &env(&[])).unwrap();
    assert_eq!(c.cache, CacheConfig::default());
    assert_eq!(c.cache.default_ttl, Duration::from_secs(300));

    let text = "cache:\n  max_bytes: 1048576\n  max_entry_bytes: 4096\n  default_ttl: 10m\n  max_ttl: 1h\n";
    let c = Config::parse(text, "g.yaml", &env(&[])).unwrap();
    assert_eq!(c.cache.max_bytes, 1 << 20);
    assert_eq!(c.cache.max_entry_bytes, 4096);
    assert_eq!(c.cache.default_ttl, Duration::from_secs(600));
    assert_eq!(c.cache.max_ttl, Duration::from_secs(3600));

    let error = |yaml: &str| Config::parse(yaml, "g.yaml", &env(&[])).unwrap_err().to_string();
    for (yaml, names) in [
        ("cache:\n  max_byte: 1\n", "cache.max_byte"),
        ("cache:\n  default_ttl: 2h\n  max_ttl: 1h\n", "cache.default_ttl"),
        ("cache:\n  max_ttl: 0s\n", "cache.max_ttl"),
        ("cache:\n  default_ttl: soon\n", "cache.default_ttl"),
    ] {
        let e = error(yaml);
        assert!(e.contains(names), "{yaml}: {e}");
    }
    assert!(error("cache:\n  max_byte: 1\n").contains("`max_bytes`"));
}

#[test]
fn a_routing_config_may_cache_its_answers() {
    let text = r#"
routing:
  configs:
    - name: cached
      cache: { ttl: 10m }
      variants: [{ name: only }]
    - name: default-ttl
      cache: {}
      variants: [{ name: only }]
    - name: plain
      variants: [{ name: only }]
"#;
    let c = Config::parse(text, "g.yaml", &env(&[])).unwrap();
    let cache: Vec<_> = c.routing.configs.iter().map(|c| c.cache).collect();
    assert_eq!(
        cache,
        [
            Some(ConfigCache {
                ttl: Some(Duration::from_secs(600))
            }),
            Some(ConfigCache { ttl: None }),
            None
        ]
    );
    let e = Config::parse(
        "routing:\n  configs:\n    - name: c\n      cache: { tll: 1m }\n      variants: [{ name: v }]\n",
        "g.yaml",
        &env(&[]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("tll"), "{e}");
}

#[test]
fn upstream_pool_settings() {
    let c = Config::parse("", "g.yaml", &env(&[])).unwrap();
    assert_eq!(c.upstream.idle_timeout, Duration::from_secs(90));
    assert_eq!(c.upstream.max_idle_per_host, 256);
    let c = Config::parse(
        "upstream:\n  idle_timeout: 1500ms\n  max_idle_per_host: 8\n",
        "g.yaml",
        &env(&[]),
    )
    .unwrap();
    assert_eq!(c.upstream.idle_timeout, Duration::from_millis(1500));
    assert_eq!(c.upstream.max_idle_per_host, 8);
    let e = Config::parse("upstream:\n  idle: 1s\n", "g.yaml", &env(&[])).unwrap_err();
    assert!(e.to_string().contains("upstream"), "{e}");
}
