//! Integration tests: the real `raywatch` binary against a real Prometheus and real Ray.

mod attacks;
mod bench;
mod cli;
mod discovery;
mod escapes;
mod fleet;
mod grafana;
mod guard;
mod ray;
mod reliability;
mod security;
mod snapshots;
mod support;
mod top;
