//! Orders a pool's targets by its strategy, and the router's randomness:
//! a seeded, lock-free generator (SplitMix64 over an atomic counter), and a
//! stable hash for choices that must stick to a caller.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use llmgw_kit::config::Strategy;

/// SplitMix64's finaliser: a well-mixed 64-bit value from any 64-bit value.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64: each call takes the next point of a Weyl sequence, so
/// concurrent callers never lock and a seeded run repeats exactly when its
/// requests come in the same order.
#[derive(Debug)]
pub struct Rng(AtomicU64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    pub fn next_u64(&self) -> u64 {
        mix(self.0.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed))
    }

    /// Uniform in [0, 1).
    pub fn unit(&self) -> f64 {
        unit(self.next_u64())
    }
}

fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// A stable hash of `parts` (FNV-1a, then mixed), the same in every process
/// and every run: what sticky choices hash.
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0xFF)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    mix(h)
}

/// Uniform in [0, 1) from a stable hash.
pub fn stable_unit(parts: &[&str]) -> f64 {
    unit(stable_hash(parts))
}

/// One target as the strategy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// Position in the pool.
    pub index: usize,
    pub weight: u32,
    /// USD per million tokens, input and output together.
    pub price: f64,
    /// `None`: never measured (tried first, so it gets measured).
    pub latency_ms: Option<f64>,
    pub in_flight: i64,
    pub ejected: bool,
}

/// Orders `candidates` for trying: healthy targets by the strategy, then
/// ejected ones (last resorts, in the same order). Ties are broken by a
/// weighted random draw, so equal targets share the load by weight.
pub fn order(candidates: &mut [Candidate], strategy: Strategy, rng: &Rng, explore: f64) {
    // Efraimidis–Spirakis: sorting by u^(1/w), highest first, is a
    // weighted random order without replacement.
    let mut draws: Vec<(Candidate, f64)> = candidates
        .iter()
        .map(|c| (*c, rng.unit().powf(1.0 / f64::from(c.weight.max(1)))))
        .collect();
    let by_draw = |a: &(Candidate, f64), b: &(Candidate, f64)| b.1.total_cmp(&a.1);
    match strategy {
        Strategy::Weighted => draws.sort_by(by_draw),
        Strategy::Priority => {}
        Strategy::Cheapest => draws.sort_by(|a, b| a.0.price.total_cmp(&b.0.price).then(by_draw(a, b))),
        Strategy::LeastBusy => draws.sort_by(|a, b| a.0.in_flight.cmp(&b.0.in_flight).then(by_draw(a, b))),
        Strategy::Latency => {
            draws.sort_by(|a, b| {
                let (x, y) = (a.0.latency_ms.unwrap_or(0.0), b.0.latency_ms.unwrap_or(0.0));
                x.total_cmp(&y).then(by_draw(a, b))
            });
            // Now and then a random healthy target goes first, so one that
            // was slow and has recovered is measured again.
            let healthy = draws.iter().filter(|d| !d.0.ejected).count();
            if healthy > 1 && rng.unit() < explore {
                let pick = (rng.next_u64() % healthy as u64) as usize;
                let healthy_positions: Vec<usize> =
                    (0..draws.len()).filter(|&i| !draws[i].0.ejected).collect();
                let chosen = draws.remove(healthy_positions[pick]);
                draws.insert(0, chosen);
            }
        }
    }
    // Healthy first; the sort is stable, so each part keeps its order.
    draws.sort_by_key(|d| d.0.ejected);
    for (slot, (c, _)) in candidates.iter_mut().zip(draws) {
        *slot = c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(index: usize, weight: u32) -> Candidate {
        Candidate {
            index,
            weight,
            price: 1.0,
            latency_ms: Some(10.0),
            in_flight: 0,
            ejected: false,
        }
    }

    fn first_counts(pool: &[Candidate], strategy: Strategy, rounds: usize) -> Vec<usize> {
        let rng = Rng::new(7);
        let mut counts = vec![0; pool.len()];
        for _ in 0..rounds {
            let mut c = pool.to_vec();
            order(&mut c, strategy, &rng, 0.0);
            counts[c[0].index] += 1;
        }
        counts
    }

    #[test]
    fn weighted_follows_the_weights() {
        let counts = first_counts(&[cand(0, 1), cand(1, 3)], Strategy::Weighted, 10_000);
        let share = counts[1] as f64 / 10_000.0;
        assert!((share - 0.75).abs() < 0.03, "{counts:?}");
    }

    #[test]
    fn each_strategy_puts_its_best_first_and_the_ejected_last() {
        let mut pool = vec![cand(0, 1), cand(1, 1), cand(2, 1)];
        pool[0].price = 3.0;
        pool[1].price = 1.0;
        pool[2].price = 2.0;
        assert_eq!(first_counts(&pool, Strategy::Cheapest, 50), [0, 50, 0]);
        pool[1].ejected = true;
        assert_eq!(first_counts(&pool, Strategy::Cheapest, 50), [0, 0, 50]);
        let rng = Rng::new(1);
        order(&mut pool, Strategy::Cheapest, &rng, 0.0);
        assert_eq!(pool.iter().map(|c| c.index).collect::<Vec<_>>(), [2, 0, 1]);

        let mut pool = vec![cand(0, 1), cand(1, 1), cand(2, 1)];
        pool[0].in_flight = 4;
        pool[2].in_flight = 2;
        assert_eq!(first_counts(&pool, Strategy::LeastBusy, 50), [0, 50, 0]);
        pool[0].latency_ms = Some(3.0);
        assert_eq!(first_counts(&pool, Strategy::Latency, 50), [50, 0, 0]);
        pool[1].latency_ms = None;
        assert_eq!(
            first_counts(&pool, Strategy::Latency, 50),
            [0, 50, 0],
            "unmeasured first"
        );
        assert_eq!(first_counts(&pool, Strategy::Priority, 50), [50, 0, 0]);
    }

    #[test]
    fn latency_explores_at_the_configured_rate() {
        let mut pool = vec![cand(0, 1), cand(1, 1)];
        pool[1].latency_ms = Some(50.0);
        let rng = Rng::new(3);
        let slow_first = (0..10_000)
            .filter(|_| {
                let mut c = pool.clone();
                order(&mut c, Strategy::Latency, &rng, 0.1);
                c[0].index == 1
            })
            .count();
        // Half the explorations pick the fast one anyway: about 5%.
        assert!((300..700).contains(&slow_first), "{slow_first}");
    }

    #[test]
    fn seeded_runs_repeat_and_stable_hashes_are_stable() {
        let (a, b) = (Rng::new(42), Rng::new(42));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        assert_eq!(stable_hash(&["cfg", "alice"]), stable_hash(&["cfg", "alice"]));
        assert_ne!(stable_hash(&["cfg", "alice"]), stable_hash(&["cfga", "lice"]));
        let u = stable_unit(&["x"]);
        assert!((0.0..1.0).contains(&u));
    }
}
