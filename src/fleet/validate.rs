//! Semantic checks: raw Dhall values → a validated [`Fleet`].
//!
//! Dhall's type checker already guarantees the shape. What it cannot know
//! is checked here: names, uniqueness, references, sizes, capacity, and
//! volume-name collisions. Every check runs and every problem is reported
//! together, each naming the file, the line when a literal can be found,
//! and the host/image/machine/field at fault.

use super::model::{DataDisk, Fleet, Host, Image, Machine};
use super::names::{DiskName, FleetName, HostName, ImageName, VmName, check_name};
use super::raw;
use crate::diag::{Diagnostic, SourceIndex};
use std::collections::{BTreeMap, BTreeSet};

/// Upper bound on vCPUs per machine (libvirt's QEMU driver accepts more, but
/// a larger number in a homelab fleet is a typo).
pub const MAX_CPUS: u64 = 256;
/// Smallest memory a Linux guest boots with, in MiB.
pub const MIN_MEMORY_MIB: u64 = 64;
/// 4 TiB in MiB.
pub const MAX_MEMORY_MIB: u64 = 4 * 1024 * 1024;
/// 64 TiB in GiB.
pub const MAX_DISK_GIB: u64 = 64 * 1024;
/// Largest retention count accepted per period (hourly, daily, weekly, monthly).
pub const MAX_SNAPSHOTS: [(&str, u64); 4] = [
    ("hourly", 720),
    ("daily", 366),
    ("weekly", 260),
    ("monthly", 240),
];
/// Longest trash retention accepted, in days.
pub const MAX_TRASH_DAYS: u64 = 3650;

struct Checker<'a> {
    src: &'a SourceIndex,
    errors: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn err(&mut self, line: Option<usize>, subject: String, message: String) {
        self.errors.push(self.src.at(line, subject, message));
    }

    /// Reports `name` if invalid; returns the newtype when valid.
    fn name<T>(
        &mut self,
        kind: &str,
        raw: &str,
        new: fn(&str) -> Result<T, super::NameError>,
    ) -> Option<T> {
        match new(raw) {
            Ok(n) => Some(n),
            Err(e) => {
                let line = self.src.record(raw);
                self.err(
                    line,
                    format!("{kind} {raw:?}"),
                    format!("invalid name: {e}"),
                );
                None
            }
        }
    }

    /// Reports `field = value` of the `kind` named `name` if outside `min..=max`.
    fn range(
        &mut self,
        (kind, name): (&str, &str),
        field: &str,
        value: u64,
        (min, max, unit): (u64, u64, &str),
    ) -> bool {
        if value < min || value > max {
            let line = self.src.field(name, field);
            let why = if value < min {
                "too small"
            } else {
                "too large"
            };
            self.err(
                line,
                format!("{kind} {name:?}"),
                format!("{field} = {value} is {why} (allowed {min}..{max}{unit})"),
            );
            return false;
        }
        true
    }

    fn snapshots(&mut self, kind: &str, name: &str, s: &raw::Snapshots) {
        let counts = [s.hourly, s.daily, s.weekly, s.monthly];
        for ((period, max), value) in MAX_SNAPSHOTS.iter().zip(counts) {
            self.range((kind, name), period, value, (0, *max, " snapshots"));
        }
    }
}

/// Validates `raw` (evaluated from the file `src` indexes) into a [`Fleet`],
/// or returns every problem found.
pub fn validate(raw: raw::Fleet, src: &SourceIndex) -> Result<Fleet, Vec<Diagnostic>> {
    let mut c = Checker {
        src,
        errors: Vec::new(),
    };

    let fleet_name = c.name("fleet", &raw.name, FleetName::new);
    if raw.settings.trash_retention_days > MAX_TRASH_DAYS {
        let line = src.field(&raw.name, "trashRetentionDays");
        c.err(
            line,
            "settings".into(),
            format!(
                "trashRetentionDays = {} is too large (allowed 0..{MAX_TRASH_DAYS})",
                raw.settings.trash_retention_days
            ),
        );
    }

    let mut hosts = BTreeMap::new();
    for h in &raw.hosts {
        let Some(name) = c.name("host", &h.name, HostName::new) else {
            continue;
        };
        let subject = format!("host {:?}", h.name);
        if hosts.contains_key(&name) {
            c.err(
                src.record_nth(&h.name, 1).or(src.record(&h.name)),
                subject.clone(),
                "declared more than once".into(),
            );
            continue;
        }
        if !h.uri.contains(':') || h.uri.trim() != h.uri || h.uri.is_empty() {
            c.err(src.field(&h.name, "uri"), subject.clone(), format!("uri {:?} is not a libvirt URI (e.g. qemu:///system, qemu+ssh://root@hv1/system)", h.uri));
        }
        match &h.storage {
            raw::Storage::Zfs { parent } => {
                if let Err(why) = check_dataset(parent) {
                    c.err(
                        src.field(&h.name, "storage"),
                        subject.clone(),
                        format!("storage Zfs parent {parent:?} {why}"),
                    );
                }
            }
            raw::Storage::Dir { path } => {
                if !path.starts_with('/')
                    || path.contains('\n')
                    || path.split('/').any(|p| p == "..")
                {
                    c.err(
                        src.field(&h.name, "storage"),
                        subject.clone(),
                        format!("storage Dir path {path:?} must be an absolute path without '..'"),
                    );
                }
            }
        }
        if let raw::Network::Libvirt(net) | raw::Network::Bridge(net) = &h.network
            && (net.is_empty()
                || net
                    .chars()
                    .any(|ch| ch.is_whitespace() || ch == '/' || ch == '\'' || ch == '"'))
        {
            c.err(
                src.field(&h.name, "network"),
                subject.clone(),
                format!("network name {net:?} is not a valid libvirt network or bridge name"),
            );
        }
        if let raw::CpuMode::Model(m) = &h.cpu_mode
            && (m.is_empty()
                || !m
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)))
        {
            c.err(
                src.field(&h.name, "cpuMode"),
                subject.clone(),
                format!("CPU model {m:?} is not a QEMU model name"),
            );
        }
        if let Some(cap) = &h.capacity {
            c.range(
                ("host", &h.name),
                "cpus",
                cap.cpus,
                (1, 65536, " CPUs of capacity"),
            );
            c.range(
                ("host", &h.name),
                "memoryMiB",
                cap.memory_mib,
                (MIN_MEMORY_MIB, 1 << 40, " MiB of capacity"),
            );
        }
        if let Some(t) = &h.ssh_target
            && (t.is_empty() || t.starts_with('-') || t.chars().any(|ch| ch.is_whitespace()))
        {
            c.err(
                src.field(&h.name, "sshTarget"),
                subject.clone(),
                format!("sshTarget {t:?} must look like user@host[:port]"),
            );
        }
        hosts.insert(
            name.clone(),
            Host {
                name,
                uri: h.uri.clone(),
                storage: h.storage.clone(),
                domain_type: h.domain_type,
                cpu_mode: h.cpu_mode.clone(),
                network: h.network.clone(),
                capacity: h.capacity,
                ssh_target: h.ssh_target.clone(),
            },
        );
    }

    let mut images = BTreeMap::new();
    for i in &raw.images {
        let Some(name) = c.name("image", &i.name, ImageName::new) else {
            continue;
        };
        let subject = format!("image {:?}", i.name);
        if images.contains_key(&name) {
            c.err(
                src.record_nth(&i.name, 1).or(src.record(&i.name)),
                subject,
                "declared more than once".into(),
            );
            continue;
        }
        if let Err(why) = check_url(&i.url) {
            c.err(src.field(&i.name, "url"), subject, why);
        }
        images.insert(
            name.clone(),
            Image {
                name,
                url: i.url.clone(),
                format: i.format,
            },
        );
    }

    let mut machines = BTreeMap::new();
    let only_host = if hosts.len() == 1 {
        hosts.keys().next().cloned()
    } else {
        None
    };
    for m in &raw.machines {
        let Some(name) = c.name("machine", &m.name, VmName::new) else {
            continue;
        };
        let subject = format!("machine {:?}", m.name);
        if machines.contains_key(&name) {
            c.err(
                src.record_nth(&m.name, 1).or(src.record(&m.name)),
                subject,
                "declared more than once".into(),
            );
            continue;
        }
        let mut ok = true;
        let host = match &m.host {
            Some(h) => match HostName::new(h).ok().filter(|h| hosts.contains_key(h)) {
                Some(h) => Some(h),
                None => {
                    let known = join_names(hosts.keys());
                    c.err(
                        src.field(&m.name, "host"),
                        subject.clone(),
                        format!("unknown host {h:?} (hosts: {known})"),
                    );
                    None
                }
            },
            None if only_host.is_some() => only_host.clone(),
            None => {
                c.err(
                    src.record(&m.name),
                    subject.clone(),
                    format!("no host given and the fleet has {} hosts; set `host` (automatic placement is not available yet)", hosts.len()),
                );
                None
            }
        };
        let image = match ImageName::new(&m.image)
            .ok()
            .filter(|i| images.contains_key(i))
        {
            Some(i) => Some(i),
            None => {
                let known = join_names(images.keys());
                c.err(
                    src.field(&m.name, "image"),
                    subject.clone(),
                    format!("unknown image {:?} (images: {known})", m.image),
                );
                None
            }
        };
        ok &= c.range(("machine", &m.name), "cpus", m.cpus, (1, MAX_CPUS, ""));
        ok &= c.range(
            ("machine", &m.name),
            "memoryMiB",
            m.memory_mib,
            (MIN_MEMORY_MIB, MAX_MEMORY_MIB, " MiB"),
        );
        ok &= c.range(
            ("machine", &m.name),
            "diskGiB",
            m.disk_gib,
            (1, MAX_DISK_GIB, " GiB"),
        );
        c.snapshots("machine", &m.name, &m.snapshots);

        let mut data_disks = Vec::new();
        let mut seen_disks = BTreeSet::new();
        for d in &m.data_disks {
            let dsub = format!("machine {:?} disk {:?}", m.name, d.name);
            let Ok(dname) = DiskName::new(&d.name) else {
                let e = check_name(&d.name).unwrap_err();
                c.err(
                    src.field(&m.name, "dataDisks"),
                    dsub,
                    format!("invalid disk name: {e}"),
                );
                ok = false;
                continue;
            };
            if d.name == "root" {
                c.err(
                    src.field(&m.name, "dataDisks"),
                    dsub,
                    "the name `root` is reserved for the root disk".into(),
                );
                ok = false;
                continue;
            }
            if !seen_disks.insert(d.name.clone()) {
                c.err(
                    src.field(&m.name, "dataDisks"),
                    dsub,
                    "declared more than once in this machine".into(),
                );
                ok = false;
                continue;
            }
            if d.size_gib == 0 || d.size_gib > MAX_DISK_GIB {
                let why = if d.size_gib == 0 {
                    "too small"
                } else {
                    "too large"
                };
                c.err(
                    src.field(&m.name, "sizeGiB"),
                    dsub,
                    format!(
                        "sizeGiB = {} is {why} (allowed 1..{MAX_DISK_GIB} GiB)",
                        d.size_gib
                    ),
                );
                ok = false;
            }
            if let Some(s) = &d.snapshots {
                c.snapshots("machine", &m.name, s);
            }
            data_disks.push(DataDisk {
                name: dname,
                size_gib: d.size_gib,
                snapshots: d.snapshots.unwrap_or(m.snapshots),
            });
        }
        if let Some(ci) = &m.cloud_init {
            if let Some(h) = &ci.hostname
                && (h.is_empty() || h.len() > 253 || !h.split('.').all(|l| check_name(l).is_ok()))
            {
                c.err(
                    src.field(&m.name, "hostname"),
                    subject.clone(),
                    format!("cloudInit hostname {h:?} is not a valid lowercase DNS name"),
                );
            }
            for key in &ci.ssh_authorized_keys {
                if key.contains('\n') || key.split_whitespace().count() < 2 {
                    c.err(
                        src.field(&m.name, "sshAuthorizedKeys"),
                        subject.clone(),
                        format!(
                            "ssh key {:?} is not an OpenSSH public key line",
                            truncate(key, 40)
                        ),
                    );
                }
            }
        }
        let (Some(host), Some(image), true) = (host, image, ok) else {
            continue;
        };
        machines.insert(
            name.clone(),
            Machine {
                name,
                host,
                image,
                cpus: m.cpus as u32,
                memory_mib: m.memory_mib,
                disk_gib: m.disk_gib,
                data_disks,
                autostart: m.autostart,
                power: m.power,
                cloud_init: m.cloud_init.clone(),
                snapshots: m.snapshots,
                protect: m.protect,
            },
        );
    }

    // Per-host checks need every machine placed first.
    for host in hosts.values() {
        let on_host: Vec<&Machine> = machines.values().filter(|m| m.host == host.name).collect();
        if let Some(cap) = &host.capacity {
            for m in &on_host {
                if u64::from(m.cpus) > cap.cpus {
                    c.err(
                        src.field(m.name.as_str(), "cpus"),
                        format!("machine {:?}", m.name.as_str()),
                        format!(
                            "cpus = {} exceeds host {:?}'s capacity of {} CPUs",
                            m.cpus,
                            host.name.as_str(),
                            cap.cpus
                        ),
                    );
                }
            }
            let total: u64 = on_host.iter().map(|m| m.memory_mib).sum();
            if total > cap.memory_mib {
                let names = join_names(on_host.iter().map(|m| &m.name));
                c.err(src.record(host.name.as_str()), format!("host {:?}", host.name.as_str()), format!("machines {names} need {total} MiB of memory together, over the capacity of {} MiB", cap.memory_mib));
            }
        }
        let mut volumes: BTreeMap<String, (String, String)> = BTreeMap::new();
        for m in &on_host {
            for (disk, _) in m.disks() {
                let vol = m.volume_name(&disk);
                if let Some((other_m, other_d)) = volumes.get(&vol) {
                    c.err(
                        src.record(m.name.as_str()),
                        format!("machine {:?} disk {disk:?}", m.name.as_str()),
                        format!("its volume {vol:?} on host {:?} is also claimed by machine {other_m:?} disk {other_d:?}; rename one of them", host.name.as_str()),
                    );
                } else {
                    volumes.insert(vol, (m.name.to_string(), disk));
                }
            }
        }
    }

    let Some(name) = fleet_name else {
        return Err(c.errors);
    };
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    Ok(Fleet {
        source: src.file().to_owned(),
        name,
        settings: raw.settings,
        hosts,
        images,
        machines,
    })
}

/// Checks a ZFS dataset path like `tank/vms`.
fn check_dataset(p: &str) -> Result<(), String> {
    if p.is_empty() || p.starts_with('/') || p.ends_with('/') {
        return Err("must be a dataset path like tank/vms (no leading or trailing '/')".into());
    }
    for comp in p.split('/') {
        if comp.is_empty()
            || !comp
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.:".contains(ch))
            || comp.starts_with('-')
        {
            return Err(format!(
                "has an invalid component {comp:?} (use letters, digits, '-', '_', '.', ':')"
            ));
        }
    }
    Ok(())
}

/// Checks an image source URL: only http(s), no whitespace.
pub fn check_url(url: &str) -> Result<(), String> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some("http" | "https")
            if !url.chars().any(char::is_whitespace) && url.len() > "http://x".len() - 1 =>
        {
            Ok(())
        }
        Some("file") => Err(format!(
            "url {url:?}: file:// sources are not supported; serve the image over http(s) (e.g. `python3 -m http.server`)"
        )),
        _ => Err(format!("url {url:?} must be an http:// or https:// URL")),
    }
}

fn join_names<T: std::fmt::Display>(names: impl Iterator<Item = T>) -> String {
    let v: Vec<String> = names.map(|n| n.to_string()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}
