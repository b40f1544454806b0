//! A plain WASI command (world `wasi:cli/command`): a component of another world.

fn main() {
    println!("hello from a wasi command");
}
