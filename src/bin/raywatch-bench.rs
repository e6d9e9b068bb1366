//! The `raywatch-bench` binary (feature `bench`): the measurements of docs/BENCHMARKS.md.

fn main() -> std::process::ExitCode {
    raywatch::bench::main()
}
