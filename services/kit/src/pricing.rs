//! Cost of a request from the price the router chose.

use llmgw_proto::Price;

/// Token counts that are billed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u32,
    pub output: u32,
    /// Part of `input` served from the provider's prompt cache.
    pub cached: u32,
}

/// USD cost: uncached input, cached input (at the cached price when there is
/// one, else the input price) and output, each per million tokens.
pub fn cost_usd(price: &Price, tokens: Tokens) -> f64 {
    let cached = tokens.cached.min(tokens.input);
    let uncached = f64::from(tokens.input - cached);
    let cached_price = price.cached_input_per_mtok.unwrap_or(price.input_per_mtok);
    (uncached * price.input_per_mtok
        + f64::from(cached) * cached_price
        + f64::from(tokens.output) * price.output_per_mtok)
        / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_counts_input_output_and_cached() {
        let price = Price {
            input_per_mtok: 0.15,
            output_per_mtok: 0.60,
            cached_input_per_mtok: Some(0.075),
        };
        let plain = cost_usd(
            &price,
            Tokens {
                input: 1_000_000,
                output: 0,
                cached: 0,
            },
        );
        assert!((plain - 0.15).abs() < 1e-12);
        let mixed = cost_usd(
            &price,
            Tokens {
                input: 1000,
                output: 500,
                cached: 400,
            },
        );
        let want = (600.0 * 0.15 + 400.0 * 0.075 + 500.0 * 0.60) / 1e6;
        assert!((mixed - want).abs() < 1e-15);
    }

    #[test]
    fn cached_beyond_input_is_capped() {
        let price = Price {
            input_per_mtok: 1.0,
            output_per_mtok: 1.0,
            cached_input_per_mtok: None,
        };
        let c = cost_usd(
            &price,
            Tokens {
                input: 10,
                output: 0,
                cached: 50,
            },
        );
        assert!((c - 10.0 / 1e6).abs() < 1e-15);
    }
}
