//! The `x-ratelimit-*` header values and OpenAI's Go-style duration format (`12ms`, `6m0s`).
//!
//! Source: facts §3. Observed reset values (`12ms`, `0s`, `7m12s`, `23m16.298s`) are Go's
//! `time.Duration` strings at millisecond precision; the model truncates to whole
//! milliseconds, which is what the observed values fit.

use std::time::Duration;

/// The six `x-ratelimit-*` values of one response (facts §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// `x-ratelimit-limit-requests`: the RPM limit, in requests.
    pub limit_requests: u64,
    /// `x-ratelimit-limit-tokens`: the TPM limit, in tokens.
    pub limit_tokens: u64,
    /// `x-ratelimit-remaining-requests`: requests that would be admitted right now.
    pub remaining_requests: u64,
    /// `x-ratelimit-remaining-tokens`: tokens that would be admitted right now.
    pub remaining_tokens: u64,
    /// `x-ratelimit-reset-requests`: time until the request bucket is full again.
    pub reset_requests: Duration,
    /// `x-ratelimit-reset-tokens`: time until the token bucket is full again.
    pub reset_tokens: Duration,
}

impl RateLimitHeaders {
    /// The headers as (lower-case name, value) pairs, in the order OpenAI sends them.
    pub fn to_pairs(&self) -> [(&'static str, String); 6] {
        [
            (
                "x-ratelimit-limit-requests",
                self.limit_requests.to_string(),
            ),
            ("x-ratelimit-limit-tokens", self.limit_tokens.to_string()),
            (
                "x-ratelimit-remaining-requests",
                self.remaining_requests.to_string(),
            ),
            (
                "x-ratelimit-remaining-tokens",
                self.remaining_tokens.to_string(),
            ),
            (
                "x-ratelimit-reset-requests",
                format_duration(self.reset_requests),
            ),
            (
                "x-ratelimit-reset-tokens",
                format_duration(self.reset_tokens),
            ),
        ]
    }
}

/// Formats `d` the way OpenAI's headers and 429 messages do: Go's `Duration.String()` after
/// truncating to whole milliseconds.
///
/// `0s`, `12ms`, `20s`, `6m0s`, `1m26.4s`, `23m16.298s`, `1h0m0s`.
pub fn format_duration(d: Duration) -> String {
    let mut out = String::new();
    // Writing to a `String` cannot fail.
    let _ = write_duration(d, &mut out);
    out
}

/// Writes [`format_duration`]'s text for `d` to `out` without building a `String`: the
/// server formats two of these per response straight into its header buffer.
///
/// Digits come from `itoa` and the fraction is written digit by digit; a property test holds
/// this to a plain `format!`-based reference.
pub fn write_duration<W: std::fmt::Write + ?Sized>(d: Duration, out: &mut W) -> std::fmt::Result {
    let total_ms = d.as_millis();
    let mut digits = itoa::Buffer::new();
    if total_ms == 0 {
        return out.write_str("0s");
    }
    if total_ms < 1000 {
        out.write_str(digits.format(total_ms))?;
        return out.write_str("ms");
    }
    let hours = total_ms / 3_600_000;
    let minutes = (total_ms / 60_000) % 60;
    let secs = (total_ms / 1000) % 60;
    let frac_ms = total_ms % 1000;
    if hours > 0 {
        out.write_str(digits.format(hours))?;
        out.write_char('h')?;
    }
    if hours > 0 || minutes > 0 {
        out.write_str(digits.format(minutes))?;
        out.write_char('m')?;
    }
    out.write_str(digits.format(secs))?;
    if frac_ms > 0 {
        // Three digits with the trailing zeros dropped: 400 ms is `.4`, 298 ms `.298`.
        out.write_char('.')?;
        let mut frac = frac_ms;
        let mut scale = 100;
        while frac > 0 {
            let digit = u8::try_from(frac / scale).unwrap_or(0);
            out.write_char(char::from(b'0' + digit))?;
            frac %= scale;
            scale /= 10;
        }
    }
    out.write_char('s')
}

/// Like [`format_duration`] but rounding *up* to the next millisecond, so that a non-zero
/// wait never reads `0s`. Used for "Please try again in …", where a client that waits the
/// printed time must then be admitted.
pub fn format_duration_ceil(d: Duration) -> String {
    let ceil = if d.subsec_nanos() % 1_000_000 == 0 {
        d
    } else {
        Duration::from_millis(
            u64::try_from(d.as_millis())
                .unwrap_or(u64::MAX)
                .saturating_add(1),
        )
    };
    format_duration(ceil)
}

/// Parses a Go-style duration (`12ms`, `1m26.4s`, `1h0m0s`, `0s`, also `us`/`µs`/`ns` and a
/// bare `0`), as a client reads `x-ratelimit-reset-*`. `None` for anything else or on
/// overflow.
pub fn parse_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    let mut rest = s;
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num.matches('.').count() > 1 || num == "." {
            return None;
        }
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" | "μs" => 1_000,
            "ns" => 1,
            _ => return None,
        };
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        let mut value = int.checked_mul(unit_ns)?;
        // Fractional digits beyond nanosecond resolution are ignored, as Go does.
        let mut scale = unit_ns;
        for digit in frac_part.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            value = value.checked_add(u128::from(digit - b'0') * scale)?;
        }
        total_ns = total_ns.checked_add(value)?;
        rest = tail;
    }
    let secs = u64::try_from(total_ns / 1_000_000_000).ok()?;
    // The remainder is below 10^9 and so fits a u32.
    let nanos = u32::try_from(total_ns % 1_000_000_000).ok()?;
    Some(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The first formatter, on `format!`: what `write_duration` must write.
    fn reference_format(d: Duration) -> String {
        let total_ms = d.as_millis();
        if total_ms == 0 {
            return "0s".to_owned();
        }
        if total_ms < 1000 {
            return format!("{total_ms}ms");
        }
        let hours = total_ms / 3_600_000;
        let minutes = (total_ms / 60_000) % 60;
        let secs = (total_ms / 1000) % 60;
        let frac_ms = total_ms % 1000;
        let mut out = String::new();
        if hours > 0 {
            out.push_str(&format!("{hours}h"));
        }
        if hours > 0 || minutes > 0 {
            out.push_str(&format!("{minutes}m"));
        }
        out.push_str(&secs.to_string());
        if frac_ms > 0 {
            let frac = format!("{frac_ms:03}");
            out.push('.');
            out.push_str(frac.trim_end_matches('0'));
        }
        out.push('s');
        out
    }

    fn check(ms: u64, expect: &str) {
        assert_eq!(
            format_duration(Duration::from_millis(ms)),
            expect,
            "{ms} ms"
        );
        assert_eq!(
            parse_duration(expect),
            Some(Duration::from_millis(ms)),
            "{expect}"
        );
    }

    #[test]
    fn format_and_parse_table() {
        check(0, "0s");
        check(2, "2ms");
        check(12, "12ms");
        check(644, "644ms");
        check(999, "999ms");
        check(1000, "1s");
        check(20_000, "20s");
        check(1_500, "1.5s");
        check(86_400, "1m26.4s");
        check(360_000, "6m0s");
        check(432_000, "7m12s");
        check(1_396_298, "23m16.298s");
        check(3_600_000, "1h0m0s");
        check(3_661_010, "1h1m1.01s");
    }

    #[test]
    fn format_truncates_and_ceil_rounds_up() {
        assert_eq!(format_duration(Duration::from_micros(2_640)), "2ms");
        assert_eq!(format_duration(Duration::from_micros(999)), "0s");
        assert_eq!(format_duration_ceil(Duration::from_micros(1)), "1ms");
        assert_eq!(
            format_duration_ceil(Duration::from_micros(643_001)),
            "644ms"
        );
        assert_eq!(format_duration_ceil(Duration::from_millis(644)), "644ms");
    }

    #[test]
    fn parse_rejects_garbage() {
        for bad in [
            "",
            "s",
            "1",
            "1x",
            "1.2.3s",
            "ms",
            "-1s",
            "1s ",
            ".s",
            "99999999999999999999999h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        assert_eq!(parse_duration("1.5us"), Some(Duration::from_nanos(1_500)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
    }

    #[test]
    fn header_pairs() {
        let h = RateLimitHeaders {
            limit_requests: 5000,
            limit_tokens: 160_000,
            remaining_requests: 4999,
            remaining_tokens: 159_976,
            reset_requests: Duration::from_millis(12),
            reset_tokens: Duration::from_micros(9_000),
        };
        let pairs = h.to_pairs();
        assert_eq!(pairs[4], ("x-ratelimit-reset-requests", "12ms".to_owned()));
        assert_eq!(pairs[5].1, "9ms");
    }

    /// Facts §3 **[inferred]**: the observed `x-ratelimit-reset-*` values fit a continuously
    /// refilling bucket, `reset = used × window / limit` truncated to whole milliseconds. The
    /// model reports `Bucket::time_until_full` through `format_duration`; each observation is
    /// reproduced here from its limit and what was used.
    #[test]
    fn observed_reset_values_fit_the_refilling_bucket() {
        use std::num::NonZeroU64;
        use tagstorm_core::Time;
        use tagstorm_core::limit::Bucket;
        // (per-minute limit, units used, observed header value).
        for (limit, used, observed) in [
            (5_000, 1, "12ms"),
            (160_000, 24, "9ms"),
            (10_000, 1, "6ms"),
            (15_000, 1, "4ms"),
            (3_000, 1, "20ms"),
            (250_000, 11, "2ms"),
            (50_000_000, 0, "0s"),
        ] {
            let mut b = Bucket::per_minute(NonZeroU64::new(limit).unwrap());
            b.check(Time::ZERO, used).unwrap();
            assert_eq!(
                format_duration(b.time_until_full(Time::ZERO)),
                observed,
                "{limit}/min, {used} used"
            );
        }
        // The free-tier record: 200 requests a day, one used → `7m12s`.
        let mut rpd = Bucket::new(NonZeroU64::new(200).unwrap(), Duration::from_secs(86_400));
        rpd.check(Time::ZERO, 1).unwrap();
        assert_eq!(format_duration(rpd.time_until_full(Time::ZERO)), "7m12s");
    }

    proptest! {
        #[test]
        fn round_trip_at_ms_precision(nanos in 0u64..1_000_000_000_000_000) {
            let d = Duration::from_nanos(nanos);
            let truncated = Duration::from_millis(nanos / 1_000_000);
            prop_assert_eq!(parse_duration(&format_duration(d)), Some(truncated));
        }

        #[test]
        fn write_duration_matches_a_format_reference(
            nanos in prop_oneof![0u64..10_000_000_000, 0u64..1_000_000_000_000_000, any::<u64>()],
            extra_secs in prop_oneof![Just(0u64), any::<u64>()],
        ) {
            let d = Duration::from_nanos(nanos).saturating_add(Duration::from_secs(extra_secs));
            let mut written = String::from("x");
            write_duration(d, &mut written).unwrap();
            prop_assert_eq!(&written[1..], reference_format(d));
        }

        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            let _ = parse_duration(&s);
        }
    }
}
