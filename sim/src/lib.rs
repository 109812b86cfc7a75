//! The deterministic simulator: users from a scenario, tagstorm-core's decisions and the OpenAI
//! behaviour model of `mock-openai`, in virtual time.
//!
//! A run jumps from event to event: an upload arrives, an upstream answer lands, core's timer
//! fires. Every random choice comes from the scenario's seed, split into independent streams
//! (workload, model, core), so the same scenario, seed and build give byte-identical results,
//! and changing the policy never changes the workload.
//!
//! The principal types:
//!
//! - [`Scenario`]: a validated scenario file (`scenarios/*.toml`), with `--set` overrides
//!   applied and errors that name the file, line and field ([`ScenarioError`]).
//! - [`sim::run`]: one run of a scenario under a policy, returning a [`RunOutput`]: the
//!   [`Results`] object (schema `tagstorm.results.v1`) and the latency histograms.
//! - [`cli::Cli`]: the `tagstorm-sim` command line (`run`, `compare`, `sweep`, `report`,
//!   `validate`, `bench`, `gate`, `policies`); [`capacity`] is `report`, the capacity planner.
//!
//! # Example
//!
//! ```
//! use tagstorm_core::Policy;
//! use tagstorm_sim::{Scenario, sim};
//!
//! let text = r#"
//! name = "doc"
//! seed = 1
//! [account]
//! model = "gpt-4o-mini"
//! tier = 1
//! [images]
//! width_px = 1024
//! height_px = 768
//! output_tokens = 60
//! [[uploads]]
//! users = 2
//! images = 5
//! at_s = 0
//! "#;
//! let scenario = Scenario::from_text("doc.toml", text, &[]).unwrap();
//! let policy = scenario.policy(&Policy::tagstorm()).unwrap();
//! let run = sim::run(&scenario, &policy).unwrap();
//! assert_eq!(run.results.images.tagged, 10);
//! assert_eq!(run.results.images.pending, 0);
//! ```

pub mod bench;
pub mod capacity;
pub mod cli;
pub mod gate;
pub mod plot;
pub mod policies;
mod queue;
pub mod report;
pub mod results;
pub mod scenario;
pub mod seeds;
pub mod sim;
pub mod sweep;
pub mod workload;

pub use results::Results;
pub use scenario::{Scenario, ScenarioError, SetArg};
pub use sim::{RunOutput, SimError};
