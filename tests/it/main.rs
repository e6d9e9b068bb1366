//! Integration tests: the real `raywatch` binary against a real Prometheus and real Ray.

mod attacks;
mod bench;
mod cli;
mod discovery;
mod doctor;
mod escapes;
mod export;
mod fleet;
mod grafana;
mod guard;
mod history;
mod liveness;
mod ray;
mod reliability;
mod security;
mod snapshots;
mod support;
mod top;
