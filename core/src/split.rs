//! Batch splitting: cut a run of image requests into Batch API jobs that respect every cap
//! (requests and bytes per file, tokens per batch, the account's enqueued-token queue, and the
//! workspace's batches and images per hour), and size the JSONL line each request becomes.
//!
//! Caps are facts §5 of `reference/openai-api-facts.md` (OpenAI's batch guide and API spec).

use std::io;

use serde::Serialize;

use crate::tokens::{Detail, Model};

/// Most requests one batch input file may hold (facts §5: "≤ 50,000 requests").
pub const MAX_BATCH_REQUESTS: u32 = 50_000;

/// Most bytes one batch input file may hold. Facts §5 says "200 MB" without saying whether
/// that is 10^6 or 2^20 bytes; the decimal reading is the smaller, so it is the safe one.
pub const MAX_BATCH_FILE_BYTES: u64 = 200_000_000;

/// One image request as the splitter sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitItem {
    /// Bytes of its JSONL line, trailing newline included (what [`line_len`] returns).
    pub line_bytes: u64,
    /// Tokens it counts against the enqueued-token queue (its estimated input tokens).
    pub tokens: u64,
}

/// Everything that bounds one [`split`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitLimits {
    /// Most requests per batch, at most [`MAX_BATCH_REQUESTS`].
    pub max_requests: u32,
    /// Most bytes per batch file, newlines included, at most [`MAX_BATCH_FILE_BYTES`].
    pub max_bytes: u64,
    /// Most queue tokens per batch; `u64::MAX` for no limit of its own.
    pub max_tokens: u64,
    /// The account's free enqueued tokens right now, shared by all batches of this split.
    pub queue_tokens_free: u64,
    /// The account's whole enqueued-token limit: an item above it can never be batched.
    pub queue_tokens_limit: u64,
    /// How many batches the workspace may still create now (its batches-per-hour budget).
    pub batches_allowed: u32,
    /// How many images the workspace may still batch now (its images-per-hour budget).
    pub images_allowed: u64,
}

/// [`SplitLimits`] that make no sense.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// A per-batch cap or the queue limit is zero, so nothing could ever be batched.
    #[error("{field} must be at least 1")]
    Zero {
        /// The field at fault.
        field: &'static str,
    },
    /// A per-batch cap is above what the Batch API accepts.
    #[error("{field} is {value}, above the Batch API cap of {cap}")]
    AboveApiCap {
        /// The field at fault.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The API's cap.
        cap: u64,
    },
    /// More tokens are free than the queue holds in all.
    #[error("queue_tokens_free is {free}, above queue_tokens_limit {limit}")]
    FreeAboveLimit {
        /// `queue_tokens_free`.
        free: u64,
        /// `queue_tokens_limit`.
        limit: u64,
    },
}

impl SplitLimits {
    /// Whether `item` can never be batched under these caps, whatever the queue holds: its
    /// line is above `max_bytes`, its tokens above `max_tokens` or the queue's whole limit, or
    /// `max_requests` is zero. [`split`] puts such items in `oversize`.
    #[inline]
    pub fn never_fits(&self, item: &SplitItem) -> bool {
        self.max_requests.min(MAX_BATCH_REQUESTS) == 0
            || item.line_bytes > self.max_bytes.min(MAX_BATCH_FILE_BYTES)
            || item.tokens > self.max_tokens
            || item.tokens > self.queue_tokens_limit
    }

    /// Checks the caps: every per-batch cap and the queue limit at least 1, the per-batch caps
    /// within the API's, and no more queue tokens free than the limit. Zero budgets
    /// (`queue_tokens_free`, `batches_allowed`, `images_allowed`) are valid: they only mean
    /// "not now".
    pub fn validate(&self) -> Result<(), SplitError> {
        let zero = |field| Err(SplitError::Zero { field });
        if self.max_requests == 0 {
            return zero("max_requests");
        }
        if self.max_bytes == 0 {
            return zero("max_bytes");
        }
        if self.max_tokens == 0 {
            return zero("max_tokens");
        }
        if self.queue_tokens_limit == 0 {
            return zero("queue_tokens_limit");
        }
        if self.max_requests > MAX_BATCH_REQUESTS {
            return Err(SplitError::AboveApiCap {
                field: "max_requests",
                value: u64::from(self.max_requests),
                cap: u64::from(MAX_BATCH_REQUESTS),
            });
        }
        if self.max_bytes > MAX_BATCH_FILE_BYTES {
            return Err(SplitError::AboveApiCap {
                field: "max_bytes",
                value: self.max_bytes,
                cap: MAX_BATCH_FILE_BYTES,
            });
        }
        if self.queue_tokens_free > self.queue_tokens_limit {
            return Err(SplitError::FreeAboveLimit {
                free: self.queue_tokens_free,
                limit: self.queue_tokens_limit,
            });
        }
        Ok(())
    }
}

/// The outcome of a [`split`]. Every item index appears in exactly one of the three lists,
/// and each list is in ascending order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// Batches to create, in order: each non-empty, within every per-batch cap, its indices
    /// ascending, and every index of a batch below every index of the next.
    pub batches: Vec<Vec<usize>>,
    /// Items that fit a batch but not now (queue, batches or images budget spent): retry later.
    pub held: Vec<usize>,
    /// Items that can never be batched: a line above `max_bytes`, or tokens above
    /// `max_tokens` or `queue_tokens_limit`.
    pub oversize: Vec<usize>,
}

/// The running totals of the batch being filled.
#[derive(Clone, Copy, Default)]
struct Open {
    requests: u64,
    bytes: u64,
    tokens: u64,
}

/// Cuts `items` into batches, greedily and in one pass (O(n)).
///
/// Items are taken in order. An item that can never be batched goes to `oversize`; one that
/// the queue or images budget cannot take now goes to `held`; otherwise it joins the batch
/// being filled if it fits there, or starts the next batch if one is still allowed, or else
/// is held. A held item does not stop later, smaller items from being batched.
///
/// This is next-fit: once a batch is closed it takes nothing more, so an earlier batch may
/// have room for a held item that a later one had not. What is guaranteed is that no held item
/// fits the budgets left at the end: the images budget is spent, or the item's tokens exceed
/// the free queue tokens left, or it fits neither the last batch nor a new one.
///
/// `limits` are not validated here (see [`SplitLimits::validate`]); whatever they say, no
/// batch exceeds the API's caps ([`MAX_BATCH_REQUESTS`], [`MAX_BATCH_FILE_BYTES`]) and with
/// `max_requests` zero every item is oversize. Never panics.
pub fn split(items: &[SplitItem], limits: &SplitLimits) -> Split {
    let mut out = Split::default();
    split_into(items, limits, &mut out);
    out
}

/// [`split`] into `out`, reusing its lists' memory: a caller that plans over and over (core
/// re-plans its batch backlog whenever the queue's room changes, tens of thousands of times a
/// day, mostly to hold everything again) allocates nothing for the lists once they have grown.
/// Whatever `out` held before is replaced.
pub fn split_into(items: &[SplitItem], limits: &SplitLimits, out: &mut Split) {
    let max_requests = u64::from(limits.max_requests.min(MAX_BATCH_REQUESTS));
    let max_bytes = limits.max_bytes.min(MAX_BATCH_FILE_BYTES);
    out.batches.clear();
    out.held.clear();
    out.oversize.clear();
    let mut queue_left = limits.queue_tokens_free;
    let mut images_left = limits.images_allowed;
    let mut batches_left = limits.batches_allowed;
    let mut open = Open::default();
    for (i, item) in items.iter().enumerate() {
        if limits.never_fits(item) {
            out.oversize.push(i);
            continue;
        }
        if images_left == 0 || item.tokens > queue_left {
            out.held.push(i);
            continue;
        }
        // The item joins the open batch if every total stays within its cap. The sums are
        // checked rather than trusted: the caps may be u64::MAX.
        let joined = match (
            open.bytes.checked_add(item.line_bytes),
            open.tokens.checked_add(item.tokens),
        ) {
            (Some(bytes), Some(tokens))
                if open.requests > 0
                    && open.requests < max_requests
                    && bytes <= max_bytes
                    && tokens <= limits.max_tokens =>
            {
                Some(Open {
                    requests: open.requests + 1,
                    bytes,
                    tokens,
                })
            }
            _ => None,
        };
        match (out.batches.last_mut(), joined) {
            (Some(batch), Some(joined)) => {
                batch.push(i);
                open = joined;
            }
            _ if batches_left > 0 => {
                batches_left -= 1;
                // Room for as many lines as the batch can take from here on, so filling it
                // does not grow it step by step.
                let most =
                    (items.len() - i).min(usize::try_from(max_requests).unwrap_or(usize::MAX));
                let mut batch = Vec::with_capacity(most);
                batch.push(i);
                out.batches.push(batch);
                open = Open {
                    requests: 1,
                    bytes: item.line_bytes,
                    tokens: item.tokens,
                };
            }
            _ => {
                out.held.push(i);
                continue;
            }
        }
        queue_left -= item.tokens;
        images_left -= 1;
    }
}

/// What one batch input line is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineParams<'a> {
    /// The request's id within its batch; the output file is matched back by it.
    pub custom_id: &'a str,
    /// The model every line of the batch names (a batch holds one model).
    pub model: Model,
    /// The tagging prompt.
    pub prompt: &'a str,
    /// The image's URL (or `data:` URL).
    pub image_url: &'a str,
    /// The image's `detail`.
    pub detail: Detail,
    /// The response's `max_tokens`.
    pub max_tokens: u32,
}

// The line's JSON shape, facts §5 "JSONL formats": a `BatchRequestInput` whose body is a
// chat completion request with one user message holding the prompt and the image.
#[derive(Serialize)]
struct Line<'a> {
    custom_id: &'a str,
    method: &'static str,
    url: &'static str,
    body: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    model: Model,
    max_tokens: u32,
    messages: [Message<'a>; 1],
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: (TextPart<'a>, ImagePart<'a>),
}

#[derive(Serialize)]
struct TextPart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct ImagePart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    image_url: ImageUrl<'a>,
}

#[derive(Serialize)]
struct ImageUrl<'a> {
    url: &'a str,
    detail: Detail,
}

impl<'a> Line<'a> {
    fn new(p: &LineParams<'a>) -> Line<'a> {
        Line {
            custom_id: p.custom_id,
            method: "POST",
            url: "/v1/chat/completions",
            body: Body {
                model: p.model,
                max_tokens: p.max_tokens,
                messages: [Message {
                    role: "user",
                    content: (
                        TextPart {
                            kind: "text",
                            text: p.prompt,
                        },
                        ImagePart {
                            kind: "image_url",
                            image_url: ImageUrl {
                                url: p.image_url,
                                detail: p.detail,
                            },
                        },
                    ),
                }],
            },
        }
    }
}

/// The JSONL line for one image request, without its trailing newline.
pub fn render_line(p: &LineParams<'_>) -> String {
    // Serializing these plain structs (string fields, no maps, no custom impls) cannot fail;
    // were it ever to, the empty string keeps this total and `line_len` agrees with it.
    serde_json::to_string(&Line::new(p)).unwrap_or_default()
}

/// An `io::Write` that only counts the bytes written to it.
struct CountingSink(u64);

impl io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The bytes the line for `p` takes in a batch file, trailing newline included: always
/// `render_line(p).len() + 1`, but counted without building the line.
pub fn line_len(p: &LineParams<'_>) -> u64 {
    let mut sink = CountingSink(0);
    match serde_json::to_writer(&mut sink, &Line::new(p)) {
        Ok(()) => sink.0 + 1,
        // Matches `render_line`'s empty string; unreachable, as explained there.
        Err(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use expect_test::{Expect, expect};
    use proptest::prelude::*;

    /// Generous limits that the one-line cases narrow with struct-update syntax.
    fn lim() -> SplitLimits {
        SplitLimits {
            max_requests: MAX_BATCH_REQUESTS,
            max_bytes: MAX_BATCH_FILE_BYTES,
            max_tokens: u64::MAX,
            queue_tokens_free: u64::MAX,
            queue_tokens_limit: u64::MAX,
            batches_allowed: 2000,
            images_allowed: u64::MAX,
        }
    }

    /// `n` identical items.
    fn same(n: usize, line_bytes: u64, tokens: u64) -> Vec<SplitItem> {
        vec![SplitItem { line_bytes, tokens }; n]
    }

    /// Items from `(line_bytes, tokens)` pairs.
    fn items(pairs: &[(u64, u64)]) -> Vec<SplitItem> {
        pairs
            .iter()
            .map(|&(line_bytes, tokens)| SplitItem { line_bytes, tokens })
            .collect()
    }

    /// Ascending indices as inclusive runs: `0-2,5,7-9`, or `-` when empty.
    fn runs(ix: &[usize]) -> String {
        let mut parts = Vec::new();
        let mut k = 0;
        while k < ix.len() {
            let start = ix[k];
            while k + 1 < ix.len() && ix[k + 1] == ix[k] + 1 {
                k += 1;
            }
            parts.push(if ix[k] == start {
                start.to_string()
            } else {
                format!("{start}-{}", ix[k])
            });
            k += 1;
        }
        if parts.is_empty() {
            "-".to_owned()
        } else {
            parts.join(",")
        }
    }

    fn summary(s: &Split) -> String {
        let batches: Vec<String> = s.batches.iter().map(|b| runs(b)).collect();
        let batches = if batches.is_empty() {
            "-".to_owned()
        } else {
            batches.join(" | ")
        };
        format!(
            "batches {batches}; held {}; oversize {}",
            runs(&s.held),
            runs(&s.oversize)
        )
    }

    fn check(items: &[SplitItem], limits: SplitLimits, expect: Expect) {
        let s = split(items, &limits);
        assert_invariants(items, &limits, &s);
        // The reference is quadratic; the cases at the API's caps are checked by invariants.
        if items.len() <= 1000 {
            assert_eq!(s, naive_split(items, &limits));
        }
        expect.assert_eq(&summary(&s));
    }

    // One case per line reads as a table, so rustfmt is kept from wrapping them.
    #[rustfmt::skip]
    #[test]
    fn split_cases() {
        check(&[], lim(), expect!["batches -; held -; oversize -"]);
        check(&same(50_001, 100, 10), lim(), expect!["batches 0-49999 | 50000; held -; oversize -"]);
        check(&same(20_000, 10_000, 1), lim(), expect!["batches 0-19999; held -; oversize -"]);
        check(&same(20_001, 10_000, 1), lim(), expect!["batches 0-19999 | 20000; held -; oversize -"]);
        check(&same(3, 100_000_000, 1), lim(), expect!["batches 0-1 | 2; held -; oversize -"]);
        check(&same(10, 1, 3), SplitLimits { max_tokens: 10, ..lim() }, expect!["batches 0-2 | 3-5 | 6-8 | 9; held -; oversize -"]);
        check(&same(10, 1, 100), SplitLimits { queue_tokens_free: 450, ..lim() }, expect!["batches 0-3; held 4-9; oversize -"]);
        check(&same(10, 1, 100), SplitLimits { queue_tokens_free: 0, ..lim() }, expect!["batches -; held 0-9; oversize -"]);
        check(&items(&[(1, 300), (1, 50), (1, 60)]), SplitLimits { queue_tokens_free: 100, ..lim() }, expect!["batches 1; held 0,2; oversize -"]);
        check(&same(10, 1, 1), SplitLimits { max_requests: 3, batches_allowed: 2, ..lim() }, expect!["batches 0-2 | 3-5; held 6-9; oversize -"]);
        check(&same(4, 1, 1), SplitLimits { batches_allowed: 0, ..lim() }, expect!["batches -; held 0-3; oversize -"]);
        check(&same(10, 1, 1), SplitLimits { images_allowed: 4, ..lim() }, expect!["batches 0-3; held 4-9; oversize -"]);
        check(&items(&[(10, 1), (201, 1), (10, 1)]), SplitLimits { max_bytes: 200, ..lim() }, expect!["batches 0,2; held -; oversize 1"]);
        check(&items(&[(10, 1), (10, 11), (10, 1)]), SplitLimits { max_tokens: 10, ..lim() }, expect!["batches 0,2; held -; oversize 1"]);
        check(&items(&[(10, 1), (10, 11), (10, 1)]), SplitLimits { queue_tokens_free: 5, queue_tokens_limit: 10, ..lim() }, expect!["batches 0,2; held -; oversize 1"]);
        check(&items(&[(100, 1), (100, 1), (1, 1)]), SplitLimits { max_bytes: 200, batches_allowed: 1, ..lim() }, expect!["batches 0-1; held 2; oversize -"]);
        check(&items(&[(150, 1), (100, 1), (50, 1)]), SplitLimits { max_bytes: 200, batches_allowed: 1, ..lim() }, expect!["batches 0,2; held 1; oversize -"]);
        check(&same(3, 1, 1), SplitLimits { max_requests: 0, ..lim() }, expect!["batches -; held -; oversize 0-2"]);
        check(&same(50_001, 1, 1), SplitLimits { max_requests: u32::MAX, max_bytes: u64::MAX, ..lim() }, expect!["batches 0-49999 | 50000; held -; oversize -"]);
    }

    #[rustfmt::skip]
    #[test]
    fn validate() {
        let err = |l: SplitLimits| l.validate().unwrap_err().to_string();
        assert_eq!(lim().validate(), Ok(()));
        assert_eq!(SplitLimits { queue_tokens_free: 0, batches_allowed: 0, images_allowed: 0, ..lim() }.validate(), Ok(()));
        assert_eq!(err(SplitLimits { max_requests: 0, ..lim() }), "max_requests must be at least 1");
        assert_eq!(err(SplitLimits { max_bytes: 0, ..lim() }), "max_bytes must be at least 1");
        assert_eq!(err(SplitLimits { max_tokens: 0, ..lim() }), "max_tokens must be at least 1");
        assert_eq!(err(SplitLimits { queue_tokens_limit: 0, queue_tokens_free: 0, ..lim() }), "queue_tokens_limit must be at least 1");
        assert_eq!(err(SplitLimits { max_requests: 50_001, ..lim() }), "max_requests is 50001, above the Batch API cap of 50000");
        assert_eq!(err(SplitLimits { max_bytes: 200_000_001, ..lim() }), "max_bytes is 200000001, above the Batch API cap of 200000000");
        assert_eq!(err(SplitLimits { queue_tokens_free: 11, queue_tokens_limit: 10, ..lim() }), "queue_tokens_free is 11, above queue_tokens_limit 10");
    }

    /// Checks the contract of [`split`] on one outcome.
    fn assert_invariants(items: &[SplitItem], limits: &SplitLimits, s: &Split) {
        let max_requests = limits.max_requests.min(MAX_BATCH_REQUESTS) as usize;
        let max_bytes = limits.max_bytes.min(MAX_BATCH_FILE_BYTES);
        // Every index exactly once, each list ascending.
        let mut seen = vec![0u8; items.len()];
        for list in s.batches.iter().chain([&s.held, &s.oversize]) {
            assert!(
                list.windows(2).all(|w| w[0] < w[1]),
                "not ascending: {list:?}"
            );
            for &i in list {
                seen[i] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "not a partition: {seen:?}");
        // Every batch non-empty and within every per-batch cap; batches in input order.
        let sums = |b: &[usize]| {
            b.iter().fold((0u64, 0u64), |(by, tk), &i| {
                (by + items[i].line_bytes, tk + items[i].tokens)
            })
        };
        for b in &s.batches {
            let (bytes, tokens) = sums(b);
            assert!(
                !b.is_empty() && b.len() <= max_requests,
                "requests: {}",
                b.len()
            );
            assert!(bytes <= max_bytes, "bytes: {bytes}");
            assert!(tokens <= limits.max_tokens, "tokens: {tokens}");
        }
        assert!(s.batches.windows(2).all(|w| w[0].last() < w[1].first()));
        // The shared budgets.
        let queued: u64 = s.batches.iter().map(|b| sums(b).1).sum();
        let images: u64 = s.batches.iter().map(|b| b.len() as u64).sum();
        assert!(queued <= limits.queue_tokens_free, "queued {queued}");
        assert!(s.batches.len() <= limits.batches_allowed as usize);
        assert!(images <= limits.images_allowed);
        // Oversize items are exactly those that can never be batched.
        let mut is_oversize = vec![false; items.len()];
        for &i in &s.oversize {
            is_oversize[i] = true;
        }
        for (i, it) in items.iter().enumerate() {
            let never = max_requests == 0
                || it.line_bytes > max_bytes
                || it.tokens > limits.max_tokens
                || it.tokens > limits.queue_tokens_limit;
            assert_eq!(never, is_oversize[i], "item {i}: {it:?}");
        }
        // No held item fits what is left at the end: the images budget is spent, or its
        // tokens exceed the queue tokens left, or it fits neither the last batch (requests,
        // bytes, tokens) nor a new batch (none left to create).
        let queue_left = limits.queue_tokens_free - queued;
        let images_left = limits.images_allowed - images;
        let batches_left = limits.batches_allowed as usize - s.batches.len();
        let last = s.batches.last().map(|b| (b.len(), sums(b)));
        for &h in &s.held {
            let it = items[h];
            let fits_last = last.is_some_and(|(n, (bytes, tokens))| {
                n < max_requests
                    && bytes + it.line_bytes <= max_bytes
                    && tokens + it.tokens <= limits.max_tokens
            });
            assert!(
                images_left == 0 || it.tokens > queue_left || (!fits_last && batches_left == 0),
                "item {h} held for nothing: {it:?}, queue left {queue_left}, images left \
                 {images_left}, batches left {batches_left}, fits last {fits_last}"
            );
        }
    }

    /// A deliberately simple model of [`split`]: the same greedy rules, but every total is
    /// recomputed from the output lists, with no running state to get wrong.
    fn naive_split(items: &[SplitItem], limits: &SplitLimits) -> Split {
        let max_requests = limits.max_requests.min(MAX_BATCH_REQUESTS) as usize;
        let max_bytes = limits.max_bytes.min(MAX_BATCH_FILE_BYTES) as u128;
        let mut s = Split::default();
        for (i, it) in items.iter().enumerate() {
            let (bytes, tokens) = (it.line_bytes as u128, it.tokens as u128);
            if max_requests == 0
                || bytes > max_bytes
                || tokens > limits.max_tokens as u128
                || tokens > limits.queue_tokens_limit as u128
            {
                s.oversize.push(i);
                continue;
            }
            let all: Vec<usize> = s.batches.concat();
            let queued: u128 = all.iter().map(|&j| items[j].tokens as u128).sum();
            if all.len() as u128 >= limits.images_allowed as u128
                || queued + tokens > limits.queue_tokens_free as u128
            {
                s.held.push(i);
                continue;
            }
            let fits_last = s.batches.last().is_some_and(|b| {
                b.len() < max_requests
                    && b.iter().map(|&j| items[j].line_bytes as u128).sum::<u128>() + bytes
                        <= max_bytes
                    && b.iter().map(|&j| items[j].tokens as u128).sum::<u128>() + tokens
                        <= limits.max_tokens as u128
            });
            if fits_last {
                if let Some(b) = s.batches.last_mut() {
                    b.push(i);
                }
            } else if s.batches.len() < limits.batches_allowed as usize {
                s.batches.push(vec![i]);
            } else {
                s.held.push(i);
            }
        }
        s
    }

    fn arb_items() -> impl Strategy<Value = Vec<SplitItem>> {
        prop::collection::vec(
            (0u64..=300, prop_oneof![0u64..=50, 0u64..=3000])
                .prop_map(|(line_bytes, tokens)| SplitItem { line_bytes, tokens }),
            0..120,
        )
    }

    fn arb_limits() -> impl Strategy<Value = SplitLimits> {
        (
            prop_oneof![1u32..=8, 0u32..=60, Just(u32::MAX)],
            prop_oneof![1u64..=1000, Just(u64::MAX)],
            prop_oneof![1u64..=6000, Just(u64::MAX)],
            0u64..=60_000,
            prop_oneof![1u64..=4000, Just(u64::MAX)],
            0u32..=12,
            prop_oneof![0u64..=150, Just(u64::MAX)],
        )
            .prop_map(
                |(max_requests, max_bytes, max_tokens, free, limit, batches, images)| SplitLimits {
                    max_requests,
                    max_bytes,
                    max_tokens,
                    queue_tokens_free: free,
                    queue_tokens_limit: limit,
                    batches_allowed: batches,
                    images_allowed: images,
                },
            )
    }

    /// Characters that stress JSON escaping, mixed with arbitrary ones.
    fn arb_text() -> impl Strategy<Value = String> {
        let special = prop::sample::select(vec![
            '"', '\\', '/', '\n', '\r', '\t', '\u{0}', '\u{1f}', '\u{7f}', '\u{2028}', 'é', '🦀',
        ]);
        prop::collection::vec(prop_oneof![any::<char>(), special], 0..40)
            .prop_map(String::from_iter)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn split_keeps_its_contract(items in arb_items(), limits in arb_limits()) {
            let s = split(&items, &limits);
            assert_invariants(&items, &limits, &s);
            prop_assert_eq!(s, naive_split(&items, &limits));
        }

        #[test]
        fn line_len_matches_render(
            custom_id in arb_text(),
            prompt in arb_text(),
            image_url in arb_text(),
            detail in prop::sample::select(vec![Detail::Low, Detail::High, Detail::Auto]),
            model in prop::sample::select(Model::ALL.to_vec()),
            max_tokens in any::<u32>(),
        ) {
            let p = LineParams { custom_id: &custom_id, model, prompt: &prompt, image_url: &image_url, detail, max_tokens };
            let line = render_line(&p);
            prop_assert_eq!(line_len(&p), line.len() as u64 + 1);
            prop_assert!(!line.contains('\n'));
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            prop_assert_eq!(v["custom_id"].as_str(), Some(custom_id.as_str()));
            prop_assert_eq!(v["body"]["messages"][0]["content"][0]["text"].as_str(), Some(prompt.as_str()));
            prop_assert_eq!(v["body"]["messages"][0]["content"][1]["image_url"]["url"].as_str(), Some(image_url.as_str()));
        }
    }

    #[test]
    fn line_shape() {
        let p = LineParams {
            custom_id: "img-42",
            model: Model::Gpt4oMini,
            prompt: "Tag this \"photo\".",
            image_url: "https://example.com/a.jpg",
            detail: Detail::Low,
            max_tokens: 300,
        };
        let line = render_line(&p);
        expect![[r#"{"custom_id":"img-42","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini","max_tokens":300,"messages":[{"role":"user","content":[{"type":"text","text":"Tag this \"photo\"."},{"type":"image_url","image_url":{"url":"https://example.com/a.jpg","detail":"low"}}]}]}}"#]].assert_eq(&line);
        assert_eq!(line_len(&p), line.len() as u64 + 1);
    }
}
