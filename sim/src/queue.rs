//! The simulator's queue of upstream answers in flight: a calendar queue that pops entries in
//! strict (time, insertion sequence) order, as a binary heap of all of them would.
//!
//! Almost every entry is a realtime answer landing a few seconds after it was sent, and the
//! loop pops them in time order; a heap of every answer in flight paid a sift through all its
//! levels on each pop. Here an entry goes into the bucket of its time (2^28 ns, about 268 ms,
//! wide), and only the current bucket is kept in order, sorted when the queue reaches it: a
//! push is a vector push, and a pop takes the last entry of a short sorted vector. Entries past
//! the ring's horizon (about 275 s: long timeouts and retry waits) wait in a heap of their own
//! until the ring reaches them. Which structure holds an entry never changes the order: the
//! current bucket holds every entry of its bucket or earlier, and every other entry is in a
//! later bucket.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use tagstorm_core::Time;

/// A queue entry: 16 bytes and `Copy`. The insertion sequence and the slab slot share one word
/// (`seq << SLOT_BITS | slot`), so ordering by it orders by sequence; keeping the entry to two
/// words lets sifting move it whole, where a third word split its loads across earlier stores.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub(crate) at: Time,
    pub(crate) seq_slot: u64,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Entry) -> bool {
        (self.at, self.seq_slot) == (o.at, o.seq_slot)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Entry) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    /// Reversed, so the max-heap pops the earliest (time, seq) first.
    fn cmp(&self, o: &Entry) -> Ordering {
        (o.at, o.seq_slot).cmp(&(self.at, self.seq_slot))
    }
}

/// log2 of a bucket's width in nanoseconds. On the million-image day 2^26 ns (67 ms) held one
/// or two answers a bucket, and moving to the next bucket cost more than the sorting it saved;
/// 2^27 and 2^28 took 6 M and 4 M instructions more off the run.
const BUCKET_BITS: u32 = 28;
/// Buckets in the ring, a power of two: the horizon is this many buckets from the current one.
const RING: usize = 1 << 10;

fn bucket(at: Time) -> u64 {
    at.as_nanos() >> BUCKET_BITS
}

/// Entries in (time, sequence) order; see the module docs.
#[derive(Debug)]
pub(crate) struct EventQueue {
    /// Every entry of bucket `cur` or earlier, sorted latest first, so the earliest is last.
    near: Vec<Entry>,
    /// The current bucket.
    cur: u64,
    /// Buckets `cur + 1 ..= cur + RING - 1`, each at its number modulo `RING`, unordered.
    ring: Vec<Vec<Entry>>,
    /// One bit per ring slot that holds entries.
    occupied: [u64; RING / 64],
    /// Entries in the ring.
    ring_len: usize,
    /// Entries of buckets `cur + RING` and later.
    far: BinaryHeap<Entry>,
}

impl Default for EventQueue {
    fn default() -> EventQueue {
        EventQueue {
            near: Vec::new(),
            cur: 0,
            ring: (0..RING).map(|_| Vec::new()).collect(),
            occupied: [0; RING / 64],
            ring_len: 0,
            far: BinaryHeap::new(),
        }
    }
}

impl EventQueue {
    /// Always inlined: LTO left it out of line, and the call was about half its cost (the
    /// queue's code fell from 78 M to 55 M instructions on the million-image day inlined).
    #[inline(always)]
    pub(crate) fn push(&mut self, e: Entry) {
        let b = bucket(e.at);
        if b <= self.cur {
            self.push_near(e);
        } else if b - self.cur < RING as u64 {
            self.push_ring(b, e);
        } else {
            self.far.push(e);
        }
    }

    /// Puts `e` in its place in the current bucket (rare: only an answer due within the same
    /// bucket, or one pushed after the queue moved past the loop's instant).
    fn push_near(&mut self, e: Entry) {
        // `Entry`'s order is reversed, so ascending order is latest first.
        let at = self.near.partition_point(|x| *x < e);
        self.near.insert(at, e);
    }

    #[inline]
    fn push_ring(&mut self, b: u64, e: Entry) {
        let slot = (b as usize) & (RING - 1);
        self.ring[slot].push(e);
        self.occupied[slot / 64] |= 1 << (slot % 64);
        self.ring_len += 1;
    }

    /// The time of the earliest entry.
    #[inline]
    pub(crate) fn peek_at(&mut self) -> Option<Time> {
        if self.near.is_empty() {
            self.refill();
        }
        self.near.last().map(|e| e.at)
    }

    /// Takes the earliest entry.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Entry> {
        if self.near.is_empty() {
            self.refill();
        }
        self.near.pop()
    }

    /// With the current bucket empty, moves `cur` to the next bucket that holds entries and
    /// takes them into the heap; does nothing when the queue is empty.
    #[inline(never)]
    fn refill(&mut self) {
        if self.ring_len == 0 {
            // Nothing within the horizon: jump to the first far bucket.
            let Some(first) = self.far.peek() else {
                return;
            };
            self.cur = bucket(first.at);
        } else {
            self.cur = self.next_occupied();
            let slot = (self.cur as usize) & (RING - 1);
            self.occupied[slot / 64] &= !(1 << (slot % 64));
            self.ring_len -= self.ring[slot].len();
            // The bucket's vector becomes the current one, and the empty current one takes
            // its slot: both keep their capacity.
            std::mem::swap(&mut self.near, &mut self.ring[slot]);
            if self.near.len() > 1 {
                self.near.sort_unstable();
            }
        }
        // Far entries the horizon now reaches (their buckets are all after the ring's old
        // last one, so none is before `cur`).
        while let Some(&e) = self.far.peek() {
            let b = bucket(e.at);
            if b - self.cur >= RING as u64 {
                break;
            }
            self.far.pop();
            if b == self.cur {
                self.push_near(e);
            } else {
                self.push_ring(b, e);
            }
        }
    }

    /// The first bucket after `cur` whose ring slot holds entries (the ring is not empty).
    fn next_occupied(&self) -> u64 {
        let start = (self.cur as usize + 1) & (RING - 1);
        // Slots from `start` on, wrapping once round the ring.
        for k in 0..=RING / 64 {
            let word = (start / 64 + k) % (RING / 64);
            let mut bits = self.occupied[word];
            if k == 0 {
                bits &= !0 << (start % 64);
            }
            if bits != 0 {
                let slot = word * 64 + bits.trailing_zeros() as usize;
                let ahead = (slot + RING - start) % RING;
                return self.cur + 1 + ahead as u64;
            }
        }
        unreachable!("the ring holds entries")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pops in the order of a binary heap of every entry, whatever the mix of times pushed
    /// between pops: same instant, within a bucket, across the ring, past the horizon.
    #[test]
    fn pops_in_the_order_of_one_heap() {
        let mut state = 7u64;
        let mut next = move || mock_openai::tags::splitmix64(&mut state);
        for round in 0..40u64 {
            let mut q = EventQueue::default();
            let mut heap = BinaryHeap::new();
            let mut now = 0u64;
            let mut seq = 0u64;
            for _ in 0..3_000 {
                let r = next();
                if r % 5 < 3 || heap.is_empty() {
                    let delay = match (r >> 8) % 8 {
                        0 => 0,
                        1 => (r >> 16) % (1 << 20),
                        2 => (r >> 16) % (1 << 26),
                        3 | 4 => 1_000_000_000 + (r >> 16) % 8_000_000_000,
                        5 => (r >> 16) % (200 * 1_000_000_000),
                        6 => round << 40,
                        _ => 200_000_000,
                    };
                    seq += 1;
                    let e = Entry {
                        at: Time::from_nanos(now.saturating_add(delay)),
                        seq_slot: seq,
                    };
                    q.push(e);
                    heap.push(e);
                } else {
                    let expect = heap.pop();
                    assert_eq!(q.peek_at(), expect.map(|e| e.at));
                    assert_eq!(q.pop(), expect);
                    if let Some(e) = expect {
                        now = e.at.as_nanos();
                    }
                }
                // Now and then the loop moves on without popping (an arrival, a timer).
                if r % 97 == 0 {
                    now += (r >> 32) % 3_000_000_000;
                    now = now.min(heap.peek().map_or(now, |e: &Entry| e.at.as_nanos()));
                }
            }
            while let Some(e) = heap.pop() {
                assert_eq!(q.pop(), Some(e));
            }
            assert_eq!(q.pop(), None);
            assert_eq!(q.peek_at(), None);
        }
    }
}
