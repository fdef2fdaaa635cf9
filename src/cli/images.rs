//! `virtfleet images ...`: pin, update, fetch and verify base images.
//!
//! Every download streams through sha256 into the content-addressed cache;
//! the lockfile is rewritten atomically and only with entries whose
//! download fully succeeded. A failed image leaves its entry and the cache
//! exactly as they were, and makes the command exit 1.

use super::{Context, EXIT_ERROR, EXIT_OK, load_fleet};
use crate::fleet::{Fleet, ImageFormat, ImageName};
use crate::lock::cache::Verdict;
use crate::lock::fetch::{Expected, download};
use crate::lock::{ImageLock, LockEntry};
use crate::ui::{ERROR, OK, StderrProgress, WARN, human_bytes};
use anyhow::bail;

/// Pin, update, fetch and verify base images (images.lock and the cache).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    Lock(LockArgs),
    Update(NamesArgs),
    Fetch(NamesArgs),
    Verify(VerifyArgs),
}

/// Pin every image of the fleet that is not pinned yet (or whose URL or format changed).
///
/// Downloads each such image with a streaming sha256 into the cache and writes
/// its url, sha256, size, format and time to images.lock. Images already pinned
/// with the same URL and format are not downloaded again.
///
/// Example:
///   virtfleet images lock
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct LockArgs {}

/// Image names to act on (default: every image of the fleet).
///
/// `update` re-downloads the images and shows which hashes changed upstream,
/// then re-pins them; `fetch` downloads pinned images into the cache, checking
/// them against the pin (a mismatch is deleted and reported, never used).
///
/// Examples:
///   virtfleet images update debian-12
///   virtfleet images fetch
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct NamesArgs {
    /// Images to act on.
    names: Vec<String>,
}

/// Re-hash every image in the cache and report corrupted ones.
///
/// A cached file whose content no longer matches its sha256 (or its pinned
/// size) is reported and deleted, so it can never be used; `virtfleet images
/// fetch` downloads it again. Exit status 1 when anything was corrupted.
///
/// Example:
///   virtfleet images verify
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct VerifyArgs {}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    match args.command {
        Command::Lock(_) => lock(ctx),
        Command::Update(a) => update(ctx, &a.names),
        Command::Fetch(a) => fetch(ctx, &a.names),
        Command::Verify(_) => verify(ctx),
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The fleet images named in `names` (all when empty); unknown names are an error.
fn select<'a>(fleet: &'a Fleet, names: &[String]) -> anyhow::Result<Vec<&'a ImageName>> {
    if names.is_empty() {
        return Ok(fleet.images.keys().collect());
    }
    let mut out = Vec::new();
    for n in names {
        match fleet
            .images
            .get_key_value(&ImageName::new(n).map_err(|e| anyhow::anyhow!("image {n:?}: {e}"))?)
        {
            Some((k, _)) => out.push(k),
            None => bail!(
                "image {n:?} is not in {} (images: {})",
                fleet.source.display(),
                fleet
                    .images
                    .keys()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    Ok(out)
}

fn report_failure(name: &ImageName, err: &dyn std::fmt::Display, hint: Option<&str>) {
    anstream::eprintln!("{ERROR}error{ERROR:#}: image {:?}: {err}", name.as_str());
    if let Some(hint) = hint {
        crate::ui::print_hint(hint);
    }
}

/// Says what pinning `name` found: for `update` (`show_changes`) how the
/// pin changed, otherwise just the new pin.
fn report_pin(
    name: &ImageName,
    old: Option<&LockEntry>,
    got: &crate::lock::fetch::Fetched,
    same: bool,
    show_changes: bool,
) {
    if !show_changes {
        anstream::println!(
            "{OK}{name}{OK:#}: pinned {} ({})",
            got.sha256,
            human_bytes(got.size)
        );
        return;
    }
    match old {
        Some(o) if same => anstream::println!("{name}: unchanged ({})", o.sha256.short()),
        Some(o) if o.sha256 == got.sha256 => anstream::println!(
            "{name}: sha256 unchanged ({}); url, format or recorded disk size re-pinned",
            got.sha256.short()
        ),
        Some(o) => anstream::println!(
            "{WARN}{name}: sha256 changed{WARN:#} {} -> {} (size {} -> {})",
            o.sha256,
            got.sha256,
            o.size,
            got.size
        ),
        None => anstream::println!("{name}: pinned {} ({})", got.sha256, human_bytes(got.size)),
    }
}

/// Downloads `targets` unpinned and re-pins them; returns the exit code.
/// `show_changes` prints old → new hashes (for `update`).
fn repin(
    ctx: &Context,
    fleet: &Fleet,
    mut lock: ImageLock,
    targets: &[&ImageName],
    show_changes: bool,
) -> anyhow::Result<u8> {
    let progress = StderrProgress::new();
    let mut failed = 0;
    let mut changed = 0;
    for name in targets {
        let image = &fleet.images[*name];
        match download(&image.url, None, &ctx.cache, name.as_str(), &progress) {
            Ok(got) => {
                // Recorded for qcow2 only: a raw image's disk is its size.
                let vsize = got.vsize.filter(|_| image.format == ImageFormat::Qcow2);
                let old = lock.images.get(*name);
                let same = old.is_some_and(|o| {
                    o.sha256 == got.sha256
                        && o.size == got.size
                        && o.vsize == vsize
                        && o.url == image.url
                        && o.format == image.format
                });
                report_pin(name, old, &got, same, show_changes);
                if !same {
                    changed += 1;
                    lock.images.insert(
                        (*name).clone(),
                        LockEntry {
                            url: image.url.clone(),
                            sha256: got.sha256,
                            size: got.size,
                            vsize,
                            format: image.format,
                            locked: now(),
                        },
                    );
                }
            }
            Err(e) => {
                failed += 1;
                report_failure(name, &e, crate::ui::fetch_hint(&e));
            }
        }
    }
    if changed > 0 {
        lock.write(&ctx.lock)?;
        println!(
            "{}: {changed} entr{} written",
            ctx.lock.display(),
            if changed == 1 { "y" } else { "ies" }
        );
    } else if failed == 0 {
        println!("{}: unchanged", ctx.lock.display());
    }
    if failed > 0 {
        anstream::eprintln!(
            "{ERROR}error{ERROR:#}: {failed} image{} failed; their entries in {} were left as they were",
            if failed == 1 { "" } else { "s" },
            ctx.lock.display()
        );
        return Ok(EXIT_ERROR);
    }
    Ok(EXIT_OK)
}

fn lock(ctx: &Context) -> anyhow::Result<u8> {
    let fleet = load_fleet(ctx)?;
    let lock = ImageLock::read(&ctx.lock)?;
    let stale: Vec<&ImageName> = fleet
        .images
        .iter()
        .filter(|(n, i)| {
            lock.images
                .get(*n)
                .is_none_or(|e| e.url != i.url || e.format != i.format)
        })
        .map(|(n, _)| n)
        .collect();
    if stale.is_empty() {
        println!(
            "{}: every image of the fleet is already pinned",
            ctx.lock.display()
        );
        return Ok(EXIT_OK);
    }
    repin(ctx, &fleet, lock, &stale, false)
}

fn update(ctx: &Context, names: &[String]) -> anyhow::Result<u8> {
    let fleet = load_fleet(ctx)?;
    let lock = ImageLock::read(&ctx.lock)?;
    let targets = select(&fleet, names)?;
    repin(ctx, &fleet, lock, &targets, true)
}

fn fetch(ctx: &Context, names: &[String]) -> anyhow::Result<u8> {
    let fleet = load_fleet(ctx)?;
    let lock = ImageLock::read(&ctx.lock)?;
    let progress = StderrProgress::new();
    let mut failed = 0;
    for name in select(&fleet, names)? {
        let Some(entry) = lock.images.get(name) else {
            failed += 1;
            report_failure(
                name,
                &format_args!(
                    "not pinned in {}; run `virtfleet images lock`",
                    ctx.lock.display()
                ),
                None,
            );
            continue;
        };
        if ctx.cache.verify(
            &entry.sha256,
            Some(entry.size),
            &crate::progress::NoProgress,
        )? == Verdict::Ok
        {
            println!("{name}: cached ({})", entry.sha256.short());
            continue;
        }
        let expected = Expected {
            sha256: entry.sha256.clone(),
            size: entry.size,
        };
        match download(
            &entry.url,
            Some(&expected),
            &ctx.cache,
            name.as_str(),
            &progress,
        ) {
            Ok(got) => anstream::println!(
                "{OK}{name}{OK:#}: fetched and verified {}",
                got.sha256.short()
            ),
            Err(e) => {
                failed += 1;
                report_failure(name, &e, crate::ui::fetch_hint(&e));
            }
        }
    }
    Ok(if failed > 0 { EXIT_ERROR } else { EXIT_OK })
}

fn verify(ctx: &Context) -> anyhow::Result<u8> {
    // The lock is optional here: cached files are checked against their own
    // names, and against pinned sizes when a lock is present.
    let lock = ImageLock::read(&ctx.lock)?;
    let progress = StderrProgress::new();
    let mut corrupted = 0;
    let entries = ctx.cache.entries()?;
    for sha in &entries {
        let pinned: Vec<(&ImageName, &LockEntry)> = lock
            .images
            .iter()
            .filter(|(_, e)| &e.sha256 == sha)
            .collect();
        let size = pinned.first().map(|(_, e)| e.size);
        let label = pinned
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let label = if label.is_empty() {
            "(not pinned)".to_owned()
        } else {
            label
        };
        match ctx.cache.verify(sha, size, &progress)? {
            Verdict::Ok => println!("ok        {sha}  {label}"),
            Verdict::Missing => {}
            Verdict::Corrupted { actual, size } => {
                corrupted += 1;
                let path = ctx.cache.path(sha);
                std::fs::remove_file(&path)?;
                anstream::println!(
                    "{ERROR}corrupted{ERROR:#} {sha}  {label}: content hashes to {actual} ({size} bytes); deleted {}",
                    path.display()
                );
            }
        }
    }
    for (name, e) in &lock.images {
        if !entries.contains(&e.sha256) {
            println!(
                "missing   {}  {name} (not cached; `virtfleet images fetch` downloads it)",
                e.sha256
            );
        }
    }
    println!(
        "{}: {} cached image{} checked, {corrupted} corrupted",
        ctx.cache.dir().display(),
        entries.len(),
        if entries.len() == 1 { "" } else { "s" }
    );
    Ok(if corrupted > 0 { EXIT_ERROR } else { EXIT_OK })
}
