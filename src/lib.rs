//! raywatch: Prometheus (and Grafana) monitoring for every Ray cluster on a machine.
//!
//! Theory of operation: a per-user daemon watches the places Ray writes its
//! `prom_metrics_service_discovery.json`, keeps a registry of the clusters it
//! finds (one per Ray session), verifies and labels their targets, and writes every live
//! cluster's group into a few file_sd shards in `<home>/targets/`. The Prometheus it
//! supervises reads that folder through a single glob, so clusters join and leave
//! without a reload. The CLI talks to the daemon over a Unix socket only its owner
//! can open.

pub mod api;
pub mod atomic;
pub mod attribution;
#[cfg(feature = "bench")]
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod discovery;
pub mod doctor;
pub mod endpoints;
pub mod env;
pub mod error;
pub mod escape;
pub mod export;
pub mod gateway;
#[cfg(test)]
mod generated_files;
pub mod grafana;
pub mod guard;
pub mod history;
pub mod home;
pub mod install;
pub mod listen;
pub mod logfile;
pub mod ports;
pub mod process;
pub mod prometheus;
pub mod promql;
pub mod quote;
pub mod ray;
pub mod ray_auth;
pub mod ray_dashboard;
pub mod registry;
pub mod remote_write;
pub mod sd;
pub mod slurm;
pub mod status;
pub mod supervisor;
pub mod targets;
pub mod temp_dir;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod top;
pub mod untrusted;
pub mod watch;
