//! The hand-written Rust peer for `benches/sim_vs_peers.sh`: an M/M/1 queue on a plain
//! `BinaryHeap` event loop, the model of the third-party measurement that the simulator's
//! events-per-second target is set against (SimPy ≈ 0.24 M events/s against a minimal Rust
//! loop at 14–18 M on an M4 laptop; `../shared/reference/anchors-mock-sim.md` §2.6).
//!
//! An event is one arrival or one departure, so `--events 1000000` serves 500,000 customers.
//! Each event does what such a prototype does and nothing more: pop the earliest event, update
//! the queue, draw one exponential, push the next event. The mean wait in the queue is printed
//! next to its closed form, ρ / (μ − λ), so the loop is seen to simulate the queue it claims.
//!
//! ```text
//! cargo run --release -p tagstorm-benches --features mm1 --example mm1_loop -- --events 1000000
//! ```
//!
//! Prints one JSON object: `{"peer":"rust-binaryheap","events":…,"wall_s":…,"events_per_s":…,
//! "mean_wait":…,"mean_wait_theory":…}`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

use rand::SeedableRng;
use rand_distr::{Distribution, Exp};
use rand_pcg::Pcg64Mcg;

/// Arrival rate λ and service rate μ per unit of time: ρ = 0.9, a busy queue.
const LAMBDA: f64 = 0.9;
const MU: f64 = 1.0;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Arrival,
    Departure,
}

/// Times are non-negative, so the bits of an `f64` order as the numbers do; the sequence
/// number breaks ties in insertion order.
type Entry = Reverse<(u64, u64, Kind)>;

struct Mm1 {
    heap: BinaryHeap<Entry>,
    seq: u64,
    rng: Pcg64Mcg,
    arrivals: Exp<f64>,
    services: Exp<f64>,
    /// Arrival times of the customers waiting, the one in service excluded.
    waiting: VecDeque<f64>,
    busy: bool,
    served: u64,
    wait_sum: f64,
}

impl Mm1 {
    fn push(&mut self, at: f64, kind: Kind) {
        self.seq += 1;
        self.heap.push(Reverse((at.to_bits(), self.seq, kind)));
    }

    fn start_service(&mut self, now: f64, arrived: f64) {
        self.busy = true;
        self.served += 1;
        self.wait_sum += now - arrived;
        let t = now + self.services.sample(&mut self.rng);
        self.push(t, Kind::Departure);
    }

    /// Runs until `events` arrivals and departures have been handled.
    fn run(&mut self, events: u64) {
        self.push(0.0, Kind::Arrival);
        let mut handled = 0;
        while handled < events {
            let Some(Reverse((bits, _, kind))) = self.heap.pop() else {
                break;
            };
            let now = f64::from_bits(bits);
            handled += 1;
            match kind {
                Kind::Arrival => {
                    let next = now + self.arrivals.sample(&mut self.rng);
                    self.push(next, Kind::Arrival);
                    if self.busy {
                        self.waiting.push_back(now);
                    } else {
                        self.start_service(now, now);
                    }
                }
                Kind::Departure => match self.waiting.pop_front() {
                    Some(arrived) => self.start_service(now, arrived),
                    None => self.busy = false,
                },
            }
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut events: u64 = 1_000_000;
    let mut seed: u64 = 42;
    while let Some(a) = args.next() {
        let value = args.next().and_then(|v| v.parse().ok());
        match (a.as_str(), value) {
            ("--events", Some(v)) => events = v,
            ("--seed", Some(v)) => seed = v,
            _ => {
                eprintln!("usage: mm1_loop [--events N] [--seed N]");
                std::process::exit(2);
            }
        }
    }
    let arrivals = Exp::new(LAMBDA).expect("λ > 0");
    let services = Exp::new(MU).expect("μ > 0");
    let mut q = Mm1 {
        heap: BinaryHeap::new(),
        seq: 0,
        rng: Pcg64Mcg::seed_from_u64(seed),
        arrivals,
        services,
        waiting: VecDeque::new(),
        busy: false,
        served: 0,
        wait_sum: 0.0,
    };
    #[allow(clippy::disallowed_methods)] // a benchmark measures wall time
    let start = Instant::now();
    q.run(events);
    let wall = start.elapsed().as_secs_f64();
    println!(
        "{{\"peer\":\"rust-binaryheap\",\"events\":{events},\"wall_s\":{wall:.6},\"events_per_s\":{:.0},\"mean_wait\":{:.3},\"mean_wait_theory\":{:.3}}}",
        events as f64 / wall.max(1e-9),
        q.wait_sum / q.served.max(1) as f64,
        LAMBDA / MU / (MU - LAMBDA),
    );
}
