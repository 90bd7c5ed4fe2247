//! The `sparkify` binary: everything happens in [`sparkify::cli`].

fn main() -> std::process::ExitCode {
    sparkify::cli::main()
}
