//! Durations as Istio writes them (Go's `time.ParseDuration` subset): `250ms`, `5s`, `5m`,
//! `1h30m`, `1.5s`, and a bare `0`.
//!
//! Owns: parsing and printing of duration strings. Never guesses a unit: `5` is an error.

use std::time::Duration;

/// Parses `text` into a [`Duration`]. Units: `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`.
/// Several terms add up (`1m30s`); a term may have a decimal fraction (`1.5s`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("{text:?} is not a duration (write e.g. 250ms, 5s, 5m, 1h30m)");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => return Err(bad()),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(bad());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let mut term = whole.checked_mul(nanos_per_unit).ok_or_else(bad)?;
        // Fractional digits: each one is worth a tenth of the previous.
        let mut scale = nanos_per_unit;
        for digit in fraction.chars() {
            let digit = u128::from(digit.to_digit(10).ok_or_else(bad)?);
            scale /= 10;
            term = term.checked_add(digit * scale).ok_or_else(bad)?;
        }
        total = total.checked_add(term).ok_or_else(bad)?;
        rest = after;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad())?;
    // The remainder is below 1e9 and fits in u32.
    let nanos = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// Prints `d` in the shortest exact form [`parse_duration`] reads back (`5m`, `1m30s`,
/// `250ms`, `0`).
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0".to_owned();
    }
    let mut out = String::new();
    let mut secs = d.as_secs();
    for (unit, size) in [("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    let nanos = d.subsec_nanos();
    if nanos > 0 {
        if nanos.is_multiple_of(1_000_000) {
            out.push_str(&format!("{}ms", nanos / 1_000_000));
        } else if nanos.is_multiple_of(1_000) {
            out.push_str(&format!("{}us", nanos / 1_000));
        } else {
            out.push_str(&format!("{nanos}ns"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests may unwrap (helper brief)

    use super::*;

    #[test]
    fn parses_istio_style_durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1_500)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_bad_durations() {
        for bad in [
            "",
            "5",
            "s",
            "5 s",
            "5x",
            "1.2.3s",
            "-5s",
            "5sm",
            ".s",
            "99999999999999999999999h",
            // The largest whole number of hours that fits, plus fractions that do not:
            // an error, not an overflow (a panic in debug builds, a wrapped tiny
            // duration in release builds).
            "94522879700260684295381835.999h",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("is not a duration"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::ZERO,
            Duration::from_millis(250),
            Duration::from_secs(5),
            Duration::from_secs(300),
            Duration::from_secs(5_430),
            Duration::from_micros(1_500),
            Duration::new(1, 7),
        ] {
            let text = format_duration(d);
            assert_eq!(parse_duration(&text), Ok(d), "{text}");
        }
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_millis(1_250)), "1s250ms");
    }
}
