//! Identifiers core hands out and the `custom_id` form that ties a batch line back to its image.

use std::fmt;
use std::str::FromStr;

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

    fn from_str(s: &str) -> Result<ImageId, BadCustomId> {
        let bad = || BadCustomId(s.to_owned());
        let rest = s.strip_prefix('u').ok_or_else(bad)?;
        let (upload, index) = rest.split_once("-i").ok_or_else(bad)?;
        // `u32::from_str` accepts a leading `+`; a custom_id we wrote never has one.
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(upload) || !digits(index) {
            return Err(bad());
        }
        Ok(ImageId {
            upload: UploadId(upload.parse().map_err(|_| bad())?),
            index: index.parse().map_err(|_| bad())?,
        })
    }
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
    }
}
