//! A key's policies applied to routing: which models and providers the
//! principal may reach. A target must pass every policy (org, project,
//! key): its model — as the client named it, as the provider knows it, or
//! as `provider/model` — matches an allowed pattern (when any is given) and
//! no denied one, and so does its provider (by name or type).

use llmgw_proto as pb;

/// `*` matches any run of characters (none included); everything else
/// matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

fn any(patterns: &[String], names: &[&str]) -> bool {
    patterns.iter().any(|p| names.iter().any(|n| glob(p, n)))
}

/// Why a target is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Model,
    Provider,
}

/// Whether `policies` let `requested` reach `model` at provider
/// `provider` (of type `kind`); the first rule that refuses, and its scope.
pub fn check<'a>(
    policies: &'a [pb::Policy],
    requested: &str,
    provider: &str,
    kind: &str,
    model: &str,
) -> Result<(), (Refusal, &'a str)> {
    let qualified = format!("{provider}/{model}");
    let models = [requested, model, qualified.as_str()];
    let providers = [provider, kind];
    for p in policies {
        let model_ok = (p.allowed_models.is_empty() || any(&p.allowed_models, &models))
            && !any(&p.denied_models, &models);
        if !model_ok {
            return Err((Refusal::Model, &p.scope));
        }
        let provider_ok = (p.allowed_providers.is_empty() || any(&p.allowed_providers, &providers))
            && !any(&p.denied_providers, &providers);
        if !provider_ok {
            return Err((Refusal::Provider, &p.scope));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("gpt-4o*", "gpt-4o-mini", true),
            ("gpt-4o*", "gpt-4", false),
            ("*", "", true),
            ("openai/*", "openai/gpt-4o", true),
            ("*mini*", "gpt-4o-mini-2024", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob(p, t), want, "{p} ~ {t}");
        }
    }

    #[test]
    fn every_scope_must_allow() {
        let org = pb::Policy {
            scope: "org".into(),
            denied_providers: vec!["anthropic".into()],
            ..Default::default()
        };
        let key = pb::Policy {
            scope: "key".into(),
            allowed_models: vec!["gpt-4o*".into()],
            ..Default::default()
        };
        let policies = [org, key];
        assert!(check(&policies, "gpt-4o-mini", "emu", "openai", "gpt-4o-mini").is_ok());
        // Allowed by the upstream name behind a platform alias.
        assert!(check(&policies, "smart", "emu", "openai", "gpt-4o").is_ok());
        assert_eq!(
            check(&policies, "claude", "c", "openai-compatible", "claude-3"),
            Err((Refusal::Model, "key"))
        );
        assert_eq!(
            check(&policies, "gpt-4o", "c", "anthropic", "gpt-4o"),
            Err((Refusal::Provider, "org"))
        );
    }
}
