//! Deterministic OpenAI-shaped ids (`batch_` + 32 hex, `file-` + 22 alphanumerics, …) derived
//! from counters and the seed through SplitMix64, never from a clock.

use crate::tags::splitmix64;

const ALNUM: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Mixes a seed, a namespace and a counter into one generator state.
pub fn mix(seed: u64, namespace: u64, n: u64) -> u64 {
    let mut s = seed ^ namespace.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let a = splitmix64(&mut s);
    let mut s2 = a ^ n;
    splitmix64(&mut s2)
}

/// `len` lower-case hex digits drawn from `state`.
pub fn hex(state: u64, len: usize) -> String {
    prefixed_hex("", state, len)
}

/// `prefix` and then [`hex`]`(state, len)`, built in one string of the right size.
pub fn prefixed_hex(prefix: &str, mut state: u64, len: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(prefix.len() + len);
    out.push_str(prefix);
    let mut left = len;
    while left > 0 {
        let v = splitmix64(&mut state);
        for i in 0..left.min(16) {
            out.push(char::from(HEX[((v >> (i * 4)) & 0xf) as usize]));
        }
        left -= left.min(16);
    }
    out
}

/// `len` characters of `[0-9A-Za-z]` drawn from `state`.
pub fn alnum(state: u64, len: usize) -> String {
    prefixed_alnum("", state, len)
}

/// `prefix` and then [`alnum`]`(state, len)`, built in one string of the right size: the
/// model makes three file ids and a batch id for every batch.
pub fn prefixed_alnum(prefix: &str, mut state: u64, len: usize) -> String {
    let mut out = String::with_capacity(prefix.len() + len);
    out.push_str(prefix);
    for _ in 0..len {
        let v = splitmix64(&mut state);
        out.push(char::from(ALNUM[(v % 62) as usize]));
    }
    out
}

/// Namespaces keep the id streams of different object kinds apart.
pub mod ns {
    /// Batch ids.
    pub const BATCH: u64 = 1;
    /// File ids.
    pub const FILE: u64 = 2;
    /// `batch_req_` ids of output lines.
    pub const BATCH_REQ: u64 = 3;
    /// `req_` request ids.
    pub const REQUEST: u64 = 4;
    /// `chatcmpl-` completion ids.
    pub const COMPLETION: u64 = 5;
    /// Organization names.
    pub const ORG: u64 = 6;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let h = hex(mix(1, ns::BATCH, 0), 32);
        assert_eq!(h.len(), 32);
        assert!(
            h.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        let a = alnum(mix(1, ns::FILE, 0), 22);
        assert_eq!(a.len(), 22);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(hex(mix(1, ns::BATCH, 0), 32), hex(mix(1, ns::BATCH, 1), 32));
        assert_eq!(
            alnum(mix(9, ns::FILE, 4), 22),
            alnum(mix(9, ns::FILE, 4), 22)
        );
    }

    /// The digits as they were drawn before `prefixed_hex`: one `char::from_digit` at a time.
    fn hex_reference(mut state: u64, len: usize) -> String {
        let mut out = String::new();
        while out.len() < len {
            let v = splitmix64(&mut state);
            for i in 0..16 {
                if out.len() == len {
                    break;
                }
                let nibble = ((v >> (i * 4)) & 0xf) as u32;
                out.push(char::from_digit(nibble, 16).unwrap_or('0'));
            }
        }
        out
    }

    #[test]
    fn prefixed_ids_are_the_prefix_and_the_plain_id() {
        for (state, len) in [(0, 0), (1, 1), (7, 15), (7, 16), (7, 17), (99, 32), (5, 40)] {
            assert_eq!(hex(state, len), hex_reference(state, len));
            assert_eq!(
                prefixed_hex("batch_", state, len),
                format!("batch_{}", hex(state, len))
            );
            assert_eq!(
                prefixed_alnum("file-", state, len),
                format!("file-{}", alnum(state, len))
            );
            assert_eq!(alnum(state, len).len(), len);
        }
    }
}
