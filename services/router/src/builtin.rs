//! The built-in model catalog: common models with their prices, capabilities
//! and context windows, compiled in from `catalog.yaml`. The user's config adds
//! to it and overrides it; this module only parses the data and looks it up.

use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

use llmgw_kit::config::{Capabilities as Caps, Capability, Price};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

const CATALOG: &str = include_str!("../catalog.yaml");

/// One model of the built-in catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltinModel {
    /// The name clients use.
    pub id: String,
    pub aliases: Vec<String>,
    pub kind: ModelKind,
    /// Tokens, as published by the model's maker.
    pub context_window: u32,
    pub max_output_tokens: Option<u32>,
    pub capabilities: Caps,
    /// The first-party (or most common) list price; hosts may charge otherwise.
    pub price: Price,
    /// Provider type -> the model id that provider's API expects, in file order.
    pub offered_by: Vec<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Chat,
    Embedding,
    /// Legacy `/v1/completions` only.
    Completion,
    /// `/v1/images/*`: priced per image made (output units).
    Image,
    /// `/v1/audio/*`: priced per second heard or character spoken (input units).
    Audio,
}

/// The parsed catalog with its indexes.
#[derive(Debug)]
pub struct Builtin {
    models: Vec<BuiltinModel>,
    /// Every id and alias -> index into `models`.
    by_name: HashMap<String, usize>,
    /// Provider type -> upstream id -> index into `models`.
    by_upstream: HashMap<String, HashMap<String, usize>>,
}

/// Bedrock cross-region inference profile prefixes (`us.anthropic.claude-…`):
/// the model behind a profile is the base id without it.
const BEDROCK_PROFILE_PREFIXES: [&str; 8] = ["us", "us-gov", "eu", "apac", "jp", "au", "ca", "global"];

static BUILTIN: LazyLock<Builtin> = LazyLock::new(|| match Builtin::parse(CATALOG) {
    Ok(builtin) => builtin,
    Err(e) => invalid_catalog(&e),
});

#[expect(
    clippy::panic,
    reason = "the compiled-in catalog is checked by a unit test, so this never ships"
)]
fn invalid_catalog(e: &str) -> ! {
    panic!("built-in catalog.yaml is invalid: {e}")
}

impl Builtin {
    /// The compiled-in catalog, parsed on first use.
    pub fn load() -> &'static Builtin {
        &BUILTIN
    }

    /// The model with this id or alias.
    pub fn get(&self, name: &str) -> Option<&BuiltinModel> {
        self.by_name.get(name).map(|&i| &self.models[i])
    }

    /// Every model, in file order.
    pub fn models(&self) -> &[BuiltinModel] {
        &self.models
    }

    /// The entry whose `offered_by` has this provider type with this upstream id
    /// (e.g. `("bedrock", "anthropic.claude-3-5-haiku-20241022-v1:0")`), or, failing
    /// that, whose id/alias equals `upstream` — used to find capabilities/price of a
    /// configured target. A Bedrock inference profile id (`us.anthropic.…`) finds
    /// its base model.
    pub fn for_upstream(&self, provider_type: &str, upstream: &str) -> Option<&BuiltinModel> {
        let offered = self.by_upstream.get(provider_type);
        let exact = offered.and_then(|ids| ids.get(upstream));
        let profile = || {
            if provider_type != "bedrock" {
                return None;
            }
            let (prefix, base) = upstream.split_once('.')?;
            if !BEDROCK_PROFILE_PREFIXES.contains(&prefix) {
                return None;
            }
            offered?.get(base)
        };
        match exact.or_else(profile) {
            Some(&i) => Some(&self.models[i]),
            None => self.get(upstream),
        }
    }

    /// Parses and indexes a catalog; fails on a schema error or a name (id or
    /// alias) or `(provider type, upstream id)` pair given twice.
    fn parse(text: &str) -> Result<Builtin, String> {
        let file: RawFile = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        let mut by_name = HashMap::new();
        let mut by_upstream: HashMap<String, HashMap<String, usize>> = HashMap::new();
        for (i, m) in file.models.iter().enumerate() {
            for name in std::iter::once(&m.id).chain(&m.aliases) {
                if by_name.insert(name.clone(), i).is_some() {
                    return Err(format!("model name {name} is given twice"));
                }
            }
            for (provider, upstream) in &m.offered_by {
                let ids = by_upstream.entry(provider.clone()).or_default();
                if ids.insert(upstream.clone(), i).is_some() {
                    return Err(format!("{provider} model {upstream} is offered by two entries"));
                }
            }
        }
        let models = file.models.into_iter().map(RawModel::into_model).collect();
        Ok(Builtin {
            models,
            by_name,
            by_upstream,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    models: Vec<RawModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    id: String,
    #[serde(default)]
    aliases: Vec<String>,
    kind: ModelKind,
    context_window: u32,
    #[serde(default)]
    max_output_tokens: Option<u32>,
    capabilities: Vec<Capability>,
    price: Price,
    #[serde(deserialize_with = "ordered_pairs")]
    offered_by: Vec<(String, String)>,
}

impl RawModel {
    fn into_model(self) -> BuiltinModel {
        let mut caps = Caps::from_list(&self.capabilities);
        caps.embeddings = self.kind == ModelKind::Embedding;
        BuiltinModel {
            id: self.id,
            aliases: self.aliases,
            kind: self.kind,
            context_window: self.context_window,
            max_output_tokens: self.max_output_tokens,
            capabilities: caps,
            price: self.price,
            offered_by: self.offered_by,
        }
    }
}

/// A YAML mapping as its entries in file order; a key given twice is an error.
fn ordered_pairs<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<(String, String)>, D::Error> {
    struct Pairs;

    impl<'de> Visitor<'de> for Pairs {
        type Value = Vec<(String, String)>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of provider type to upstream model id")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut pairs: Vec<(String, String)> = Vec::new();
            while let Some((key, value)) = map.next_entry::<String, String>()? {
                if pairs.iter().any(|(k, _)| *k == key) {
                    return Err(serde::de::Error::custom(format!(
                        "provider type {key} is given twice"
                    )));
                }
                pairs.push((key, value));
            }
            Ok(pairs)
        }
    }

    de.deserialize_map(Pairs)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use llmgw_kit::config::ProviderKind;

    use super::*;

    #[test]
    fn the_compiled_in_catalog_parses() {
        let builtin = Builtin::parse(CATALOG).unwrap();
        assert!(
            (45..=80).contains(&builtin.models().len()),
            "{}",
            builtin.models().len()
        );
        assert_eq!(Builtin::load().models().len(), builtin.models().len());
    }

    #[test]
    fn ids_and_aliases_are_unique_and_disjoint() {
        let mut seen = HashSet::new();
        for m in Builtin::load().models() {
            for name in std::iter::once(&m.id).chain(&m.aliases) {
                assert!(!name.is_empty());
                assert!(seen.insert(name.as_str()), "{name} is given twice");
            }
        }
    }

    #[test]
    fn every_model_is_offered_by_valid_provider_types() {
        for m in Builtin::load().models() {
            assert!(!m.offered_by.is_empty(), "{} is offered by no one", m.id);
            for (provider, upstream) in &m.offered_by {
                assert!(
                    ProviderKind::parse(provider).is_some(),
                    "{}: unknown provider type {provider}",
                    m.id
                );
                assert_ne!(provider, "openai-compatible", "{}", m.id);
                assert!(!upstream.is_empty(), "{}", m.id);
            }
        }
    }

    #[test]
    fn chat_models_have_a_context_window_and_sane_prices() {
        for m in Builtin::load()
            .models()
            .iter()
            .filter(|m| m.kind == ModelKind::Chat)
        {
            let p = m.price;
            assert!(m.context_window > 0, "{}", m.id);
            assert!(
                p.input_per_mtok >= 0.0 && p.output_per_mtok >= p.input_per_mtok,
                "{}: {p:?}",
                m.id
            );
            if let Some(cached) = p.cached_input_per_mtok {
                assert!((0.0..=p.input_per_mtok).contains(&cached), "{}: {p:?}", m.id);
            }
            if let Some(max) = m.max_output_tokens {
                assert!(max > 0 && max <= m.context_window, "{}", m.id);
            }
            assert!(!m.capabilities.embeddings, "{}", m.id);
        }
    }

    #[test]
    fn embedding_models_have_no_chat_capabilities_and_no_output_price() {
        let embeddings: Vec<_> = Builtin::load()
            .models()
            .iter()
            .filter(|m| m.kind == ModelKind::Embedding)
            .collect();
        assert!(embeddings.len() >= 5);
        for m in embeddings {
            let only_embeddings = Caps {
                embeddings: true,
                ..Caps::default()
            };
            assert_eq!(m.capabilities, only_embeddings, "{}", m.id);
            assert!(m.context_window > 0 && m.price.input_per_mtok >= 0.0, "{}", m.id);
            assert_eq!(m.price.output_per_mtok, 0.0, "{}", m.id);
        }
    }

    #[test]
    fn pass_through_models_are_offered_by_the_openai_family() {
        let builtin = Builtin::load();
        for (id, kind) in [
            ("gpt-3.5-turbo-instruct", ModelKind::Completion),
            ("dall-e-3", ModelKind::Image),
            ("whisper-1", ModelKind::Audio),
            ("tts-1", ModelKind::Audio),
        ] {
            let m = builtin.get(id).unwrap();
            assert_eq!(m.kind, kind, "{id}");
            assert!(!m.capabilities.embeddings && !m.capabilities.tools, "{id}");
            assert!(
                m.offered_by
                    .iter()
                    .all(|(p, _)| p == "openai" || p == "azure-openai"),
                "{id}"
            );
        }
        // Units per million: $0.04 an image, $0.006 a minute.
        assert_eq!(builtin.get("dall-e-3").unwrap().price.output_per_mtok, 40_000.0);
        // Imagen: per image, offered by both Google provider types.
        for (id, per_image) in [
            ("imagen-4.0-generate-001", 0.04),
            ("imagen-4.0-ultra-generate-001", 0.06),
            ("imagen-4.0-fast-generate-001", 0.02),
            ("imagen-3.0-generate-002", 0.03),
        ] {
            let m = builtin.get(id).unwrap();
            assert_eq!(m.kind, ModelKind::Image, "{id}");
            assert!((m.price.output_per_mtok - per_image * 1e6).abs() < 1e-6, "{id}");
            for provider in ["google", "vertex-ai"] {
                assert_eq!(
                    builtin.for_upstream(provider, id).map(|m| m.id.as_str()),
                    Some(id)
                );
            }
        }
        assert_eq!(builtin.get("imagen-4").unwrap().id, "imagen-4.0-generate-001");
        assert_eq!(builtin.get("whisper-1").unwrap().price.input_per_mtok, 100.0);
    }

    #[test]
    fn get_finds_ids_and_aliases() {
        let builtin = Builtin::load();
        let by_alias = builtin.get("claude-3-5-haiku-20241022").unwrap();
        assert_eq!(by_alias.id, "claude-3-5-haiku");
        assert_eq!(builtin.get("claude-3-5-haiku"), Some(by_alias));
        let gpt = builtin.get("gpt-4o").unwrap();
        assert_eq!(gpt.kind, ModelKind::Chat);
        assert!(gpt.capabilities.tools && gpt.capabilities.vision && gpt.capabilities.streaming);
        assert_eq!(gpt.price.cached_input_per_mtok, Some(1.25));
        let embed = builtin.get("text-embedding-3-small").unwrap();
        assert_eq!(embed.kind, ModelKind::Embedding);
        assert!(embed.capabilities.embeddings);
        assert!(builtin.get("no-such-model").is_none());
    }

    #[test]
    fn offered_by_keeps_file_order() {
        let llama = Builtin::load().get("llama-3.3-70b").unwrap();
        let providers: Vec<_> = llama.offered_by.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(providers[..3], ["groq", "together", "fireworks"]);
    }

    #[test]
    fn for_upstream_finds_by_upstream_id_then_by_name() {
        let builtin = Builtin::load();
        let find = |provider, upstream| builtin.for_upstream(provider, upstream).map(|m| m.id.as_str());
        // By the provider's upstream id.
        assert_eq!(
            find("bedrock", "anthropic.claude-3-5-haiku-20241022-v1:0"),
            Some("claude-3-5-haiku")
        );
        assert_eq!(
            find("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
            Some("llama-3.3-70b")
        );
        assert_eq!(
            find("bedrock", "amazon.titan-embed-text-v2:0"),
            Some("titan-embed-text-v2")
        );
        // A Bedrock inference profile finds its base model.
        assert_eq!(
            find("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
            Some("claude-sonnet-4-5")
        );
        assert_eq!(
            find("bedrock", "xx.anthropic.claude-sonnet-4-5-20250929-v1:0"),
            None
        );
        // Failing that, by id or alias.
        assert_eq!(find("openai-compatible", "gpt-4o-mini"), Some("gpt-4o-mini"));
        assert_eq!(find("anthropic", "claude-sonnet-4-0"), Some("claude-sonnet-4"));
        assert_eq!(find("groq", "no-such-model"), None);
    }

    #[test]
    fn bad_catalogs_are_refused() {
        let entry = |id: &str, alias: &str, upstream: &str| {
            format!(
                "  - id: {id}\n    aliases: [{alias}]\n    kind: chat\n    context_window: 8\n    \
                 capabilities: [tools]\n    price: {{ input_per_mtok: 1, output_per_mtok: 2 }}\n    \
                 offered_by: {{ openai: {upstream} }}\n"
            )
        };
        let file = |entries: &[String]| format!("models:\n{}", entries.concat());
        assert!(Builtin::parse(&file(&[entry("a", "a1", "a"), entry("b", "b1", "b")])).is_ok());
        let dup_alias = Builtin::parse(&file(&[entry("a", "x", "a"), entry("b", "x", "b")]));
        assert!(dup_alias.unwrap_err().contains("x is given twice"));
        let alias_is_id = Builtin::parse(&file(&[entry("a", "b", "a"), entry("b", "b1", "b")]));
        assert!(alias_is_id.is_err());
        let dup_upstream = Builtin::parse(&file(&[entry("a", "a1", "u"), entry("b", "b1", "u")]));
        assert!(dup_upstream.unwrap_err().contains("offered by two entries"));
        let unknown_field = file(&[entry("a", "a1", "a")]).replace("kind: chat", "kind: chat\n    extra: 1");
        assert!(Builtin::parse(&unknown_field).is_err());
        let bad_cap = file(&[entry("a", "a1", "a")]).replace("[tools]", "[telepathy]");
        assert!(Builtin::parse(&bad_cap).is_err());
        let dup_provider = file(&[entry("a", "a1", "a")]).replace("openai: a", "openai: a, openai: b");
        assert!(Builtin::parse(&dup_provider).is_err());
    }
}
