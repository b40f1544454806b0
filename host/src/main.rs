//! `flow8-host`: the command line of the flow8 integration host.

fn main() -> std::process::ExitCode {
    flow8_host::cli::main()
}
