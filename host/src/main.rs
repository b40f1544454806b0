//! `flow8-host`: the command line of the flow8 integration host.

/// mimalloc instead of glibc's malloc: steps allocate and free on every core at once,
/// and glibc's arenas contend (about a tenth of the API's CPU went to malloc and free).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    flow8_host::cli::main()
}
