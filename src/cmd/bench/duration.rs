//! Durations on the command line: `90`, `90s`, `1.5s`, `500ms`, `10m`, `24h`, `1h30m`. A plain
//! number is seconds, so the flags that took seconds before still take them.

use std::time::Duration;

/// The units a duration may be written in, and their length in seconds. `ms` comes before `m`
/// so that the longer name wins.
const UNITS: [(&str, f64); 5] = [
    ("ms", 0.001),
    ("s", 1.0),
    ("m", 60.0),
    ("h", 3600.0),
    ("d", 86_400.0),
];

/// Parses a duration: a plain number of seconds, or numbers each followed by a unit (`ms`,
/// `s`, `m`, `h`, `d`), added up (`1h30m`). Used as a clap value parser.
///
/// # Errors
/// Empty text, a negative or non-finite number, a missing or unknown unit after the first
/// number, or a duration too long to hold.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = |why: &str| format!("{text:?} is not a duration ({why}; say 90, 90s, 10m or 24h)");
    if let Ok(seconds) = text.parse::<f64>() {
        return seconds_to_duration(seconds).ok_or_else(|| bad("out of range"));
    }
    let mut rest = text;
    let mut seconds = 0.0;
    if rest.is_empty() {
        return Err(bad("empty"));
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| bad("a number is missing"))?;
        rest = &rest[digits..];
        let (unit, scale) = UNITS
            .iter()
            .find(|(unit, _)| rest.starts_with(unit))
            .ok_or_else(|| bad("unknown unit"))?;
        rest = &rest[unit.len()..];
        seconds += number * scale;
    }
    seconds_to_duration(seconds).ok_or_else(|| bad("out of range"))
}

fn seconds_to_duration(seconds: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(seconds).ok()
}

/// A duration as people write it: `5s`, `0.5s`, `2m`, `1m30s`, `24h`.
pub fn format_duration(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        let s = format!("{:.3}", d.as_secs_f64());
        let s = s.trim_end_matches('0').trim_end_matches('.');
        return format!("{s}s");
    }
    let total = d.as_secs();
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    let mut out = String::new();
    for (value, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// Each text parses to its number of seconds.
    fn parses(cases: &[(&str, f64)]) {
        for &(text, seconds) in cases {
            assert_eq!(parse_duration(text), Ok(secs(seconds)), "{text:?}");
        }
    }

    #[test]
    fn plain_numbers_are_seconds() {
        parses(&[("90", 90.0), ("0.5", 0.5), (" 5 ", 5.0)]);
    }

    #[test]
    fn units_scale_the_number() {
        parses(&[
            ("90s", 90.0),
            ("10m", 600.0),
            ("24h", 86_400.0),
            ("2d", 172_800.0),
        ]);
        parses(&[("1.5s", 1.5), ("250ms", 0.25)]);
    }

    #[test]
    fn parts_add_up() {
        parses(&[("1h30m", 5400.0), ("1m30s", 90.0), ("1s500ms", 1.5)]);
    }

    #[test]
    fn nonsense_is_refused() {
        for text in [
            "", "s", "10x", "m10", "-5", "-5s", "1h30", "NaN", "inf", "1e400", "1..2s",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn durations_are_written_as_people_write_them() {
        assert_eq!(format_duration(secs(5.0)), "5s");
        assert_eq!(format_duration(secs(0.5)), "0.5s");
        assert_eq!(format_duration(secs(120.0)), "2m");
        assert_eq!(format_duration(secs(90.0)), "1m30s");
        assert_eq!(format_duration(secs(86_400.0)), "24h");
        assert_eq!(format_duration(secs(3661.0)), "1h1m1s");
    }
}
