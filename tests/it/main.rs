//! Integration tests: the real `raywatch` binary against a real Prometheus and real Ray.

mod attacks;
mod bench;
mod cli;
mod client;
mod conns;
mod discovery;
mod doctor;
mod download;
mod escapes;
mod export;
mod fleet;
mod grafana;
mod guard;
mod history;
mod listeners;
mod liveness;
mod needs;
mod ray;
mod rayauth;
mod reliability;
mod security;
mod settings;
mod snapshots;
mod support;
mod top;
mod wheel;
