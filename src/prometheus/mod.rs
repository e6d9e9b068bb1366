//! Prometheus as raywatch runs it, and the one client that reads it.
//!
//! - [`schema`]: prometheus.yml and web.yml as typed structs, and a stack's prometheus.yml;
//! - [`files`]: writing them (and the recording rules handed in), checked with promtool;
//! - [`args`]: the command line the daemon runs Prometheus with;
//! - [`secrets`]: its password and the remote writes' credential files;
//! - [`version`]: which Prometheus a binary is;
//! - [`listener`]: who holds its port (credentials go only to the stack's own Prometheus);
//! - [`disk`]: the disk its data uses;
//! - [`client`]: the one HTTP client, for the stack's Prometheus or a remote query API;
//! - [`answer`]: bounded reads and the one decoder of its answers.

pub mod answer;
pub mod args;
pub mod client;
pub mod disk;
pub mod files;
pub mod listener;
pub mod schema;
pub mod secrets;
pub mod version;

pub use answer::{Point, RangeSeries, RuleGroup, Sample, Series, parse_answer, read_bounded};
pub use args::{READ_TIMEOUT, args};
pub use client::{ActiveAlert, Client, Counted, Counter, Readiness};
pub use disk::disk_use;
pub use files::write_files;
pub use schema::{RecordingRules, Rules};
// Used by tests elsewhere in the crate (generated_files, top's rules).
#[cfg(test)]
pub use answer::RuleState;
#[cfg(test)]
pub use args::args_for;
pub use secrets::{ensure_secret, random_secret, rotate_password};
pub use version::{AGENT_SINCE, WEB_CONFIG_SINCE, version};

/// The user Prometheus' basic auth knows.
pub const USER: &str = "raywatch";
/// The job every Ray target is scraped under.
pub const RAY_JOB: &str = "ray";
/// The job raywatch's own metrics are scraped under.
pub const RAYWATCH_JOB: &str = "raywatch";
