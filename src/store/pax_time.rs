//! PAX `mtime` values: decimal seconds with an optional fraction, which may
//! be negative (`-1.5` is 1.5 s before the epoch).

/// Parses a PAX time into seconds and nanoseconds (nanoseconds always
/// counting forward from the seconds, as in `struct timespec`).
pub fn parse(value: &str) -> Option<(i64, u32)> {
    let (neg, digits) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    if !neg {
        return Some((secs, nanos));
    }
    if nanos == 0 {
        return Some((-secs, 0));
    }
    Some((-secs - 1, 1_000_000_000 - nanos))
}

/// Formats seconds and nanoseconds as a PAX time; `None` when a plain
/// ustar header says it all (whole, non-negative seconds).
pub fn format(secs: i64, nanos: u32) -> Option<String> {
    if nanos == 0 {
        return (secs < 0).then(|| secs.to_string());
    }
    if secs >= 0 {
        return Some(trim(format!("{secs}.{nanos:09}")));
    }
    Some(trim(format!(
        "-{}.{:09}",
        -(secs + 1),
        1_000_000_000 - nanos
    )))
}

fn trim(s: String) -> String {
    s.trim_end_matches('0').to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips() {
        for (s, n) in [
            (0, 0),
            (5, 1),
            (5, 500_000_000),
            (-3, 5),
            (-1, 0),
            (-2, 999_999_999),
        ] {
            let text = super::format(s, n).unwrap_or_else(|| s.to_string());
            assert_eq!(super::parse(&text), Some((s, n)), "{text}");
        }
        assert_eq!(super::parse("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(super::parse("12.x"), None);
    }
}
