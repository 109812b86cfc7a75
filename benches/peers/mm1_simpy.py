"""The SimPy peer for benches/sim_vs_peers.sh: the same M/M/1 queue as benches/examples/mm1_loop.rs.

The model of the third-party measurement the simulator's events-per-second target is set
against (SimPy about 0.24 M events/s; ../shared/reference/anchors-mock-sim.md section 2.6),
written the way SimPy's documentation writes a queue: a source process, a customer process per
arrival, and a Resource of capacity 1.

An event is one arrival or one departure, as in the Rust loop, so --events 1000000 serves
500,000 customers. (SimPy schedules several internal events per customer; they are not counted,
so both peers are measured per model event.) Prints one JSON object like the Rust loop's.

    python3 -m pip install simpy
    python3 benches/peers/mm1_simpy.py --events 1000000
"""

import argparse
import json
import random
import time

import simpy

LAMBDA = 0.9
MU = 1.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    customers = args.events // 2
    rng = random.Random(args.seed)
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=1)
    stats = {"served": 0, "wait": 0.0}

    def customer():
        arrived = env.now
        with server.request() as req:
            yield req
            stats["served"] += 1
            stats["wait"] += env.now - arrived
            yield env.timeout(rng.expovariate(MU))

    def source():
        for _ in range(customers):
            env.process(customer())
            yield env.timeout(rng.expovariate(LAMBDA))

    env.process(source())
    start = time.perf_counter()
    env.run()
    wall = time.perf_counter() - start
    print(json.dumps({
        "peer": "simpy-" + simpy.__version__,
        "events": customers * 2,
        "wall_s": round(wall, 6),
        "events_per_s": round(customers * 2 / max(wall, 1e-9)),
        "mean_wait": round(stats["wait"] / max(stats["served"], 1), 3),
        "mean_wait_theory": round(LAMBDA / MU / (MU - LAMBDA), 3),
    }))


if __name__ == "__main__":
    main()
