//! Query strings of the list endpoints: percent-decoded `key=value` pairs, and the `limit` and
//! `order` checks OpenAI's lists share, with its 400 naming the parameter.

use crate::error::ApiError;
use crate::files::ListOrder;

/// The `key=value` pairs of a query string, in order and percent-decoded. A pair without `=`
/// has an empty value; empty pairs (`a&&b`) are skipped. Unknown keys are the caller's to
/// ignore, as OpenAI ignores them.
pub(crate) fn pairs(query: Option<&str>) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
}

/// A `limit` between 1 and `max`, or the 400 `invalid_value` naming `limit`.
pub(crate) fn limit(value: &str, max: u32) -> Result<u32, ApiError> {
    match value.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid_value(
            "limit",
            &format!("expected an integer between 1 and {max}, got '{value}'."),
        )),
    }
}

/// `asc` or `desc`, or the 400 `invalid_value` naming `order`.
pub(crate) fn order(value: &str) -> Result<ListOrder, ApiError> {
    match value {
        "asc" => Ok(ListOrder::Asc),
        "desc" => Ok(ListOrder::Desc),
        _ => Err(ApiError::invalid_value(
            "order",
            &format!("'{value}'. Supported values are: 'asc' and 'desc'."),
        )),
    }
}

/// Decodes `%XX` escapes and `+`; invalid escapes are kept as written.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(q: Option<&str>) -> Vec<(String, String)> {
        pairs(q).collect()
    }

    #[test]
    fn pairs_are_split_and_decoded() {
        assert!(all(None).is_empty());
        assert_eq!(
            all(Some("after=batch_1&limit=2")),
            [
                ("after".into(), "batch_1".into()),
                ("limit".into(), "2".into())
            ]
        );
        assert_eq!(
            all(Some("a&&purpose=batch%5Foutput&=")),
            [
                ("a".into(), String::new()),
                ("purpose".into(), "batch_output".into()),
                (String::new(), String::new())
            ]
        );
        assert_eq!(percent_decode("a%2Fb+c%"), "a/b c%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn limits_and_orders() {
        assert_eq!(limit("1", 100).unwrap(), 1);
        assert_eq!(limit("100", 100).unwrap(), 100);
        assert_eq!(limit("10000", 10_000).unwrap(), 10_000);
        for bad in ["0", "101", "-1", "x", "", "1.5"] {
            let e = limit(bad, 100).unwrap_err();
            assert_eq!(
                (e.status, e.param.as_deref()),
                (400, Some("limit")),
                "{bad}"
            );
        }
        assert_eq!(order("asc").unwrap(), ListOrder::Asc);
        assert_eq!(order("desc").unwrap(), ListOrder::Desc);
        let e = order("DESC").unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("order")));
        assert_eq!(
            e.message,
            "Invalid value for 'order': 'DESC'. Supported values are: 'asc' and 'desc'."
        );
    }
}
