//! Prints every command the documentation shows (`cargo run -p lodestone-harness --example
//! doc_commands`), as `sandbox/tests/docs_commands.rs` sees them.
fn main() -> std::io::Result<()> {
    for c in lodestone_harness::docs::all_commands()? {
        println!("{c}");
    }
    Ok(())
}
