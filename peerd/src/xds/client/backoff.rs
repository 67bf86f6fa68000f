//! The reconnect delay of the delta-ADS client. Pure: no clock, no state; the caller
//! counts attempts and resets them once a session received a response.

use std::time::Duration;

use rand::Rng as _;

/// Jittered exponential backoff: a uniform pick in [d/2, d] with d = initial·2^attempt
/// capped at `max`.
pub fn backoff_delay(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.min(30));
    let d = initial.saturating_mul(factor).min(max);
    let half = d / 2;
    let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    let extra = if jitter_ms == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
    };
    half + extra
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for attempt in 0..40 {
            let d = backoff_delay(initial, max, attempt);
            let cap = initial
                .saturating_mul(2u32.saturating_pow(attempt.min(30)))
                .min(max);
            assert!(
                d >= cap / 2 && d <= cap,
                "attempt {attempt}: {d:?} not in [{:?}, {cap:?}]",
                cap / 2
            );
        }
        assert!(backoff_delay(initial, max, 30) >= Duration::from_secs(1));
    }
}
