//! Identifiers core hands out and the `custom_id` form that ties a batch line back to its image.

use std::fmt;
use std::str::FromStr;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// A workspace (tenant). The driver assigns these; core only needs them to be stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkspaceId(pub u32);

/// An upload accepted by [`crate::Engine::handle_upload`], numbered from 0 in arrival order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UploadId(pub u32);

/// One image of one upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ImageId {
    /// The upload the image belongs to.
    pub upload: UploadId,
    /// The image's position in its upload, from 0.
    pub index: u32,
}

/// One realtime request attempt. A retry of the same image gets a new id, so a late answer to
/// an abandoned attempt can be told apart from the live one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// Core's handle on one batch, valid from the moment core decides to build it. The upstream
/// batch id arrives later through [`crate::Engine::handle_batch_created`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BatchRef(pub u32);

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "u{}", self.0)
    }
}

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}", self.0)
    }
}

impl fmt::Display for BatchRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}", self.0)
    }
}

impl ImageId {
    /// The longest `custom_id`: `u` and `-i` around two ten-digit numbers.
    pub const CUSTOM_ID_MAX_LEN: usize = 23;

    /// The batch line's `custom_id`, `u{upload}-i{index}`, held inline: it is at most 23
    /// bytes, which a [`CompactString`] keeps without allocating.
    ///
    /// Same text as `to_string()`; a batch of 50,000 lines builds one per line, and the
    /// simulator hundreds of thousands per run, so this skips the formatting machinery and the
    /// heap (allocating and freeing one string per line was 9% of a million-image run).
    pub fn custom_id(&self) -> CompactString {
        // Assembled on the stack and copied in once: `CompactString::push_str` re-reads its
        // length and capacity on every call, which cost more than the digits.
        let mut buf = [0u8; Self::CUSTOM_ID_MAX_LEN];
        let mut len = 0;
        let mut put = |bytes: &[u8]| {
            buf[len..len + bytes.len()].copy_from_slice(bytes);
            len += bytes.len();
        };
        let mut digits = itoa::Buffer::new();
        put(b"u");
        put(digits.format(self.upload.0).as_bytes());
        put(b"-i");
        put(digits.format(self.index).as_bytes());
        // All ASCII, so this cannot fail; an empty id would only hide a bug in the lines above.
        let out = CompactString::from_utf8(&buf[..len]).unwrap_or_default();
        debug_assert!(!out.is_heap_allocated() && !out.is_empty());
        out
    }
}

/// The `custom_id` of a batch line: `u{upload}-i{index}`.
impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "u{}-i{}", self.upload.0, self.index)
    }
}

/// A `custom_id` that is not of the form `u{upload}-i{index}`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("custom_id {0:?} is not of the form u<upload>-i<index>")]
pub struct BadCustomId(pub String);

impl FromStr for ImageId {
    type Err = BadCustomId;

    /// Parses `u{upload}-i{index}` exactly as [`ImageId::custom_id`] writes it: both numbers
    /// plain decimal digits that fit a `u32`, with no sign and no leading zero (so `u01-i2` is
    /// refused: core never wrote it, and taking it for `u1-i2` would let a stray line tag an
    /// image of this batch). Byte by byte, since core parses one per batch result line.
    fn from_str(s: &str) -> Result<ImageId, BadCustomId> {
        let bad = || BadCustomId(s.to_owned());
        let b = s.as_bytes();
        let (upload, rest) = match b.split_first() {
            Some((b'u', rest)) => decimal(rest).ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        let (index, rest) = match rest {
            [b'-', b'i', rest @ ..] => decimal(rest).ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        if !rest.is_empty() {
            return Err(bad());
        }
        Ok(ImageId {
            upload: UploadId(upload),
            index,
        })
    }
}

/// A leading run of ASCII digits as `u32`'s `Display` writes one (no leading zero but in
/// `0` itself, so at most 10 digits), and what follows it.
fn decimal(b: &[u8]) -> Option<(u32, &[u8])> {
    // One pass, in 64 bits: ten digits always fit, so the only check per digit is the count.
    let mut n: u64 = 0;
    let mut len = 0;
    for &c in b {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        if len == 10 {
            return None;
        }
        n = n * 10 + u64::from(d);
        len += 1;
    }
    if len == 0 || (len > 1 && b[0] == b'0') {
        return None;
    }
    Some((u32::try_from(n).ok()?, &b[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str, expect: Option<(u32, u32)>) {
        let got = s.parse::<ImageId>().ok().map(|i| (i.upload.0, i.index));
        assert_eq!(got, expect, "{s:?}");
        if let Some((u, i)) = expect {
            assert_eq!(
                ImageId {
                    upload: UploadId(u),
                    index: i
                }
                .to_string(),
                s
            );
        }
    }

    #[test]
    fn custom_id_round_trips() {
        check("u0-i0", Some((0, 0)));
        check("u12-i345", Some((12, 345)));
        check("u4294967295-i4294967295", Some((u32::MAX, u32::MAX)));
        check("u4294967296-i0", None);
        check("u+1-i2", None);
        check("u1-i", None);
        check("x1-i2", None);
        check("u1_i2", None);
        check("", None);
        check("u", None);
        check("u1-i2x", None);
        check("u1--i2", None);
        check("u1-i-2", None);
        check("-i2", None);
        check("u10-i20", Some((10, 20)));
        // Only the form core writes: a leading zero is another id, however small the number.
        check("u01-i2", None);
        check("u1-i02", None);
        check("u00-i0", None);
        check("u000000000007-i0000000000009", None);
        check("u04294967295-i0", None);
    }

    /// The parser on `str` methods: the numbers as `str::parse` reads them, and the id only
    /// if it is written back exactly as it came. The byte parser must agree with it.
    fn reference(s: &str) -> Option<(u32, u32)> {
        let rest = s.strip_prefix('u')?;
        let (upload, index) = rest.split_once("-i")?;
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(upload) || !digits(index) {
            return None;
        }
        let (u, i) = (upload.parse().ok()?, index.parse().ok()?);
        (format!("u{u}-i{i}") == s).then_some((u, i))
    }

    proptest::proptest! {
        #[test]
        fn parser_agrees_with_reference(s in "u?[0-9+-]{0,11}(-i)?[0-9i+-]{0,11}") {
            let got = s.parse::<ImageId>().ok().map(|i| (i.upload.0, i.index));
            proptest::prop_assert_eq!(got, reference(&s));
        }

        #[test]
        fn parser_agrees_on_long_and_zero_padded_numbers(s in "u0{0,12}[0-9]{0,11}-i0{0,12}[0-9]{0,11}") {
            let got = s.parse::<ImageId>().ok().map(|i| (i.upload.0, i.index));
            proptest::prop_assert_eq!(got, reference(&s));
        }

        #[test]
        fn custom_id_round_trips_any(u: u32, i: u32) {
            let id = ImageId { upload: UploadId(u), index: i };
            proptest::prop_assert_eq!(id.custom_id().parse::<ImageId>(), Ok(id));
        }
    }

    #[test]
    fn custom_id_matches_display() {
        for (u, i) in [(0, 0), (7, 10), (123_456, 9), (u32::MAX, u32::MAX)] {
            let id = ImageId {
                upload: UploadId(u),
                index: i,
            };
            assert_eq!(id.custom_id(), format!("u{u}-i{i}"));
            assert_eq!(id.to_string(), id.custom_id());
            assert!(id.custom_id().len() <= ImageId::CUSTOM_ID_MAX_LEN);
        }
    }
}
