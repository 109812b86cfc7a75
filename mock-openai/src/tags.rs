//! The tags the mock "sees" in an image: a pure function of the image URL, so every consumer
//! can check that a result belongs to its image.
//!
//! The hash is 64-bit FNV-1a (offset basis 0xcbf29ce484222325, prime 0x100000001b3) followed by
//! SplitMix64 steps to draw words; both are fixed, documented algorithms, so the tags of a URL
//! never change between runs, builds or platforms.

/// The fixed vocabulary tags are drawn from (64 words).
pub const VOCABULARY: [&str; 64] = [
    "animal",
    "architecture",
    "autumn",
    "beach",
    "bicycle",
    "bird",
    "boat",
    "book",
    "bridge",
    "building",
    "car",
    "cat",
    "child",
    "city",
    "cloud",
    "coffee",
    "desert",
    "dog",
    "door",
    "field",
    "flower",
    "food",
    "forest",
    "fruit",
    "garden",
    "glass",
    "grass",
    "hill",
    "horse",
    "house",
    "ice",
    "island",
    "lake",
    "lamp",
    "leaf",
    "light",
    "market",
    "mountain",
    "music",
    "night",
    "ocean",
    "painting",
    "park",
    "people",
    "portrait",
    "rain",
    "river",
    "road",
    "rock",
    "sand",
    "shadow",
    "sky",
    "snow",
    "sport",
    "street",
    "summer",
    "sunset",
    "table",
    "train",
    "tree",
    "umbrella",
    "water",
    "window",
    "winter",
];

/// The length of each word of [`VOCABULARY`], by index.
const WORD_LEN: [u8; 64] = {
    let mut len = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        len[i] = VOCABULARY[i].len() as u8;
        i += 1;
    }
    len
};

/// The FNV-1a 64-bit offset basis: the hash of no bytes.
pub const FNV1A64_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_extend(FNV1A64_OFFSET, bytes)
}

/// Continues an FNV-1a hash `h` over `bytes`: `fnv1a64_extend(fnv1a64(a), b) == fnv1a64(a ++ b)`,
/// so a caller hashing many URLs with one prefix can hash the prefix once.
pub fn fnv1a64_extend(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64's increment: each step adds it to the state.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// One SplitMix64 step: advances `state` and returns a well-mixed value.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GAMMA);
    splitmix64_mix(*state)
}

/// SplitMix64's output function: the value of the step that left the state at `z`.
fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The tags of one image: 3–5 distinct vocabulary words, in a deterministic order.
///
/// A small `Copy` value, so the model can hand out an answer without rendering its JSON; the
/// HTTP server renders it with [`Tags::write_json`], and the simulator compares
/// [`Tags::code`]s, which are equal exactly when the tags are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tags {
    /// Indexes into [`VOCABULARY`]; the first `n` are used.
    words: [u8; 5],
    n: u8,
}

impl Tags {
    /// The tags of the image at `image_url`.
    pub fn of(image_url: &str) -> Tags {
        Tags::of_url_hash(fnv1a64(image_url.as_bytes()))
    }

    /// The tags of the image whose URL has the FNV-1a hash `url_hash` ([`fnv1a64`]).
    ///
    /// The definition: SplitMix64 steps from `url_hash`, the first setting the count (3 to 5),
    /// each next one's low six bits a word, skipped if already picked, until the count is
    /// reached or 256 words have been drawn.
    ///
    /// Step `k` of that stream mixes `url_hash + k·GAMMA`, so the count (step 1) and the first
    /// three to five words (steps 2 to 6) are drawn straight off, without carrying a state
    /// from one draw to the next, and packed a byte each into one word; when none of them
    /// repeats another (nine images in ten), they are the tags; otherwise `with_repeats` goes
    /// on drawing. A loop drawing one word at a time spent about 27 instructions a draw, its
    /// bookkeeping and bound included; drawn this way, the million-image day takes 15.8 M
    /// instructions fewer (the tags of an image about 146, repeats included). Out of line:
    /// the simulator works tags out in two places, and inlined in its loop the draws reloaded
    /// their constants at every step, for want of registers.
    #[inline(never)]
    pub fn of_url_hash(url_hash: u64) -> Tags {
        let count = 3 + splitmix64_mix(url_hash.wrapping_add(GAMMA)) % 3;
        // The vocabulary has 64 words, so the low six bits pick one uniformly.
        let word = |step: u64| splitmix64_mix(url_hash.wrapping_add(GAMMA.wrapping_mul(step))) % 64;
        let (w0, w1, w2) = (word(2), word(3), word(4));
        // The words drawn, a byte each from the lowest; one bit per word among them; nonzero
        // once one repeats an earlier one.
        let mut packed = w0 | w1 << 8 | w2 << 16;
        let mut picked = 1u64 << w0;
        let mut repeats = picked & (1 << w1);
        picked |= 1 << w1;
        repeats |= picked & (1 << w2);
        picked |= 1 << w2;
        if count > 3 {
            let w = word(5);
            packed |= w << 24;
            repeats |= picked & (1 << w);
            picked |= 1 << w;
            if count > 4 {
                let w = word(6);
                packed |= w << 32;
                repeats |= picked & (1 << w);
            }
        }
        if repeats != 0 {
            return Tags::with_repeats(url_hash, count as usize, packed);
        }
        let b = packed.to_le_bytes();
        Tags {
            words: [b[0], b[1], b[2], b[3], b[4]],
            n: count as u8,
        }
    }

    /// [`Tags::of_url_hash`] when one of its first `count` words (steps 2 to `count + 1`,
    /// `drawn` a byte each) repeats an earlier one: the repeats are skipped and drawing goes
    /// on from step `count + 2`, as the definition's loop does.
    #[cold]
    #[inline(never)]
    fn with_repeats(url_hash: u64, count: usize, drawn: u64) -> Tags {
        let drawn = drawn.to_le_bytes();
        let mut state = url_hash.wrapping_add(GAMMA.wrapping_mul(count as u64 + 1));
        let mut words = [0u8; 5];
        let mut n = 0;
        let mut picked = 0u64;
        // Each draw succeeds with probability ≥ 60/64, so the bound is never reached in
        // practice; it only guarantees termination.
        for i in 0..256 {
            if n == count {
                break;
            }
            let word = match drawn.get(i) {
                Some(&w) if i < count => w,
                _ => (splitmix64(&mut state) % 64) as u8,
            };
            if picked & (1 << word) == 0 {
                picked |= 1 << word;
                words[n] = word;
                n += 1;
            }
        }
        Tags { words, n: n as u8 }
    }

    /// The words, in order.
    pub fn words(&self) -> impl ExactSizeIterator<Item = &'static str> + '_ {
        self.words[..usize::from(self.n)]
            .iter()
            .map(|&w| VOCABULARY[usize::from(w)])
    }

    /// A nonzero number that identifies these tags: equal codes, equal tags.
    pub fn code(&self) -> u64 {
        self.words[..usize::from(self.n)]
            .iter()
            .fold(u64::from(self.n), |acc, &w| (acc << 6) | u64::from(w))
    }

    /// The length in bytes of [`Tags::write_json`]'s output.
    pub fn json_len(&self) -> usize {
        // `{"tags":[` and `]}`, then each word quoted, with a comma between words. The model
        // works this out for every answer (its output tokens), so the words' lengths come from
        // a table of bytes (a word index is below 64, so the mask costs no bounds check).
        let words: usize = self.words[..usize::from(self.n)]
            .iter()
            .map(|&w| usize::from(WORD_LEN[usize::from(w) & 63]) + 2)
            .sum();
        11 + words + usize::from(self.n).saturating_sub(1)
    }

    /// Appends `{"tags":["…","…"]}` (compact JSON) to `out`.
    pub fn write_json(&self, out: &mut String) {
        out.reserve(self.json_len());
        out.push_str("{\"tags\":[");
        for (i, tag) in self.words().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            out.push_str(tag);
            out.push('"');
        }
        out.push_str("]}");
    }

    /// [`Tags::write_json`]'s output cut to at most `max_bytes` (tags JSON is ASCII, so any
    /// byte index is a character boundary): the content of an answer cut short by `max_tokens`.
    pub fn json_truncated(&self, max_bytes: usize) -> String {
        let mut out = String::with_capacity(self.json_len());
        self.write_json(&mut out);
        out.truncate(max_bytes);
        out
    }
}

/// The 3–5 distinct tags of the image at `image_url`, in a deterministic order.
pub fn tags_for(image_url: &str) -> Vec<&'static str> {
    Tags::of(image_url).words().collect()
}

/// The assistant message content for `image_url`: `{"tags":["…","…"]}` (compact JSON).
pub fn tags_json(image_url: &str) -> String {
    let mut out = String::with_capacity(64);
    write_tags_json(image_url, &mut out);
    out
}

/// Appends [`tags_json`]'s content for `image_url` to `out`, so a caller can reuse one buffer.
pub fn write_tags_json(image_url: &str, out: &mut String) {
    Tags::of(image_url).write_json(out);
}

/// Whether `content` is exactly the content the mock returns for `image_url`.
pub fn content_matches(image_url: &str, content: &str) -> bool {
    content == tags_json(image_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn extending_a_prefix_hash_is_hashing_the_whole() {
        let url = "https://img.tagstorm.test/u12/i345.jpg";
        for cut in 0..=url.len() {
            let (a, b) = url.as_bytes().split_at(cut);
            assert_eq!(fnv1a64_extend(fnv1a64(a), b), fnv1a64(url.as_bytes()));
        }
        assert_eq!(Tags::of_url_hash(fnv1a64(url.as_bytes())), Tags::of(url));
    }

    /// [`Tags::of_url_hash`]'s definition, as first written: the words it picks must never
    /// change.
    fn by_loop(url_hash: u64) -> Tags {
        let mut state = url_hash;
        let count = 3 + (splitmix64(&mut state) % 3) as usize;
        let mut words = [0u8; 5];
        let mut n = 0;
        let mut picked = 0u64;
        for _ in 0..256 {
            if n == count {
                break;
            }
            let word = (splitmix64(&mut state) % VOCABULARY.len() as u64) as u8;
            if picked & (1 << word) == 0 {
                picked |= 1 << word;
                words[n] = word;
                n += 1;
            }
        }
        Tags { words, n: n as u8 }
    }

    #[test]
    fn the_fast_path_picks_the_loops_words() {
        let mut h = 0x0123_4567_89ab_cdef_u64;
        let mut repeats = 0;
        for i in 0..300_000u64 {
            for hash in [i, u64::MAX - i, h, i << 40] {
                let tags = Tags::of_url_hash(hash);
                assert_eq!(tags, by_loop(hash), "{hash:#x}");
                let mut seen = 0u64;
                let mut state = hash;
                splitmix64(&mut state);
                for _ in 0..tags.n {
                    seen |= 1 << (splitmix64(&mut state) % 64);
                }
                repeats += u32::from(seen.count_ones() < u32::from(tags.n));
            }
            h = splitmix64(&mut h);
        }
        // Both paths were taken many times.
        assert!(repeats > 50_000, "{repeats} images with a repeated word");
    }

    #[test]
    fn tags_are_deterministic_distinct_and_sized() {
        let mut codes = std::collections::HashMap::new();
        for i in 0..500 {
            let url = format!("https://img.example/{i}.jpg");
            let tags = tags_for(&url);
            assert!((3..=5).contains(&tags.len()), "{url}: {tags:?}");
            let mut sorted = tags.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), tags.len());
            assert_eq!(tags, tags_for(&url));
            let json = tags_json(&url);
            let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(parsed["tags"].as_array().unwrap().len(), tags.len());
            assert!(content_matches(&url, &json));
            let t = Tags::of(&url);
            assert_eq!(t.json_len(), json.len());
            assert_eq!(t.json_truncated(7), json[..7]);
            assert_ne!(t.code(), 0);
            // Equal codes mean equal tags: a code seen before came with the same content.
            if let Some(before) = codes.insert(t.code(), json.clone()) {
                assert_eq!(before, json, "{url}");
            }
        }
        assert!(codes.len() > 400, "{} distinct codes", codes.len());
        assert_ne!(tags_json("a"), tags_json("b"));
    }
}
