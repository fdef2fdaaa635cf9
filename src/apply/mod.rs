//! The executor: runs a plan's changes against the hosts.
//!
//! Hosts run in parallel, one thread each (every libvirt call blocks);
//! within a host, changes run in plan order. Every step is idempotent, so
//! re-running after a crash or a partial failure converges: recovery is
//! always "observe again, plan again", never a replay of a journal. When a
//! step fails its host stops; other hosts finish or stop too, as the caller
//! chooses. Progress is reported as [`Event`]s; this module never prints.

use crate::fleet::{Fleet, Host, ImageName};
use crate::host::backend;
use crate::host::libvirt::{Libvirt, LibvirtError};
use crate::host::storage::{BaseImage, NewDisk, StorageBackend, StorageError};
use crate::host::transport::ExecError;
use crate::host::transport_for;
use crate::lock::ImageLock;
use crate::lock::cache::{Cache, Verdict};
use crate::lock::fetch::{Expected, download};
use crate::plan::planner::GIB;
use crate::plan::{Action, Change, Plan};
use crate::progress::NoProgress;
use crate::resources::observed::DiskOwner;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What happens on other hosts when one host's step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnFailure {
    /// Other hosts finish their own sequences.
    Continue,
    /// Other hosts stop after their current step.
    Stop,
}

/// Settings of one apply.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Unix seconds, stamped on trash entries.
    pub now: u64,
    /// How long a guest gets to shut down by ACPI before it is powered off.
    pub shutdown_grace: Duration,
    /// See [`OnFailure`].
    pub on_failure: OnFailure,
}

/// Progress of an apply.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A host's sequence begins with `steps` changes.
    HostStarted { host: String, steps: usize },
    /// A change begins.
    StepStarted {
        host: String,
        address: String,
        what: String,
    },
    /// A change ended; `error` is None on success.
    StepFinished {
        host: String,
        address: String,
        what: String,
        error: Option<String>,
        seconds: f64,
    },
    /// A host's sequence ended.
    HostFinished {
        host: String,
        done: usize,
        failed: usize,
        skipped: usize,
    },
}

/// Receives apply events, from several host threads at once.
pub trait Events: Sync {
    fn event(&self, e: Event);
}

/// The outcome of one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed(String),
    Skipped,
}

/// Per host, each change's address, description and outcome, in order.
pub type Report = BTreeMap<String, Vec<(String, String, Outcome)>>;

/// A failed step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("{0}")]
    Other(String),
}

/// Applies `plan` to the hosts of `fleet`.
pub fn apply(
    plan: &Plan,
    fleet: &Fleet,
    lock: &ImageLock,
    cache: &Cache,
    settings: Settings,
    events: &dyn Events,
) -> Report {
    let mut by_host: BTreeMap<&str, Vec<&Change>> = BTreeMap::new();
    for c in &plan.changes {
        by_host.entry(c.host.as_str()).or_default().push(c);
    }
    let abort = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handles: Vec<_> = by_host
            .into_iter()
            .map(|(h, changes)| {
                let abort = &abort;
                let host = fleet.hosts.values().find(|x| x.name.as_str() == h);
                (
                    h.to_owned(),
                    s.spawn(move || {
                        run_host(
                            host, h, &changes, fleet, lock, cache, settings, events, abort,
                        )
                    }),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(h, j)| (h, j.join().unwrap_or_default()))
            .collect()
    })
}

#[allow(clippy::too_many_arguments)] // one call site; bundling would only rename the same values
fn run_host(
    host: Option<&Host>,
    name: &str,
    changes: &[&Change],
    fleet: &Fleet,
    lock: &ImageLock,
    cache: &Cache,
    settings: Settings,
    events: &dyn Events,
    abort: &AtomicBool,
) -> Vec<(String, String, Outcome)> {
    events.event(Event::HostStarted {
        host: name.into(),
        steps: changes.len(),
    });
    let mut results: Vec<(String, String, Outcome)> = Vec::new();
    let setup =
        || -> Result<(Libvirt, Box<dyn crate::host::transport::Transport>, &Host), StepError> {
            let host = host.ok_or_else(|| {
                StepError::Other(format!("host {name} is not in the fleet any more"))
            })?;
            let lv = Libvirt::open(&host.uri)?;
            let t = transport_for(host).map_err(|e| StepError::Other(e.to_string()))?;
            Ok((lv, t, host))
        };
    match setup() {
        Err(e) => {
            let msg = e.to_string();
            for c in changes {
                results.push((
                    c.address.clone(),
                    c.action.describe(),
                    Outcome::Failed(msg.clone()),
                ));
            }
        }
        Ok((lv, t, host)) => {
            let mut failed = false;
            let storage = backend(host, t.as_ref());
            for c in changes {
                let what = c.action.describe();
                if failed
                    || (settings.on_failure == OnFailure::Stop && abort.load(Ordering::SeqCst))
                {
                    results.push((c.address.clone(), what, Outcome::Skipped));
                    continue;
                }
                events.event(Event::StepStarted {
                    host: name.into(),
                    address: c.address.clone(),
                    what: what.clone(),
                });
                let started = Instant::now();
                let r = step(c, fleet, lock, cache, &lv, storage.as_ref(), settings);
                let error = r.as_ref().err().map(|e| e.to_string());
                events.event(Event::StepFinished {
                    host: name.into(),
                    address: c.address.clone(),
                    what: what.clone(),
                    error: error.clone(),
                    seconds: started.elapsed().as_secs_f64(),
                });
                match error {
                    None => results.push((c.address.clone(), what, Outcome::Done)),
                    Some(e) => {
                        failed = true;
                        abort.store(true, Ordering::SeqCst);
                        results.push((c.address.clone(), what, Outcome::Failed(e)));
                    }
                }
            }
        }
    }
    let count = |f: fn(&Outcome) -> bool| results.iter().filter(|(_, _, o)| f(o)).count();
    events.event(Event::HostFinished {
        host: name.into(),
        done: count(|o| *o == Outcome::Done),
        failed: count(|o| matches!(o, Outcome::Failed(_))),
        skipped: count(|o| *o == Outcome::Skipped),
    });
    results
}

fn step(
    c: &Change,
    fleet: &Fleet,
    lock: &ImageLock,
    cache: &Cache,
    lv: &Libvirt,
    storage: &dyn StorageBackend,
    settings: Settings,
) -> Result<(), StepError> {
    let machine = || {
        c.machine
            .clone()
            .ok_or_else(|| StepError::Other(format!("{}: change has no machine", c.address)))
    };
    match &c.action {
        Action::EnsureImage {
            image,
            sha256,
            format,
            size,
        } => {
            let name = ImageName::new(image).map_err(|e| StepError::Other(e.to_string()))?;
            let entry = lock
                .images
                .get(&name)
                .filter(|e| e.sha256.as_str() == sha256)
                .ok_or_else(|| {
                    StepError::Other(format!(
                        "image {image} with sha256 {sha256} is not in images.lock any more"
                    ))
                })?;
            // The controller's copy is re-hashed before it leaves: a corrupted
            // cache entry is replaced, never shipped.
            if cache
                .verify(&entry.sha256, Some(*size), &NoProgress)
                .map_err(|e| StepError::Other(e.to_string()))?
                != Verdict::Ok
            {
                let _ = std::fs::remove_file(cache.path(&entry.sha256));
                download(
                    &entry.url,
                    Some(&Expected {
                        sha256: entry.sha256.clone(),
                        size: entry.size,
                    }),
                    cache,
                    image,
                    &NoProgress,
                )
                .map_err(|e| StepError::Other(e.to_string()))?;
            }
            let cached = cache.path(&entry.sha256);
            let base = BaseImage {
                cached: &cached,
                name: image,
                sha256,
                format: format.as_str(),
            };
            storage.ensure_image(&base, &NoProgress)?;
        }
        Action::RemoveIncomplete { path } => storage.remove_incomplete(path)?,
        Action::CreateDisk {
            volume,
            disk,
            size_gib,
            base,
        } => {
            let owner = DiskOwner {
                fleet: fleet.name.to_string(),
                machine: machine()?,
                disk: disk.clone(),
            };
            let base = base
                .as_ref()
                .map(|b| (b.sha256.as_str(), b.format.as_str()));
            storage.create_disk(&NewDisk {
                volume,
                owner: &owner,
                size_gib: *size_gib,
                base,
            })?;
        }
        Action::GrowDisk {
            volume,
            target,
            to_gib,
            ..
        } => {
            let m = machine()?;
            let running = lv.is_running(&m)?;
            storage.grow(volume, *to_gib, running)?;
            if running {
                // Tell QEMU (and through it the guest) about the new size.
                lv.block_resize(&m, target, to_gib * GIB)?;
            }
        }
        Action::DefineDomain { xml } => lv.define(xml)?,
        Action::UpdateDomain {
            xml,
            memory_live_mib,
            restart,
        } => {
            let m = machine()?;
            lv.define(xml)?;
            if let Some(mib) = memory_live_mib
                && lv.is_running(&m)?
            {
                lv.set_memory_live(&m, *mib)?;
            }
            if *restart && lv.is_running(&m)? {
                lv.stop(&m, settings.shutdown_grace)?;
                lv.start(&m)?;
            }
        }
        Action::SetAutostart { on } => lv.set_autostart(&machine()?, *on)?,
        Action::Start => lv.start(&machine()?)?,
        Action::Stop => {
            lv.stop(&machine()?, settings.shutdown_grace)?;
        }
        Action::Destroy { volumes } => {
            let m = machine()?;
            lv.stop(&m, settings.shutdown_grace)?;
            lv.undefine(&m)?;
            for v in volumes {
                storage.trash(v, settings.now)?;
            }
        }
        Action::TrashDisk { volume } => storage.trash(volume, settings.now)?,
        Action::PurgeTrash { entry } => storage.purge(entry)?,
        Action::Snapshot { volumes, name } => {
            let m = machine()?;
            if storage.snapshots_via_domain() && lv.exists(&m) {
                lv.snapshot(&m, name)?;
            } else {
                for v in volumes {
                    storage.snapshot(v, name)?;
                }
            }
        }
        Action::PruneSnapshot { volumes, name } => {
            let m = machine()?;
            let via_domain = storage.snapshots_via_domain() && lv.exists(&m);
            if !(via_domain && lv.delete_snapshot(&m, name)?) {
                if via_domain && lv.is_running(&m)? {
                    return Err(StepError::Other(format!(
                        "snapshot {name} of running {m} is not known to libvirt; stop the guest to prune it"
                    )));
                }
                for v in volumes {
                    storage.destroy_snapshot(v, name)?;
                }
            }
        }
    }
    Ok(())
}

/// Events dropped on the floor.
pub struct NoEvents;

impl Events for NoEvents {
    fn event(&self, _: Event) {}
}
