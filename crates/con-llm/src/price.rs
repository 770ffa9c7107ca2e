//! What a call costs.

use serde::{Deserialize, Serialize};

use crate::chat::Usage;

/// What a model costs, in USD per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// Prompt tokens.
    pub input_usd_per_mtok: f64,
    /// Completion tokens.
    pub output_usd_per_mtok: f64,
}

impl Price {
    /// The cost of `usage` in micro-USD, rounded up (a budget must not be
    /// under-counted) and saturating at `u64::MAX`. Negative or NaN prices
    /// count as free.
    pub fn cost_micro_usd(&self, usage: &Usage) -> u64 {
        // 1 USD per Mtok is exactly 1 µUSD per token, so tokens × price is
        // already in µUSD. Prices are fixed to 1e-6 µUSD (1 pico-USD) per token
        // and summed in integers, so 1000 tokens at 0.3 cost exactly 300, not
        // a float's 300.00000000000006 rounded up to 301.
        let total_pico = u128::from(usage.input_tokens)
            .saturating_mul(pico_per_token(self.input_usd_per_mtok))
            .saturating_add(
                u128::from(usage.output_tokens)
                    .saturating_mul(pico_per_token(self.output_usd_per_mtok)),
            );
        u64::try_from(total_pico.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }
}

impl From<con_config::Price> for Price {
    fn from(p: con_config::Price) -> Price {
        Price {
            input_usd_per_mtok: p.input_usd_per_mtok,
            output_usd_per_mtok: p.output_usd_per_mtok,
        }
    }
}

fn pico_per_token(usd_per_mtok: f64) -> u128 {
    // `as` saturates: NaN and negatives become 0, infinities u128::MAX.
    (usd_per_mtok * 1e6).round() as u128
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input_tokens: u64, output_tokens: u64) -> Usage {
        Usage {
            input_tokens,
            output_tokens,
        }
    }

    #[test]
    fn exact_costs_are_not_rounded_up() {
        let p = Price {
            input_usd_per_mtok: 0.3,
            output_usd_per_mtok: 2.5,
        };
        assert_eq!(p.cost_micro_usd(&usage(1000, 0)), 300);
        assert_eq!(p.cost_micro_usd(&usage(1000, 1000)), 2800);
        let sonnet = Price {
            input_usd_per_mtok: 3.0,
            output_usd_per_mtok: 15.0,
        };
        assert_eq!(
            sonnet.cost_micro_usd(&usage(1_000_000, 1_000_000)),
            18_000_000
        );
    }

    #[test]
    fn fractions_round_up() {
        let p = Price {
            input_usd_per_mtok: 0.15,
            output_usd_per_mtok: 0.6,
        };
        // 1 × 0.15 + 1 × 0.6 = 0.75 µUSD → 1.
        assert_eq!(p.cost_micro_usd(&usage(1, 1)), 1);
        assert_eq!(p.cost_micro_usd(&usage(0, 0)), 0);
    }

    #[test]
    fn saturates_and_ignores_nonsense_prices() {
        let huge = Price {
            input_usd_per_mtok: f64::MAX,
            output_usd_per_mtok: f64::INFINITY,
        };
        assert_eq!(huge.cost_micro_usd(&usage(u64::MAX, u64::MAX)), u64::MAX);
        let bad = Price {
            input_usd_per_mtok: f64::NAN,
            output_usd_per_mtok: -3.0,
        };
        assert_eq!(bad.cost_micro_usd(&usage(1000, 1000)), 0);
    }
}
