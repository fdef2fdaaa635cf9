//! placeholder
/// Watch.
#[derive(Debug, clap::Args)]
pub struct Args {}
/// Run.
pub fn run(_ctx: &super::Context, _a: Args) -> anyhow::Result<u8> {
    Ok(0)
}
