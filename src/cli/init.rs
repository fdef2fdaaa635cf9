//! `virtfleet init`: scaffold a new fleet directory.
//!
//! Writes `fleet.dhall`, a copy of the Dhall package under `dhall/`, and an
//! empty `images.lock`. It checks every target first and writes nothing if
//! any exists, so it can never overwrite a user's work.

use super::EXIT_OK;
use crate::lock::{ImageLock, write_atomic};
use anyhow::{Context as _, bail};
use std::path::PathBuf;

/// The Dhall package, embedded so `init` works from an installed binary.
pub const PACKAGE: &[(&str, &str)] = &[
    ("package.dhall", include_str!("../../dhall/package.dhall")),
    ("Fleet.dhall", include_str!("../../dhall/Fleet.dhall")),
    ("Settings.dhall", include_str!("../../dhall/Settings.dhall")),
    ("Strategy.dhall", include_str!("../../dhall/Strategy.dhall")),
    ("Host.dhall", include_str!("../../dhall/Host.dhall")),
    ("Capacity.dhall", include_str!("../../dhall/Capacity.dhall")),
    ("Storage.dhall", include_str!("../../dhall/Storage.dhall")),
    (
        "DomainType.dhall",
        include_str!("../../dhall/DomainType.dhall"),
    ),
    ("CpuMode.dhall", include_str!("../../dhall/CpuMode.dhall")),
    ("Network.dhall", include_str!("../../dhall/Network.dhall")),
    ("Image.dhall", include_str!("../../dhall/Image.dhall")),
    (
        "ImageFormat.dhall",
        include_str!("../../dhall/ImageFormat.dhall"),
    ),
    ("Machine.dhall", include_str!("../../dhall/Machine.dhall")),
    ("Power.dhall", include_str!("../../dhall/Power.dhall")),
    ("Disk.dhall", include_str!("../../dhall/Disk.dhall")),
    (
        "CloudInit.dhall",
        include_str!("../../dhall/CloudInit.dhall"),
    ),
    (
        "Snapshots.dhall",
        include_str!("../../dhall/Snapshots.dhall"),
    ),
];

const TEMPLATE: &str = r#"-- A virtfleet fleet. Field reference: dhall/*.dhall, or the README.
-- Growing past a few dozen machines? Stamp them out with a helper function
-- and keep them in several imported files: one big file of literal records
-- parses slowly (README: "Large fleets", example: examples/large/ there).
let V = ./dhall/package.dhall

in  V.Fleet::{
    , name = "FLEET"
    , hosts =
      [ V.Host::{
        , name = "local"
        , uri = "qemu:///system"
        , storage = V.Storage.Dir { path = "/var/lib/virtfleet/FLEET" }
        }
      ]
    , images =
      [ V.Image::{
        , name = "debian-12"
        , url =
            "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2"
        }
      ]
    , machines =
      [ V.Machine::{
        , name = "web"
        , image = "debian-12"
        , cpus = 2
        , memoryMiB = 2048
        , diskGiB = 20
        }
      ]
    }
"#;

/// Scaffold a fleet directory: fleet.dhall, dhall/ package, empty images.lock.
///
/// Refuses to overwrite: if any of the files already exists, nothing is written.
/// The fleet name defaults to the directory's name when that is a valid name.
///
/// Example:
///   virtfleet init mylab && cd mylab && virtfleet images lock && virtfleet check
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Directory to create the fleet in (created if missing).
    #[arg(default_value = ".")]
    dir: PathBuf,

    /// Fleet name, `[a-z0-9][a-z0-9-]{0,62}` [default: the directory name, else "home"].
    #[arg(long)]
    name: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let dir = &args.dir;
    let name = match args.name {
        Some(n) => {
            crate::fleet::check_name(&n).with_context(|| format!("--name {n:?}"))?;
            n
        }
        None => std::path::absolute(dir)
            .ok()
            .and_then(|p| p.file_name().map(|f| f.to_string_lossy().to_lowercase()))
            .filter(|n| crate::fleet::check_name(n).is_ok())
            .unwrap_or_else(|| "home".into()),
    };
    let mut files: Vec<(PathBuf, String)> = vec![
        (dir.join("fleet.dhall"), TEMPLATE.replace("FLEET", &name)),
        (dir.join("images.lock"), ImageLock::default().render()),
    ];
    files.extend(
        PACKAGE
            .iter()
            .map(|(f, text)| (dir.join("dhall").join(f), (*text).to_owned())),
    );
    let existing: Vec<String> = files
        .iter()
        .filter(|(p, _)| p.exists())
        .map(|(p, _)| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        bail!(
            "refusing to overwrite existing files (nothing was written): {}",
            existing.join(", ")
        );
    }
    std::fs::create_dir_all(dir.join("dhall"))
        .with_context(|| format!("cannot create {}", dir.join("dhall").display()))?;
    for (path, text) in &files {
        write_atomic(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("created fleet {name:?} in {}:", dir.display());
    println!("  fleet.dhall   the fleet (one host, one image, one machine to start from)");
    println!("  dhall/        the virtfleet Dhall package (types, defaults, field docs)");
    println!("  images.lock   image pins (empty)");
    println!("next: edit fleet.dhall, then `virtfleet images lock` and `virtfleet check`");
    Ok(EXIT_OK)
}
